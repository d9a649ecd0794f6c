"""Fixtures: every test gets its own database.

SQLite: a file in the test's temporary folder. PostgreSQL: a database cloned
from a template that was migrated once per test run (``CREATE DATABASE ...
TEMPLATE``), dropped after the test.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from outbox_admin import init_db, make_engine

from .services import PG_ADMIN_URL, unavailable

BACKENDS = ["sqlite", "postgres"]


class PostgresDatabases:
    """Creates throw-away databases from a migrated template."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", pool_size=1)
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        self.template = f"outbox_tmpl_{worker}_{os.getpid()}"
        self.empty_template = f"outbox_empty_{worker}_{os.getpid()}"

    def url_for(self, name: str) -> str:
        return make_url(self.admin_url).set(database=name).render_as_string(hide_password=False)

    def setup(self) -> None:
        with self.admin.connect() as conn:
            for name in (self.template, self.empty_template):
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        engine = make_engine(self.url_for(self.template))
        try:
            init_db(engine)
        finally:
            engine.dispose()

    def create(self, *, migrated: bool = True) -> str:
        name = f"outbox_t_{uuid.uuid4().hex[:16]}"
        template = self.template if migrated else self.empty_template
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY FILE_COPY'))
        return name

    def drop(self, name: str) -> None:
        with self.admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def teardown(self) -> None:
        for name in (self.template, self.empty_template):
            self.drop(name)
        self.admin.dispose()


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[PostgresDatabases]:
    databases = PostgresDatabases(PG_ADMIN_URL)
    try:
        with databases.admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any failure to connect means "not reachable"
        databases.admin.dispose()
        unavailable("PostgreSQL", f"{PG_ADMIN_URL}: {exc.__class__.__name__}: {exc}".splitlines()[0])
    databases.setup()
    yield databases
    databases.teardown()


@pytest.fixture
def postgres_url(postgres_databases: PostgresDatabases) -> Iterator[str]:
    """The URL of a fresh, migrated PostgreSQL database owned by this test."""
    name = postgres_databases.create()
    yield postgres_databases.url_for(name)
    postgres_databases.drop(name)


@pytest.fixture
def empty_postgres_url(postgres_databases: PostgresDatabases) -> Iterator[str]:
    """The URL of a fresh PostgreSQL database with no tables at all."""
    name = postgres_databases.create(migrated=False)
    yield postgres_databases.url_for(name)
    postgres_databases.drop(name)


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    """The URL of a fresh, migrated SQLite file owned by this test."""
    url = f"sqlite:///{tmp_path / 'outbox.db'}"
    engine = make_engine(url)
    init_db(engine)
    engine.dispose()
    return url


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest) -> str:
    """A fresh migrated database, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()

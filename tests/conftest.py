"""Fixtures: every test gets its own database.

SQLite: a file in the test's temporary folder, a copy of one migrated once per
worker. PostgreSQL: a database cloned from a template that was migrated once per
test run (``CREATE DATABASE ... TEMPLATE``), dropped after the test.

A clone takes about 0.35 s, nearly all of it the server's fsyncs, so a thread per
worker makes the next migrated databases while tests run and drops the used ones
behind them (``PostgresDatabases.create``/``release``): a test still gets a
database no other test touched, made from the template as it was.
"""

from __future__ import annotations

import os
import queue
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

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

    #: Migrated databases made ahead of the tests that will take them.
    AHEAD = 2

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
        self._ready: queue.Queue[str] = queue.Queue(maxsize=self.AHEAD)
        self._used: queue.Queue[str] = queue.Queue()
        self._closing = threading.Event()
        self._worker = threading.Thread(target=self._work, name="postgres-databases", daemon=True)
        self._worker.start()

    def _work(self) -> None:
        """Drop what tests released, then make the next migrated database; until teardown."""
        while not self._closing.is_set():
            self._drop_used()
            try:
                name = self._clone(self.template)
            except Exception:  # noqa: BLE001 - the taker falls back to making its own, and sees the error
                self._closing.wait(0.5)
                continue
            while not self._closing.is_set():
                try:
                    self._ready.put(name, timeout=0.05)
                    break
                except queue.Full:
                    self._drop_used()
            else:
                self.drop(name)

    def _drop_used(self) -> None:
        while True:
            try:
                name = self._used.get_nowait()
            except queue.Empty:
                return
            self.drop(name)

    def create(self, *, migrated: bool = True) -> str:
        if migrated:
            try:
                return self._ready.get(timeout=30)
            except queue.Empty:
                pass  # the maker is stuck or failing: make one here, so the error (if any) shows in the test
        return self._clone(self.template if migrated else self.empty_template)

    def _clone(self, template: str) -> str:
        name = f"outbox_t_{uuid.uuid4().hex[:16]}"
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY FILE_COPY'))
        return name

    def release(self, name: str) -> None:
        """Drop ``name`` after its test, in the background."""
        self._used.put(name)

    def drop(self, name: str) -> None:
        with self.admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def teardown(self) -> None:
        self._closing.set()
        self._worker.join(60)
        while not self._ready.empty():
            self.drop(self._ready.get_nowait())
        self._drop_used()
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
    postgres_databases.release(name)


@pytest.fixture
def empty_postgres_url(postgres_databases: PostgresDatabases) -> Iterator[str]:
    """The URL of a fresh PostgreSQL database with no tables at all."""
    name = postgres_databases.create(migrated=False)
    yield postgres_databases.url_for(name)
    postgres_databases.release(name)


@pytest.fixture(scope="session")
def migrated_sqlite_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated once per worker, closed (its WAL checkpointed into it), to copy."""
    path = tmp_path_factory.mktemp("sqlite-template") / "outbox.db"
    engine = make_engine(f"sqlite:///{path}")
    init_db(engine)
    engine.dispose()
    return path


@pytest.fixture
def sqlite_url(tmp_path: Path, migrated_sqlite_file: Path) -> str:
    """The URL of a fresh, migrated SQLite file owned by this test (a copy of the migrated one)."""
    path = tmp_path / "outbox.db"
    shutil.copyfile(migrated_sqlite_file, path)
    return f"sqlite:///{path}"


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

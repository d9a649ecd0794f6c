"""Engines and schema: SQLite pragmas, PostgreSQL via psycopg 3, Alembic migrations."""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement
from sqlalchemy.sql.functions import FunctionElement

from .coltypes import UTCDateTime
from .config import DEFAULT_DATABASE_FILE
from .errors import ConfigurationError
from .models import DEFAULT_TABLES, OutboxTables

SQLITE_BUSY_TIMEOUT_MS = 30_000
_BEGIN_OPTION = "outbox_begin"
_configured: weakref.WeakSet[Engine] = weakref.WeakSet()


def default_database_url() -> str:
    """``OUTBOX_DATABASE_URL`` if set, else the SQLite file ``outbox.db`` in the working directory."""
    url = os.environ.get("OUTBOX_DATABASE_URL")
    if url:
        return url
    return f"sqlite:///{Path.cwd() / DEFAULT_DATABASE_FILE}"


def normalize_url(url: str) -> str:
    """Use psycopg 3 for ``postgresql://`` URLs; refuse what SQLAlchemy cannot parse."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigurationError(f"not a database URL: {url!r}") from exc
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def make_engine(url: str | None = None, **engine_kwargs: Any) -> Engine:
    """An engine for the outbox: ``url``, else ``OUTBOX_DATABASE_URL``, else ``sqlite:///outbox.db``.

    SQLite gets WAL, a busy timeout, foreign keys and real ``BEGIN`` statements
    (so write transactions can be ``BEGIN IMMEDIATE``); PostgreSQL uses psycopg 3,
    a UTC session time zone and pre-ping, so a restarted server is survived.
    """
    url = normalize_url(url or default_database_url())
    dialect = make_url(url).get_dialect().name
    if dialect == "sqlite":
        if make_url(url).database in (None, "", ":memory:"):
            raise ConfigurationError(
                "an in-memory SQLite database is private to one connection; use a file, e.g. sqlite:///outbox.db"
            )
        connect_args: dict[str, Any] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
        connect_args.update(engine_kwargs.pop("connect_args", {}))
        engine = create_engine(url, connect_args=connect_args, **engine_kwargs)
    elif dialect == "postgresql":
        connect_args = {"options": "-c timezone=UTC"}
        connect_args.update(engine_kwargs.pop("connect_args", {}))
        engine_kwargs.setdefault("pool_pre_ping", True)
        engine = create_engine(url, connect_args=connect_args, **engine_kwargs)
    else:
        engine = create_engine(url, **engine_kwargs)
    return configure_engine(engine)


def configure_engine(engine: Engine) -> Engine:
    """Prepare an engine you created yourself; ``make_engine`` already does this.

    Call it before the engine's first connection. Only SQLite needs anything.
    """
    if engine.dialect.name != "sqlite" or engine in _configured:
        _configured.add(engine)
        return engine

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, emit BEGIN (pysqlite's implicit BEGIN is deferred
        # and skipped before DDL); see SQLAlchemy's "Serializable isolation / Savepoints" notes.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
            return  # asked for: each statement commits by itself, as pysqlite's own autocommit
        mode = conn.get_execution_options().get(_BEGIN_OPTION)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if mode == "IMMEDIATE" else "BEGIN")

    _configured.add(engine)
    return engine


def check_engine(engine: Engine) -> None:
    """Refuse a SQLite engine that was not prepared by ``make_engine``/``configure_engine``."""
    if engine.dialect.name == "sqlite" and engine not in _configured:
        raise ConfigurationError(
            "this SQLite engine was not prepared for the outbox: create it with "
            "outbox_admin.make_engine(url) or call outbox_admin.db.configure_engine(engine) "
            "before its first connection"
        )


def write_engine(engine: Engine) -> Engine:
    """``engine`` whose transactions begin as write transactions (``BEGIN IMMEDIATE`` on SQLite).

    For sessions that read before they write next to a running dispatcher: a
    deferred SQLite transaction that reads first fails at once ("database is
    locked") when another writer commits before its first write.
    """
    if engine.dialect.name != "sqlite":
        return engine
    return engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})


@contextmanager
def write_connection(engine: Engine) -> Iterator[Connection]:
    """A connection whose ``begin()`` starts a write transaction (``BEGIN IMMEDIATE`` on SQLite)."""
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            conn.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})
        yield conn


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A short write transaction; on SQLite it takes the write lock up front (``BEGIN IMMEDIATE``)."""
    with write_connection(engine) as conn, conn.begin():
        yield conn


class utc_now(FunctionElement[Any]):
    """The database's current UTC time (not the host's), with microseconds where the database has them."""

    type = UTCDateTime()
    inherit_cache = True


class utc_now_plus(FunctionElement[Any]):
    """The database's current UTC time plus a number of seconds (a bound value or a column)."""

    type = UTCDateTime()
    inherit_cache = True


_SQLITE_NOW = "strftime('%Y-%m-%d %H:%M:%f', 'now'{modifier}) || '000'"


@compiles(utc_now, "postgresql")
def _now_pg(element: utc_now, compiler: Any, **kw: Any) -> str:
    return "statement_timestamp()"


@compiles(utc_now, "sqlite")
def _now_sqlite(element: utc_now, compiler: Any, **kw: Any) -> str:
    return _SQLITE_NOW.format(modifier="")


@compiles(utc_now)
def _now_default(element: utc_now, compiler: Any, **kw: Any) -> str:
    return "CURRENT_TIMESTAMP"


@compiles(utc_now_plus, "postgresql")
def _now_plus_pg(element: utc_now_plus, compiler: Any, **kw: Any) -> str:
    (seconds,) = list(element.clauses)
    return (
        f"(statement_timestamp() + make_interval(secs => CAST({compiler.process(seconds, **kw)} AS double precision)))"
    )


@compiles(utc_now_plus, "sqlite")
def _now_plus_sqlite(element: utc_now_plus, compiler: Any, **kw: Any) -> str:
    (seconds,) = list(element.clauses)
    modifier = f", printf('%+.6f seconds', {compiler.process(seconds, **kw)})"
    return _SQLITE_NOW.format(modifier=modifier)


def db_now() -> ColumnElement[Any]:
    """SQL for the database clock's current time."""
    return utc_now()


def db_now_plus(seconds: Any) -> ColumnElement[Any]:
    """SQL for the database clock's current time plus ``seconds``."""
    return utc_now_plus(seconds)


def init_db(engine: Engine, tables: OutboxTables = DEFAULT_TABLES) -> None:
    """Create or upgrade the outbox tables with the migrations shipped in the package.

    Idempotent and safe to run from several processes at once (PostgreSQL takes an
    advisory lock, SQLite the write lock). An existing ``OutboxEvent`` table, such as
    one made by Prisma, is adopted: only the missing columns and indexes are added.
    """
    from .migrate import upgrade

    check_engine(engine)
    upgrade(engine, tables)

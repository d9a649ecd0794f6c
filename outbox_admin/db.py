"""Engines and schema: SQLite pragmas, PostgreSQL via psycopg 3, Alembic migrations."""

from __future__ import annotations

import os
import sqlite3
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.pool import NullPool
from sqlalchemy.sql.expression import ColumnElement
from sqlalchemy.sql.functions import FunctionElement

from .coltypes import UTCDateTime
from .config import DEFAULT_DATABASE_FILE
from .errors import ConfigurationError
from .models import DEFAULT_TABLES, OutboxTables

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

SQLITE_BUSY_TIMEOUT_MS = 30_000
#: The execution option that picks how a SQLite transaction begins: ``"immediate"`` (``BEGIN
#: IMMEDIATE``, the write lock up front) or ``"deferred"`` (``BEGIN``, a reader until the first write).
#: Set on an engine or a connection: ``engine.execution_options(outbox_sqlite_begin="deferred")``.
SQLITE_BEGIN_OPTION = "outbox_sqlite_begin"
SqliteBegin = Literal["immediate", "deferred"]
_BEGIN_STATEMENTS = {"immediate": "BEGIN IMMEDIATE", "deferred": "BEGIN"}
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


def sqlite_file(url: str) -> Path | None:
    """The file a ``sqlite://`` URL names (None for other databases and in-memory ones)."""
    parsed = make_url(url)
    if parsed.get_dialect().name != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def _read_only_sqlite(path: Path, connect_args: dict[str, Any]) -> Callable[[], sqlite3.Connection]:
    """Connections that read ``path`` without creating or writing any file.

    ``mode=ro`` alone is not enough: on a WAL database no connection has open, SQLite
    creates the ``-wal`` and ``-shm`` side files for a reader, and a read-only connection
    cannot remove them at close. So when neither side file exists, nobody is writing,
    and the file is opened ``immutable`` (no locks, no side files). Connections are not
    pooled, so this is decided again at every read: once a writer appears (its side files
    exist), readers share its ``-shm`` as usual. The cost is one ``stat`` and one open per read.
    """
    target = _read_only_uri(path)

    def connect() -> sqlite3.Connection:
        return sqlite3.connect(target(), uri=True, **connect_args)

    return connect


def _read_only_uri(path: Path) -> Callable[[], str]:
    """The ``file:`` URI to open ``path`` read-only with now (see ``_read_only_sqlite``); decided per call."""
    # A file: URI, so the path itself is never read as URI syntax (quote() escapes ? and #).
    base = f"file:{quote(str(path.absolute()))}?mode=ro"
    wal, shm = Path(f"{path}-wal"), Path(f"{path}-shm")

    def uri() -> str:
        quiet = not wal.exists() and not shm.exists()
        return base + ("&immutable=1" if quiet else "")

    return uri


def _sqlite_file_args(path: Path | None, engine_kwargs: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """A SQLite engine's file and connection arguments (busy timeout, any thread; the caller's on top).

    An in-memory database is refused: each connection would get its own, empty one."""
    if path is None:
        raise ConfigurationError(
            "an in-memory SQLite database is private to one connection; use a file, e.g. sqlite:///outbox.db"
        )
    connect_args: dict[str, Any] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
    connect_args.update(engine_kwargs.pop("connect_args", {}))
    return path, connect_args


def make_engine(
    url: str | None = None,
    *,
    sqlite_begin: SqliteBegin = "immediate",
    read_only: bool = False,
    **engine_kwargs: Any,
) -> Engine:
    """An engine for the outbox: ``url``, else ``OUTBOX_DATABASE_URL``, else ``sqlite:///outbox.db``.

    SQLite gets WAL, a busy timeout, foreign keys, and transactions that begin
    with ``BEGIN IMMEDIATE`` (``sqlite_begin="deferred"`` for plain ``BEGIN``; see
    ``configure_engine``). PostgreSQL uses psycopg 3, a UTC session time zone and
    pre-ping, so a restarted server is survived. Other keywords go to ``create_engine``.

    ``read_only=True`` gives an engine that cannot write, for consoles and reports on a
    production database: SQLite opens the file with ``mode=ro`` (a missing file is an
    error, never created; no ``journal_mode`` change; ``query_only``), PostgreSQL
    sessions run with ``default_transaction_read_only``. On a WAL database that no
    other process has open, the file is read ``immutable``, so no side file appears
    (see ``_read_only_sqlite``).
    """
    url = normalize_url(url or default_database_url())
    dialect = make_url(url).get_dialect().name
    if dialect == "sqlite":
        path, connect_args = _sqlite_file_args(sqlite_file(url), engine_kwargs)
        if read_only:
            engine_kwargs.setdefault("creator", _read_only_sqlite(path, connect_args))
            engine_kwargs.setdefault("poolclass", NullPool)  # each read decides afresh; see _read_only_sqlite
            engine = create_engine(url, **engine_kwargs)
        else:
            engine = create_engine(url, connect_args=connect_args, **engine_kwargs)
    elif dialect == "postgresql":
        options = "-c timezone=UTC" + (" -c default_transaction_read_only=on" if read_only else "")
        connect_args = {"options": options}
        connect_args.update(engine_kwargs.pop("connect_args", {}))
        engine_kwargs.setdefault("pool_pre_ping", True)
        engine = create_engine(url, connect_args=connect_args, **engine_kwargs)
    else:
        engine = create_engine(url, **engine_kwargs)
    return configure_engine(engine, sqlite_begin="deferred" if read_only else sqlite_begin, read_only=read_only)


#: The async driver ``make_async_engine`` uses per backend, and the async drivers it keeps as given.
_ASYNC_DRIVERS = {"postgresql": "asyncpg", "sqlite": "aiosqlite"}
_KEPT_ASYNC_DRIVERS = {"postgresql": ("asyncpg",), "sqlite": ("aiosqlite",)}


def async_url(url: str) -> str:
    """``url`` with the async driver: ``postgresql[+psycopg]://`` -> ``postgresql+asyncpg://``, ``sqlite://`` ->
    ``sqlite+aiosqlite://``. Already async URLs stay; another database is a ``ConfigurationError``."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigurationError(f"not a database URL: {url!r}") from exc
    backend = "postgresql" if parsed.get_backend_name() == "postgres" else parsed.get_backend_name()
    if backend not in _ASYNC_DRIVERS:
        raise ConfigurationError(
            f"async publishing supports PostgreSQL (asyncpg) and SQLite (aiosqlite), not {parsed.drivername}"
        )
    driver = parsed.get_driver_name() if "+" in parsed.drivername else ""
    if driver not in _KEPT_ASYNC_DRIVERS[backend]:
        driver = _ASYNC_DRIVERS[backend]
    return parsed.set(drivername=f"{backend}+{driver}").render_as_string(hide_password=False)


def make_async_engine(
    url: str | None = None,
    *,
    sqlite_begin: SqliteBegin = "immediate",
    read_only: bool = False,
    **engine_kwargs: Any,
) -> AsyncEngine:
    """An ``AsyncEngine`` for the outbox, configured as ``make_engine`` configures a sync one.

    ``url`` (else ``OUTBOX_DATABASE_URL``, else ``sqlite:///outbox.db``) goes through
    ``async_url``: asyncpg for PostgreSQL, aiosqlite for SQLite, so the sync URL of an
    application works as it is. ``engine.sync_engine`` gets ``configure_engine``'s hooks
    (aiosqlite runs sqlite3 in a thread, and SQLAlchemy fires the same connect and begin
    events): WAL, the busy timeout, foreign keys and ``BEGIN IMMEDIATE`` by default. A
    transaction waiting for the write lock waits in aiosqlite's thread, not in the event
    loop. PostgreSQL sessions run in UTC; ``read_only=True`` gives SQLite ``mode=ro`` (as
    ``make_engine``) and PostgreSQL ``default_transaction_read_only``. Needs the ``async``
    extra (``pip install outbox_admin[async]``). Other keywords go to ``create_async_engine``.
    """
    from sqlalchemy.ext.asyncio import create_async_engine

    url = async_url(url or default_database_url())
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        file = None if parsed.database in (None, "", ":memory:") else Path(parsed.database)
        path, connect_args = _sqlite_file_args(file, engine_kwargs)
        if read_only:
            engine_kwargs.setdefault("async_creator", _async_read_only_sqlite(path, connect_args))
            engine_kwargs.setdefault("poolclass", NullPool)  # each read decides afresh; see _read_only_sqlite
            engine = create_async_engine(url, **engine_kwargs)
        else:
            engine = create_async_engine(url, connect_args=connect_args, **engine_kwargs)
    else:
        settings = {"timezone": "UTC"}
        if read_only:
            settings["default_transaction_read_only"] = "on"
        connect_args = dict(engine_kwargs.pop("connect_args", {}))
        connect_args["server_settings"] = {**settings, **connect_args.get("server_settings", {})}
        engine_kwargs.setdefault("pool_pre_ping", True)
        engine = create_async_engine(url, connect_args=connect_args, **engine_kwargs)
    configure_engine(engine.sync_engine, sqlite_begin="deferred" if read_only else sqlite_begin, read_only=read_only)
    return engine


def _async_read_only_sqlite(path: Path, connect_args: dict[str, Any]) -> Callable[[], Any]:
    """``_read_only_sqlite`` for aiosqlite: the same URI, decided at every connect."""
    target = _read_only_uri(path)

    async def connect() -> Any:
        import aiosqlite

        return await aiosqlite.connect(target(), uri=True, **connect_args)

    return connect


def configure_engine(engine: Engine, *, sqlite_begin: SqliteBegin = "immediate", read_only: bool = False) -> Engine:
    """Prepare an engine you created yourself; ``make_engine`` already does this.

    Call it before the engine's first connection. Only SQLite needs anything: WAL,
    the busy timeout, foreign keys, and how transactions begin. With
    ``sqlite_begin="immediate"`` (the default) every transaction (``engine.begin()``,
    ``Session.begin()``, autobegin) takes the write lock when it begins, waiting up to
    the busy timeout for the writer before it: a transaction that reads and then writes
    cannot be refused at its first write, which SQLite does at once, without waiting,
    when another writer committed since the read (``database is locked``). The price:
    one such transaction at a time, so keep them short, and read through
    ``read_connection``/``read_engine``, whose deferred transactions never wait and
    never block a writer (WAL). ``"deferred"`` makes plain ``BEGIN`` the default
    instead; ``write_connection``/``write_engine`` then give ``BEGIN IMMEDIATE``
    where needed. The ``SQLITE_BEGIN_OPTION`` execution option overrides either
    default per engine copy or connection. ``AUTOCOMMIT`` connections emit no ``BEGIN``.
    """
    if sqlite_begin not in _BEGIN_STATEMENTS:
        raise ConfigurationError(f"sqlite_begin must be 'immediate' or 'deferred', not {sqlite_begin!r}")
    if engine.dialect.name != "sqlite" or engine in _configured:
        _configured.add(engine)
        return engine

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, emit BEGIN (pysqlite's implicit BEGIN is deferred
        # and skipped before DDL); see SQLAlchemy's "Serializable isolation / Savepoints" notes.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        if read_only:
            cursor.execute("PRAGMA query_only=ON")  # journal_mode=WAL would write the file's header
        else:
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    default = _BEGIN_STATEMENTS[sqlite_begin]

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        options = conn.get_execution_options()
        if options.get("isolation_level") == "AUTOCOMMIT":
            return  # asked for: each statement commits by itself, as pysqlite's own autocommit
        mode = options.get(SQLITE_BEGIN_OPTION)
        statement = default if mode is None else _BEGIN_STATEMENTS.get(mode)
        if statement is None:
            raise ConfigurationError(f"{SQLITE_BEGIN_OPTION} must be 'immediate' or 'deferred', not {mode!r}")
        conn.exec_driver_sql(statement)

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


def read_engine(engine: Engine) -> Engine:
    """``engine`` whose transactions only read: deferred (plain ``BEGIN``) on SQLite.

    For sessions and connections that never write, such as reports and dashboards:
    under WAL they read a snapshot beside a writer, neither waiting for it nor
    making it wait. A write in such a transaction may be refused at once with
    ``database is locked`` (when another writer committed since its first read).
    Elsewhere ``engine`` itself.
    """
    if engine.dialect.name != "sqlite":
        return engine
    return engine.execution_options(**{SQLITE_BEGIN_OPTION: "deferred"})


@contextmanager
def read_connection(engine: Engine) -> Iterator[Connection]:
    """A connection for reading (``with read_connection(engine) as conn: conn.execute(...)``).

    On SQLite its transactions are deferred, so it never takes the write lock (see
    ``read_engine``); what it reads in one transaction is one consistent snapshot.
    The library's own reads (``analytics``, the dry runs of ``admin``, ``notebook``) use it.
    """
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            conn.execution_options(**{SQLITE_BEGIN_OPTION: "deferred"})
        yield conn


def write_engine(engine: Engine) -> Engine:
    """``engine`` whose transactions begin as write transactions (``BEGIN IMMEDIATE`` on SQLite).

    The default of a ``make_engine`` engine; this keeps it on an engine made with
    ``sqlite_begin="deferred"``, for sessions that read before they write next to
    other writers. Elsewhere ``engine`` itself.
    """
    if engine.dialect.name != "sqlite":
        return engine
    return engine.execution_options(**{SQLITE_BEGIN_OPTION: "immediate"})


@contextmanager
def write_connection(engine: Engine) -> Iterator[Connection]:
    """A connection whose transactions write (``BEGIN IMMEDIATE`` on SQLite, whatever the engine's default)."""
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            conn.execution_options(**{SQLITE_BEGIN_OPTION: "immediate"})
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

"""Async publishing (``outbox_admin.aio``) on real SQLite files (aiosqlite) and PostgreSQL (asyncpg).

Coroutines run with ``asyncio.run`` inside plain tests: no pytest plugin, one event loop per test.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, event, func, select, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

from outbox_admin import (
    ConfigurationError,
    Dispatcher,
    DispatcherService,
    NotInTransactionError,
    PayloadError,
    aflush_outbox,
    aoutbox_batch,
    apublish_outbox_event,
    apublish_outbox_events,
    make_async_engine,
    make_engine,
    publish_outbox_event,
    read_connection,
)
from outbox_admin.db import async_url
from outbox_admin.handlers import DeliveredEvent
from outbox_admin.models import DEFAULT_TABLES
from outbox_admin.wakeup import wake_key, wake_signal

FIELDS = dict(org_id="org-1", event_type="PROJECT.CREATED", entity_type="Project", entity_id="p-1")


async def publish(tx, **overrides):
    return await apublish_outbox_event(tx, **{**FIELDS, "payload": {"name": "Apollo"}, **overrides})


def counts(engine: Engine) -> tuple[int, int]:
    with read_connection(engine) as conn:  # deferred on SQLite: never waits for an open writer
        events = conn.scalar(select(func.count()).select_from(DEFAULT_TABLES.events))
        transitions = conn.scalar(select(func.count()).select_from(DEFAULT_TABLES.transitions))
    return events, transitions


@pytest.fixture
def engines(db_url: str) -> Iterator[tuple[Engine, str]]:
    """A sync engine on the test's database (to check what was written) and its async URL."""
    engine = make_engine(db_url)
    yield engine, async_url(db_url)
    engine.dispose()


def run(url: str, body, **engine_kwargs):
    """Run ``body(async_engine)`` in a fresh event loop, disposing of the engine afterwards."""

    async def main():
        engine = make_async_engine(url, **engine_kwargs)
        try:
            return await body(engine)
        finally:
            await engine.dispose()

    return asyncio.run(main())


def test_commit_keeps_the_event_and_its_history_and_rollback_drops_both(engines) -> None:
    sync, url = engines

    async def body(engine: AsyncEngine):
        async with AsyncSession(engine) as session, session.begin():
            kept = await publish(session, entity_id=7)
        async with AsyncSession(engine) as session, session.begin():
            await publish(session, entity_id="dropped")
            await session.rollback()
        async with engine.begin() as conn:
            by_conn = await publish(conn, entity_id="conn")
        async with engine.connect() as conn:
            await conn.begin()
            await publish(conn, entity_id="dropped-too")
            await conn.rollback()
        return kept, by_conn

    kept, by_conn = run(url, body)
    assert kept.entity_id == "7" and kept.created_at is not None and kept.created_at.utcoffset().total_seconds() == 0
    assert counts(sync) == (2, 2)
    with sync.connect() as conn:
        rows = conn.execute(select(DEFAULT_TABLES.events.c.id, DEFAULT_TABLES.events.c.payload)).all()
        history = conn.execute(select(DEFAULT_TABLES.transitions.c.event_id, DEFAULT_TABLES.transitions.c.actor)).all()
    assert sorted(rows) == sorted([(kept.id, {"name": "Apollo"}), (by_conn.id, {"name": "Apollo"})])
    assert sorted(history) == sorted([(kept.id, "publisher"), (by_conn.id, "publisher")])


def test_publishing_outside_a_transaction_is_refused_and_writes_nothing(engines) -> None:
    sync, url = engines

    async def body(engine: AsyncEngine):
        async with AsyncSession(engine) as session:
            with pytest.raises(NotInTransactionError, match="async session has no transaction begun"):
                await publish(session)
            assert not session.in_transaction()  # the refusal did not autobegin one
        async with engine.connect() as conn:
            with pytest.raises(NotInTransactionError, match="async connection has no transaction begun"):
                await publish(conn)
        with pytest.raises(NotInTransactionError, match="async connection has no transaction begun"):
            await publish(engine.connect())  # never awaited: not started
        with pytest.raises(NotInTransactionError, match="AsyncEngine"):
            await publish(engine)
        with pytest.raises(NotInTransactionError, match="not an AsyncSession"):
            await publish("sqlite:///outbox.db")
        with pytest.raises(NotInTransactionError, match="async session"):
            await aflush_outbox(AsyncSession(engine))
        with pytest.raises(NotInTransactionError, match="async connection"):
            async with aoutbox_batch(engine.connect()):
                pass  # pragma: no cover - refused on entry

    run(url, body)
    refused = pytest.raises(NotInTransactionError, match="sync Session: publish with publish_outbox_event")
    with Session(sync) as session, session.begin(), refused:
        asyncio.run(publish(session))
    assert counts(sync) == (0, 0)


def test_many_events_at_once_and_a_bad_one_publishes_none(engines) -> None:
    sync, url = engines

    async def body(engine: AsyncEngine):
        async with AsyncSession(engine) as session, session.begin():
            made = await apublish_outbox_events(session, [{**FIELDS, "entity_id": str(i)} for i in range(50)])
            with pytest.raises(PayloadError, match="NaN"):
                await apublish_outbox_events(session, [FIELDS, {**FIELDS, "payload": {"x": math.nan}}])
        return made

    made = run(url, body)
    assert len({e.id for e in made}) == 50 and [e.entity_id for e in made] == [str(i) for i in range(50)]
    assert counts(sync) == (50, 50)


def test_a_batch_buffers_until_the_commit_and_a_rollback_drops_it(engines) -> None:
    sync, url = engines
    statements: list[str] = []

    async def body(engine: AsyncEngine):
        event.listen(
            engine.sync_engine, "before_cursor_execute", lambda _c, _cur, sql, *_: statements.append(sql), retval=False
        )
        async with AsyncSession(engine) as session, session.begin():
            async with aoutbox_batch(session):
                first = [await publish(session, entity_id=str(i)) for i in range(300)]
                assert first[0].created_at is None  # buffered: not written yet
                assert counts(sync) == (0, 0)
            # The block's exit wrote them, before the commit (which is what makes them visible).
            assert first[0].created_at is not None
        writes = [s for s in statements if "INSERT INTO" in s]
        async with engine.connect() as conn:
            await conn.begin()
            async with aoutbox_batch(conn):
                await publish(conn, entity_id="gone")
                await aflush_outbox(conn)
            await conn.rollback()
        async with AsyncSession(engine) as session:
            with pytest.raises(RuntimeError, match="abort"):
                async with session.begin(), aoutbox_batch(session):
                    await publish(session, entity_id="gone-too")
                    raise RuntimeError("abort")
        return first, writes

    first, writes = run(url, body)
    assert len(writes) <= 2  # 300 calls, one write (two statements on SQLite)
    assert counts(sync) == (300, 300)


def test_an_idempotency_key_returns_the_stored_event_as_the_sync_publisher_does(engines) -> None:
    sync, url = engines

    async def body(engine: AsyncEngine):
        async with engine.begin() as conn:
            first = await publish(conn, idempotency_key="order-7")
            second = await publish(conn, idempotency_key="order-7", payload={"ignored": True})
            other_org = await publish(conn, idempotency_key="order-7", org_id="org-2")
        async with AsyncSession(engine) as session, session.begin():
            later = await publish(session, idempotency_key="order-7")
        return first, second, other_org, later

    first, second, other_org, later = run(url, body)
    with sync.begin() as conn:  # the sync publisher sees the same stored event
        synced = publish_outbox_event(conn, **FIELDS, idempotency_key="order-7")
    assert first.id == second.id == later.id == synced.id != other_org.id
    assert later.payload == {"name": "Apollo"}
    assert counts(sync) == (2, 2)


def test_a_payload_error_raises_unchanged_and_the_transaction_goes_on(engines) -> None:
    sync, url = engines

    async def body(engine: AsyncEngine):
        async with AsyncSession(engine) as session:
            async with session.begin():
                with pytest.raises(PayloadError, match=r"payload\.x.*NaN"):
                    await publish(session, payload={"x": math.nan})
                with pytest.raises(PayloadError, match="over the limit of 262144 bytes"):
                    await publish(session, payload={"x": "x" * (300 * 1024)})
                await publish(session, entity_id="after")  # the transaction is still usable
                await session.rollback()
            async with session.begin():
                await publish(session, entity_id="committed")

    run(url, body)
    assert counts(sync) == (1, 1)


def test_a_rolled_back_savepoint_drops_its_events(engines) -> None:
    sync, url = engines

    async def body(engine: AsyncEngine):
        async with AsyncSession(engine) as session, session.begin():
            kept = await publish(session, entity_id="outer")
            nested = await session.begin_nested()
            await publish(session, entity_id="inner")
            await nested.rollback()
            async with session.begin_nested(), aoutbox_batch(session):
                inner_kept = await publish(session, entity_id="inner-kept")
            nested = await session.begin_nested()
            async with aoutbox_batch(session):
                await publish(session, entity_id="buffered-inner")
                await nested.rollback()
        return {kept.id, inner_kept.id}

    ids = run(url, body)
    with sync.connect() as conn:
        assert set(conn.scalars(select(DEFAULT_TABLES.events.c.id))) == ids
    assert counts(sync) == (2, 2)


def test_an_async_commit_wakes_a_sync_service_of_the_same_database_within_a_second(engines) -> None:
    sync, url = engines
    arrived: dict[str, float] = {}
    changed = threading.Condition()

    def handler(delivered: DeliveredEvent) -> None:
        with changed:
            arrived.setdefault(delivered.id, time.time())
            changed.notify_all()

    woken: list[int] = []
    remove = wake_signal.listen(wake_key(sync.url), lambda: woken.append(1))
    service = DispatcherService(Dispatcher(sync, [handler]), interval_seconds=30, listen=False)
    try:
        with service:
            assert service.wait_for_tick(0, timeout=5)  # the first tick runs at start; the next in 30 s

            async def body(engine: AsyncEngine):
                async with AsyncSession(engine) as session, session.begin():
                    made = await publish(session)
                    assert woken == []  # nothing before the commit
                return made, time.time()

            made, committed = run(url, body)
            assert woken == [1]
            with changed:
                assert changed.wait_for(lambda: made.id in arrived, timeout=5), "the service was not woken"
            assert arrived[made.id] - committed < 1.0
    finally:
        remove()


def test_sqlite_transactions_begin_immediate_so_read_then_write_is_never_refused(sqlite_url: str) -> None:
    """Two async read-then-write transactions on one file: the second waits for the first at BEGIN.

    With ``sqlite_begin="deferred"`` the same interleaving fails with "database is locked" (the
    second's snapshot is older than the first's commit), which shows the test can fail.
    """

    async def race(sqlite_begin: str) -> list[str]:
        first = make_async_engine(sqlite_url, sqlite_begin=sqlite_begin)
        second = make_async_engine(sqlite_url, sqlite_begin=sqlite_begin)
        first_read, first_committed, second_began = asyncio.Event(), asyncio.Event(), asyncio.Event()
        sent: list[str] = []

        @event.listens_for(second.sync_engine, "before_cursor_execute")
        def _seen(_c, _cur, statement, *_):
            sent.append(statement)
            if statement.startswith("BEGIN"):
                second_began.set()

        async def one() -> None:
            async with AsyncSession(first) as session, session.begin():
                await session.scalar(select(func.count()).select_from(DEFAULT_TABLES.events))
                first_read.set()
                await asyncio.wait_for(second_began.wait(), 5)
                await publish(session, entity_id="first")
            first_committed.set()

        async def two() -> None:
            await asyncio.wait_for(first_read.wait(), 5)
            async with AsyncSession(second) as session, session.begin():
                await session.scalar(select(func.count()).select_from(DEFAULT_TABLES.events))
                await asyncio.wait_for(first_committed.wait(), 5)
                await publish(session, entity_id="second")

        try:
            await asyncio.wait_for(asyncio.gather(one(), two()), 20)
        finally:
            await first.dispose()
            await second.dispose()
        return sent

    sent = asyncio.run(race("immediate"))
    assert sent[0] == "BEGIN IMMEDIATE"
    sync = make_engine(sqlite_url)
    assert counts(sync) == (2, 2)
    with pytest.raises(OperationalError, match="database is locked"):
        asyncio.run(race("deferred"))
    assert counts(sync) == (3, 3)  # only the first of the deferred pair committed
    sync.dispose()


def test_sqlite_connections_get_the_outbox_pragmas(sqlite_url: str) -> None:
    async def body(engine: AsyncEngine):
        async with engine.connect() as conn:
            return [
                await conn.scalar(text(f"PRAGMA {name}")) for name in ("journal_mode", "busy_timeout", "foreign_keys")
            ]

    assert run(sqlite_url, body) == ["wal", 30000, 1]


def test_a_read_only_async_engine_refuses_a_write_as_the_sync_one_does(engines) -> None:
    sync, url = engines
    with sync.begin() as conn:
        publish_outbox_event(conn, **FIELDS)  # a live (WAL) database, as a reader finds it
    reader = make_engine(sync.url.render_as_string(hide_password=False), read_only=True)
    with pytest.raises(DBAPIError) as sync_refusal, reader.begin() as conn:
        publish_outbox_event(conn, **FIELDS)
    reader.dispose()

    async def body(engine: AsyncEngine):
        async with AsyncSession(engine) as session:
            assert await session.scalar(select(func.count()).select_from(DEFAULT_TABLES.events)) == 1
            await session.rollback()
            with pytest.raises(DBAPIError) as info:
                async with session.begin():
                    await publish(session)
        return info.value

    async_refusal = run(url, body, read_only=True)
    if sync.dialect.name == "sqlite":
        assert type(async_refusal) is type(sync_refusal.value) is OperationalError
        assert "readonly" in str(async_refusal) and "readonly" in str(sync_refusal.value)
    else:
        # Both are the server's SQLSTATE 25006; SQLAlchemy's class differs by driver: psycopg's
        # ReadOnlySqlTransaction maps to InternalError, asyncpg's adapter has no class for it (DBAPIError).
        assert async_refusal.orig.sqlstate == sync_refusal.value.orig.sqlstate == "25006"
        assert "read-only transaction" in str(async_refusal)
    assert counts(sync) == (1, 1)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:secret@db:5432/app", "postgresql+asyncpg://u:secret@db:5432/app"),
        ("postgresql+psycopg://u@db/app", "postgresql+asyncpg://u@db/app"),
        ("postgres://u@db/app", "postgresql+asyncpg://u@db/app"),
        ("postgresql+asyncpg://u@db/app", "postgresql+asyncpg://u@db/app"),
        ("sqlite:////var/lib/outbox.db", "sqlite+aiosqlite:////var/lib/outbox.db"),
        ("sqlite+pysqlite:///rel.db", "sqlite+aiosqlite:///rel.db"),
        ("sqlite+aiosqlite:///rel.db", "sqlite+aiosqlite:///rel.db"),
    ],
)
def test_async_url_maps_to_the_async_driver(url: str, expected: str) -> None:
    assert async_url(url) == expected


def test_unknown_databases_and_in_memory_sqlite_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="not mysql"):
        async_url("mysql+aiomysql://u@db/app")
    with pytest.raises(ConfigurationError, match="not a database URL"):
        async_url("no url at all")
    with pytest.raises(ConfigurationError, match="in-memory"):
        make_async_engine("sqlite://")
    with pytest.raises(ConfigurationError, match="sqlite_begin"):
        make_async_engine("sqlite:///x.db", sqlite_begin="exclusive")


def test_wake_keys_ignore_the_driver_and_hide_the_password() -> None:
    assert wake_key("postgresql+asyncpg://u:pw@db/app") == wake_key("postgresql+psycopg://u:pw@db/app")
    assert wake_key("postgresql+psycopg://u:pw@db/app") == "postgresql://u:***@db/app"
    assert wake_key("sqlite+aiosqlite:////tmp/x.db") == wake_key("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    assert wake_key("sqlite:////tmp/x.db") != wake_key("sqlite:////tmp/y.db")

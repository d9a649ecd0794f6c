"""SQLite as the embedded default: transactions take turns instead of failing, readers never wait.

Issue 12's field reports: read-then-write transactions beside a dispatcher failed
at once with ``database is locked`` (a deferred transaction that read cannot
become a writer once another writer committed, and SQLite refuses without
waiting). Every transaction on a ``make_engine`` engine now begins with
``BEGIN IMMEDIATE``; the library's reads use deferred transactions.

Real threads and real processes ("spawn": each child builds its own engine from
the URL; the children's entry points are module-level functions of this module).
"""

from __future__ import annotations

import multiprocessing
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, event, func, insert, select
from sqlalchemy.orm import Session

from outbox_admin import (
    ConfigurationError,
    Dispatcher,
    DispatcherService,
    admin,
    analytics,
    make_engine,
    notebook,
    publish_outbox_event,
)
from outbox_admin.db import read_connection, read_engine, write_connection, write_engine
from outbox_admin.handlers import RecordingHandler
from outbox_admin.models import DEFAULT_TABLES, EventStatus

EVENTS = DEFAULT_TABLES.events
ORDERS = Table(
    "test_order",
    MetaData(),
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("worker", String(32), nullable=False),
)
START_TIMEOUT = 30.0  # spawning and importing may be slow on a busy machine
DELIVERY_TIMEOUT = 60.0


def read_then_write(tx: Session | Any, worker: str, i: int) -> None:
    """The field report's transaction: a read first, then the change and its event."""
    tx.execute(select(func.count()).select_from(ORDERS)).scalar_one()
    tx.execute(insert(ORDERS), {"worker": worker})
    publish_outbox_event(
        tx,
        org_id="org-1",
        event_type="PROJECT.CREATED",
        entity_type="Order",
        entity_id=f"{worker}-{i}",
        payload={"i": i},
    )


def completed(engine: Engine) -> int:
    with read_connection(engine) as conn:
        return conn.scalar(
            select(func.count()).select_from(EVENTS).where(EVENTS.c.status == EventStatus.COMPLETED.value)
        )


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)  # a poll with a deadline, not synchronisation


def begin_statements(engine: Engine) -> list[str]:
    """Record every BEGIN the engine's connections emit."""
    seen: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def _record(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("BEGIN"):
            seen.append(statement)

    return seen


# --- how transactions begin ----------------------------------------------------------


def test_every_transaction_begins_immediate_and_reads_deferred(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    try:
        seen = begin_statements(engine)
        with engine.begin() as conn:
            conn.execute(select(1))
        with Session(engine) as session, session.begin():
            session.execute(select(1))
        with Session(engine) as session:  # autobegin
            session.execute(select(1))
        with engine.connect() as conn:  # autobegin
            conn.execute(select(1))
        assert seen == ["BEGIN IMMEDIATE"] * 4
        seen.clear()
        with read_connection(engine) as conn:
            conn.execute(select(1))
        with Session(read_engine(engine)) as session:
            session.execute(select(1))
        with engine.connect().execution_options(outbox_sqlite_begin="deferred") as conn:
            conn.execute(select(1))
        analytics.status_counts(engine)  # the library's reads: analytics, dry runs, notebook helpers
        admin.plan_action(engine, "requeue")
        notebook.throughput_bucket(engine)
        assert seen == ["BEGIN"] * 6
        seen.clear()
        with engine.execution_options(isolation_level="AUTOCOMMIT").connect() as conn:
            conn.execute(select(1))
        assert seen == []
    finally:
        engine.dispose()


def test_deferred_engines_opt_out_and_write_helpers_still_take_the_lock(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url, sqlite_begin="deferred")
    try:
        seen = begin_statements(engine)
        with engine.begin() as conn:
            conn.execute(select(1))
        with write_connection(engine) as conn, conn.begin():
            conn.execute(select(1))
        with Session(write_engine(engine)) as session, session.begin():
            session.execute(select(1))
        assert seen == ["BEGIN", "BEGIN IMMEDIATE", "BEGIN IMMEDIATE"]
    finally:
        engine.dispose()
    with pytest.raises(ConfigurationError, match="sqlite_begin"):
        make_engine(sqlite_url, sqlite_begin="exclusive")  # type: ignore[arg-type]
    engine = make_engine(sqlite_url)
    try:
        with pytest.raises(ConfigurationError, match="outbox_sqlite_begin"):
            engine.execution_options(outbox_sqlite_begin="sometimes").connect().begin()
    finally:
        engine.dispose()


def test_a_reader_is_not_blocked_by_an_open_write_transaction(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    try:
        ORDERS.create(engine)
        with engine.begin() as conn:
            read_then_write(conn, "committed", 0)
        with engine.begin() as writer:  # holds the write lock until the block ends
            read_then_write(writer, "open", 1)
            with ThreadPoolExecutor(1) as pool:
                # Blocked readers would wait the 30 s busy timeout; these must finish at once.
                counts = pool.submit(analytics.status_counts, engine).result(timeout=10)
                frame = pool.submit(analytics.events_frame, engine).result(timeout=10)
        assert int(counts["count"].sum()) == 1  # the snapshot: the open transaction's event is not in it
        assert list(frame["entity_id"]) == ["committed-0"]
    finally:
        engine.dispose()


# --- threads beside a running dispatcher ---------------------------------------------


def test_two_threads_read_then_write_beside_a_dispatcher_without_failures(sqlite_url: str) -> None:
    """The field report: 2 threads x 150 read-then-write transactions next to a DispatcherService."""
    engine = make_engine(sqlite_url)
    ORDERS.create(engine)
    recorder = RecordingHandler()
    service = DispatcherService(Dispatcher(engine, [recorder], batch_size=20), interval_seconds=0.05)
    failures: list[BaseException] = []
    per_thread = 150

    def publisher(worker: str) -> None:
        for i in range(per_thread):
            try:
                if worker == "session":  # Session autobegin; the other thread uses engine.begin()
                    with Session(engine) as session:
                        read_then_write(session, worker, i)
                        session.commit()
                else:
                    with engine.begin() as conn:
                        read_then_write(conn, worker, i)
            except Exception as exc:  # noqa: BLE001 - counted, as the field report counted them
                failures.append(exc)

    service.start()
    try:
        threads = [threading.Thread(target=publisher, args=(w,)) for w in ("session", "connection")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=DELIVERY_TIMEOUT)
        assert not failures, f"{len(failures)} of {2 * per_thread} failed, first: {failures[0]!r}"
        wait_for(lambda: completed(engine) == 2 * per_thread, DELIVERY_TIMEOUT, "every event delivered")
        status = service.status()
        assert status.failed_ticks == 0, status.last_error
    finally:
        service.stop()
        engine.dispose()
    assert len(set(recorder.ids)) == 2 * per_thread


# --- processes: publishers, a dispatcher service, an analytics reader -----------------


def _publisher_process(url: str, worker: str, count: int, go: Any, results: Any) -> None:
    try:
        engine = make_engine(url)
        failures: list[str] = []
        go.wait(START_TIMEOUT)
        for i in range(count):
            try:
                with engine.begin() as conn:
                    read_then_write(conn, worker, i)
            except Exception as exc:  # noqa: BLE001
                failures.append(f"{type(exc).__name__}: {exc}".splitlines()[0])
        engine.dispose()
        results.put((worker, failures))
    except BaseException:  # noqa: BLE001 - report, do not hang the parent
        results.put((worker, [traceback.format_exc()]))


def _service_process(url: str, ready: Any, stop: Any, results: Any) -> None:
    try:
        engine = make_engine(url)
        service = DispatcherService(Dispatcher(engine, [RecordingHandler()], batch_size=20), interval_seconds=0.05)
        service.start()
        ready.set()
        stop.wait(DELIVERY_TIMEOUT * 2)
        service.stop()
        status = service.status()
        engine.dispose()
        results.put(
            ("service", [f"{status.failed_ticks} failed ticks, last: {status.last_error}"] * bool(status.failed_ticks))
        )
    except BaseException:  # noqa: BLE001
        results.put(("service", [traceback.format_exc()]))


def _reader_process(url: str, ready: Any, stop: Any, results: Any) -> None:
    try:
        engine = make_engine(url)
        failures: list[str] = []
        reads = 0
        ready.set()
        while not stop.is_set():
            try:
                analytics.status_counts(engine)
                analytics.events_frame(engine, limit=20)
                reads += 1
            except Exception as exc:  # noqa: BLE001
                failures.append(f"{type(exc).__name__}: {exc}".splitlines()[0])
        engine.dispose()
        results.put(("reader", failures if reads else [*failures, "the reader never completed a read"]))
    except BaseException:  # noqa: BLE001
        results.put(("reader", [traceback.format_exc()]))


@pytest.mark.slow
def test_processes_read_then_write_beside_a_dispatcher_and_a_reader_without_failures(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    ORDERS.create(engine)
    ctx = multiprocessing.get_context("spawn")
    go, stop = ctx.Event(), ctx.Event()
    service_ready, reader_ready = ctx.Event(), ctx.Event()
    results = ctx.Queue()
    per_process = 100
    children = [
        ctx.Process(target=_service_process, args=(sqlite_url, service_ready, stop, results)),
        ctx.Process(target=_reader_process, args=(sqlite_url, reader_ready, stop, results)),
        *(
            ctx.Process(target=_publisher_process, args=(sqlite_url, f"proc-{n}", per_process, go, results))
            for n in range(2)
        ),
    ]
    for child in children:
        child.start()
    try:
        assert service_ready.wait(START_TIMEOUT) and reader_ready.wait(START_TIMEOUT), "children did not start"
        go.set()
        reports = dict(results.get(timeout=DELIVERY_TIMEOUT) for _ in range(2))  # the two publishers
        assert reports == {"proc-0": [], "proc-1": []}
        wait_for(lambda: completed(engine) == 2 * per_process, DELIVERY_TIMEOUT, "every event delivered")
        stop.set()
        reports.update(results.get(timeout=DELIVERY_TIMEOUT) for _ in range(2))
    finally:
        stop.set()
        go.set()
        for child in children:
            child.join(timeout=START_TIMEOUT)
            if child.is_alive():
                child.kill()
        engine.dispose()
    assert reports == {"proc-0": [], "proc-1": [], "service": [], "reader": []}

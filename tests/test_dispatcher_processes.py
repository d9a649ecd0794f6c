"""Dispatchers in real processes (and threads): a crash mid-batch, concurrent drains, per-entity order.

Child processes are started with the "spawn" context, so each builds its own
engine from the URL (engines and pools never cross a process boundary). The
children's entry points are module-level functions of this module, importable
as ``tests.test_dispatcher_processes`` in the spawned interpreter.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import threading
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Engine, func, select, text

from outbox_admin import Dispatcher, DispatchReport, EventSpec, make_engine, publish_outbox_events
from outbox_admin.handlers import DeliveredEvent, RecordingHandler
from outbox_admin.models import DEFAULT_TABLES, EventStatus

EVENTS = DEFAULT_TABLES.events
TRANSITIONS = DEFAULT_TABLES.transitions
UNFINISHED = (EventStatus.PENDING.value, EventStatus.PROCESSING.value)
START_TIMEOUT = 30.0  # spawning and importing may be slow on a busy machine
CRASHING_DISPATCHER = "crashing-child"


# --- helpers shared by parent and children -----------------------------------------------


def publish_many(engine: Engine, specs: Sequence[EventSpec]) -> list[str]:
    """Publish ``specs`` in one transaction; return the ids in publish order."""
    with engine.begin() as conn:
        return [event.id for event in publish_outbox_events(conn, specs)]


def project_events(count: int) -> list[EventSpec]:
    return [
        EventSpec(org_id="org-1", event_type="PROJECT.UPDATED", entity_type="Project", entity_id=f"p-{i}")
        for i in range(count)
    ]


def unfinished_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(EVENTS).where(EVENTS.c.status.in_(UNFINISHED)))


def event_rows(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        return {row.id: row for row in conn.execute(select(EVENTS))}


class RowInserter:
    """A handler that inserts one row per event, each INSERT its own (autocommit) transaction.

    It keeps one connection for its whole life, so handling costs one round trip;
    ``close()`` gives the connection back.
    """

    statement = ""

    def __init__(self, engine: Engine, worker: str) -> None:
        self.worker = worker
        self.conn = engine.execution_options(isolation_level="AUTOCOMMIT").connect()

    def row(self, event: DeliveredEvent) -> dict[str, Any]:
        raise NotImplementedError

    def __call__(self, event: DeliveredEvent) -> None:
        self.conn.execute(text(self.statement), self.row(event))

    def close(self) -> None:
        self.conn.close()


class DeliveryRecorder(RowInserter):
    """Inserts the event id into ``deliveries``: a second delivery of an event raises IntegrityError."""

    statement = "INSERT INTO deliveries (event_id, worker) VALUES (:event_id, :worker)"

    def row(self, event: DeliveredEvent) -> dict[str, Any]:
        return {"event_id": event.id, "worker": self.worker}


class HandledRecorder(RowInserter):
    """Appends ``(entity_id, seq)`` to ``handled``; its bigserial id records the handling order."""

    statement = "INSERT INTO handled (entity_id, seq, worker) VALUES (:entity_id, :seq, :worker)"

    def row(self, event: DeliveredEvent) -> dict[str, Any]:
        return {"entity_id": event.entity_id, "seq": event.payload["seq"], "worker": self.worker}


HANDLERS: dict[str, Callable[[Engine, str], RowInserter]] = {"deliveries": DeliveryRecorder, "handled": HandledRecorder}


# --- child process entry points -------------------------------------------------------------


def crashing_dispatcher_main(url: str, holding: Any) -> None:
    """Claim a batch, say so, then hang in the handler until killed."""
    engine = make_engine(url)

    def hold_forever(event: DeliveredEvent) -> None:
        holding.set()
        threading.Event().wait()  # never set: the parent kills this process

    try:
        Dispatcher(engine, [hold_forever], batch_size=50, lease_seconds=1.5, name=CRASHING_DISPATCHER).drain()
    finally:
        engine.dispose()


def draining_worker_main(
    url: str,
    worker: str,
    handler_kind: str,
    dispatcher_options: dict[str, Any],
    until_all_finished: bool,
    ready: Any,
    go: Any,
    results: Any,
) -> None:
    """Drain with its own engine and report ``(worker, report dict, error)`` on ``results``.

    Drains until a drain claims nothing; with ``until_all_finished`` it keeps polling
    until no event is PENDING or PROCESSING (so it stays in the race to the end).
    """
    report = DispatchReport()
    error = None
    engine = make_engine(url)
    handler = None
    try:
        handler = HANDLERS[handler_kind](engine, worker)
        dispatcher = Dispatcher(engine, [handler], name=f"{worker}:{os.getpid()}", **dispatcher_options)
        with engine.connect() as conn:  # warm the pool before the start line
            conn.execute(text("SELECT 1"))
        ready.set()
        if not go.wait(START_TIMEOUT):
            raise TimeoutError("the parent never said go")
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            drained = dispatcher.drain(max_seconds=60)
            report = report + drained
            if drained.claimed:
                continue
            if not until_all_finished or unfinished_count(engine) == 0:
                break
            time.sleep(0.005)  # poll: the next events unblock when other workers finish theirs
    except BaseException:  # noqa: BLE001 - reported to the parent, which fails the test
        error = traceback.format_exc()
    finally:
        if handler is not None:
            handler.close()
        engine.dispose()
    results.put((worker, report.as_dict(), error))


# --- parent-side process management ------------------------------------------------------------


def kill_all(processes: Sequence[multiprocessing.process.BaseProcess]) -> None:
    started = [process for process in processes if process.pid is not None]
    for process in started:
        if process.is_alive():
            process.kill()
    for process in started:
        process.join(10)


def run_draining_workers(
    url: str,
    count: int,
    handler_kind: str,
    dispatcher_options: dict[str, Any],
    *,
    until_all_finished: bool = False,
    timeout: float = 60.0,
) -> dict[str, dict[str, Any]]:
    """Start ``count`` draining processes together; return each worker's DispatchReport as a dict."""
    ctx = multiprocessing.get_context("spawn")
    go = ctx.Event()
    results = ctx.Queue()
    readies = [ctx.Event() for _ in range(count)]
    processes = [
        ctx.Process(
            target=draining_worker_main,
            args=(url, f"w{i}", handler_kind, dispatcher_options, until_all_finished, readies[i], go, results),
            name=f"outbox-worker-{i}",
        )
        for i in range(count)
    ]
    reports: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    try:
        for process in processes:
            process.start()
        deadline = time.monotonic() + START_TIMEOUT
        for process, ready in zip(processes, readies, strict=True):
            while not ready.wait(0.1):
                assert process.is_alive(), f"{process.name} died before starting (exit code {process.exitcode})"
                assert time.monotonic() < deadline, f"{process.name} did not get ready in {START_TIMEOUT} s"
        go.set()
        deadline = time.monotonic() + timeout
        while len(reports) + len(errors) < count:
            try:
                worker, report, error = results.get(timeout=0.5)
            except queue.Empty:
                assert time.monotonic() < deadline, f"workers still running after {timeout} s"
                dead = [p.name for p in processes if p.exitcode not in (None, 0)]
                assert not dead, f"worker processes crashed: {dead}"
                continue
            if error is None:
                reports[worker] = report
            else:
                errors[worker] = error
        for process in processes:
            process.join(10)
        assert [p.exitcode for p in processes] == [0] * count
    finally:
        kill_all(processes)
        for process in processes:
            process.close()
        results.close()
        results.join_thread()
    assert not errors, "\n".join(f"{worker}:\n{tb}" for worker, tb in errors.items())
    return reports


# --- 1. a dispatcher killed while holding a batch --------------------------------------------------


def test_batch_of_a_killed_dispatcher_is_recovered_after_its_lease(db_url: str) -> None:
    engine = make_engine(db_url)
    ctx = multiprocessing.get_context("spawn")
    holding = ctx.Event()
    child = ctx.Process(target=crashing_dispatcher_main, args=(db_url, holding), name="crashing-dispatcher")
    try:
        ids = publish_many(engine, project_events(20))

        child.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not holding.wait(0.1):
            assert child.is_alive(), f"the dispatcher died before holding its batch (exit code {child.exitcode})"
            assert time.monotonic() < deadline, "the dispatcher never claimed its batch"
        child.kill()
        child.join(10)
        assert child.exitcode == -signal.SIGKILL

        rows = event_rows(engine)
        assert sorted(rows) == sorted(ids)
        assert {row.status for row in rows.values()} == {EventStatus.PROCESSING.value}
        assert {row.locked_by for row in rows.values()} == {CRASHING_DISPATCHER}

        recorder = RecordingHandler()
        survivor = Dispatcher(engine, [recorder], batch_size=50, lease_seconds=1.5, name="survivor")
        total = DispatchReport()
        deadline = time.monotonic() + 15.0
        while True:
            total = total + survivor.drain()
            if unfinished_count(engine) == 0:
                break
            assert time.monotonic() < deadline, f"events still unfinished after 15 s: {total}"
            time.sleep(0.05)  # poll until the lease expires

        rows = event_rows(engine)
        assert sorted(rows) == sorted(ids), "events were lost"
        assert {row.status for row in rows.values()} == {EventStatus.COMPLETED.value}
        for row in rows.values():
            assert row.retry_count == 1
            assert row.error_message is not None and "lease expired" in row.error_message
            assert CRASHING_DISPATCHER in row.error_message
            assert row.locked_by is None and row.locked_until is None
            assert row.processed_at is not None
        assert sorted(recorder.ids) == sorted(ids), "each event is delivered exactly once after the recovery"
        assert {e.retry_count for e in recorder.events} == {1}
        assert (total.recovered, total.completed, total.lost) == (20, 20, 0)

        with engine.connect() as conn:
            history = conn.execute(select(TRANSITIONS).order_by(TRANSITIONS.c.id)).all()
        by_event: dict[str, list[Any]] = defaultdict(list)
        for row in history:
            by_event[row.event_id].append(row)
        assert sorted(by_event) == sorted(ids)
        for event_id in ids:
            steps = by_event[event_id]
            assert [(t.from_status, t.to_status) for t in steps] == [
                (None, "PENDING"),
                ("PENDING", "PROCESSING"),
                ("PROCESSING", "PENDING"),
                ("PENDING", "PROCESSING"),
                ("PROCESSING", "COMPLETED"),
            ]
            assert [t.actor for t in steps[1:]] == [CRASHING_DISPATCHER, "survivor", "survivor", "survivor"]
            recovery = steps[2]
            assert recovery.error_message is not None and "lease expired" in recovery.error_message
            assert recovery.attempt == 1
    finally:
        kill_all([child])
        child.close()
        engine.dispose()


# --- 2. four processes drain 5,000 events on PostgreSQL --------------------------------------------


def test_four_processes_drain_5000_events_exactly_once_on_postgres(postgres_url: str) -> None:
    total_events = 5000
    engine = make_engine(postgres_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE deliveries (event_id text PRIMARY KEY, worker text NOT NULL)"))
        ids = publish_many(engine, project_events(total_events))
        assert len(set(ids)) == total_events

        reports = run_draining_workers(postgres_url, 4, "deliveries", {"batch_size": 100})

        rows = event_rows(engine)
        assert len(rows) == total_events
        assert Counter(row.status for row in rows.values()) == {EventStatus.COMPLETED.value: total_events}
        assert Counter(row.retry_count for row in rows.values()) == {0: total_events}
        with engine.connect() as conn:
            delivered = conn.execute(text("SELECT event_id, worker FROM deliveries")).all()
        assert len(delivered) == total_events
        assert {row.event_id for row in delivered} == set(ids)
        workers = Counter(row.worker for row in delivered)
        assert len(workers) > 1, f"only one worker took part: {workers}"
        assert sum(r["completed"] for r in reports.values()) == total_events
        assert sum(r["retried"] + r["failed"] + r["lost"] + r["recovered"] for r in reports.values()) == 0
        assert {w: r["completed"] for w, r in reports.items()} == {w: workers.get(w, 0) for w in reports}
    finally:
        engine.dispose()


# --- 3. two threads, two engines, one SQLite file ---------------------------------------------------


def test_two_threads_with_their_own_engines_drain_sqlite_exactly_once(sqlite_url: str) -> None:
    total_events = 2000
    setup = make_engine(sqlite_url)
    try:
        ids = publish_many(setup, project_events(total_events))
    finally:
        setup.dispose()

    lock = threading.Lock()
    delivered: Counter[str] = Counter()
    by_thread: Counter[str] = Counter()
    reports: dict[str, DispatchReport] = {}
    errors: list[str] = []
    start = threading.Barrier(2, timeout=30)

    def run(name: str) -> None:
        engine = make_engine(sqlite_url)
        try:

            def record(event: DeliveredEvent) -> None:
                with lock:
                    delivered[event.id] += 1
                    by_thread[name] += 1

            dispatcher = Dispatcher(engine, [record], batch_size=50, name=name)
            start.wait()
            total = DispatchReport()
            deadline = time.monotonic() + 30.0
            while time.monotonic() < deadline:
                drained = dispatcher.drain(max_seconds=60)
                total = total + drained
                if drained.claimed == 0:
                    break
            reports[name] = total
        except BaseException:  # noqa: BLE001 - reported by the test
            errors.append(f"{name}:\n{traceback.format_exc()}")
        finally:
            engine.dispose()

    threads = [threading.Thread(target=run, args=(f"thread-{i}",), daemon=True) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads), "a draining thread hung"
    assert not errors, "\n".join(errors)

    assert set(delivered) == set(ids)
    assert [event_id for event_id, n in delivered.items() if n != 1] == [], "double deliveries"
    engine = make_engine(sqlite_url)
    try:
        rows = event_rows(engine)
    finally:
        engine.dispose()
    assert Counter(row.status for row in rows.values()) == {EventStatus.COMPLETED.value: total_events}
    assert Counter(row.retry_count for row in rows.values()) == {0: total_events}
    assert sum(r.completed for r in reports.values()) == total_events
    assert sum(r.retried + r.failed + r.lost + r.released for r in reports.values()) == 0
    assert sum(by_thread.values()) == total_events


# --- 4. per-entity order with four processes on PostgreSQL ----------------------------------------


def test_entity_ordering_holds_across_four_processes_on_postgres(postgres_url: str) -> None:
    entities, per_entity = 40, 10  # entities: a multiple of 4
    engine = make_engine(postgres_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "CREATE TABLE handled "
                    "(id bigserial PRIMARY KEY, entity_id text NOT NULL, seq int NOT NULL, worker text NOT NULL)"
                )
            )
        # Round-robin within groups of 4 entities: each entity's events lie within 40 consecutive
        # events, so the 4 workers x 5 events in flight would hold several events of one entity at
        # once (and could handle them out of order) if the ordering did not hold them back.
        specs = [
            EventSpec(
                org_id="org-1",
                event_type="PROJECT.UPDATED",
                entity_type="Project",
                entity_id=f"p-{entity:02d}",
                payload={"seq": seq},
            )
            for group in range(0, entities, 4)
            for seq in range(per_entity)
            for entity in range(group, group + 4)
        ]
        publish_many(engine, specs)

        run_draining_workers(
            postgres_url, 4, "handled", {"batch_size": 5, "ordering": "entity"}, until_all_finished=True
        )

        rows = event_rows(engine)
        assert Counter(row.status for row in rows.values()) == {EventStatus.COMPLETED.value: entities * per_entity}
        with engine.connect() as conn:
            handled = conn.execute(text("SELECT entity_id, seq, worker FROM handled ORDER BY id")).all()
        assert len(handled) == entities * per_entity
        seqs: dict[str, list[int]] = defaultdict(list)
        workers_of: dict[str, set[str]] = defaultdict(set)
        for row in handled:
            seqs[row.entity_id].append(row.seq)
            workers_of[row.entity_id].add(row.worker)
        out_of_order = {e: s for e, s in seqs.items() if s != list(range(per_entity))}
        assert len(seqs) == entities
        assert out_of_order == {}, f"entities handled out of order: {out_of_order}"
        assert len({row.worker for row in handled}) > 1, "only one worker took part"
        assert any(len(w) > 1 for w in workers_of.values()), "no entity's events were handed across processes"
    finally:
        engine.dispose()

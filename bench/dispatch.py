"""Dispatch throughput in the states a user's outbox is in: N PENDING events to COMPLETED, no-op handler.

    python -m bench.dispatch --db both [--events 20000] [--completed 100000]

**Every sample starts from nothing**: a new database copied from a freshly migrated
template (never analyzed, no connection ever made to it), loaded into one of three
states, then drained by new dispatcher processes with new engines, so no statement
was prepared or planned before the drain starts. The benchmark runs no maintenance
of its own except where a state says so; autovacuum is off on the outbox tables of
these throw-away databases (events, history, rollup, delivery ledger:
``common.pin_statistics``) so that each state holds for the whole drain instead of
changing whenever autovacuum happens to visit.

The states (the field report of issue 13: the old benchmark measured only the last):

- ``first burst``: a freshly migrated outbox that never saw ``ANALYZE``; N PENDING
  events are loaded (``bench.seed`` through the live indexes, as publishing writes
  them) and drained. What a new deployment's first backlog meets.
- ``after steady state``: the table holds ``--completed`` COMPLETED events (5x the
  burst by default) with their history and their delivery ledger rows (one per event,
  for the handler ``*``, as migration 0006 leaves an upgraded outbox), and the statistics say so: one
  ``VACUUM ANALYZE``, what autovacuum leaves a production table in, runs *before*
  the burst; then N new PENDING events arrive and are drained. Statistics there say
  almost nothing is PENDING, and a burst smaller than a tenth of the table does not
  make autovacuum analyze again.
- ``after ANALYZE``: N PENDING loaded, then ``VACUUM ANALYZE`` (SQLite: ``ANALYZE``),
  then drained: the old lab state, kept as the reference the targets compare to.

Before each drain the state is checked (``pg_stats`` / ``sqlite_stat1`` hold statistics
for the outbox tables exactly when the state says so), after it every event must be
COMPLETED.

Variants, alternated within each repetition across all states:

- ``library bB xP``: ``Dispatcher(engine, [noop], batch_size=B).drain()`` in P child
  processes, in every state: B 50 and 500, P 1 and (PostgreSQL) 2; in ``after steady
  state`` also B 200 and 1000 with one process, so whether throughput holds as the
  batch grows can be read off in the state production is in;
- ``raw SQL limit xP``: a psycopg / sqlite3 loop of one ``UPDATE ... RETURNING id``
  claim of 500 and one completing ``UPDATE`` per batch, no Python objects, no history
  rows, in every state (same table, same statistics): what the database itself does
  (the limit is the faster of x1 and x2);
- ``original`` (``first burst`` only): the original's algorithm as written: read up
  to 50 PENDING events oldest first, then per event one commit to PROCESSING and one
  commit to COMPLETED; measured for ``--original-seconds`` (its rate is steady, so a
  prefix of the backlog is enough; 0 drains it all).

Processes start, connect and wait; the clock runs from "go" until the last one has
found nothing left to claim. Ratios printed: each state against ``after ANALYZE``
per library variant (target >= 0.8 on PostgreSQL), ``b500 x2`` (SQLite ``b500 x1``)
against the raw loop of the same state (target >= 0.5 on PostgreSQL, >= 0.35 on
SQLite never analyzed, which must also reach 10,000 events/s), the batch sizes
against each other, and the original. Targets are printed, never asserted.

The default burst is 20,000 events (the field report's size; with a new database
per sample a 100,000-event burst would make a full run last most of an hour).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, func, insert, literal, select, update
from sqlalchemy.orm import Session

from outbox_admin import Dispatcher, make_engine
from outbox_admin.db import db_now
from outbox_admin.models import ALL_HANDLERS, DEFAULT_TABLES, OutboxEvent

from .common import (
    DatabaseTemplate,
    Report,
    alternate,
    analyzed_tables,
    backends,
    database_template,
    parser,
    pin_statistics,
    repeats,
    run_main,
    vacuum_analyze,
)
from .seed import seed

EVENTS = DEFAULT_TABLES.events


def noop(event: Any) -> None:
    """The handler: does nothing, so the outbox's own cost is what is measured."""


# -- what a child process runs ------------------------------------------------------------


def _library(sync: _Sync, url: str, batch: int) -> int:
    engine = make_engine(url)
    dispatcher = Dispatcher(engine, [noop], batch_size=batch)
    with engine.connect() as conn:  # connect before "go"
        conn.exec_driver_sql("SELECT 1")

    def run() -> int:
        return dispatcher.drain(max_seconds=None).completed

    return sync.go(run, engine)


def _original(sync: _Sync, url: str, seconds: float) -> int:
    """The original's cron body, as written: ``findMany`` 50 PENDING, then per event two commits."""
    engine = make_engine(url)
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")

    def run() -> int:
        done = 0
        deadline = time.monotonic() + seconds if seconds > 0 else None
        while deadline is None or time.monotonic() < deadline:
            with Session(engine) as session:
                batch = session.scalars(
                    select(OutboxEvent)
                    .where(OutboxEvent.status == "PENDING")
                    .order_by(OutboxEvent.created_at)
                    .limit(50)
                ).all()
            if not batch:
                break
            for event in batch:
                with Session(engine) as session, session.begin():
                    session.execute(update(OutboxEvent).where(OutboxEvent.id == event.id).values(status="PROCESSING"))
                noop(event)  # the original logs the payload here
                with Session(engine) as session, session.begin():
                    session.execute(
                        update(OutboxEvent)
                        .where(OutboxEvent.id == event.id)
                        .values(status="COMPLETED", processed_at=db_now())
                    )
                done += 1
        return done

    return sync.go(run, engine)


RAW_BATCH = 500


def _raw(sync: _Sync, url: str) -> int:
    """The database's limit: one claim and one completion statement per batch of 500, nothing else."""
    engine = make_engine(url)
    if engine.dialect.name == "postgresql":
        import psycopg

        dsn = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        conn = psycopg.connect(dsn, autocommit=True)
        claim = (
            "WITH due AS MATERIALIZED (SELECT id FROM \"OutboxEvent\" WHERE status = 'PENDING' "
            "AND available_at <= now() ORDER BY created_at, id LIMIT %s FOR UPDATE SKIP LOCKED) "
            "UPDATE \"OutboxEvent\" AS e SET status = 'PROCESSING', locked_by = %s, "
            "locked_until = now() + interval '60 seconds' FROM due WHERE e.id = due.id RETURNING e.id"
        )
        complete = (
            "UPDATE \"OutboxEvent\" SET status = 'COMPLETED', processed_at = now(), locked_by = NULL, "
            "locked_until = NULL WHERE id = ANY(%s)"
        )
        name = f"raw:{os.getpid()}"

        def run() -> int:
            done = 0
            while True:
                ids = [r[0] for r in conn.execute(claim, (RAW_BATCH, name)).fetchall()]
                if not ids:
                    return done
                conn.execute(complete, (ids,))
                done += len(ids)

        try:
            return sync.go(run, engine)
        finally:
            conn.close()

    import sqlite3

    from outbox_admin.db import SQLITE_BUSY_TIMEOUT_MS

    lite = sqlite3.connect(engine.url.database, isolation_level=None, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)
    lite.execute("PRAGMA journal_mode=WAL")
    now = "strftime('%Y-%m-%d %H:%M:%f', 'now') || '000'"
    claim = (
        f"UPDATE \"OutboxEvent\" SET status = 'PROCESSING', locked_by = ?, "
        f"locked_until = strftime('%Y-%m-%d %H:%M:%f', 'now', '+60 seconds') || '000' "
        f"WHERE id IN (SELECT id FROM \"OutboxEvent\" WHERE status = 'PENDING' AND available_at <= {now} "
        f"ORDER BY created_at, id LIMIT ?) RETURNING id"
    )

    def run_sqlite() -> int:
        done = 0
        while True:
            lite.execute("BEGIN IMMEDIATE")
            ids = [r[0] for r in lite.execute(claim, ("raw", RAW_BATCH)).fetchall()]
            lite.execute("COMMIT")
            if not ids:
                return done
            marks = ",".join("?" * len(ids))
            lite.execute("BEGIN IMMEDIATE")
            lite.execute(
                f"UPDATE \"OutboxEvent\" SET status = 'COMPLETED', processed_at = {now}, locked_by = NULL, "
                f"locked_until = NULL WHERE id IN ({marks})",
                ids,
            )
            lite.execute("COMMIT")
            done += len(ids)

    try:
        return sync.go(run_sqlite, engine)
    finally:
        lite.close()


class _Sync:
    """Start line and finish reports shared by the parent and its workers (processes or threads)."""

    def __init__(self, ready: Any, start: Any, results: Any) -> None:
        self.ready, self.start, self.results = ready, start, results

    def go(self, run: Any, engine: Engine | None = None) -> int:
        """Say ready, wait for "go", run, report (count, finish time) to the parent."""
        self.ready.release()
        self.start.wait()
        try:
            done = run()
        finally:
            finished = time.monotonic()
            if engine is not None:
                engine.dispose()
        self.results.put((done, finished))
        return done


#: A worker: ``kind(sync, url, arg)`` connects, then ``sync.go(...)`` (a module-level function, so spawn can find it).
Worker = Callable[[_Sync, str, Any], object]
_KINDS: dict[str, Worker] = {}


def _worker(kind: str | Worker, url: str, arg: Any, sync: _Sync) -> None:
    target = _KINDS[kind] if isinstance(kind, str) else kind
    target(sync, url, arg)


def _child(kind: str | Worker, url: str, arg: Any, ready: Any, start: Any, results: Any) -> None:
    _worker(kind, url, arg, _Sync(ready, start, results))


def run_workers(kind: str | Worker, url: str, arg: Any, workers: int, *, threads: bool = False) -> tuple[int, float]:
    """Start ``workers`` processes (or threads), let them connect, then time them from "go" to the last finish.

    ``kind`` is ``"library"``, ``"original"``, ``"raw"`` or a worker function. Threads are
    for ``--smoke`` only: no interpreter start per worker, so the check stays fast.
    """
    label = kind if isinstance(kind, str) else kind.__name__
    if threads:
        sync = _Sync(threading.Semaphore(0), threading.Event(), queue.Queue())
        runners: list[Any] = [threading.Thread(target=_worker, args=(kind, url, arg, sync)) for _ in range(workers)]
    else:
        ctx = mp.get_context("spawn")
        sync = _Sync(ctx.Semaphore(0), ctx.Event(), ctx.Queue())
        runners = [
            ctx.Process(target=_child, args=(kind, url, arg, sync.ready, sync.start, sync.results))
            for _ in range(workers)
        ]
    for runner in runners:
        runner.start()
    try:
        deadline = time.monotonic() + 120
        for _ in runners:
            while not sync.ready.acquire(timeout=0.2):
                if time.monotonic() > deadline or not all(r.is_alive() for r in runners):
                    raise RuntimeError(f"a {label} worker did not start")
        began = time.monotonic()
        sync.start.set()
        outcomes = []
        deadline = time.monotonic() + 3600
        while len(outcomes) < len(runners):
            try:
                outcomes.append(sync.results.get(timeout=0.5))
            except queue.Empty:
                finished = sum(not r.is_alive() for r in runners)
                if finished > len(outcomes) or time.monotonic() > deadline:
                    time.sleep(0.5)  # a result may still be on its way through the queue's pipe
                    if sync.results.empty():
                        raise RuntimeError(f"a {label} worker ended without reporting") from None
    except BaseException:
        for runner in runners:
            if isinstance(runner, mp.process.BaseProcess):
                runner.terminate()  # ours, by handle: a worker that still waits for "go" would wait forever
        sync.start.set()  # threads cannot be stopped: let them run out
        raise
    finally:
        for runner in runners:
            runner.join(timeout=60)
    for runner in runners:
        if getattr(runner, "exitcode", 0) != 0:
            raise RuntimeError(f"a {label} process failed (exit code {runner.exitcode})")
    done = sum(n for n, _ in outcomes)
    return done, max(t for _, t in outcomes) - began


_KINDS.update(library=_library, original=_original, raw=lambda sync, url, _arg: _raw(sync, url))


# -- the benchmark ------------------------------------------------------------------------

FIRST, STEADY, ANALYZED = "first burst", "after steady state", "after ANALYZE"
STATES = (FIRST, STEADY, ANALYZED)
SWEEP_STATE = STEADY
OUTBOX_TABLES = ('"OutboxEvent"', '"OutboxEventTransition"')
LEDGER_TABLE = '"OutboxEventDelivery"'
#: Every table a drain writes: autovacuum off on each (the rollup and the ledger too).
PINNED_TABLES = (*OUTBOX_TABLES, '"OutboxEventStats"', LEDGER_TABLE)


def pin_outbox(url: str) -> None:
    """Autovacuum off on every table a drain writes (``common.pin_statistics``)."""
    engine = make_engine(url)
    try:
        pin_statistics(engine, PINNED_TABLES)
    finally:
        engine.dispose()


def backfill_ledger(engine: Engine) -> int:
    """One delivered ledger row (handler ``*``) per COMPLETED event without one: what migration 0006
    writes for the events an outbox delivered before the ledger; returns how many."""
    ledger = DEFAULT_TABLES.deliveries
    done = select(EVENTS.c.id, literal(ALL_HANDLERS), EVENTS.c.retry_count + 1, EVENTS.c.processed_at).where(
        EVENTS.c.status == "COMPLETED", ~EVENTS.c.id.in_(select(ledger.c.event_id))
    )
    with engine.begin() as conn:
        result = conn.execute(insert(ledger).from_select(["event_id", "handler", "attempt", "delivered_at"], done))
    return int(result.rowcount)


def _burst(engine: Engine, events: int) -> None:
    """N due PENDING events created over the last hour, written through the live indexes."""
    seed(
        engine,
        events,
        mix={"PENDING": 1},
        retry_fraction=0.0,
        span_seconds=3600,
        end=time.time() - 1,
        rebuild_indexes=False,
    )


def prepare(engine: Engine, state: str, events: int, completed: int) -> int:
    """Bring a new database into ``state`` with ``events`` due events; returns the COMPLETED events it holds."""
    already = 0
    if state == STEADY:
        # Yesterday's traffic, long delivered (and in the ledger); then what autovacuum would have done by now.
        seed(engine, completed, mix={"COMPLETED": 1}, retry_fraction=0.02, end=time.time() - 7200, ledger=False)
        backfill_ledger(engine)
        vacuum_analyze(engine)
        already = completed
    _burst(engine, events)
    if state == ANALYZED:
        vacuum_analyze(engine)
    expected = 0 if state == FIRST else len(OUTBOX_TABLES)
    found = analyzed_tables(engine, OUTBOX_TABLES)
    if found != expected:
        raise RuntimeError(f"{state}: {found} outbox tables have statistics, the state needs {expected}")
    ledger = analyzed_tables(engine, (LEDGER_TABLE,))
    if ledger != (state == STEADY):  # after ANALYZE it is empty: no statistics to have
        raise RuntimeError(f"{state}: the delivery ledger {'has' if ledger else 'lacks'} statistics")
    return already


def status_counts(engine: Engine) -> dict[str, int]:
    """Events per status."""
    with engine.connect() as conn:
        rows = conn.execute(select(EVENTS.c.status, func.count()).group_by(EVENTS.c.status)).all()
    return {status: int(n) for status, n in rows}


def measure(
    template: DatabaseTemplate, state: str, kind: str, arg: Any, processes: int, args: Any, events: int, completed: int
) -> float:
    """One sample: a new database in ``state``, drained by new processes; events/s."""
    with template.clone() as url:
        engine = make_engine(url)
        try:
            already = prepare(engine, state, events, completed)
        finally:
            engine.dispose()  # the workers bring their own engines: nothing is prepared before "go"
        done, seconds = run_workers(kind, url, arg, processes, threads=args.smoke)
        engine = make_engine(url)
        try:
            counts = status_counts(engine)
        finally:
            engine.dispose()
    if kind != "original" and (done != events or counts.get("PENDING", 0)):
        raise RuntimeError(f"{state}, {kind}: completed {done} of {events} events; the database shows {counts}")
    if counts.get("COMPLETED", 0) != already + done:
        raise RuntimeError(f"{state}, {kind}: the database shows {counts}, not {already} + {done} COMPLETED")
    return done / seconds


def variants_for(backend: str, original_seconds: float, *, smoke: bool = False) -> list[tuple[str, str, str, Any, int]]:
    """(case, state, kind, arg, processes) of every variant measured on ``backend``.

    ``smoke`` keeps one of each kind per state (and the two-process and batch-sweep
    paths once), so the check stays a few seconds: every sample is a new database.
    """
    processes = [1, 2] if backend == "postgres" else [1]
    out: list[tuple[str, str, str, Any, int]] = []
    for state in STATES:
        for p in processes:
            batches = [50, 200, 500, 1000] if state == SWEEP_STATE and p == 1 else [50, 500]
            if smoke:
                batches = [50, 500] if state == SWEEP_STATE and p == 1 else [500] if state == FIRST or p == 1 else []
            out += [(f"{state}: library b{b} x{p}", state, "library", b, p) for b in batches]
        for p in processes if not smoke or state == FIRST else [1]:
            out.append((f"{state}: raw SQL limit x{p}", state, "raw", None, p))
    out.append((f"{FIRST}: original", FIRST, "original", original_seconds, 1))
    return out


def bench_backend(backend: str, report: Report, args: Any) -> None:
    events, completed, original_seconds = args.events, args.completed, args.original_seconds
    variants = variants_for(backend, original_seconds, smoke=args.smoke)
    with database_template(backend, postgres_url=args.postgres_url, setup=pin_outbox) as template:
        samples = alternate(
            [
                (
                    case,
                    lambda state=state, kind=kind, arg=arg, n=n: measure(
                        template, state, kind, arg, n, args, events, completed
                    ),
                )
                for case, state, kind, arg, n in variants
            ],
            repeats(args),
        )

    def detail(state: str, kind: str) -> str:
        if kind == "original":
            return f"per event 2 commits; first {original_seconds:g} s" if original_seconds else "per event 2 commits"
        what = f"claim + complete per {RAW_BATCH}, no history" if kind == "raw" else f"{events:,} events"
        return f"{what}; {completed:,} COMPLETED before" if state == STEADY else what

    rates = {
        case: report.add(backend, case, samples[case], detail=detail(state, kind), state=state)
        for case, state, kind, _arg, _n in variants
    }
    _ratios(backend, report, rates)


def _ratios(backend: str, report: Report, rates: dict[str, float]) -> None:
    """The ratios and targets of issue 13 (a ratio whose variants were not measured, as in ``--smoke``, is left out)."""
    postgres = backend == "postgres"
    best = "b500 x2" if postgres else "b500 x1"

    def lib(state: str, variant: str) -> float | None:
        return rates.get(f"{state}: library {variant}")

    for variant in ["b50 x1", "b500 x1", *(["b50 x2", "b500 x2"] if postgres else [])]:
        for state in (FIRST, STEADY):
            name = f"library {variant}: {state} / {ANALYZED}"
            value = report.ratio(backend, name, lib(state, variant), lib(ANALYZED, variant))
            if postgres and value is not None:
                report.target(backend, name, value, ">=", 0.8)
    for state in STATES:
        raw = [rates.get(f"{state}: raw SQL limit x{p}") for p in (1, 2)]
        limit = max((r for r in raw if r is not None), default=None)
        share = report.ratio(backend, f"{state}: library {best} / raw SQL limit", lib(state, best), limit)
        if postgres:
            report.ratio(backend, f"{state}: library b500 x2 / x1", lib(state, "b500 x2"), lib(state, "b500 x1"))
            if share is not None:
                report.target(backend, f"{state}: library {best} / raw SQL limit", share, ">=", 0.5)
        elif state == FIRST:
            never = f"{FIRST} (never analyzed): library b500 x1"
            report.target(backend, f"{never} events/s", lib(FIRST, "b500 x1"), ">=", 10_000)
            report.target(backend, f"{never} / raw SQL limit", share, ">=", 0.35)
    sweep = [b for b in (50, 200, 500, 1000) if lib(SWEEP_STATE, f"b{b} x1") is not None]
    for smaller, larger in zip(sweep, sweep[1:], strict=False):
        report.ratio(
            backend,
            f"{SWEEP_STATE}: library b{larger} / b{smaller} x1",
            lib(SWEEP_STATE, f"b{larger} x1"),
            lib(SWEEP_STATE, f"b{smaller} x1"),
        )
    name = f"{FIRST}: library {best} / original"
    value = report.ratio(backend, name, lib(FIRST, best), rates[f"{FIRST}: original"])
    if postgres:
        report.target(backend, name, value, ">=", 20, "x")
        for state in STATES:
            if lib(state, best) is not None:
                report.target(backend, f"{state}: library {best} events/s", lib(state, best), ">=", 10_000)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=20_000, help="PENDING events to drain per sample (default 20000)")
    p.add_argument(
        "--completed",
        type=int,
        default=100_000,
        help="COMPLETED events already in the table in the steady state (default 100000)",
    )
    p.add_argument(
        "--original-seconds", type=float, default=20.0, help="time the original's algorithm runs (0: drain all)"
    )
    args = p.parse_args(argv)
    if args.smoke:
        args.events, args.completed, args.original_seconds = 300, 1000, 0.2
    report = Report(
        "dispatch",
        {
            "events": args.events,
            "completed": args.completed,
            "original_seconds": args.original_seconds,
            "repeats": repeats(args),
        },
    )
    for backend in backends(args.db):
        bench_backend(backend, report, args)
    return report.finish(args)


if __name__ == "__main__":
    run_main(main)

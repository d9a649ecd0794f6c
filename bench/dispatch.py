"""Dispatch throughput: from N PENDING events to all COMPLETED, with a no-op handler.

    python -m bench.dispatch --db both [--events 100000]

Variants, alternated within each repetition, each from the same freshly seeded
backlog (``bench.seed``: N due PENDING events with their first history row):

- ``library b50 x1``, ``library b500 x1`` (and on PostgreSQL ``x2``: two dispatcher
  processes): ``Dispatcher(engine, [noop], batch_size=b).drain()`` in child processes;
- ``original``: the original's algorithm as written: read up to 50 PENDING events
  oldest first, then per event one commit to PROCESSING and one commit to COMPLETED
  (ORM objects, no history rows, no leases); measured for ``--original-seconds``
  (its rate is steady, so a prefix of the backlog is enough; 0 drains it all);
- ``raw SQL limit``: a psycopg / sqlite3 loop of one ``UPDATE ... RETURNING id`` claim
  of 500 and one completing ``UPDATE`` per batch, no Python objects, no history rows:
  what the database itself can do (on PostgreSQL with 1 and 2 processes; the limit is
  the faster of the two).

Processes start, connect and wait; the clock runs from "go" until the last one has
found nothing left to claim.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import threading
import time
from typing import Any

from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session

from outbox_admin import Dispatcher, make_engine
from outbox_admin.db import db_now
from outbox_admin.models import DEFAULT_TABLES, OutboxEvent

from .common import (
    Report,
    alternate,
    backends,
    parser,
    repeats,
    reset_outbox,
    run_main,
    temp_database,
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

    def go(self, run: Any, engine: Engine) -> int:
        """Say ready, wait for "go", run, report (count, finish time) to the parent."""
        self.ready.release()
        self.start.wait()
        try:
            done = run()
        finally:
            finished = time.monotonic()
            engine.dispose()
        self.results.put((done, finished))
        return done


def _worker(kind: str, url: str, arg: Any, sync: _Sync) -> None:
    if kind == "library":
        _library(sync, url, arg)
    elif kind == "original":
        _original(sync, url, arg)
    else:
        _raw(sync, url)


def _child(kind: str, url: str, arg: Any, ready: Any, start: Any, results: Any) -> None:
    _worker(kind, url, arg, _Sync(ready, start, results))


def run_workers(kind: str, url: str, arg: Any, workers: int, *, threads: bool = False) -> tuple[int, float]:
    """Start ``workers`` processes (or threads), let them connect, then time them from "go" to the last finish.

    Threads are for ``--smoke`` only: no interpreter start per worker, so the check stays fast.
    """
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
    deadline = time.monotonic() + 120
    for _ in runners:
        while not sync.ready.acquire(timeout=0.2):
            if time.monotonic() > deadline or not all(r.is_alive() for r in runners):
                raise RuntimeError(f"a {kind} worker did not start")
    began = time.monotonic()
    sync.start.set()
    outcomes = [sync.results.get(timeout=3600) for _ in runners]
    for runner in runners:
        runner.join(timeout=60)
        if getattr(runner, "exitcode", 0) != 0:
            raise RuntimeError(f"a {kind} process failed (exit code {runner.exitcode})")
    done = sum(n for n, _ in outcomes)
    return done, max(t for _, t in outcomes) - began


# -- the benchmark ------------------------------------------------------------------------


def _prepare(engine: Engine, events: int) -> None:
    reset_outbox(engine)
    seed(engine, events, mix={"PENDING": 1}, retry_fraction=0.0, span_seconds=3600, end=time.time() - 1)
    vacuum_analyze(engine)


def _completed(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count()).where(EVENTS.c.status == "COMPLETED")) or 0)


def bench_backend(backend: str, report: Report, args: Any) -> None:
    events = 300 if args.smoke else args.events
    original_seconds = 0.2 if args.smoke else args.original_seconds
    variants: list[tuple[str, str, Any, int]] = [
        ("library b50 x1", "library", 50, 1),
        ("library b500 x1", "library", 500, 1),
    ]
    if backend == "postgres":
        variants += [("library b50 x2", "library", 50, 2), ("library b500 x2", "library", 500, 2)]
    variants.append(("original", "original", original_seconds, 1))
    variants.append(("raw SQL limit x1", "raw", None, 1))
    if backend == "postgres":
        variants.append(("raw SQL limit x2", "raw", None, 2))

    with temp_database(backend, postgres_url=args.postgres_url) as url:
        engine = make_engine(url)
        try:

            def measure(kind: str, arg: Any, processes: int) -> float:
                _prepare(engine, events)
                done, seconds = run_workers(kind, url, arg, processes, threads=args.smoke)
                if kind != "original" and done != events:
                    raise RuntimeError(f"{kind} completed {done} of {events} events")
                if _completed(engine) != done:
                    raise RuntimeError(f"{kind}: the database shows {_completed(engine)} COMPLETED, not {done}")
                return done / seconds

            samples = alternate(
                [(name, lambda kind=kind, arg=arg, n=n: measure(kind, arg, n)) for name, kind, arg, n in variants],
                repeats(args),
            )
        finally:
            engine.dispose()

    details = {
        "original": f"per event 2 commits; first {original_seconds:g} s" if original_seconds else "per event 2 commits",
        "raw SQL limit x1": f"claim + complete per {RAW_BATCH}, no history",
        "raw SQL limit x2": f"claim + complete per {RAW_BATCH}, no history",
    }
    rates = {
        name: report.add(backend, name, samples[name], detail=details.get(name, f"{events:,} events"))
        for name, *_ in variants
    }
    best = "library b500 x2" if backend == "postgres" else "library b500 x1"
    limit = max(rates["raw SQL limit x1"], rates.get("raw SQL limit x2", 0.0))
    report.ratio(backend, f"{best} / original", rates[best], rates["original"])
    share = report.ratio(backend, f"{best} / raw SQL limit", rates[best], limit)
    report.ratio(backend, "library b500 x1 / b50 x1", rates["library b500 x1"], rates["library b50 x1"])
    if backend == "postgres":
        report.ratio(backend, "library b500: x2 / x1", rates["library b500 x2"], rates["library b500 x1"])
        report.target(backend, f"{best} events/s", rates[best], ">=", 10_000)
        report.target(backend, f"{best} share of raw limit", share, ">=", 0.35)
        report.target(backend, f"{best} / original", rates[best] / rates["original"], ">=", 20, "x")
    else:
        report.target(backend, f"{best} events/s", rates[best], ">=", 5_000)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=100_000, help="PENDING events to drain (default 100000)")
    p.add_argument(
        "--original-seconds", type=float, default=20.0, help="time the original's algorithm runs (0: drain all)"
    )
    args = p.parse_args(argv)
    report = Report(
        "dispatch",
        {"events": args.events, "original_seconds": args.original_seconds, "repeats": repeats(args)},
    )
    for backend in backends(args.db):
        bench_backend(backend, report, args)
    return report.finish(args)


if __name__ == "__main__":
    run_main(main)

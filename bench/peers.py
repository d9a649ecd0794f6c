"""Against a peer: throughput and cross-process wake latency of outbox_admin and pgqueuer on one PostgreSQL.

    pip install -e '.[bench]'        # pgqueuer and asyncpg
    python -m bench.peers [--events 20000] [--pgqueuer-batches 10 100 500 1000]

**Throughput.** Every sample is a new database copied from one template that holds
both schemas (``init_db`` and pgqueuer's own ``Queries.install()``, what ``pgq
install`` runs), never analyzed, with autovacuum off on both libraries' hot tables
(the "first burst" state of ``bench.dispatch``, pinned alike for both). N jobs with
the same JSON payload (``bench.seed``'s shape, about 100 bytes) are published
through each library's own bulk call (``publish_outbox_events``; pgqueuer's
``enqueue`` with lists), then drained by new worker processes with a no-op handler:

- ours: ``Dispatcher(engine, [noop], batch_size=B).drain()`` in P processes (B 50 and
  500, P 1 and 2), the same workers as ``bench.dispatch``;
- pgqueuer: ``QueueManager.run(mode=drain, batch_size=B)`` with an ``async`` no-op
  entrypoint, on asyncpg and uvloop as ``pgq run`` uses them, in P processes: B 10
  (its default) and ``--pgqueuer-batches``.

pgqueuer runs on asyncpg, its first driver, not on psycopg: its psycopg driver shares
one connection between the listener and the queries, and the listener holds it for
up to a second at a time (``notifies(timeout=1.0)``), so a drain stalls a second
now and then: 300 jobs took 5 s (58 jobs/s) where asyncpg drains 3,000 in 1.4 s.
Measuring that would not be fair to it.

Why a drain and not ``DispatcherService``: pgqueuer's worker in drain mode is
"claim batches until nothing is queued, then exit", which is exactly
``Dispatcher.drain()``; ``DispatcherService`` wraps that same drain in a scheduler
thread that only decides *when* to start it. Both sides start, connect and wait;
the clock runs from "go" until the last process has finished (for pgqueuer that
includes its start-up checks, a few milliseconds, and the flush of its completion
buffer). A sample counts only if every job ran once: our outbox shows N COMPLETED,
pgqueuer's queue is empty and its handlers ran N times. "pgqueuer best" is its
fastest variant in the run.

**Wake latency across processes.** A consumer process runs each library's long-lived
worker with a 30 s poll, so only a notification explains a fast pick-up: ours a
``DispatcherService`` (LISTEN ``outbox_events``), pgqueuer a ``QueueManager`` in
continuous mode at its default batch size (its trigger's NOTIFY and its listener).
A producer process commits one job per transaction at a steady ``--rate`` (ours
``publish_outbox_event`` in a session; pgqueuer ``SyncQueries.enqueue`` on an
autocommit connection, one statement); latency runs from the moment the commit
returned in the producer to the moment the handler started in the consumer (the
machine's monotonic clock, shared by processes); p50 / p95 of ``--latency-events``
per sample, each figure the median over the repetitions. Each sample has its own
new database; the producer warms its connection with 3 jobs the consumer must
receive before the measured ones are sent.

Targets (printed, never asserted): ours 2 processes b500 >= 2x pgqueuer's best, and
our p50 and p95 no worse than pgqueuer's.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import queue
import threading
import time
from collections.abc import Coroutine
from contextlib import suppress
from datetime import timedelta
from typing import Any

from outbox_admin import (
    Dispatcher,
    DispatcherService,
    EventSpec,
    make_engine,
    publish_outbox_event,
    publish_outbox_events,
)

from .common import (
    DatabaseTemplate,
    Report,
    alternate,
    database_template,
    median,
    parser,
    percentile,
    pin_statistics,
    repeats,
    run_main,
)
from .dispatch import OUTBOX_TABLES, run_workers, status_counts

ENTRYPOINT = "bench.noop"
WARMUP = 3


class PgqueuerMissing(RuntimeError):
    """pgqueuer or asyncpg is not installed (``pip install -e '.[bench]'``)."""


def _require_pgqueuer() -> None:
    try:
        import asyncpg  # noqa: F401
        import pgqueuer  # noqa: F401
    except ImportError as exc:
        raise PgqueuerMissing(f"{exc.name} is not installed: pip install -e '.[bench]' (pgqueuer and asyncpg)") from exc


def _dsn(url: str) -> str:
    """A libpq URL (for psycopg and asyncpg) from a SQLAlchemy one."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _run_async(coro: Coroutine[Any, Any, Any]) -> Any:
    """On uvloop when it is there, as ``pgq run`` does."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a pgqueuer dependency
        return asyncio.run(coro)
    return uvloop.run(coro)


async def _connect(url: str) -> tuple[Any, Any]:
    """An asyncpg connection and pgqueuer's driver on it (asyncpg: see the module's docstring)."""
    import asyncpg
    from pgqueuer.db import AsyncpgDriver

    conn = await asyncpg.connect(_dsn(url))
    return conn, AsyncpgDriver(conn)


def payload(i: int) -> dict[str, Any]:
    """The same event body for both libraries (``bench.seed``'s shape)."""
    return {
        "name": f"Project {i}",
        "budget": (i % 100_000) * 0.25,
        "currency": "EUR",
        "org": "org-1",
        "revision": i % 7,
    }


def _pgqueuer_tables() -> list[str]:
    from pgqueuer.domain.settings import db_settings

    settings = db_settings()
    return [settings.queue_table, settings.queue_table_log]


# -- the databases ------------------------------------------------------------------------


def _install_pgqueuer(url: str) -> None:
    """pgqueuer's schema through its API (what ``pgq install`` runs), then both libraries' tables pinned."""
    from pgqueuer import Queries

    async def install() -> None:
        conn, driver = await _connect(url)
        try:
            await Queries(driver).install()
        finally:
            await conn.close()

    _run_async(install())
    engine = make_engine(url)
    try:
        pin_statistics(engine, [*OUTBOX_TABLES, *_pgqueuer_tables()])
    finally:
        engine.dispose()


def load_ours(url: str, events: int) -> None:
    engine = make_engine(url)
    try:
        specs = [
            EventSpec(
                org_id="org-1",
                event_type="PROJECT.UPDATED",
                entity_type="Project",
                entity_id=f"p-{i}",
                payload=payload(i),
            )
            for i in range(events)
        ]
        with engine.begin() as conn:
            publish_outbox_events(conn, specs)
    finally:
        engine.dispose()


def load_pgqueuer(url: str, events: int) -> None:
    from pgqueuer import Queries

    async def load() -> None:
        conn, driver = await _connect(url)
        try:
            queries = Queries(driver)
            step = 5000
            for first in range(0, events, step):
                n = min(step, events - first)
                bodies = [json.dumps(payload(i)).encode() for i in range(first, first + n)]
                await queries.enqueue([ENTRYPOINT] * n, list(bodies), [0] * n)
        finally:
            await conn.close()

    _run_async(load())


def _pgqueuer_left(url: str) -> tuple[int, int]:
    """(jobs still queued or picked, jobs logged as successful)."""
    import psycopg

    queue_table, log_table = _pgqueuer_tables()
    with psycopg.connect(_dsn(url), autocommit=True) as conn:
        left = conn.execute(f"SELECT count(*) FROM {queue_table}").fetchone()
        ok = conn.execute(f"SELECT count(*) FROM {log_table} WHERE status = 'successful'").fetchone()
    return int(left[0] if left else 0), int(ok[0] if ok else 0)


# -- pgqueuer's worker --------------------------------------------------------------------


def _pgqueuer_worker(sync: Any, url: str, batch: int) -> None:
    """A pgqueuer worker process: connect, register a no-op entrypoint, wait for "go", drain."""
    from pgqueuer import Queries, QueueManager
    from pgqueuer.domain.types import QueueExecutionMode

    async def main() -> tuple[int, float]:
        conn, driver = await _connect(url)
        qm = QueueManager(Queries(driver))
        handled = 0

        @qm.entrypoint(ENTRYPOINT)
        async def noop(job: Any) -> None:
            nonlocal handled
            handled += 1

        await conn.fetchval("SELECT 1")
        sync.ready.release()
        await asyncio.to_thread(sync.start.wait)
        try:
            await qm.run(batch_size=batch, mode=QueueExecutionMode.drain)
        finally:
            finished = time.monotonic()
            await conn.close()
        return handled, finished

    handled, finished = _run_async(main())
    sync.results.put((handled, finished))


# -- throughput ---------------------------------------------------------------------------


def measure_throughput(
    template: DatabaseTemplate, who: str, batch: int, processes: int, events: int, smoke: bool
) -> float:
    with template.clone() as url:
        if who == "ours":
            load_ours(url, events)
            done, seconds = run_workers("library", url, batch, processes, threads=smoke)
            engine = make_engine(url)
            try:
                counts = status_counts(engine)
            finally:
                engine.dispose()
            if done != events or counts.get("COMPLETED", 0) != events:
                raise RuntimeError(f"ours b{batch} x{processes}: completed {done} of {events}; the database: {counts}")
        else:
            load_pgqueuer(url, events)
            done, seconds = run_workers(_pgqueuer_worker, url, batch, processes, threads=smoke)
            left, logged = _pgqueuer_left(url)
            if done != events or left:
                raise RuntimeError(
                    f"pgqueuer b{batch} x{processes}: handled {done} of {events}; {left} left, {logged} logged"
                )
    return events / seconds


# -- latency ------------------------------------------------------------------------------


def _ours_consumer(url: str, expected: int, ready: Any, results: Any) -> None:
    arrivals: dict[str, float] = {}
    changed = threading.Condition()

    def handler(event: Any) -> None:
        now = time.monotonic()
        with changed:
            arrivals.setdefault(event.id, now)
            changed.notify_all()

    engine = make_engine(url)
    service = DispatcherService(Dispatcher(engine, [handler]), interval_seconds=30)
    service.start()
    try:
        deadline = time.monotonic() + 30
        while not service.status().listening:
            if time.monotonic() > deadline:
                raise RuntimeError("the service's LISTEN connection did not come up")
            time.sleep(0.01)
        ready.set()
        with changed:
            changed.wait_for(lambda: len(arrivals) >= expected, timeout=120)
    finally:
        service.stop()
        engine.dispose()
    results.put(dict(arrivals))


def _pgqueuer_consumer(url: str, expected: int, ready: Any, results: Any) -> None:
    from pgqueuer import Queries, QueueManager

    async def main() -> None:
        conn, driver = await _connect(url)
        qm = QueueManager(Queries(driver))
        arrivals: dict[str, float] = {}
        everything = asyncio.Event()

        @qm.entrypoint(ENTRYPOINT)
        async def record(job: Any) -> None:
            arrivals.setdefault(str(job.id), time.monotonic())
            if len(arrivals) >= expected:
                everything.set()

        worker = asyncio.create_task(qm.run())  # continuous, batch 10, 30 s dequeue timeout: the defaults
        try:
            deadline = time.monotonic() + 30
            while True:  # its own NOTIFY round trip says the listener is up
                try:
                    await qm.listener_healthy(timeout=timedelta(seconds=0.2))
                    break
                except Exception:
                    if time.monotonic() > deadline or worker.done():
                        raise
                    await asyncio.sleep(0.05)
            ready.set()
            await asyncio.wait_for(everything.wait(), timeout=120)
            results.put(dict(arrivals))  # before the shutdown, which is not what is measured
        finally:
            qm.shutdown.set()
            with suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(worker, timeout=2)  # it may wait out a health-check round
            await conn.close()

    _run_async(main())


def _producer(who: str, url: str, events: int, rate: float, warmed: Any, go: Any, results: Any) -> None:
    """Commit one job per transaction at ``rate``; (id, monotonic time the commit returned) each."""
    if who == "ours":
        from sqlalchemy.orm import Session

        engine = make_engine(url)

        def publish(i: int) -> str:
            with Session(engine) as session:
                session.begin()
                event = publish_outbox_event(
                    session,
                    org_id="org-1",
                    event_type="PROJECT.UPDATED",
                    entity_type="Project",
                    entity_id=f"p-{i}",
                    payload=payload(i),
                )
                session.commit()
                return event.id

        close = engine.dispose
    else:
        import psycopg
        from pgqueuer.adapters.drivers.psycopg import SyncPsycopgDriver
        from pgqueuer.adapters.persistence.queries import SyncQueries

        conn = psycopg.connect(_dsn(url), autocommit=True)
        queries = SyncQueries(SyncPsycopgDriver(conn))

        def publish(i: int) -> str:
            return str(queries.enqueue(ENTRYPOINT, json.dumps(payload(i)).encode())[0])

        close = conn.close
    try:
        for i in range(WARMUP):
            publish(-1 - i)
        warmed.set()
        go.wait()
        sent: list[tuple[str, float]] = []
        started = time.monotonic()
        for i in range(events):
            pause = started + i / rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            job_id = publish(i)
            sent.append((job_id, time.monotonic()))
    finally:
        close()
    results.put(sent)


def measure_latency(
    template: DatabaseTemplate, who: str, events: int, rate: float, *, threads: bool = False
) -> dict[str, float]:
    """One sample: consumer and producer processes on a new database; percentiles in milliseconds.

    ``threads`` (``--smoke`` only) runs both in this process: no interpreter starts, but
    then our service is woken in-process, not by NOTIFY.
    """
    consumer_target = _ours_consumer if who == "ours" else _pgqueuer_consumer
    if threads:
        make_event: Any = threading.Event
        make_queue: Any = queue.Queue
        make_runner: Any = threading.Thread
    else:
        ctx = mp.get_context("spawn")
        make_event, make_queue, make_runner = ctx.Event, ctx.Queue, ctx.Process
    with template.clone() as url:
        ready, warmed, go = make_event(), make_event(), make_event()
        arrivals_q, sent_q = make_queue(), make_queue()
        consumer = make_runner(target=consumer_target, args=(url, events + WARMUP, ready, arrivals_q))
        producer = make_runner(target=_producer, args=(who, url, events, rate, warmed, go, sent_q))
        try:
            consumer.start()
            if not ready.wait(60):
                raise RuntimeError(f"{who}: the consumer did not come up")
            producer.start()
            if not warmed.wait(60):
                raise RuntimeError(f"{who}: the producer did not come up")
            time.sleep(0.2)  # the warm-up jobs reach the consumer before the measured ones are sent
            go.set()
            sent = sent_q.get(timeout=600)
            arrivals = arrivals_q.get(timeout=180)
        finally:
            go.set()
            for runner in (producer, consumer):
                if runner.ident is None:
                    continue
                runner.join(timeout=60)
                if not threads and runner.is_alive():
                    runner.terminate()  # ours, by handle
    missing = [i for i, _ in sent if i not in arrivals]
    if missing:
        raise RuntimeError(f"{who}: {len(missing)} of {len(sent)} jobs never reached the consumer")
    latencies = [(arrivals[i] - committed) * 1000 for i, committed in sent]
    return {"p50": percentile(latencies, 50), "p95": percentile(latencies, 95), "max": max(latencies)}


# -- the benchmark ------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = parser(__doc__.splitlines()[0])
    p.set_defaults(db="postgres")
    p.add_argument("--events", type=int, default=20_000, help="jobs to drain per throughput sample (default 20000)")
    p.add_argument(
        "--pgqueuer-batches",
        type=int,
        nargs="+",
        default=[100, 500, 1000],
        help="pgqueuer batch sizes tried for its best, besides its default 10 (default 100 500 1000)",
    )
    p.add_argument("--latency-events", type=int, default=300, help="jobs per latency sample (default 300)")
    p.add_argument("--rate", type=float, default=50.0, help="jobs committed per second in latency samples")
    args = p.parse_args(argv)
    if args.db != "postgres":
        p.error("pgqueuer runs on PostgreSQL only: --db postgres")
    _require_pgqueuer()
    if args.smoke:
        args.events, args.latency_events, args.rate, args.pgqueuer_batches = 300, 20, 100.0, [100]
    report = Report(
        "peers",
        {
            "events": args.events,
            "pgqueuer_batches": [10, *args.pgqueuer_batches],
            "latency_events": args.latency_events,
            "rate": args.rate,
            "repeats": repeats(args),
        },
    )
    ours = [(50, 1), (500, 1), (50, 2), (500, 2)]
    theirs = [(10, 1), (10, 2), *[(b, n) for b in args.pgqueuer_batches for n in (1, 2)]]
    if args.smoke:
        ours, theirs = [(500, 1), (500, 2)], [(10, 1), (100, 2)]
    with database_template("postgres", postgres_url=args.postgres_url, setup=_install_pgqueuer) as template:
        throughput = [
            (
                f"{who} b{b} x{n}",
                lambda who=who, b=b, n=n: measure_throughput(template, who, b, n, args.events, args.smoke),
            )
            for who, variants in (("ours", ours), ("pgqueuer", theirs))
            for b, n in variants
        ]
        samples = alternate(throughput, repeats(args))
        latency = [
            (who, lambda who=who: measure_latency(template, who, args.latency_events, args.rate, threads=args.smoke))
            for who in ("ours", "pgqueuer")
        ]
        waits = alternate(latency, repeats(args))

    rates = {}
    for who, variants in (("ours", ours), ("pgqueuer", theirs)):
        for b, n in variants:
            case = f"{who} b{b} x{n}"
            what = "Dispatcher.drain()" if who == "ours" else "QueueManager.run(mode=drain)"
            default = " (its default batch)" if who == "pgqueuer" and b == 10 else ""
            rates[case] = report.add(
                "postgres", f"throughput: {case}", samples[case], detail=f"{args.events:,} jobs; {what}{default}"
            )
    best_case = max((c for c in rates if c.startswith("pgqueuer")), key=rates.__getitem__)
    ours_best = "ours b500 x2" if "ours b500 x2" in rates else "ours b500 x1"
    report.notes.append(f"pgqueuer best: {best_case} ({rates[best_case]:,.0f} jobs/s)")
    factor = report.ratio("postgres", f"{ours_best} / pgqueuer best ({best_case})", rates[ours_best], rates[best_case])
    report.ratio("postgres", f"{ours_best} / pgqueuer b10 x1 (its default)", rates[ours_best], rates["pgqueuer b10 x1"])
    report.target("postgres", f"{ours_best} / pgqueuer best", factor, ">=", 2, "x")

    p50s, p95s = {}, {}
    for who, _ in latency:
        runs = waits[who]
        p95s[who] = median([r["p95"] for r in runs])
        what = (
            "DispatcherService, LISTEN/NOTIFY" if who == "ours" else "QueueManager (continuous, batch 10), its listener"
        )
        p50s[who] = report.add(
            "postgres",
            f"wake latency, other process: {who}",
            [r["p50"] for r in runs],
            "ms p50",
            p95=p95s[who],
            max=max(r["max"] for r in runs),
            detail=f"p95 {p95s[who]:.1f} ms; {args.latency_events} jobs at {args.rate:g}/s; {what}",
        )
    report.ratio("postgres", "wake latency p50: ours / pgqueuer", p50s["ours"], p50s["pgqueuer"])
    report.ratio("postgres", "wake latency p95: ours / pgqueuer", p95s["ours"], p95s["pgqueuer"])
    report.target("postgres", "wake latency p50: ours - pgqueuer", p50s["ours"] - p50s["pgqueuer"], "<=", 0, " ms")
    report.target("postgres", "wake latency p95: ours - pgqueuer", p95s["ours"] - p95s["pgqueuer"], "<=", 0, " ms")
    return report.finish(args)


if __name__ == "__main__":
    try:
        run_main(main)
    except PgqueuerMissing as exc:
        raise SystemExit(f"bench.peers: {exc}") from None

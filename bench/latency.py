"""Wake latency: from the publisher's commit to the start of the handler, with the service running.

    python -m bench.latency --db both [--events 500] [--rate 50]

A ``DispatcherService`` (30 s interval, so only wake-ups can explain a fast
delivery) runs in this process with a handler that notes when each event
arrives. ``--events`` events are then published one per transaction at a steady
``--rate``:

- ``same process``: from this process (the in-process wake-up after commit);
- ``other process`` (PostgreSQL): from a child process, so only ``NOTIFY`` /
  ``LISTEN`` can wake the service.

Latency is measured on the machine's monotonic clock (shared by processes) from
the moment the commit returned to the moment the handler started; reported as
p50 / p95 / p99 in milliseconds, each the median over the repetitions.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from typing import Any

from sqlalchemy.orm import Session

from outbox_admin import Dispatcher, DispatcherService, make_engine, publish_outbox_event

from .common import Report, alternate, backends, median, parser, percentile, repeats, run_main, temp_database


class Arrivals:
    """The handler: notes the monotonic time each event first reached it."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self.changed = threading.Condition()

    def __call__(self, event: Any) -> None:
        now = time.monotonic()
        with self.changed:
            self.at.setdefault(event.id, now)
            self.changed.notify_all()

    def wait_for(self, ids: list[str], timeout: float) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: all(i in self.at for i in ids), timeout=timeout):
                missing = sum(i not in self.at for i in ids)
                raise RuntimeError(f"{missing} of {len(ids)} events were not handled within {timeout:.0f} s")


def publish_steadily(url: str, events: int, rate: float, engine: Any = None) -> list[tuple[str, float]]:
    """Publish ``events`` events, one transaction each, at ``rate`` per second; (id, commit time) each."""
    own = engine is None
    engine = engine or make_engine(url)
    sent: list[tuple[str, float]] = []
    try:
        started = time.monotonic()
        for i in range(events):
            pause = started + i / rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            with Session(engine) as session:
                session.begin()
                event = publish_outbox_event(
                    session,
                    org_id="org-1",
                    event_type="PROJECT.UPDATED",
                    entity_type="Project",
                    entity_id=f"p-{i}",
                    payload={"i": i},
                )
                event_id = event.id
                session.commit()
                sent.append((event_id, time.monotonic()))
    finally:
        if own:
            engine.dispose()
    return sent


def _publisher_child(url: str, events: int, rate: float, start: Any, results: Any) -> None:
    engine = make_engine(url)
    publish_steadily(url, 3, 100, engine)  # warm up this process's connection and caches
    start.wait()
    results.put(publish_steadily(url, events, rate, engine))
    engine.dispose()


def measure(url: str, arrivals: Arrivals, events: int, rate: float, *, other_process: bool) -> dict[str, float]:
    """One sample: publish, wait until everything arrived, return percentiles in milliseconds."""
    if other_process:
        ctx = mp.get_context("spawn")
        start, results = ctx.Event(), ctx.Queue()
        child = ctx.Process(target=_publisher_child, args=(url, events, rate, start, results))
        child.start()
        start.set()
        sent = results.get(timeout=600)
        child.join(timeout=60)
    else:
        sent = publish_steadily(url, events, rate)
    arrivals.wait_for([i for i, _ in sent], timeout=60)
    latencies = [(arrivals.at[i] - committed) * 1000 for i, committed in sent]
    return {
        "p50": percentile(latencies, 50),
        "p95": percentile(latencies, 95),
        "p99": percentile(latencies, 99),
        "max": max(latencies),
    }


def bench_backend(backend: str, report: Report, args: Any) -> None:
    events = 20 if args.smoke else args.events
    rate = 100.0 if args.smoke else args.rate
    with temp_database(backend, postgres_url=args.postgres_url) as url:
        engine = make_engine(url)
        arrivals = Arrivals()
        service = DispatcherService(Dispatcher(engine, [arrivals]), interval_seconds=30)
        try:
            service.start()
            deadline = time.monotonic() + 30
            while backend == "postgres" and not service.status().listening:
                if time.monotonic() > deadline:
                    raise RuntimeError("the service's LISTEN connection did not come up")
                time.sleep(0.01)
            measure(url, arrivals, 5, 50, other_process=False)  # warm-up
            variants = [("same process", lambda: measure(url, arrivals, events, rate, other_process=False))]
            if backend == "postgres":
                variants.append(("other process", lambda: measure(url, arrivals, events, rate, other_process=True)))
            samples = alternate(variants, repeats(args))
            status = service.status()
        finally:
            service.stop()
            engine.dispose()
    if status.failed_ticks:
        report.notes.append(f"{backend}: {status.failed_ticks} service tick(s) failed: {status.last_error}")
    for name, _ in variants:
        runs = samples[name]
        p95, p99 = median([r["p95"] for r in runs]), median([r["p99"] for r in runs])
        p50 = report.add(
            backend,
            f"commit -> handler, {name}",
            [r["p50"] for r in runs],
            "ms p50",
            p95=p95,
            p99=p99,
            max=max(r["max"] for r in runs),
            detail=f"p95 {p95:.1f} ms, p99 {p99:.1f} ms; {events} events at {rate:g}/s",
        )
        if name == "same process":
            report.target(backend, "in-process wake p50", p50, "<=", 5, " ms")
        else:
            report.target(backend, "cross-process wake p50", p50, "<=", 10, " ms")
            report.target(backend, "cross-process wake p95", p95, "<=", 25, " ms")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=500, help="events per sample (default 500)")
    p.add_argument("--rate", type=float, default=50.0, help="events published per second (default 50)")
    args = p.parse_args(argv)
    report = Report("latency", {"events": args.events, "rate": args.rate, "repeats": repeats(args)})
    for backend in backends(args.db):
        bench_backend(backend, report, args)
    return report.finish(args)


if __name__ == "__main__":
    run_main(main)

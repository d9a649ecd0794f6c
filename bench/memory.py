"""Memory: the dispatcher's peak RSS while draining 100,000 and 1,000,000 events stays flat.

    python -m bench.memory --db both [--sizes 100000 1000000] [--batch-size 500]

For each size a fresh backlog of due PENDING events is seeded (``bench.seed``,
without history rows: the dispatcher never reads them), then a child process
builds a ``Dispatcher`` with a no-op handler, connects, and drains everything
while a thread samples its resident set size (psutil) every 20 ms. Reported:
the RSS before draining, the peak, and the growth (peak - before); the target is
that the peak for the largest size is within 10% (or 8 MiB) of the smallest.
One repetition by default: a peak RSS is not a timing, and one 1,000,000-event
drain per database takes minutes.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import resource
import threading
import time
from typing import Any

from outbox_admin import Dispatcher, make_engine

from .common import Report, backends, parser, repeats, reset_outbox, run_main, temp_database, vacuum_analyze
from .seed import seed

MIB = 2**20


def noop(event: Any) -> None:
    """The handler: does nothing."""


def _drain_child(url: str, batch_size: int, results: Any) -> None:
    import psutil

    process = psutil.Process()
    engine = make_engine(url)
    dispatcher = Dispatcher(engine, [noop], batch_size=batch_size)
    dispatcher.dispatch_once()  # connect, build the statements, one batch: the state it drains in
    before = process.memory_info().rss
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.02):
            peak = max(peak, process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    report = dispatcher.drain(max_seconds=None)
    seconds = time.monotonic() - started
    done.set()
    sampler.join()
    peak = max(peak, process.memory_info().rss)
    engine.dispose()
    results.put(
        {
            "before": before,
            "peak": peak,
            "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "completed": report.completed + batch_size,
            "seconds": seconds,
        }
    )


def drain_in_child(url: str, batch_size: int, *, in_process: bool = False) -> dict[str, Any]:
    """Drain in a fresh process, so the RSS is the dispatcher's alone (``in_process``: a thread, for ``--smoke``)."""
    if in_process:
        results: Any = queue.Queue()
        worker = threading.Thread(target=_drain_child, args=(url, batch_size, results))
        worker.start()
        worker.join()
        return results.get_nowait()  # type: ignore[no-any-return]
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    child = ctx.Process(target=_drain_child, args=(url, batch_size, results))
    child.start()
    outcome = results.get(timeout=7200)
    child.join(timeout=60)
    if child.exitcode != 0:
        raise RuntimeError(f"the draining process failed (exit code {child.exitcode})")
    return outcome


def bench_backend(backend: str, report: Report, args: Any) -> None:
    sizes = [200, 1000] if args.smoke else sorted(args.sizes)
    batch = 50 if args.smoke else args.batch_size
    peaks: dict[int, float] = {}
    with temp_database(backend, postgres_url=args.postgres_url) as url:
        engine = make_engine(url)
        try:
            runs: dict[int, list[dict[str, Any]]] = {n: [] for n in sizes}
            for _ in range(repeats(args)):
                for n in sizes:
                    reset_outbox(engine)
                    seed(engine, n, mix={"PENDING": 1}, retry_fraction=0, span_seconds=3600, history=False)
                    # Peak RSS, not speed, is measured; fresh statistics keep a 1,000,000-event
                    # drain within minutes whatever the plans of the day (bench.dispatch measures those).
                    vacuum_analyze(engine)
                    outcome = drain_in_child(url, batch, in_process=args.smoke)
                    if outcome["completed"] < n:
                        raise RuntimeError(f"drained {outcome['completed']} of {n} events")
                    runs[n].append(outcome)
        finally:
            engine.dispose()
    for n in sizes:
        samples = runs[n]
        growth = [(r["peak"] - r["before"]) / MIB for r in samples]
        peaks[n] = report.add(
            backend,
            f"peak RSS draining {n:,} events",
            [r["peak"] / MIB for r in samples],
            "MiB",
            before_mib=[r["before"] / MIB for r in samples],
            growth_mib=growth,
            events_per_s=[r["completed"] / r["seconds"] for r in samples],
            detail=f"before {samples[0]['before'] / MIB:.1f} MiB, growth {max(growth):.1f} MiB, "
            f"{samples[0]['completed'] / samples[0]['seconds']:,.0f} events/s, batch {batch}",
        )
    smallest, largest = min(sizes), max(sizes)
    report.ratio(backend, f"peak RSS {largest:,} / {smallest:,} events", peaks[largest], peaks[smallest])
    allowed = max(peaks[smallest] * 1.10, peaks[smallest] + 8)
    report.target(backend, f"peak RSS at {largest:,} events (MiB)", peaks[largest], "<=", round(allowed, 1))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="backlog sizes to drain")
    p.add_argument("--batch-size", type=int, default=500, help="the dispatcher's batch size (default 500)")
    p.set_defaults(repeats=1)
    args = p.parse_args(argv)
    report = Report("memory", {"sizes": args.sizes, "batch_size": args.batch_size, "repeats": repeats(args)})
    for backend in backends(args.db):
        bench_backend(backend, report, args)
    return report.finish(args)


if __name__ == "__main__":
    run_main(main)

"""Cost of payload search (``EventFilter(payload=...)``), which no index serves: a scan of the rows left.

    python -m bench.payload_search --db both [--events 100000]

Seeds a throw-away database with ``--events`` events (``bench.seed``: payloads such as
``{"name": "Project 12", "budget": 3.25, "currency": "EUR", "org": "org-2", "revision": 3}``), then
times, each the median of ``--repeats`` runs after one warm-up: counting every event (no payload
condition: the baseline), counting with one number or text condition and with two (each reads
every payload), the first page of ``events_frame`` with a condition (newest first: it stops once
the page is full), and a condition after a narrower filter (FAILED events, the last hour), where
only the rows the other filters leave are read.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

from bench.common import Report, backends, parser, repeats, run_main, temp_database, vacuum_analyze
from bench.seed import seed
from outbox_admin import analytics, make_engine


def _timed(run: Callable[[], Any], rounds: int) -> list[float]:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        samples.append(time.perf_counter() - started)
    return samples


def measure(backend: str, url: str, report: Report, rounds: int) -> None:
    engine = make_engine(url)
    hour = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    queries: list[tuple[str, Callable[[], Any]]] = [
        ("count_events, no payload condition", lambda: analytics.count_events(engine)),
        ("count_events, revision=3 (number)", lambda: analytics.count_events(engine, payload={"revision": 3})),
        ("count_events, currency=EUR (text)", lambda: analytics.count_events(engine, payload={"currency": "EUR"})),
        (
            "count_events, two conditions",
            lambda: analytics.count_events(engine, payload={"currency": "EUR", "revision": 3}),
        ),
        ("events_frame, first page, revision=3", lambda: analytics.events_frame(engine, payload={"revision": 3})),
        (
            "count_events, FAILED and revision=3",
            lambda: analytics.count_events(engine, status="FAILED", payload={"revision": 3}),
        ),
        (
            "count_events, last hour and revision=3",
            lambda: analytics.count_events(engine, since=hour, payload={"revision": 3}),
        ),
    ]
    try:
        for name, run in queries:
            run()
            report.add(backend, name, _timed(run, rounds), "s")
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=100_000, help="events to seed (default 100,000)")
    args = p.parse_args(argv)
    events = 2_000 if args.smoke else args.events
    rounds = repeats(args)
    report = Report("payload_search", {"events": events, "repeats": rounds})
    for backend in backends(args.db):
        with temp_database(backend, postgres_url=args.postgres_url) as url:
            engine = make_engine(url)
            try:
                seed(engine, events)
                if backend == "postgres":  # as autovacuum would soon do
                    vacuum_analyze(engine)
            finally:
                engine.dispose()
            measure(backend, url, report, rounds)
    return report.finish(args)


if __name__ == "__main__":
    run_main(main)

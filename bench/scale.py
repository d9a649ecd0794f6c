"""Scale of the read side: the analytics queries and the dashboard's pages on a big outbox.

    python -m bench.scale --db both [--events 1000000] [--url sqlite:///big.db]

Seeds a throw-away database with ``--events`` realistic events (``bench.seed``;
or measures an existing one given with ``--url``), then times, each the median
of ``--repeats`` runs: ``status_counts``, the first page of ``events_frame``
under several filters, ``error_summary``, ``throughput`` over a day, and
``latency_stats`` and ``retry_histogram`` over an hour; and the dashboard's
Overview and a filtered Events page rendered through Streamlit's ``AppTest``.

Targets (issues 4 and 5): on the SQLite default, each query under 1 s; the
Overview under 2 s and a filtered Events page under 1 s.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Callable
from typing import Any

from bench.common import Report, backends, parser, repeats, run_main, temp_database, vacuum_analyze
from bench.seed import seed
from outbox_admin import analytics, make_engine

QUERY_TARGET_SECONDS = 1.0
OVERVIEW_TARGET_SECONDS = 2.0
EVENTS_PAGE_TARGET_SECONDS = 1.0


def _timed(run: Callable[[], Any], rounds: int) -> list[float]:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        samples.append(time.perf_counter() - started)
    return samples


def _render(name: str) -> None:
    """The script AppTest runs: one dashboard page."""
    from outbox_admin.ui.app import render_page

    render_page(name)


def _page(url: str, name: str, query: dict[str, str]) -> Callable[[], None]:
    def run() -> None:
        from streamlit.testing.v1 import AppTest

        os.environ["OUTBOX_DATABASE_URL"] = url
        at = AppTest.from_function(_render, kwargs={"name": name}, default_timeout=120)
        for key, value in query.items():
            at.query_params[key] = value
        at.run()
        if at.exception:
            raise RuntimeError(f"the {name} page failed: {at.exception[0].message}")

    return run


def measure(backend: str, url: str, report: Report, rounds: int, pages: bool) -> None:
    engine = make_engine(url)
    now = dt.datetime.now(dt.UTC)
    day, hour = now - dt.timedelta(days=1), now - dt.timedelta(hours=1)
    queries: list[tuple[str, Callable[[], Any]]] = [
        ("status_counts", lambda: analytics.status_counts(engine)),
        ("events_frame, first page, status=FAILED", lambda: analytics.events_frame(engine, status="FAILED")),
        ("events_frame, first page, event_type", lambda: analytics.events_frame(engine, event_type="PROJECT.ARCHIVED")),
        ("events_frame, first page, org", lambda: analytics.events_frame(engine, org_id="org-3")),
        ("events_frame, first page, search", lambda: analytics.events_frame(engine, search="503")),
        ("error_summary", lambda: analytics.error_summary(engine)),
        ("throughput, 1min buckets over a day", lambda: analytics.throughput(engine, "1min", since=day)),
        ("latency_stats, last hour", lambda: analytics.latency_stats(engine, since=hour)),
        ("retry_histogram, last hour", lambda: analytics.retry_histogram(engine, since=hour)),
    ]
    try:
        for name, run in queries:
            run()  # warm the cache once, as a running dashboard would be
            value = report.add(backend, name, _timed(run, rounds), "s")
            if backend == "sqlite" and name.split(",")[0] in (
                "status_counts",
                "events_frame",
                "error_summary",
                "throughput",
            ):
                report.target(backend, name, value, "<=", QUERY_TARGET_SECONDS, "s")
        if pages:
            overview = _page(url, "overview", {})
            events = _page(url, "events", {"status": "FAILED", "type": "PROJECT.UPDATED"})
            overview()
            value = report.add(backend, "dashboard Overview render", _timed(overview, rounds), "s")
            report.target(backend, "dashboard Overview render", value, "<=", OVERVIEW_TARGET_SECONDS, "s")
            value = report.add(backend, "dashboard Events page, filtered", _timed(events, rounds), "s")
            report.target(backend, "dashboard Events page, filtered", value, "<=", EVENTS_PAGE_TARGET_SECONDS, "s")
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=1_000_000, help="events to seed (default 1,000,000)")
    p.add_argument("--url", help="measure this existing database instead of seeding one")
    p.add_argument("--no-pages", action="store_true", help="skip the dashboard page renders")
    args = p.parse_args(argv)
    events = 2_000 if args.smoke else args.events
    rounds = repeats(args)
    report = Report("scale", {"events": events, "repeats": rounds, "url": bool(args.url)})
    if args.url:
        backend = "postgres" if args.url.startswith("postgres") else "sqlite"
        measure(backend, args.url, report, rounds, not args.no_pages)
        return report.finish(args)
    for backend in backends(args.db):
        with temp_database(backend, postgres_url=args.postgres_url) as url:
            engine = make_engine(url)
            try:
                started = time.perf_counter()
                seed(engine, events)
                if backend == "postgres":  # as autovacuum would soon do; SQLite runs as a fresh file does
                    vacuum_analyze(engine)
                report.notes.append(f"{backend}: seeded {events:,} events in {time.perf_counter() - started:.0f} s")
            finally:
                engine.dispose()
            measure(backend, url, report, rounds, not args.no_pages)
    return report.finish(args)


if __name__ == "__main__":
    run_main(main)

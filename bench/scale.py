"""Scale of the read side: every dashboard page on a big outbox, rendered as users get it.

    python -m bench.scale --db both [--events 1000000] [--days 8] [--repeats 3] [--cpu-seconds 30]
    python -m bench.scale --url sqlite:///big.db      # an existing database, as it is

For each database, a new one is seeded (``bench.seed``) with ``--events`` events
spread over ``--days`` days: retries, failures, stuck leases, a backlog of PENDING
events, several types and orgs, their history and the rollup the dispatcher would
have written. Autovacuum is off for it, so each state stays what the benchmark made
it, and the benchmark itself runs no ANALYZE or VACUUM the library does not run,
except to make the second state:

1. *never analysed*: right after the load;
2. *stale statistics after a burst*: VACUUM ANALYZE (what autovacuum does on a quiet
   outbox), then a burst of ``--burst`` events published in the last minutes.

In each state every page is rendered through Streamlit's ``AppTest``, the way the
dashboard's tests do: the Overview at each window, Live, Events (unfiltered, by
status, by type, a search, page 2 and a later page), Failures with a group selected,
and Publish. Each case is rendered first with every cache cleared and a new engine
(new connections: what the first user after a restart gets; reported as ``first``),
then ``--repeats`` times in new sessions (their median). Then an open Overview is
left refreshing at the dashboard's 2 s for ``--cpu-seconds`` of real time, with the
page's own back-off rule (``ui.refresh.backoff``), and its cost is the CPU time of
this process plus that of the PostgreSQL server processes serving it (read from
``/proc``), divided by the time: the share of a core an open tab costs.

Targets (issue 14): every page at every window under 1 s (first render and median)
on SQLite and PostgreSQL, and an open Overview under 10% of a core at a 2 s refresh.
``AppTest`` reruns the whole page where a browser reruns only the live fragment, so
both figures are upper bounds of what a browser costs.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.pool import Pool

from bench.common import (
    Report,
    backends,
    parser,
    pin_statistics,
    repeats,
    run_main,
    temp_database,
    vacuum_analyze,
)
from bench.seed import seed
from outbox_admin import analytics, make_engine

RENDER_TARGET_SECONDS = 1.0
CPU_TARGET_SHARE = 0.10
REFRESH_SECONDS = 2.0
#: The seeded mix for the older events: nearly all delivered, 3% dead letters and 0.1% stuck leases
#: (PROCESSING, their dispatcher gone: the issue saw 8,999 of them), spread over the days; none of them
#: PENDING (a retry waits minutes, not days). The newest ``BACKLOG_SHARE`` are a backlog of PENDING events.
MIX = {"COMPLETED": 0.969, "FAILED": 0.03, "PROCESSING": 0.001}
BACKLOG_SHARE = 0.02
WINDOWS = ("15 minutes", "1 hour", "24 hours", "7 days")
TABLES = ('"OutboxEvent"', '"OutboxEventTransition"', '"OutboxEventStats"')


@dataclass(frozen=True)
class Case:
    """One page as a user opens it: the page, its link's query and what the session holds."""

    name: str
    page: str
    query: dict[str, str] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)


#: What ``--smoke`` renders: one view of each page, enough to show the benchmark runs (the full set
#: of windows and views is 14 cases, 56 renders per database; the test suite ran it in 78 s).
SMOKE_CASES = ("Overview, 7 days", "Live", "Events, search '503'", "Failures, a group selected", "Failures", "Publish")


def cases(url: str, *, smoke: bool = False) -> list[Case]:
    """Every page and view the benchmark renders (``smoke``: ``SMOKE_CASES``); the Failures group is the
    largest one."""
    from outbox_admin.ui import components

    engine = make_engine(url)
    try:
        groups = analytics.error_summary(engine, limit=50)
    finally:
        engine.dispose()
    found = [
        *(Case(f"Overview, {w}", "overview", state={"overview_window": w}) for w in WINDOWS),
        Case("Live", "live"),
        Case("Events", "events"),
        Case("Events, status=FAILED", "events", {"status": "FAILED"}),
        Case("Events, type=PROJECT.ARCHIVED", "events", {"type": "PROJECT.ARCHIVED"}),
        Case("Events, search '503'", "events", {"q": "503"}),
        Case("Events, page 2", "events", {"page": "2"}, {"events_page": 1}),
        Case("Events, page 200", "events", {"page": "200"}, {"events_page": 199}),
        Case("Failures", "failures"),
    ]
    if not groups.empty:
        key = components.table_key("groups", groups["error_group"])
        selected = {key: {"selection": {"rows": [0], "columns": [], "cells": []}}}
        found.append(Case("Failures, a group selected", "failures", state=selected))
    found.append(Case("Publish", "publish"))
    return [c for c in found if c.name in SMOKE_CASES] if smoke else found


def _render(name: str) -> None:
    """The script AppTest runs: one dashboard page inside the dashboard's frame."""
    from outbox_admin.ui.app import render_page

    render_page(name)


def app(case: Case) -> Any:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_function(_render, kwargs={"name": case.page}, default_timeout=300)
    for key, value in case.query.items():
        at.query_params[key] = value
    for key, value in case.state.items():
        at.session_state[key] = value
    return at


def run(at: Any, case: Case) -> float:
    started = time.perf_counter()
    at.run()
    seconds = time.perf_counter() - started
    if at.exception:
        raise RuntimeError(f"{case.name}: the page failed: {at.exception[0].message}")
    return seconds


def timed(at: Any, case: Case) -> tuple[float, float]:
    """``(wall seconds, CPU seconds of this process)`` of one render."""
    cpu = own_cpu()
    seconds = run(at, case)
    return seconds, own_cpu() - cpu


def cold() -> None:
    """Forget every cache and engine of the dashboard, as a restarted server would."""
    import streamlit as st

    from outbox_admin.ui import context

    context.stop_all_services()
    st.cache_data.clear()
    st.cache_resource.clear()


# -- the database server's CPU --------------------------------------------------------------


class ServerCpu:
    """CPU seconds of the PostgreSQL backends this process connected to (``/proc/<pid>/stat``).

    Every new pooled connection records its backend's pid; parallel workers are not
    counted, and the Overview's reads are planned without them (``tests/test_plans.py``).
    """

    def __init__(self) -> None:
        self.pids: set[int] = set()
        self._tick = os.sysconf("SC_CLK_TCK")
        event.listen(Pool, "connect", self._connected)

    def _connected(self, dbapi_connection: Any, _record: Any) -> None:
        if type(dbapi_connection).__module__.startswith("psycopg"):
            with dbapi_connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                self.pids.add(int(cursor.fetchone()[0]))
            dbapi_connection.rollback()

    def seconds(self) -> float:
        total = 0
        for pid in list(self.pids):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone (or on another machine): not counted
            total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / self._tick

    def close(self) -> None:
        event.remove(Pool, "connect", self._connected)


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def open_overview(window: str, seconds: float, server: ServerCpu) -> tuple[float, float, int, float]:
    """An Overview left open at ``window``, refreshing as the page would: ``(share of a core, of which
    the database server, renders, slowest render)``."""
    from outbox_admin.ui.refresh import backoff

    case = Case(f"Overview, {window}", "overview", state={"overview_window": window})
    at = app(case)
    run(at, case)  # opened: the first render is measured above, not here
    own, db = own_cpu(), server.seconds()
    started = time.monotonic()
    renders, slowest = 0, 0.0
    while time.monotonic() - started < seconds:
        took = run(at, case)
        renders += 1
        slowest = max(slowest, took)
        time.sleep(max(0.0, backoff(REFRESH_SECONDS, took) - took))
    elapsed = time.monotonic() - started
    db_seconds = server.seconds() - db
    return (own_cpu() - own + db_seconds) / elapsed, db_seconds / elapsed, renders, slowest


# -- states and the run ---------------------------------------------------------------------


@contextmanager
def environment(url: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in ("OUTBOX_DATABASE_URL", "OUTBOX_DASHBOARD_PASSWORD")}
    os.environ["OUTBOX_DATABASE_URL"] = url
    os.environ.pop("OUTBOX_DASHBOARD_PASSWORD", None)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def measure(
    backend: str, url: str, state: str, report: Report, rounds: int, cpu_seconds: float, *, smoke: bool = False
) -> None:
    server = ServerCpu()
    try:
        with environment(url):
            warm = Case("Publish", "publish")
            run(app(warm), warm)  # the modules are imported once per server process, not per page
            for case in cases(url, smoke=smoke):
                cold()
                first, first_cpu = timed(app(case), case)
                renders = [timed(app(case), case) for _ in range(rounds)]
                samples = [wall for wall, _ in renders]
                cpu = sorted(c for _, c in renders)[len(renders) // 2]
                name = f"{state}: {case.name}"
                detail = f"first {first:.2f} s (CPU {first_cpu:.2f} s), median CPU {cpu:.2f} s"
                median = report.add(backend, name, samples, "s", detail=detail)
                print(f"{backend} {name}: first {first:.2f} s, median {median:.2f} s", file=sys.stderr, flush=True)
                worst = max(first, median)
                report.target(backend, f"{name}, first and median", worst, "<=", RENDER_TARGET_SECONDS, "s")
            if cpu_seconds > 0:
                for window in ("1 hour",) if cpu_seconds < 1 else ("1 hour", "7 days"):
                    share, db, renders, slowest = open_overview(window, cpu_seconds, server)
                    name = f"{state}: open Overview, {window}, share of a core"
                    detail = f"{renders} renders, slowest {slowest:.2f} s, database server {db:.1%}"
                    report.add(backend, name, [share * 100], "%", detail=detail)
                    report.target(backend, name, share * 100, "<=", CPU_TARGET_SHARE * 100, "%")
            cold()
    finally:
        server.close()


def burst(url: str, events: int) -> None:
    """The second state: statistics taken on the quiet outbox, then a burst they do not know about."""
    engine = make_engine(url)
    try:
        vacuum_analyze(engine)
        seed(engine, events, mix={"PENDING": 1}, retry_fraction=0, span_seconds=300)
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=1_000_000, help="events to seed (default 1,000,000)")
    p.add_argument("--days", type=float, default=8.0, help="the seeded events' creation times span this many days")
    p.add_argument("--burst", type=int, default=None, help="events of the burst (default: 5%% of --events)")
    p.add_argument("--cpu-seconds", type=float, default=30.0, help="real time an open Overview is measured for")
    p.add_argument("--url", help="measure this existing database as it is instead of seeding one")
    args = p.parse_args(argv)
    import streamlit.logger

    streamlit.logger.set_log_level(logging.ERROR)  # AppTest outside a server warns on every render
    events = 2_000 if args.smoke else args.events
    cpu_seconds = 0.5 if args.smoke else args.cpu_seconds
    rounds = repeats(args)
    burst_events = args.burst if args.burst is not None else max(1, events // 20)
    params = {"events": events, "days": args.days, "burst": burst_events, "repeats": rounds, "url": bool(args.url)}
    report = Report("scale", params)
    if args.url:
        backend = "postgres" if args.url.startswith("postgres") else "sqlite"
        measure(backend, args.url, "as it is", report, rounds, cpu_seconds)
        return report.finish(args)
    for backend in backends(args.db):
        with temp_database(backend, postgres_url=args.postgres_url) as url:
            engine = make_engine(url)
            try:
                pin_statistics(engine, TABLES)
                started = time.perf_counter()
                seed(
                    engine,
                    events,
                    mix=MIX,
                    span_seconds=args.days * 86400,
                    backlog=round(events * BACKLOG_SHARE),
                )
                report.notes.append(
                    f"{backend}: seeded {events:,} events over {args.days:g} days in "
                    f"{time.perf_counter() - started:.0f} s"
                )
            finally:
                engine.dispose()
            measure(backend, url, "never analysed", report, rounds, cpu_seconds, smoke=args.smoke)
            started = time.perf_counter()
            burst(url, burst_events)
            report.notes.append(
                f"{backend}: ANALYZE, then a burst of {burst_events:,} events in {time.perf_counter() - started:.0f} s"
            )
            measure(backend, url, "stale statistics after a burst", report, rounds, cpu_seconds, smoke=args.smoke)
    report.notes.append(f"finished {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC")
    return report.finish(args)


if __name__ == "__main__":
    run_main(main)

"""The Overview page: counts, latency, throughput, retries and error groups, refreshed live.

Its numbers come from the rollup (``analytics.overview``, ``outbox_admin.stats``), so a
refresh costs the same at 7 days as at 15 minutes, and are shared by every tab for a
few seconds (``CACHE_SECONDS``); a refresh slower than its interval backs off
(``ui.refresh``).
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import pandas as pd
import streamlit as st
from sqlalchemy import Engine

from ... import analytics, charts, demo
from .. import components, refresh, sidebar
from ..context import Context, current

WINDOWS = {
    "15 minutes": dt.timedelta(minutes=15),
    "1 hour": dt.timedelta(hours=1),
    "24 hours": dt.timedelta(days=1),
    "7 days": dt.timedelta(days=7),
}


#: How long the Overview's numbers are reused, across refreshes and browser tabs, per window: a long
#: window's numbers move slowly, and each computation costs the same for every tab.
CACHE_SECONDS = {"15 minutes": 2, "1 hour": 2, "24 hours": 10, "7 days": 30}


@st.cache_data(show_spinner=False, max_entries=64, ttl=600)
def _numbers(_engine: Engine, url: str, window: str, slot: int) -> analytics.Overview:
    """The window's numbers, shared by every tab on ``url`` for the ``slot`` (``CACHE_SECONDS``)."""
    return analytics.overview(_engine, WINDOWS[window])


def overview() -> None:
    ctx = current()
    st.title("Overview")
    components.flash()
    if not analytics.has_events(ctx.engine):
        _empty_state(ctx)
        return
    window = st.segmented_control("Window", list(WINDOWS), default="1 hour", key="overview_window") or "1 hour"
    base = sidebar.refresh_interval(ctx)
    every = refresh.interval(base, "overview")

    @st.fragment(run_every=every)
    def live_numbers() -> None:
        started = time.perf_counter()
        numbers = _numbers(ctx.engine, ctx.url, window, int(time.time() // CACHE_SECONDS[window]))
        counts = numbers.totals.counts
        columns = st.columns(len(counts))
        for column, (status, count) in zip(columns, zip(counts["status"], counts["count"], strict=True), strict=True):
            column.metric(status.title(), f"{count:,}")
        stats = numbers.window
        left, right, third = st.columns(3)
        left.metric(f"Latency p50 ({window})", _seconds(stats.latency_p50, approximate=True))
        right.metric(f"Latency p95 ({window})", _seconds(stats.latency_p95, approximate=True))
        third.metric(f"Completed ({window})", f"{stats.completed:,}")
        st.caption(_about(numbers, window, every, base))
        # template=None: Streamlit's theme styles the charts, and each refresh saves validating a template.
        first, second = st.columns([2, 1])
        title = f"Events published per {stats.bucket}, and now done"
        first.plotly_chart(charts.throughput_figure(stats.throughput, title=title, template=None), width="stretch")
        second.plotly_chart(charts.status_figure(counts, template=None), width="stretch")
        first, second = st.columns(2)
        first.plotly_chart(charts.retry_histogram_figure(numbers.totals.retries, template=None), width="stretch")
        errors = components.for_chart(numbers.errors, ["error_group"])
        second.plotly_chart(charts.error_groups_figure(errors, template=None), width="stretch")
        refresh.rendered(base, "overview", time.perf_counter() - started, every)

    live_numbers()


def _about(numbers: analytics.Overview, window: str, every: float | None, base: float | None) -> str:
    """What the numbers cover and how fresh they are, in one line."""
    stats = numbers.window
    since = stats.since.strftime("%Y-%m-%d %H:%M UTC")
    whole = "" if stats.since.minute or WINDOWS[window] <= dt.timedelta(days=1) else ", from a whole hour"
    parts = [
        f"Events created since {since}{whole}; counts for all events as of {numbers.at:%H:%M:%S} UTC "
        f"(shared by every tab for {CACHE_SECONDS[window]} s)",
        "latencies (≈) from a histogram, within a few per cent",
    ]
    if numbers.errors_since > stats.since:
        parts.append(
            f"error groups of the newest {analytics.OVERVIEW_ERRORS:,} errors, since "
            f"{numbers.errors_since:%Y-%m-%d %H:%M} UTC"
        )
    if every is not None and base is not None and every > base:
        last = refresh.last_render("overview") or 0.0
        parts.append(f"refreshing every {every:g} s instead of {base:g} s: the last refresh took {last:.1f} s")
    return "; ".join(parts) + "."


def _seconds(value: Any, *, approximate: bool = False) -> str:
    if value is None or pd.isna(value):
        return "—"
    text = f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"
    return f"≈ {text}" if approximate else text


def _empty_state(ctx: Context) -> None:
    st.info(
        "Application code writes each event into the outbox table in the same transaction as its change, "
        "so an event exists only if the change committed. A dispatcher then delivers every event at least "
        "once, retrying failures and parking poison events as FAILED for a person to requeue."
    )
    if ctx.readonly:
        st.caption("This dashboard is read-only.")
        return
    if st.button("Load demo data", type="primary"):
        bar = st.progress(0.0, text="Running demo mutations...")
        demo.load_demo_data(ctx.engine, progress=lambda done, total: bar.progress(done / total))
        bar.empty()
        components.flash("Demo data loaded: projects created, updated and archived, some deliveries failed.")
        st.rerun()

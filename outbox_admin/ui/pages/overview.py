"""The Overview page: counts, latency, throughput, retries and error groups, refreshed live; the paused
event types above them; each handler's deliveries, failures and latency (the delivery ledger) below.

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
import plotly.graph_objects as go
import streamlit as st
from sqlalchemy import Engine

from ... import analytics, charts
from ...filters import EventFilter
from .. import auth, components, refresh, schema, sidebar
from ..context import Context, current
from . import actions
from .pauses import pauses_panel

WINDOWS = {
    "15 minutes": dt.timedelta(minutes=15),
    "1 hour": dt.timedelta(hours=1),
    "24 hours": dt.timedelta(days=1),
    "7 days": dt.timedelta(days=7),
}


#: How long the Overview's numbers are reused, across refreshes and browser tabs, per window: a long
#: window's numbers move slowly, and each computation costs the same for every tab.
CACHE_SECONDS = {"15 minutes": 2, "1 hour": 5, "24 hours": 15, "7 days": 30}


@st.cache_data(show_spinner=False, max_entries=64, ttl=600)
def _numbers(_engine: Engine, url: str, window: str, slot: int) -> analytics.Overview:
    """The window's numbers, shared by every tab on ``url`` for the ``slot`` (``CACHE_SECONDS``)."""
    return analytics.overview(_engine, WINDOWS[window])


#: The per-handler table reads the window's deliveries themselves (not a rollup): it covers at most this.
HANDLER_WINDOW = dt.timedelta(hours=1)


@st.cache_data(show_spinner=False, max_entries=64, ttl=600)
def _handler_numbers(_engine: Engine, url: str, window: str, slot: int) -> analytics.HandlerSummary:
    """Each handler's numbers over the window (at most ``HANDLER_WINDOW``), shared like ``_numbers``."""
    return analytics.handler_summary(_engine, min(WINDOWS[window], HANDLER_WINDOW))


@st.cache_resource(show_spinner=False, max_entries=16)
def _figures(url: str, window: str, at: dt.datetime, _numbers: analytics.Overview) -> tuple[go.Figure, ...]:
    """The charts of one computation of the numbers (``at``), built once and shared by every refresh and
    tab until the next (plotly validates every property it is given: 20 ms a figure). ``template=None``:
    Streamlit's theme styles them, and no template is validated."""
    stats, totals = _numbers.window, _numbers.totals
    title = f"Events published per {stats.bucket}, and now done"
    return (
        charts.throughput_figure(stats.throughput, title=title, template=None),
        charts.status_figure(totals.counts, template=None),
        charts.retry_histogram_figure(totals.retries, template=None),
        charts.error_groups_figure(components.for_chart(_numbers.errors, ["error_group"]), template=None),
    )


def overview() -> None:
    ctx = current()
    st.title("Overview")
    components.flash()
    pauses_panel(ctx)
    if not analytics.has_events(ctx.engine):
        _empty_state(ctx)
        return
    window = (
        st.segmented_control(
            "Window", list(WINDOWS), default=components.remembered("overview_window", "1 hour"), key="overview_window"
        )
        or "1 hour"
    )

    @components.live(sidebar.refresh_interval(ctx), name="overview")
    def live_numbers() -> None:
        numbers = _numbers(ctx.engine, ctx.url, window, int(time.time() // CACHE_SECONDS[window]))
        counts = numbers.totals.counts
        _status_tiles(ctx, counts)
        stats = numbers.window
        left, right, third = st.columns(3)
        left.metric(f"Latency p50 ({window})", _seconds(stats.latency_p50, approximate=True))
        right.metric(f"Latency p95 ({window})", _seconds(stats.latency_p95, approximate=True))
        third.metric(f"Completed ({window})", f"{stats.completed:,}")
        st.caption(_about(numbers, window, sidebar.refresh_interval(ctx)))
        throughput, statuses, retries, errors = _figures(ctx.url, window, numbers.at, numbers)
        first, second = st.columns([2, 1])
        first.plotly_chart(throughput, width="stretch")
        second.plotly_chart(statuses, width="stretch")
        first, second = st.columns(2)
        first.plotly_chart(retries, width="stretch")
        second.plotly_chart(errors, width="stretch")
        _handlers(_handler_numbers(ctx.engine, ctx.url, window, int(time.time() // CACHE_SECONDS[window])))

    live_numbers()
    actions.pending_dialog()


#: A short tile label (a long one is clipped), explained in its help.
EXPIRED_HELP = (
    "PROCESSING events whose lease expired: the dispatcher that claimed them stopped renewing it, and they "
    "are stuck until a recovery (a dispatcher's next tick, or Recover now)."
)


def _status_tiles(ctx: Context, counts: pd.DataFrame) -> None:
    """A tile per status, PROCESSING split in two: events whose dispatcher holds a live lease, and those
    whose lease expired (stuck until a recovery), with who held them and "Recover now"."""
    expired = analytics.expired_leases(ctx.engine)
    tiles: list[tuple[str, int, str | None]] = []
    for status, count in zip(counts["status"], counts["count"], strict=True):
        if status == "PROCESSING":
            # Two reads a moment apart: a lease that expired in between must not make this negative.
            tiles += [
                ("Processing", max(0, int(count) - expired.count), "PROCESSING events whose lease is live."),
                ("Expired leases", expired.count, EXPIRED_HELP),
            ]
        else:
            tiles.append((status.title(), int(count), None))
    for column, (label, count, help_text) in zip(st.columns(len(tiles)), tiles, strict=True):
        column.metric(label, f"{count:,}", help=help_text)
    if not expired.count:
        return
    holders = expired.by_dispatcher
    held = ", ".join(
        f"{components.literal(name or '?')} ({events:,})"
        for name, events in zip(holders["dispatcher"].head(3), holders["events"].head(3), strict=True)
    ) + (f" and {len(holders) - 3:,} more" if len(holders) > 3 else "")
    text, button = st.columns([5, 1])
    text.warning(
        f"{expired.count:,} event(s) are stuck in PROCESSING: their lease expired (the oldest "
        f"{components.duration(expired.oldest_seconds or 0)} ago) and the dispatcher that held them stopped "
        f"renewing it. Held by {held}. A running dispatcher recovers them at its next tick. "
        + components.events_link(EventFilter(lease_expired=True), "Show them in Events")
    )
    if auth.can_write(ctx) and button.button("Recover now", type="primary", width="stretch"):
        actions.request("recover", status=None)
        st.rerun(scope="app")  # the dialog is drawn by the page, outside this fragment


def _handlers(summary: analytics.HandlerSummary) -> None:
    """Per handler: deliveries and their rate, events it is failing and the failure rate, latency from
    the event's commit to the handler's acknowledgement (p50/p95), over the last hour at most."""
    span = components.duration((summary.until - summary.since).total_seconds())
    st.subheader("Deliveries per handler")
    if summary.frame.empty:
        st.caption(f"No delivery or failure recorded in the last {span}.")
        return
    frame = summary.frame.assign(
        handler=summary.frame["handler"].map(analytics.handler_label),
        failure_rate=summary.frame["failure_rate"] * 100,
        latency_p50=summary.frame["latency_p50"] * 1000,
        latency_p95=summary.frame["latency_p95"] * 1000,
    )
    columns = ["handler", "deliveries", "per_minute", "failing", "failure_rate", "retried", "latency_p50"]
    columns += ["latency_p95", "duration_ms_mean", "last_delivery"]
    st.dataframe(
        components.data(frame[columns]),
        hide_index=True,
        width="stretch",
        column_config={
            "per_minute": st.column_config.NumberColumn("per minute", format="%.1f"),
            "failing": st.column_config.NumberColumn(
                "failing", help="Events that failed an attempt in the window and that this handler has not delivered."
            ),
            "failure_rate": st.column_config.NumberColumn(
                "failure rate", format="%.1f%%", help="failing / (deliveries + failing)"
            ),
            "retried": st.column_config.NumberColumn(
                "retried", help="Deliveries that took this handler more than one try."
            ),
            "latency_p50": st.column_config.NumberColumn("latency p50 (ms)", format="%.0f"),
            "latency_p95": st.column_config.NumberColumn("latency p95 (ms)", format="%.0f"),
            "duration_ms_mean": st.column_config.NumberColumn("call (ms, mean)", format="%.2f"),
            "last_delivery": "last delivery (UTC)",
        },
    )
    since = summary.since.strftime("%Y-%m-%d %H:%M:%S UTC")
    note = (
        f" (the newest {int(summary.frame['deliveries'].sum()):,} deliveries reach back only that far)"
        if summary.capped
        else ""
    )
    st.caption(
        f"Since {since}{note}, from the delivery ledger: latency from the event's commit to the handler's "
        "acknowledgement, exact (nearest rank); a call's time is the handler's own."
    )


def _about(numbers: analytics.Overview, window: str, base: float | None) -> str:
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
    every = refresh.interval(base, "overview", declare=False)
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
    st.info(schema.INTRO)
    st.caption("No events yet.")
    if not auth.can_write(ctx):
        st.caption("This dashboard is read-only." if ctx.readonly else "Viewers cannot load demo data.")
        return
    if st.button("Load demo data", type="primary"):
        schema.load_demo(ctx)
    st.caption("Load demo data also creates the demo's own tables (projects) and marks this database as a demo one.")

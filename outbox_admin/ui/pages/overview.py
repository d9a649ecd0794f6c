"""The Overview page: counts, latency, throughput, retries and error groups, refreshed live; the paused
event types above them."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pandas as pd
import streamlit as st

from ... import analytics, charts
from ...filters import EventFilter
from .. import auth, components, schema, sidebar
from ..context import Context, current
from . import actions
from .pauses import pauses_panel

WINDOWS = {
    "15 minutes": dt.timedelta(minutes=15),
    "1 hour": dt.timedelta(hours=1),
    "24 hours": dt.timedelta(days=1),
    "7 days": dt.timedelta(days=7),
}


def _since(label: str) -> dt.datetime:
    return dt.datetime.now(dt.UTC) - WINDOWS[label]


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

    @components.live(sidebar.refresh_interval(ctx))
    def live_numbers() -> None:
        since = _since(window)
        counts = analytics.status_counts(ctx.engine)
        _status_tiles(ctx, counts)
        latency = analytics.latency_stats(ctx.engine, since=since, by_type=False)
        overall = latency.iloc[0]
        left, right, third = st.columns(3)
        left.metric(f"Latency p50 ({window})", _seconds(overall["p50"]))
        right.metric(f"Latency p95 ({window})", _seconds(overall["p95"]))
        third.metric(f"Completed ({window})", f"{int(overall['events']):,}")
        bucket = (
            "1min"
            if WINDOWS[window] <= dt.timedelta(hours=1)
            else ("10min" if WINDOWS[window] <= dt.timedelta(days=1) else "1h")
        )
        first, second = st.columns([2, 1])
        first.plotly_chart(
            charts.throughput_figure(
                analytics.throughput(ctx.engine, bucket, since=since), title=f"Events per {bucket}"
            ),
            width="stretch",
        )
        second.plotly_chart(charts.status_figure(counts), width="stretch")
        first, second = st.columns(2)
        first.plotly_chart(
            charts.retry_histogram_figure(analytics.retry_histogram(ctx.engine, totals=counts)), width="stretch"
        )
        second.plotly_chart(
            charts.error_groups_figure(
                components.for_chart(analytics.error_summary(ctx.engine, since=since, limit=10), ["error_group"])
            ),
            width="stretch",
        )

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


def _seconds(value: Any) -> str:
    if value is None or pd.isna(value):
        return "—"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def _empty_state(ctx: Context) -> None:
    st.info(schema.INTRO)
    st.caption("No events yet.")
    if not auth.can_write(ctx):
        st.caption("This dashboard is read-only." if ctx.readonly else "Viewers cannot load demo data.")
        return
    if st.button("Load demo data", type="primary"):
        schema.load_demo(ctx)
    st.caption("Load demo data also creates the demo's own tables (projects) and marks this database as a demo one.")

"""The Overview page: counts, latency, throughput, retries and error groups, refreshed live; the paused
event types above them."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pandas as pd
import streamlit as st

from ... import analytics, charts
from .. import auth, components, schema, sidebar
from ..context import Context, current
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
        columns = st.columns(len(counts))
        for column, (status, count) in zip(columns, zip(counts["status"], counts["count"], strict=True), strict=True):
            column.metric(status.title(), f"{count:,}")
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

"""The Live page: the status changes of the last minutes as they happen."""

from __future__ import annotations

import datetime as dt

import streamlit as st

from ... import analytics, charts
from .. import components, links, sidebar
from ..context import current


def live() -> None:
    ctx = current()
    st.title("Live")
    manual_only = st.toggle(
        "Only manual actions", key="live_manual_only", help="Requeues and discards people made, with who made them."
    )

    @components.live(sidebar.refresh_interval(ctx), name="live")
    def feed() -> None:
        recent = analytics.transitions_frame(
            ctx.engine, since=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10), limit=5000, manual_only=manual_only
        )
        st.plotly_chart(charts.status_flow_figure(recent, title="Status changes, last 10 minutes"), width="stretch")
        latest = analytics.transitions_frame(ctx.engine, limit=100, manual_only=manual_only)
        st.caption(f"Latest {len(latest)} status changes, newest first")
        shown = latest[
            [
                "at",
                "event_type",
                "entity_type",
                "entity_id",
                "from_status",
                "to_status",
                "attempt",
                "actor",
                "error_message",
                "event_id",
            ]
        ]
        shown = shown.assign(event_id=shown["event_id"].map(links.event_url))
        st.dataframe(
            components.styled(components.data(shown)),
            hide_index=True,
            width="stretch",
            column_config={
                "at": "at (UTC)",
                "error_message": st.column_config.TextColumn("error", width="large"),
                "event_id": links.link_column("event"),
            },
        )

    feed()

"""The Failures page: error groups and their dead letters."""

from __future__ import annotations

import streamlit as st

from ... import analytics, charts
from ...display import visible
from ...filters import EventFilter
from .. import auth, components, links
from ..context import current
from . import actions


def failures() -> None:
    ctx = current()
    st.title("Failures")
    components.flash()
    groups = analytics.error_summary(ctx.engine, limit=50)
    if groups.empty:
        st.success("No errors recorded.")
        return
    st.caption(
        "Errors grouped by message with ids and numbers stripped; FAILED events are dead letters waiting for a person."
    )
    table = groups[["error_group", "events", "failed", "first_seen", "last_seen", "event_types", "example_event_id"]]
    key = components.table_key("groups", groups["error_group"])
    table = table.assign(example_event_id=table["example_event_id"].map(links.event_url))
    chosen = st.dataframe(
        components.data(table),
        column_config={"example_event_id": links.link_column("example")},
        hide_index=True,
        width="stretch",
        on_select="rerun",
        selection_mode="single-row",
        key=key,
    )
    rows = list(chosen.selection.rows) if chosen is not None else []
    group = groups["error_group"].iloc[rows[0]] if rows else None
    left, right = st.columns(2)
    left.plotly_chart(charts.error_groups_figure(components.for_chart(groups, ["error_group"])), width="stretch")
    right.plotly_chart(charts.retry_histogram_figure(analytics.retry_histogram(ctx.engine)), width="stretch")
    if group is None:
        st.caption("Select a group to see its FAILED events and requeue them.")
        return
    st.subheader("FAILED events of this group")
    st.code(visible(group), language=None)
    dead = analytics.events_frame(ctx.engine, status="FAILED", error_group=group, limit=200)
    key = components.table_key("dead", dead["id"])
    columns = ["id", "created_at", "event_type", "entity_id", "org_id", "status", "retry_count", "error_message"]
    picked = st.dataframe(
        components.styled(components.data(dead[columns].assign(id=dead["id"].map(links.event_url)))),
        column_config={"id": links.link_column("id"), "error_message": st.column_config.TextColumn("error")},
        hide_index=True,
        width="stretch",
        on_select="rerun",
        selection_mode="multi-row",
        key=key,
    )
    picked_ids = [dead["id"].iloc[r] for r in (picked.selection.rows if picked is not None else []) if r < len(dead)]
    if not auth.can_write(ctx):
        return
    left, right = st.columns(2)
    if left.button("Requeue the whole group", disabled=dead.empty, width="stretch"):
        actions.request("requeue", filters=EventFilter(error_group=group), status="FAILED")
    if right.button("Requeue selected", disabled=not picked_ids, width="stretch"):
        actions.request("requeue", event_ids=tuple(picked_ids), status="FAILED")
    actions.pending_dialog()

"""The Failures page: error groups, most dead letters first, and each group's dead letters, every list paged;
or the dead letters' failing handlers, grouped by handler and error (from the delivery ledger)."""

from __future__ import annotations

import shlex
from typing import Any

import streamlit as st

from ... import analytics, charts
from ...display import visible
from ...filters import EventFilter
from .. import auth, components, links
from ..context import Context, current
from . import actions

GROUPS_PAGE = 50
EVENTS_PAGE = 200
GROUPINGS = ("By error", "By handler")


def _picked_group(table: Any, key: str) -> list[int]:
    """A table of groups (its example event linked), one selectable; the selected row, if any, as a list."""
    chosen = st.dataframe(
        components.data(table),
        column_config={"example_event_id": links.link_column("example")},
        hide_index=True,
        width="stretch",
        on_select="rerun",
        selection_mode="single-row",
        key=key,
    )
    return [r for r in (chosen.selection.rows if chosen is not None else []) if r < len(table)]


def failures() -> None:
    ctx = current()
    st.title("Failures")
    components.flash()
    grouping = st.segmented_control(
        "Group", GROUPINGS, default=components.remembered("failures_grouping", GROUPINGS[0]), key="failures_grouping"
    )
    if grouping == "By handler":
        _by_handler(ctx)
        return
    # One read for the page of groups and their number (the pager then shows the page it was given).
    wanted = max(0, int(st.session_state.get("failures_groups_page", 0)))
    found = analytics.error_groups_page(ctx.engine, limit=GROUPS_PAGE, offset=wanted * GROUPS_PAGE, order="failed")
    if found.total == 0:
        st.success("No errors recorded.")
        return
    st.caption(
        "Errors grouped by message with ids and numbers stripped, most FAILED events first; FAILED events are "
        "dead letters waiting for a person."
    )
    offset = components.pager("failures_groups_page", found.total, GROUPS_PAGE, "error groups")
    groups = found.frame
    if offset != wanted * GROUPS_PAGE:  # the page asked for is past the last one: the last one
        groups = analytics.error_summary(ctx.engine, limit=GROUPS_PAGE, offset=offset, order="failed")
    table = groups[["error_group", "events", "failed", "first_seen", "last_seen", "event_types", "example_event_id"]]
    key = components.table_key("groups", groups["error_group"])
    table = table.assign(example_event_id=table["example_event_id"].map(links.event_url))
    rows = _picked_group(table, key)
    group = groups["error_group"].iloc[rows[0]] if rows else None
    left, right = st.columns(2)
    left.plotly_chart(charts.error_groups_figure(components.for_chart(groups, ["error_group"])), width="stretch")
    right.plotly_chart(charts.retry_histogram_figure(analytics.rollup_totals(ctx.engine).retries), width="stretch")
    if group is None:
        st.caption("Select a group to see its FAILED events, requeue or discard them.")
        return
    _group(ctx, group)


def _exact_name(group: str, *, command: bool = True) -> None:
    """The selected group's exact name in a code block, whose copy button copies it, and the CLI
    command that selects it: the name must be given exactly (``--error-group``, the Events filter).

    A name holding characters a terminal would act on or hide is shown with escapes (as everywhere),
    so its copy is not the name: the page says so instead of offering a command that matches nothing.
    ``command=False`` for a handler's error (from the ledger), which ``--error-group`` does not select.
    """
    shown = visible(group)
    st.caption("The group's exact name (the button at the right of the block copies it):")
    st.code(shown, language=None)
    if shown != group:
        st.warning(
            "This name holds characters a terminal would act on or hide, shown as escapes: a copy of it "
            "is not the name and matches no group."
        )
        return
    if command:
        st.code(f"outbox-admin requeue --error-group {shlex.quote(group)} --dry-run", language="bash")


def _group(ctx: Context, group: str) -> None:
    """One group's FAILED events, paged, with its actions and a link to all its events on the Events page."""
    engine = ctx.engine
    st.subheader("FAILED events of this group")
    _exact_name(group)
    st.markdown(components.events_link(EventFilter(error_group=group), "Open this group in Events"))
    dead_filter = EventFilter(status=("FAILED",), error_group=group)
    page_key = components.table_key("failures_dead_page", [group])
    # One read for the page and the count (events_page): the pager shows the page it found.
    found = analytics.events_page(
        engine, dead_filter, page=int(st.session_state.get(page_key, 0)), page_size=EVENTS_PAGE
    )
    total, dead = found.total, found.frame
    components.pager(page_key, total, EVENTS_PAGE, "FAILED events")
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
    picked_ids = tuple(
        dead["id"].iloc[r] for r in (picked.selection.rows if picked is not None else []) if r < len(dead)
    )
    if not auth.can_write(ctx):
        return
    first, second, third, fourth = st.columns(4)
    whole = EventFilter(error_group=group)
    if first.button("Requeue the whole group", disabled=total == 0, width="stretch"):
        actions.request("requeue", filters=whole, status="FAILED")
    if second.button("Discard the whole group", disabled=total == 0, width="stretch"):
        actions.request("discard", filters=whole, status="FAILED")
    if third.button("Requeue selected", disabled=not picked_ids, width="stretch"):
        actions.request("requeue", event_ids=picked_ids, status="FAILED")
    if fourth.button("Discard selected", disabled=not picked_ids, width="stretch"):
        actions.request("discard", event_ids=picked_ids, status="FAILED")
    actions.pending_dialog()


def _by_handler(ctx: Context) -> None:
    """FAILED events per failing handler and error group: which handler refuses what, from the ledger; a
    group's events, and requeueing them (a requeue runs only the handlers that do not have them)."""
    wanted = max(0, int(st.session_state.get("failures_handlers_page", 0)))
    found = analytics.handler_failures(ctx.engine, limit=GROUPS_PAGE, offset=wanted * GROUPS_PAGE)
    if found.total == 0:
        st.success("No FAILED event is waiting on a handler.")
        return
    st.caption(
        "FAILED events by the handler that failed them and never delivered them, and its error (ids and "
        "numbers stripped). An event failed by two handlers counts in both."
    )
    offset = components.pager("failures_handlers_page", found.total, GROUPS_PAGE, "handler groups")
    groups = found.frame
    if offset != wanted * GROUPS_PAGE:
        groups = analytics.handler_failures(ctx.engine, limit=GROUPS_PAGE, offset=offset).frame
    table = groups[["handler", "error_group", "events", "first_seen", "last_seen", "event_types", "example_event_id"]]
    table = table.assign(
        handler=table["handler"].map(analytics.handler_label),
        example_event_id=table["example_event_id"].map(links.event_url),
    )
    key = components.table_key("handler_groups", groups["handler"] + "\x1f" + groups["error_group"])
    rows = _picked_group(table, key)
    if not rows:
        st.caption("Select a row to see its FAILED events and requeue them.")
        return
    handler, group = groups["handler"].iloc[rows[0]], groups["error_group"].iloc[rows[0]]
    st.subheader("FAILED events of this handler and error")
    st.markdown(f"Handler {components.literal(analytics.handler_label(handler))}")
    _exact_name(group, command=False)
    ids = analytics.failing_event_ids(ctx.engine, handler, group)
    page_key = components.table_key("failures_handler_events_page", [handler, group])
    start = components.pager(page_key, len(ids), EVENTS_PAGE, "FAILED events")
    shown = ids[start : start + EVENTS_PAGE]
    dead = analytics.events_frame(ctx.engine, EventFilter(event_ids=tuple(shown)), limit=EVENTS_PAGE) if shown else None
    if dead is not None and not dead.empty:
        columns = ["id", "created_at", "event_type", "entity_id", "org_id", "retry_count", "error_message"]
        st.dataframe(
            components.data(dead[columns].assign(id=dead["id"].map(links.event_url))),
            column_config={"id": links.link_column("id"), "error_message": st.column_config.TextColumn("error")},
            hide_index=True,
            width="stretch",
        )
    if not auth.can_write(ctx) or not ids:
        return
    if st.button(f"Requeue these {len(ids):,} event(s)", help="Only the handlers that do not have them run again."):
        actions.request("requeue", event_ids=tuple(ids), status="FAILED")
    actions.pending_dialog()

"""The Events page: filters kept in the link, the table, one event's detail, actions and exports."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import streamlit as st

from ... import analytics, charts, demo
from ...admin import REPLAYABLE
from ...display import time_text, visible, visible_json
from ...errors import OutboxError
from ...event_types import registered_event_types
from ...filters import STATUSES, EventFilter, filter_from_query, filter_to_query, format_payload_conditions
from .. import auth, components, links, sidebar
from ..context import Context, current
from . import actions

PAGE_SIZE = 50
EXPORT_LIMIT = 10_000


def _filter_form(ctx: Context) -> EventFilter:
    """Filters kept in the URL query string, so a view can be shared as a link."""
    try:
        current_filter = filter_from_query(st.query_params.to_dict())
    except OutboxError as exc:
        st.error(f"Ignoring the filter in the link: {components.literal(exc)}")
        current_filter = EventFilter()
    with st.form("filters"):
        first, second, third = st.columns(3)
        statuses = first.multiselect("Status", list(STATUSES), default=list(current_filter.status or ()))
        demo.ensure_demo_event_types()
        # The registry is the closed set of types, so no scan of the table is needed for the picker.
        known_types = sorted(set(registered_event_types()) | set(current_filter.event_type or ()))
        types = second.multiselect("Event type", known_types, default=list(current_filter.event_type or ()))
        known_orgs = sorted(set(analytics.distinct_values(ctx.engine, "org_id")) | set(current_filter.org_id or ()))
        orgs = third.multiselect("Org", known_orgs, default=list(current_filter.org_id or ()), format_func=visible)
        first, second, third, fourth = st.columns([1, 1, 1, 2])
        entity_default = (current_filter.entity_type or "") + (
            f"/{current_filter.entity_id}" if current_filter.entity_id else ""
        )
        entity = first.text_input("Entity", value=entity_default, placeholder="Project/42")
        since = second.text_input(
            "Since (UTC)",
            value=current_filter.since.isoformat() if current_filter.since else "",
            placeholder="2026-11-27T10:00",
        )
        until = third.text_input(
            "Until (UTC)",
            value=current_filter.until.isoformat() if current_filter.until else "",
            placeholder="2026-11-27T12:00",
        )
        search = fourth.text_input("Search ids and errors", value=current_filter.search or "")
        payload = st.text_area(
            "Payload",
            value=format_payload_conditions(current_filter.payload or ()),
            placeholder="customer.id=42\nstatus=ACTIVE",
            help="One path=value a line, all must hold; items.0.sku indexes an array. The value is JSON when it "
            'parses (42, true, null, "42" for the text), else text.',
        )
        first, second, third = st.columns(3)
        expired_only = first.checkbox(
            "Only PROCESSING with an expired lease",
            value=current_filter.lease_expired is True,
            help="Stuck: the dispatcher that claimed them stopped renewing the lease.",
        )
        waiting_only = second.checkbox(
            "Only PENDING waiting on a backoff",
            value=current_filter.scheduled is True,
            help="Failed an attempt; due again at their next attempt time.",
        )
        keep_group = current_filter.error_group is not None and third.checkbox(
            "Only the error group of the link", value=True, help=components.literal(current_filter.error_group)
        )
        applied = st.form_submit_button("Apply filters")
    if applied:
        try:
            chosen = EventFilter.build(
                status=statuses or None,
                event_type=types or None,
                org_id=orgs or None,
                entity=entity or None,
                since=since or None,
                until=until or None,
                search=search or None,
                error_group=current_filter.error_group if keep_group else None,
                payload=payload or None,
                lease_expired=True if expired_only else None,
                scheduled=True if waiting_only else None,
            )
        except OutboxError as exc:
            st.error(components.literal(exc))
            return current_filter
        st.query_params.from_dict(filter_to_query(chosen))
        links.remember_events_query()
        return chosen
    return current_filter


def events() -> None:
    ctx = current()
    st.title("Events")
    components.flash()
    links.restore_events_query()
    flt = _filter_form(ctx)
    if flt.error_group is not None:
        st.caption(f"Error group: {components.literal(flt.error_group)}")
    frozen = bool(links.selected_ids())

    # The table refreshes live, except while rows are selected: then it holds still.
    @components.live(None if frozen else sidebar.refresh_interval(ctx), name="events")
    def table() -> None:
        found = analytics.events_page(ctx.engine, flt, page=links.page_number(), page_size=PAGE_SIZE)
        frame, total, page, pages = found.frame, found.total, found.page, found.pages
        left, middle, right = st.columns([3, 1, 1])
        first = page * PAGE_SIZE + 1 if total else 0
        left.caption(
            f"Showing {first:,}-{page * PAGE_SIZE + len(frame):,} of {total:,} matching events "
            f"(page {page + 1} of {pages:,}), newest first"
            + (" (refresh paused while events are selected)" if frozen else "")
        )
        if middle.button("Previous", disabled=page == 0, width="stretch"):
            links.set_page(page - 1)
            st.rerun(scope="app")
        if right.button("Next", disabled=page >= pages - 1, width="stretch"):
            links.set_page(page + 1)
            st.rerun(scope="app")
        _follow_table_selection(_event_table(frame))
        selected_ids = links.selected_ids()
        if selected_ids:
            more = " ..." if len(selected_ids) > 10 else ""
            st.markdown(f"Selected: {links.event_links(selected_ids[:10])}{more}")
            if st.button("Clear selection"):
                links.select([])
                st.rerun(scope="app")
            if len(selected_ids) == 1:
                _event_detail(ctx, selected_ids[0])
        _bulk_actions(ctx, flt, selected_ids, total)

    table()
    links.remember_events_query()
    _export(ctx, flt)


TABLE_SELECTION_KEY = "events_table_selection"


def _follow_table_selection(table_key_and_ids: tuple[str, list[str], list[str]]) -> None:
    """Rows picked in the table become the link's selection (``?id=...``).

    The table starts with the link's selection where its rows are on the page; a selection
    of events not on this page (``?id=`` from elsewhere) stays until the person picks rows.
    """
    key, ids, initial = table_key_and_ids
    previous = st.session_state.get(TABLE_SELECTION_KEY)
    before = previous[1] if previous is not None and previous[0] == key else initial
    st.session_state[TABLE_SELECTION_KEY] = (key, ids)
    if ids != before and ids != links.selected_ids():
        links.select(ids)
        components.keep_flash()
        st.rerun(scope="app")  # redraw the page: details, actions and the refresh rule follow the selection


def _event_table(frame: pd.DataFrame) -> tuple[str, list[str], list[str]]:
    """The page of events with row selection: its key, the selected ids and those it started with.

    Streamlit's selection is by row position and survives a data refresh, so
    positions are turned into ids at once, and the table's key changes with the
    rows it shows: new rows mean a fresh selection (the link's), never a wrong one.
    """
    now = dt.datetime.now(dt.UTC)
    upcoming = [
        components.schedule_note(status, due, lease, now)
        for status, due, lease in zip(frame["status"], frame["available_at"], frame["locked_until"], strict=True)
    ]
    columns = ["status", "created_at", "event_type", "entity", "org_id", "retry_count", "error_message", "link"]
    if any(upcoming):  # only when some event on the page waits on a backoff or a dead lease: the table stays narrow
        columns.insert(1, "upcoming")
    shown = frame.assign(
        entity=frame["entity_type"] + "/" + frame["entity_id"],
        link=frame["id"].map(links.event_url),
        upcoming=upcoming,
    )[columns]
    key = components.table_key("events_table", frame["id"])
    wanted = set(links.selected_ids())
    initial_rows = [r for r, event_id in enumerate(frame["id"]) if event_id in wanted]
    selection = st.dataframe(
        components.styled(components.data(shown)),
        hide_index=True,
        width="stretch",
        on_select="rerun",
        selection_mode="multi-row",
        selection_default={"selection": {"rows": initial_rows}},
        key=key,
        column_config={
            "created_at": "created (UTC)",
            "retry_count": st.column_config.NumberColumn("retries"),
            "upcoming": st.column_config.TextColumn(
                "next attempt", help="PENDING: when it is due again. PROCESSING: an expired lease."
            ),
            "error_message": st.column_config.TextColumn("error", width="large"),
            "link": links.link_column("id"),
        },
    )
    rows = list(selection.selection.rows) if selection is not None else []
    ids = [frame["id"].iloc[r] for r in rows if r < len(frame)]
    return key, ids, [frame["id"].iloc[r] for r in initial_rows]


def _event_detail(ctx: Context, event_id: str) -> None:
    event = analytics.get_event(ctx.engine, event_id)
    if event is None:
        st.warning("That event no longer exists (purged).")
        return
    st.subheader(components.literal(f"{event['event_type']} {event['entity_type']}/{event['entity_id']}"))
    st.markdown(
        f"Status {components.badge(event['status'])} — attempts {event['retry_count']} — org "
        f"{components.literal(event['org_id'])} — id {components.literal(event['id'])}"
    )
    _schedule(ctx, event)
    if event["error_message"]:
        st.caption("Last error, in full")
        st.code(visible(event["error_message"]), language=None, wrap_lines=True)
    left, right = st.columns([1, 1])
    with left:
        st.caption("Payload")
        # As text, not st.json: the same escapes as everywhere (a bidi override in a value would
        # reorder what the viewer shows), and still valid JSON to copy.
        st.code(visible_json(event["payload"], indent=2), language="json")
        fields = {k: v for k, v in event.items() if k != "payload"}
        st.caption("Fields")
        st.dataframe(
            pd.DataFrame({"field": list(fields), "value": [visible(v) for v in fields.values()]}),
            hide_index=True,
            width="stretch",
        )
    with right:
        timeline = analytics.transitions_frame(ctx.engine, event_id)
        st.plotly_chart(
            charts.timeline_figure(components.for_chart(timeline, ["actor", "error_message"])), width="stretch"
        )
        st.dataframe(
            components.styled(
                components.data(timeline[["at", "from_status", "to_status", "attempt", "actor", "error_message"]])
            ),
            hide_index=True,
            width="stretch",
            # A person's action keeps its note here ("replay to webhook", a discard's reason).
            column_config={"error_message": st.column_config.TextColumn("error or note", width="large")},
        )
    _deliveries(ctx, str(event["id"]))


def _deliveries(ctx: Context, event_id: str) -> None:
    """The event's state per handler, from the delivery ledger: delivered when, after how many tries and how
    fast, failing with which error, or owed by a replay (who asked, when)."""
    found = analytics.event_deliveries(ctx.engine, event_id)
    st.caption("Deliveries, per handler")
    if found.empty:
        st.caption("No handler has tried this event yet.")
        return
    shown = found.assign(handler=found["handler"].map(analytics.handler_label))
    st.dataframe(
        components.data(shown),
        hide_index=True,
        width="stretch",
        column_config={
            "attempt": st.column_config.NumberColumn("tries", help="How many times this handler was called."),
            "delivered_at": "delivered (UTC)",
            "duration_ms": st.column_config.NumberColumn("call (ms)", format="%.2f"),
            "last_error": st.column_config.TextColumn("last error", width="large"),
            "requested_at": "replay asked (UTC)",
            "requested_by": "replay asked by",
        },
    )


def _schedule(ctx: Context, event: dict[str, object]) -> None:
    """When a PENDING event is due (with "Retry now" while it waits on a backoff), and who holds a
    PROCESSING event's lease until when (with "Recover now" once it expired)."""
    now = dt.datetime.now(dt.UTC)
    due, lease = event["available_at"], event["locked_until"]
    if event["status"] == "PENDING" and isinstance(due, dt.datetime):
        if due <= now:
            st.caption(f"Due now (since {time_text(due)} UTC).")
            return
        st.caption(f"Next attempt in {components.duration((due - now).total_seconds())} ({time_text(due)} UTC).")
        if auth.can_write(ctx) and st.button("Retry now", help="Due at once; its attempts are kept."):
            actions.request("retry_now", event_ids=(str(event["id"]),), status=None)
    elif event["status"] == "PROCESSING" and isinstance(lease, dt.datetime):
        holder = components.literal(event["locked_by"] or "?")
        if lease > now:
            st.caption(f"Held by {holder}, lease until {time_text(lease)} UTC.")
            return
        st.warning(
            f"Stuck: the lease of {holder} expired {components.duration((now - lease).total_seconds())} ago "
            f"({time_text(lease)} UTC) and was not renewed."
        )
        if auth.can_write(ctx) and st.button("Recover now", help="Back to PENDING as a failed attempt."):
            actions.request("recover", event_ids=(str(event["id"]),), status=None)


def _bulk_actions(ctx: Context, flt: EventFilter, selected_ids: list[str], total: int) -> None:
    """Actions on the selection and on everything the filter matches; a filter-wide action runs on the
    whole filter narrowed to its status, and is disabled when the filter leaves none of those events."""
    if not auth.can_write(ctx):
        return
    st.subheader("Actions")
    selected = tuple(selected_ids)
    failed, pending, processing = (total > 0 and flt.allows_status(s) for s in ("FAILED", "PENDING", "PROCESSING"))
    first, second, third, fourth = st.columns(4)
    if first.button("Requeue selected", disabled=not selected, width="stretch"):
        actions.request("requeue", event_ids=selected, status=None)
    if second.button("Discard selected", disabled=not selected, width="stretch"):
        actions.request("discard", event_ids=selected, status=None)
    excluded = "The filter leaves no {} events."
    if third.button(
        "Requeue all FAILED matching",
        disabled=not failed,
        width="stretch",
        help=None if failed else excluded.format("FAILED"),
    ):
        actions.request("requeue", filters=flt.with_(status=("FAILED",)), status="FAILED")
    if fourth.button(
        "Discard all FAILED matching",
        disabled=not failed,
        width="stretch",
        help=None if failed else excluded.format("FAILED"),
    ):
        actions.request("discard", filters=flt.with_(status=("FAILED",)), status="FAILED")
    first, second, third, fourth = st.columns(4)
    if first.button("Retry selected now", disabled=not selected, width="stretch", help="Those waiting on a backoff."):
        actions.request("retry_now", event_ids=selected, status=None)
    if second.button("Recover selected", disabled=not selected, width="stretch", help="Those whose lease expired."):
        actions.request("recover", event_ids=selected, status=None)
    if third.button(
        "Retry now all waiting matching",
        disabled=not pending,
        width="stretch",
        help="PENDING events waiting on a backoff become due at once." if pending else excluded.format("PENDING"),
    ):
        actions.request("retry_now", filters=flt, status=None)
    if fourth.button(
        "Recover all expired matching",
        disabled=not processing,
        width="stretch",
        help="PROCESSING events whose lease expired." if processing else excluded.format("PROCESSING"),
    ):
        actions.request("recover", filters=flt, status=None)
    # A replay moves finished events only: the filter's own statuses among those, or all three.
    finished = tuple(s for s in REPLAYABLE if flt.allows_status(s)) if total > 0 else ()
    first, second, _, _ = st.columns(4)
    if first.button(
        "Replay selected",
        disabled=not selected,
        width="stretch",
        help="Deliver them again to the handlers you pick only (COMPLETED, FAILED or DISCARDED events).",
    ):
        actions.request("replay", event_ids=selected, status=None)
    if second.button(
        "Replay all finished matching",
        disabled=not finished,
        width="stretch",
        help=f"Every {'/'.join(finished)} event of the filter, to the handlers you pick."
        if finished
        else "The filter leaves no COMPLETED, FAILED or DISCARDED events.",
    ):
        actions.request("replay", filters=flt.with_(status=finished), status=finished)
    actions.pending_dialog()


def _export(ctx: Context, flt: EventFilter) -> None:
    """Downloads built only when clicked (a callable), so the page never pays for them."""
    with st.expander("Export this view"):
        st.caption(f"Up to {EXPORT_LIMIT:,} events of the current filter, newest first.")
        left, right = st.columns(2)
        left.download_button(
            "CSV",
            lambda: analytics.export_events(ctx.engine, flt, "csv", limit=EXPORT_LIMIT),
            "outbox-events.csv",
            "text/csv",
        )
        right.download_button(
            "JSON",
            lambda: analytics.export_events(ctx.engine, flt, "json", limit=EXPORT_LIMIT),
            "outbox-events.json",
            "application/json",
        )

"""The dashboard's pages, one function each; they read like a description of the screen.

All data comes from ``analytics`` and every write goes through ``admin`` or
``demo``; nothing here knows SQL.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pandas as pd
import streamlit as st

from .. import admin, analytics, charts, demo
from ..display import visible, visible_json
from ..errors import OutboxError
from ..event_types import registered_event_types
from ..filters import STATUSES, EventFilter, filter_from_query, filter_to_query
from . import components, sidebar
from .context import ACTOR, Context, current

PAGE_SIZE = 50
EXPORT_LIMIT = 10_000
WINDOWS = {
    "15 minutes": dt.timedelta(minutes=15),
    "1 hour": dt.timedelta(hours=1),
    "24 hours": dt.timedelta(days=1),
    "7 days": dt.timedelta(days=7),
}


def _since(label: str) -> dt.datetime:
    return dt.datetime.now(dt.UTC) - WINDOWS[label]


# --- Overview ---------------------------------------------------------------------------


def overview() -> None:
    ctx = current()
    st.title("Overview")
    components.flash()
    if not analytics.has_events(ctx.engine):
        _empty_state(ctx)
        return
    window = st.segmented_control("Window", list(WINDOWS), default="1 hour", key="overview_window") or "1 hour"

    @st.fragment(run_every=sidebar.refresh_interval(ctx))
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


# --- Live -------------------------------------------------------------------------------


def live() -> None:
    ctx = current()
    st.title("Live")
    manual_only = st.toggle(
        "Only manual actions", key="live_manual_only", help="Requeues and discards people made, with who made them."
    )

    @st.fragment(run_every=sidebar.refresh_interval(ctx))
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
        st.dataframe(components.styled(components.data(shown)), hide_index=True, width="stretch")

    feed()


# --- Events -----------------------------------------------------------------------------


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
                error_group=current_filter.error_group,
            )
        except OutboxError as exc:
            st.error(components.literal(exc))
            return current_filter
        st.query_params.from_dict(filter_to_query(chosen))
        st.session_state["events_page"] = 0
        return chosen
    return current_filter


def events() -> None:
    ctx = current()
    st.title("Events")
    components.flash()
    flt = _filter_form(ctx)
    frozen = bool(st.session_state.get(SELECTION_KEY))

    # The table refreshes live, except while rows are selected: then it holds still.
    @st.fragment(run_every=None if frozen else sidebar.refresh_interval(ctx))
    def table() -> None:
        total = analytics.count_events(ctx.engine, flt)
        pages = max(1, -(-total // PAGE_SIZE))
        page = min(st.session_state.get("events_page", 0), pages - 1)
        frame = analytics.events_frame(ctx.engine, flt, limit=PAGE_SIZE, offset=page * PAGE_SIZE)
        left, middle, right = st.columns([3, 1, 1])
        left.caption(
            f"{total:,} events match; page {page + 1} of {pages}, newest first"
            + (" (refresh paused while rows are selected)" if frozen else "")
        )
        if middle.button("Previous", disabled=page == 0, width="stretch"):
            st.session_state["events_page"] = page - 1
            st.rerun(scope="app")
        if right.button("Next", disabled=page >= pages - 1, width="stretch"):
            st.session_state["events_page"] = page + 1
            st.rerun(scope="app")
        selected_ids = _event_table(frame)
        if selected_ids != st.session_state.get(SELECTION_KEY, []):
            st.session_state[SELECTION_KEY] = selected_ids
            components.keep_flash()
            st.rerun(scope="app")  # redraw the page: details, actions and the refresh rule follow the selection
        if selected_ids:
            st.caption(f"Selected: {components.literals(selected_ids[:10])}{' ...' if len(selected_ids) > 10 else ''}")
            if len(selected_ids) == 1:
                _event_detail(ctx, selected_ids[0])
        _bulk_actions(ctx, flt, selected_ids, total)

    table()
    _export(ctx, flt)


SELECTION_KEY = "events_selection"


def _event_table(frame: pd.DataFrame) -> list[str]:
    """The page of events with row selection; returns the selected event ids.

    Streamlit's selection is by row position and survives a data refresh, so
    positions are turned into ids at once, and the table's key changes with the
    rows it shows: new rows mean a fresh, empty selection, never a wrong one.
    """
    shown = frame.assign(entity=frame["entity_type"] + "/" + frame["entity_id"])[
        ["status", "created_at", "event_type", "entity", "org_id", "retry_count", "error_message", "id"]
    ]
    key = components.table_key("events_table", frame["id"])
    selection = st.dataframe(
        components.styled(components.data(shown)),
        hide_index=True,
        width="stretch",
        on_select="rerun",
        selection_mode="multi-row",
        key=key,
        column_config={
            "created_at": st.column_config.DatetimeColumn("created (UTC)", format="YYYY-MM-DD HH:mm:ss"),
            "retry_count": st.column_config.NumberColumn("retries"),
        },
    )
    rows = list(selection.selection.rows) if selection is not None else []
    return [frame["id"].iloc[r] for r in rows if r < len(frame)]


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
        )


def _bulk_actions(ctx: Context, flt: EventFilter, selected_ids: list[str], total: int) -> None:
    if ctx.readonly:
        return
    st.subheader("Actions")
    first, second, third, fourth = st.columns(4)
    if first.button("Requeue selected", disabled=not selected_ids, width="stretch"):
        _request("requeue", event_ids=tuple(selected_ids), status=None)
    if second.button("Discard selected", disabled=not selected_ids, width="stretch"):
        _request("discard", event_ids=tuple(selected_ids), status=None)
    if third.button("Requeue all FAILED matching", disabled=total == 0, width="stretch"):
        _request("requeue", filters=flt.with_(status=None), status="FAILED")
    if fourth.button("Discard all FAILED matching", disabled=total == 0, width="stretch"):
        _request("discard", filters=flt.with_(status=None), status="FAILED")
    _pending_dialog()


PENDING_KEY = "pending_action"


def _request(action: str, **conditions: Any) -> None:
    """Remember the action asked for; its confirmation dialog shows until it is done or cancelled."""
    st.session_state[PENDING_KEY] = {"action": action, **conditions}


def _forget_request() -> None:
    st.session_state.pop(PENDING_KEY, None)


def _pending_dialog() -> None:
    pending = st.session_state.get(PENDING_KEY)
    if pending:
        _confirm(**pending)


@st.dialog("Confirm", dismissible=False)  # Cancel or act: the request is kept until then
def _confirm(
    action: str,
    *,
    event_ids: tuple[str, ...] | None = None,
    filters: EventFilter | None = None,
    status: str | None = "FAILED",
) -> None:
    """A dry run first: how many events and which; the action then runs on exactly those conditions."""
    ctx = current()
    try:
        plan = admin.plan_action(ctx.engine, action, event_ids, status=status, filters=filters)  # type: ignore[arg-type]
    except OutboxError as exc:
        st.error(components.literal(exc))
        return
    st.write(f"**{action.title()} {plan.count:,} event(s)** in {', '.join(plan.statuses)}.")
    if plan.sample_ids:
        st.caption("For example: " + components.literals(plan.sample_ids[:10]))
    reset = st.checkbox("Reset their attempts", value=True) if action == "requeue" else False
    reason = st.text_input("Reason (kept in the history)") if action == "discard" else None
    go, cancel = st.columns(2)
    if cancel.button("Cancel", width="stretch"):
        _forget_request()
        st.rerun()
    if go.button(
        f"{action.title()} {plan.count:,} event(s)", type="primary", disabled=plan.count == 0, width="stretch"
    ):
        _forget_request()
        try:
            if action == "requeue":
                moved = admin.requeue(
                    ctx.engine, event_ids, status=status, filters=filters, reset_attempts=reset, actor=ACTOR
                )
            else:
                moved = admin.discard(
                    ctx.engine, event_ids, status=status, filters=filters, reason=reason or None, actor=ACTOR
                )
        except OutboxError as exc:
            st.error(components.literal(exc))
            return
        skipped = plan.count - moved
        components.flash(
            f"{action.title()}d {moved} event(s)"
            + (f"; {skipped} had changed meanwhile and were left alone" if skipped > 0 else "")
        )
        st.rerun()


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


# --- Failures ---------------------------------------------------------------------------


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
    chosen = st.dataframe(
        components.data(table),
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
        components.styled(components.data(dead[columns])),
        hide_index=True,
        width="stretch",
        on_select="rerun",
        selection_mode="multi-row",
        key=key,
    )
    picked_ids = [dead["id"].iloc[r] for r in (picked.selection.rows if picked is not None else []) if r < len(dead)]
    if ctx.readonly:
        return
    left, right = st.columns(2)
    if left.button("Requeue the whole group", disabled=dead.empty, width="stretch"):
        _request("requeue", filters=EventFilter(error_group=group), status="FAILED")
    if right.button("Requeue selected", disabled=not picked_ids, width="stretch"):
        _request("requeue", event_ids=tuple(picked_ids), status="FAILED")
    _pending_dialog()


# --- Publish ----------------------------------------------------------------------------


def publish() -> None:
    ctx = current()
    st.title("Publish")
    components.flash()
    demo.ensure_demo_event_types()
    st.subheader("One event")
    with st.form("publish_form"):
        first, second = st.columns(2)
        types = registered_event_types()
        event_type = first.selectbox(
            "Event type", types, index=types.index("PROJECT.CREATED") if "PROJECT.CREATED" in types else 0
        )
        org_id = second.text_input("Org", value="acme")
        entity_type = first.text_input("Entity type", value="Project")
        entity_id = second.text_input("Entity id", value="p-1")
        payload = st.text_area(
            "Payload (JSON)", value=json.dumps({"name": "Apollo", "budget": 1250.5}, indent=2), height=160
        )
        submitted = st.form_submit_button("Publish", type="primary")
    if submitted:
        try:
            event = admin.publish_from_form(
                ctx.engine,
                org_id=org_id,
                event_type=event_type or "",
                entity_type=entity_type,
                entity_id=entity_id,
                payload_text=payload,
            )
        except OutboxError as exc:
            st.error(f"Nothing was published: {components.literal(exc)}")
        else:
            st.success(
                f"Published {components.literal(event.event_type)} {components.literal(event.id)} (PENDING). "
                "Start the dispatcher or run a tick to deliver it."
            )

    st.subheader("Demo activity")
    st.caption(
        "Runs real demo mutations (create, update, archive projects), each publishing in its own "
        "transaction. The dashboard's dispatcher fails deliveries at the shares you set."
    )
    with st.form("demo_form"):
        count = st.number_input("Mutations", min_value=1, max_value=5000, value=50)
        first, second = st.columns(2)
        fail_share = first.slider("Share of deliveries that fail (then retry)", 0.0, 1.0, 0.2, 0.05)
        always = second.slider("Share of events that always fail (dead letters)", 0.0, 1.0, 0.05, 0.01)
        run = st.form_submit_button("Generate demo activity")
    if run:
        ctx.dispatcher.demo_handler.configure(fail_share=fail_share, always_fail_share=always)
        bar = st.progress(0.0, text="Publishing...")
        report = demo.generate_activity(
            ctx.engine, int(count), progress=lambda done, total: bar.progress(done / total, text=f"{done}/{total}")
        )
        bar.empty()
        ctx.dispatcher.service.wake()
        st.success(
            f"{report.events} events published ({report.created} created, {report.updated} updated, "
            f"{report.archived} archived)."
        )

"""The Publish page: one event by hand, or demo activity."""

from __future__ import annotations

import json

import streamlit as st

from ... import admin, demo
from ...errors import OutboxError
from ...event_types import registered_event_types
from .. import components
from ..context import Context, current

DEFAULT_TYPE = "PROJECT.CREATED"


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
            "Event type",
            types,
            index=components.remembered(
                "publish_type", types.index("PROJECT.CREATED") if "PROJECT.CREATED" in types else 0
            ),
            accept_new_options=True,  # any text: the publisher says why an unknown type is refused
            key="publish_type",
            help="A registered type, or type another one (it must be registered in the application)",
        )
        org_id = second.text_input("Org", value=components.remembered("publish_org", "acme"), key="publish_org")
        entity_type = first.text_input(
            "Entity type", value=components.remembered("publish_entity_type", "Project"), key="publish_entity_type"
        )
        entity_id = second.text_input(
            "Entity id", value=components.remembered("publish_entity_id", "p-1"), key="publish_entity_id"
        )
        payload = st.text_area(
            "Payload (JSON)",
            value=components.remembered("publish_payload", json.dumps({"name": "Apollo", "budget": 1250.5}, indent=2)),
            height=160,
            key="publish_payload",
        )
        submitted = st.form_submit_button("Publish", type="primary")
    if submitted:
        try:
            event = admin.publish_from_form(
                ctx.write_engine,
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
                + _who_delivers(ctx)
            )
    if ctx.demo:
        _demo_activity(ctx)


def _who_delivers(ctx: Context) -> str:
    """What happens next, in words that match the dispatcher's state."""
    service = ctx.dispatcher.service
    if service is None:
        return "A dispatcher running elsewhere delivers it; this dashboard does not dispatch."
    if service.running:
        return "The dashboard's dispatcher is running and delivers it now."
    return "Start the dispatcher or run a tick (sidebar) to deliver it."


def _demo_activity(ctx: Context) -> None:
    """Only on a demo database: demo mutations never go into an application's real outbox."""
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
        dispatcher = ctx.dispatcher
        if dispatcher.demo_handler is not None:
            dispatcher.demo_handler.configure(fail_share=fail_share, always_fail_share=always)
        bar = st.progress(0.0, text="Publishing...")
        report = demo.generate_activity(
            ctx.write_engine,
            int(count),
            progress=lambda done, total: bar.progress(done / total, text=f"{done}/{total}"),
        )
        bar.empty()
        if dispatcher.service is not None:
            dispatcher.service.wake()
        st.success(
            f"{report.events} events published ({report.created} created, {report.updated} updated, "
            f"{report.archived} archived)."
        )

"""The Publish page: one event by hand, or demo activity."""

from __future__ import annotations

import json

import streamlit as st

from ... import admin, demo
from ...errors import OutboxError
from ...event_types import registered_event_types
from .. import components
from ..context import current


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

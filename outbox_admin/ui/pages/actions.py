"""Requeue and discard: a request, its dry-run dialog, and the action on exactly those conditions."""

from __future__ import annotations

from typing import Any

import streamlit as st

from ... import admin
from ...errors import OutboxError
from ...filters import EventFilter
from .. import auth, components, links
from ..context import current

PENDING_KEY = "pending_action"


def request(action: str, **conditions: Any) -> None:
    """Remember the action asked for; its confirmation dialog shows until it is done or cancelled."""
    st.session_state[PENDING_KEY] = {"action": action, **conditions}


def forget_request() -> None:
    st.session_state.pop(PENDING_KEY, None)


def pending_dialog() -> None:
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
    if not auth.can_write(ctx):  # a request made before the session lost its rights
        forget_request()
        st.error("Only operators can requeue or discard.")
        return
    try:
        plan = admin.plan_action(ctx.engine, action, event_ids, status=status, filters=filters)  # type: ignore[arg-type]
    except OutboxError as exc:
        st.error(components.literal(exc))
        return
    st.write(f"**{action.title()} {plan.count:,} event(s)** in {', '.join(plan.statuses)}.")
    if plan.sample_ids:
        st.markdown("For example: " + links.event_links(plan.sample_ids[:10]))
    reset = st.checkbox("Reset their attempts", value=True) if action == "requeue" else False
    reason = st.text_input("Reason (kept in the history)") if action == "discard" else None
    go, cancel = st.columns(2)
    if cancel.button("Cancel", width="stretch"):
        forget_request()
        st.rerun()
    if go.button(
        f"{action.title()} {plan.count:,} event(s)", type="primary", disabled=plan.count == 0, width="stretch"
    ):
        forget_request()
        actor = auth.current_user().name
        try:
            if action == "requeue":
                moved = admin.requeue(
                    ctx.write_engine, event_ids, status=status, filters=filters, reset_attempts=reset, actor=actor
                )
            else:
                moved = admin.discard(
                    ctx.write_engine, event_ids, status=status, filters=filters, reason=reason or None, actor=actor
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

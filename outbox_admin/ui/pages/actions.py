"""Requeue, discard, retry now and recover: a request, its dry-run dialog, and the action on exactly
those conditions."""

from __future__ import annotations

from typing import Any

import streamlit as st

from ... import admin
from ...errors import OutboxError
from ...filters import EventFilter
from .. import auth, components, links
from ..context import current

PENDING_KEY = "pending_action"
#: How many events the dialog showed last, so the result can say how many changed before the click.
SHOWN_KEY = "pending_action_shown"

#: Per action: its label, what the dry run says it does, and the start of its result.
WORDING = {
    "requeue": ("Requeue", "", "Requeued {moved} event(s)"),
    "discard": ("Discard", "", "Discarded {moved} event(s)"),
    "retry_now": (
        "Retry now",
        "They wait on a backoff; they become due at once and keep their attempts.",
        "{moved} event(s) due now",
    ),
    "recover": (
        "Recover",
        "Their dispatcher stopped renewing the lease. Each goes back to PENDING, due now, as a failed "
        "attempt (FAILED when it was the last of {max_attempts}), as a dispatcher's own recovery does.",
        "Recovered {moved} event(s) from expired leases",
    ),
}


def request(action: str, **conditions: Any) -> None:
    """Remember the action asked for; its confirmation dialog shows until it is done or cancelled."""
    st.session_state[PENDING_KEY] = {"action": action, **conditions}
    st.session_state.pop(SHOWN_KEY, None)


def forget_request() -> None:
    st.session_state.pop(PENDING_KEY, None)
    st.session_state.pop(SHOWN_KEY, None)


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
        st.error("Only operators can requeue, discard, retry or recover events.")
        return
    label, explanation, done = WORDING[action]
    max_attempts = ctx.settings.outbox.max_attempts
    try:
        plan = admin.plan_action(ctx.engine, action, event_ids, status=status, filters=filters)  # type: ignore[arg-type]
    except OutboxError as exc:
        st.error(components.literal(exc))
        return
    # The click reruns the dry run; the person acted on the count shown before it.
    shown = int(st.session_state.get(SHOWN_KEY, plan.count))
    st.session_state[SHOWN_KEY] = plan.count
    st.write(f"**{label} {plan.count:,} event(s)** in {', '.join(plan.statuses)}.")
    if explanation:
        st.caption(explanation.format(max_attempts=max_attempts or "unlimited"))
    if plan.sample_ids:
        st.markdown("For example: " + links.event_links(plan.sample_ids[:10]))
    reset = st.checkbox("Reset their attempts", value=True) if action == "requeue" else False
    reason = st.text_input("Reason (kept in the history)") if action == "discard" else None
    go, cancel = st.columns(2)
    if cancel.button("Cancel", width="stretch"):
        forget_request()
        st.rerun()
    # A stable key: the label follows the count, and a click must not be lost when the count changed.
    if go.button(
        f"{label} {plan.count:,} event(s)",
        key="confirm_action",
        type="primary",
        disabled=plan.count == 0 and shown == 0,
        width="stretch",
    ):
        forget_request()
        actor = auth.current_user().name
        try:
            if action == "requeue":
                moved = admin.requeue(
                    ctx.write_engine, event_ids, status=status, filters=filters, reset_attempts=reset, actor=actor
                )
            elif action == "discard":
                moved = admin.discard(
                    ctx.write_engine, event_ids, status=status, filters=filters, reason=reason or None, actor=actor
                )
            elif action == "retry_now":
                moved = admin.retry_now(ctx.write_engine, event_ids, filters=filters, actor=actor)
            else:
                moved = admin.recover_expired(
                    ctx.write_engine, event_ids, filters=filters, max_attempts=max_attempts, actor=actor
                )
        except OutboxError as exc:
            st.error(components.literal(exc))
            return
        skipped = shown - moved
        components.flash(
            done.format(moved=moved) + (f"; {skipped} had changed meanwhile and were left alone" if skipped > 0 else "")
        )
        st.rerun()

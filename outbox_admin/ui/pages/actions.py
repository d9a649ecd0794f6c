"""Requeue, discard, retry now, recover and replay: a request, its dry-run dialog, and the action on exactly
those conditions (a replay also asks to which handlers)."""

from __future__ import annotations

from typing import Any

import streamlit as st

from ... import admin, analytics
from ...display import visible
from ...errors import OutboxError
from ...filters import EventFilter
from .. import auth, components, links
from ..context import Context, current

PENDING_KEY = "pending_action"
#: How many events the dialog showed last, so the result can say how many changed before the click.
SHOWN_KEY = "pending_action_shown"
#: The replay dialog's handler picker and its field for other names.
REPLAY_PICKED_KEY = "replay_handlers"
REPLAY_TYPED_KEY = "replay_other_handlers"

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
    "replay": (
        "Replay",
        "Each goes back to PENDING, due now, with its attempts reset, and is delivered again to the handlers "
        "picked below only; the other handlers keep what they have. It keeps its id, so consumers can "
        "de-duplicate.",
        "Queued {moved} event(s) for replay to {handlers}",
    ),
}


def request(action: str, **conditions: Any) -> None:
    """Remember the action asked for; its confirmation dialog shows until it is done or cancelled."""
    st.session_state[PENDING_KEY] = {"action": action, **conditions}
    st.session_state.pop(SHOWN_KEY, None)


def forget_request() -> None:
    for key in (PENDING_KEY, SHOWN_KEY, REPLAY_PICKED_KEY, REPLAY_TYPED_KEY):
        st.session_state.pop(key, None)


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
    status: str | tuple[str, ...] | None = "FAILED",
) -> None:
    """A dry run first: how many events and which; the action then runs on exactly those conditions."""
    ctx = current()
    if not auth.can_write(ctx):  # a request made before the session lost its rights
        forget_request()
        st.error("Only operators can requeue, discard, retry, recover or replay events.")
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
    handlers = _replay_handlers(ctx, event_ids) if action == "replay" else ()
    go, cancel = st.columns(2)
    if cancel.button("Cancel", width="stretch"):
        forget_request()
        st.rerun()
    # A stable key: the label follows the count, and a click must not be lost when the count changed.
    if go.button(
        f"{label} {plan.count:,} event(s)",
        key="confirm_action",
        type="primary",
        disabled=(plan.count == 0 and shown == 0) or (action == "replay" and not handlers),
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
            elif action == "replay":
                moved = admin.replay(
                    ctx.write_engine, event_ids, handlers=handlers, status=status, filters=filters, actor=actor
                )
            else:
                moved = admin.recover_expired(
                    ctx.write_engine, event_ids, filters=filters, max_attempts=max_attempts, actor=actor
                )
        except OutboxError as exc:
            st.error(components.literal(exc))
            return
        skipped = shown - moved
        components.flash(
            done.format(moved=moved, handlers=components.literals(handlers))
            + (f"; {skipped} had changed meanwhile and were left alone" if skipped > 0 else "")
        )
        st.rerun()


def _replay_handlers(ctx: Context, event_ids: tuple[str, ...] | None) -> tuple[str, ...]:
    """The handlers a replay is for: picked from those the console's dispatcher delivers to and those the
    ledger knows (lately, and for these events), or typed; checked (``admin.check_handler_names``).
    Nothing is chosen at first: a replay names its handlers."""
    targets = list(ctx.dispatcher.targets)
    seen = analytics.known_handlers(ctx.engine, event_ids)
    known = list(dict.fromkeys([*targets, *seen]))
    picked = st.multiselect(
        "Replay to",
        known,
        key=REPLAY_PICKED_KEY,
        format_func=visible,
        placeholder="Pick the handlers" if known else "No handler known here: type their names below",
        help="This console's dispatcher's handlers and the names the delivery ledger has seen.",
    )
    typed = st.text_input(
        "Other handlers (names, comma-separated)",
        key=REPLAY_TYPED_KEY,
        help="A dispatcher that has no handler of that name fails the event and says so.",
    )
    names = [*picked, *(name.strip() for name in typed.split(",") if name.strip())]
    if not names:
        st.caption("Pick or type at least one handler.")
        return ()
    try:
        chosen = admin.check_handler_names(names)
    except OutboxError as exc:
        st.error(components.literal(exc))
        return ()
    if targets:
        unknown = [name for name in chosen if name not in targets]
        if unknown:
            st.warning(
                f"This console's dispatcher has no handler named {components.literals(unknown)}: a dispatcher "
                "without it fails these events, saying so."
            )
    return chosen

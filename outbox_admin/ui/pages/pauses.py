"""The Overview's pauses: the event types no dispatcher claims now (who paused them, when and why),
a Resume button for each, and a form to pause more. Operators only; read-only users see the list."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import streamlit as st

from ... import admin, analytics
from ...errors import OutboxError
from .. import auth, components, sidebar
from ..context import Context


def pauses_panel(ctx: Context) -> None:
    @components.live(sidebar.refresh_interval(ctx), name="pauses")
    def active_pauses() -> None:  # live: a pause made elsewhere (the CLI, another tab) shows up
        for pause in analytics.pauses(ctx.engine).itertuples():
            text, action = st.columns([6, 1], vertical_alignment="center")
            text.warning(
                f"Paused: {components.literal(pause.pattern)} by {components.literal(pause.paused_by)} "
                f"since {_when(pause.paused_at)}. Why: {components.literal(pause.reason)}",
                icon=":material/pause_circle:",
            )
            if auth.can_write(ctx) and action.button("Resume", key=f"resume_{pause.id}", width="stretch"):
                _act(
                    functools.partial(admin.resume, ctx.write_engine, pause.pattern, actor=auth.current_user().name),
                    "Resumed",
                )

    active_pauses()
    if not auth.can_write(ctx):
        return
    with st.expander("Pause event types"), st.form("pause_form", border=False):
        st.caption(
            "Every dispatcher on this database stops claiming events whose type matches, from its next batch "
            "until resumed; they wait as PENDING and spend no attempts."
        )
        pattern = st.text_input("Event types", placeholder="PROJECT.*", help="A type, or a glob: PROJECT.*, *, [AB]*")
        reason = st.text_input("Reason", placeholder="Why (required; shown with the pause)")
        if st.form_submit_button("Pause"):
            _act(
                functools.partial(
                    admin.pause, ctx.write_engine, pattern, reason=reason, actor=auth.current_user().name
                ),
                "Paused",
            )


def _act(action: Callable[[], admin.Pause], verb: str) -> None:
    """Run ``admin.pause``/``resume``; a refusal is one line here, the result a message after the rerun."""
    try:
        pause = action()
    except OutboxError as exc:
        st.error(components.literal(exc))
        return
    if verb == "Paused" and not pause.created:
        components.flash(
            f"{components.literal(pause.pattern)} was paused already by {components.literal(pause.paused_by)}; "
            "that pause and its reason are kept.",
            "info",
        )
    else:
        components.flash(f"{verb} {components.literal(pause.pattern)}.")
    st.rerun()


def _when(value: Any) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S} UTC"

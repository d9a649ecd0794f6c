"""Small display pieces shared by the pages: status colours, badges, styled tables."""

from __future__ import annotations

import hashlib
from typing import Any

import pandas as pd
import streamlit as st

from ..charts import STATUS_COLORS, status_color

#: Streamlit's named markdown colours closest to the chart colours, for badges in text.
BADGE_COLORS = {"PENDING": "orange", "PROCESSING": "blue", "COMPLETED": "green", "FAILED": "red", "DISCARDED": "gray"}


def badge(status: str | None) -> str:
    """Markdown for a coloured status badge."""
    if not status:
        return "—"
    return f":{BADGE_COLORS.get(status, 'violet')}-background[{status}]"


def _status_cell(value: Any) -> str:
    if not isinstance(value, str) or value not in STATUS_COLORS:
        return ""
    return f"background-color: {status_color(value)}33; color: {status_color(value)}; font-weight: 600"


def styled(frame: pd.DataFrame, status_columns: tuple[str, ...] = ("status", "to_status", "from_status")) -> Any:
    """A pandas Styler colouring status cells with the status colours used in every chart."""
    columns = [c for c in status_columns if c in frame.columns]
    if frame.empty or not columns:
        return frame
    return frame.style.map(_status_cell, subset=columns)


def table_key(prefix: str, ids: Any) -> str:
    """A widget key that changes with the rows a table shows, so a stale selection is dropped."""
    digest = hashlib.sha1("\x1f".join(map(str, ids)).encode("utf-8")).hexdigest()[:12]
    return f"{prefix}_{digest}"


def flash(message: str | None = None, kind: str = "success") -> None:
    """Leave a message for the next run (an action's result), or show the one left.

    A run that is about to be redrawn at once (``keep_flash()``) shows the message
    and keeps it for the redraw, so the person still sees it.
    """
    if message is not None:
        st.session_state["_flash"] = {"kind": kind, "message": message, "shown": False}
        return
    keep = st.session_state.pop("_keep_flash", False)
    pending = st.session_state.get("_flash")
    if pending and pending["shown"] and not keep:
        del st.session_state["_flash"]
        return
    if pending:
        getattr(st, pending["kind"])(pending["message"])
        pending["shown"] = True


def keep_flash() -> None:
    """Call before ``st.rerun``: the message shown in this run is shown again after it."""
    st.session_state["_keep_flash"] = True

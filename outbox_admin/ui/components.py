"""Small display pieces shared by the pages: status colours, badges, styled tables, and stored
text shown as data.

Streamlit reads the text of ``st.markdown``, ``st.caption``, ``st.error`` and friends, titles and
labels as Markdown (with its own ``:red[...]`` and ``:emoji:`` extensions), and plotly reads chart
labels as a little HTML. Stored and typed text (ids, entity ids, error messages, payloads, org ids,
search strings echoed back) never goes there as it is: it is made visible
(``outbox_admin.display.visible``: control and format characters as escapes, newlines as ``\\n``)
and then put in a code span (``literal``), in ``st.code``/``st.text``, in a data frame (``data``)
or HTML-escaped for a chart (``for_chart``). A code span is used rather than backslash escapes
because Streamlit turns ``:smile:`` into an emoji even when its colons are escaped.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import html
import logging
import re
import time
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any

import pandas as pd
import streamlit as st

from ..charts import STATUS_COLORS, status_color
from ..display import error_line, time_text, visible
from ..errors import OutboxError
from ..filters import EventFilter, filter_to_query

log = logging.getLogger("outbox_admin.dashboard")

#: Streamlit's named markdown colours closest to the chart colours, for badges in text.
BADGE_COLORS = {"PENDING": "orange", "PROCESSING": "blue", "COMPLETED": "green", "FAILED": "red", "DISCARDED": "gray"}


def badge(status: str | None) -> str:
    """Markdown for a coloured status badge."""
    if not status:
        return "—"
    return f":{BADGE_COLORS.get(status, 'violet')}-background[{status}]"


def literal(value: Any) -> str:
    """Markdown showing ``visible(value)`` exactly: an inline code span, fenced with more backticks
    than the text holds in a row (CommonMark), so nothing inside is read as Markdown."""
    text = visible("" if value is None else value)
    if not text.strip():  # nothing, or only spaces (a code span of spaces keeps them all)
        return f"`{text}`" if text else ""
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text[0] in "` " or text[-1] in "` " else ""  # one space each side is stripped again
    return f"{fence}{pad}{text}{pad}{fence}"


def literals(values: Iterable[Any]) -> str:
    """Several values as code spans, comma-separated."""
    return ", ".join(literal(v) for v in values)


def data(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` for ``st.dataframe``: every text cell made visible (escapes for control,
    bidi and other invisible characters; newlines as ``\\n``), every time in one format to the
    millisecond, UTC (``2026-12-01 22:37:36.123``), which also sorts as text."""
    shown = frame.copy()
    for column in shown.columns:
        if pd.api.types.is_datetime64_any_dtype(shown[column]):
            shown[column] = shown[column].map(time_text)
        elif pd.api.types.is_object_dtype(shown[column]) or pd.api.types.is_string_dtype(shown[column]):
            shown[column] = shown[column].map(lambda v: visible(v) if isinstance(v, str) else v)
    return shown


def for_chart(frame: pd.DataFrame, columns: Iterable[str]) -> pd.DataFrame:
    """A copy of ``frame`` whose text ``columns`` plotly shows as they are: made visible, and
    HTML-escaped (plotly reads ``<b>``, ``<br>`` and ``<a href=...>`` in labels and hover text)."""
    shown = frame.copy()
    for column in columns:
        if column in shown.columns:
            shown[column] = shown[column].map(
                lambda v: html.escape(visible(v), quote=False) if isinstance(v, str) else v
            )
    return shown


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


def guarded(render: Callable[[], object]) -> None:
    """Run a page or a panel; an error in it is one short line (and a log entry), never a traceback."""
    try:
        render()
    except OutboxError as exc:
        st.error(literal(exc))
    except Exception as exc:  # noqa: BLE001 - a page must never show a traceback
        log.exception("a dashboard page failed")
        st.error(f"This page failed: {literal(error_line(exc))}. The server log has the details.")


#: Widgets whose value outlives their page: Streamlit forgets a widget's state at the first run
#: that does not draw it, so leaving a page would reset it.
KEPT_WIDGETS = (
    "overview_window",
    "failures_grouping",
    "live_manual_only",
    "publish_type",
    "publish_org",
    "publish_entity_type",
    "publish_entity_id",
    "publish_payload",
)


def keep_widget_state() -> None:
    """Run before every page: writing a value back to Session State keeps it across pages."""
    for key in KEPT_WIDGETS:
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]


def remembered(key: str, default: Any) -> Any:
    """The ``value=`` for a kept widget: its default only the first time (a widget given both a
    default and a Session State value warns on the page)."""
    return None if key in st.session_state else default


def live(run_every: float | None, *, name: str | None = None) -> Callable[[Callable[[], None]], Callable[[], None]]:
    """``st.fragment(run_every=...)`` whose every rerun is ``guarded``: a refresh that fails
    (the database went away) shows one line in place of the part, not a traceback. With a
    ``name``, a refresh slower than ``run_every`` makes the next ones wait longer (``ui.refresh``)."""
    from . import refresh

    every = run_every if name is None else refresh.interval(run_every, name)

    def decorate(body: Callable[[], None]) -> Callable[[], None]:
        @st.fragment(run_every=every)
        def part() -> None:
            started = time.perf_counter()
            guarded(body)
            if name is not None:
                refresh.rendered(run_every, name, time.perf_counter() - started, every)

        return part  # type: ignore[no-any-return]

    return decorate


def duration(seconds: float) -> str:
    """A short, readable length of time: ``42 s``, ``12 min``, ``3.5 h``, ``2.0 d``."""
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def schedule_note(status: Any, available_at: Any, locked_until: Any, now: dt.datetime) -> str:
    """What an event waits for, for a table cell: ``in 42 s`` (PENDING on a backoff), ``lease expired 3 min
    ago`` (PROCESSING, stuck until recovered); else nothing (due now, finished, or held by a live lease)."""
    if status == "PENDING" and available_at is not None and not pd.isna(available_at):
        wait = (available_at - now).total_seconds()
        return f"in {duration(wait)}" if wait > 0 else ""
    if status == "PROCESSING" and locked_until is not None and not pd.isna(locked_until):
        late = (now - locked_until).total_seconds()
        return f"lease expired {duration(late)} ago" if late > 0 else ""
    return ""


def events_link(flt: EventFilter, label: str) -> str:
    """Markdown linking to the Events page with ``flt`` in the query string (relative, so it works under
    any base path). Every value is percent-encoded, so no stored text can end the link or add markup."""
    query = urllib.parse.urlencode(filter_to_query(flt), quote_via=urllib.parse.quote)
    return f"[{label}](events?{query})"


def pager(key: str, total: int, size: int, noun: str = "events") -> int:
    """Previous/Next over ``total`` items, ``size`` a page (``key`` keeps the page in the session);
    shows "Showing 1-200 of 2,250 ..." and returns the offset of the page shown."""
    pages = max(1, -(-total // size))
    page = min(max(0, int(st.session_state.get(key, 0))), pages - 1)
    left, middle, right = st.columns([3, 1, 1])
    first, last = (page * size + 1, min(total, (page + 1) * size)) if total else (0, 0)
    left.caption(f"Showing {first:,}-{last:,} of {total:,} {noun}")
    if middle.button("Previous", key=f"{key}_previous", disabled=page == 0, width="stretch"):
        st.session_state[key] = page - 1
        st.rerun()
    if right.button("Next", key=f"{key}_next", disabled=page >= pages - 1, width="stretch"):
        st.session_state[key] = page + 1
        st.rerun()
    return page * size

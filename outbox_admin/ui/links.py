"""Links into the console: an event (``events?id=...``), the Events page's page number and
selection, all in the query string so any view can be shared or reloaded.

Relative URLs (``events?...``, no leading slash) so they keep working under a proxy's
path prefix (``server.baseUrlPath``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from urllib.parse import urlencode

import streamlit as st
from streamlit.elements.lib.column_types import ColumnConfig

from . import components

ID_KEY = "id"
PAGE_KEY = "page"
MAX_LINK_IDS = 100  # a selection in a link beyond this is cut: a URL stays a few kB
MAX_ID_LENGTH = 200


def event_url(event_id: str) -> str:
    """The Events page opened on one event."""
    return "events?" + urlencode({ID_KEY: event_id})


def event_link(event_id: str) -> str:
    """Markdown: the id shown as data (a code span) that links to its event."""
    return f"[{components.literal(event_id)}]({event_url(event_id)})"


def event_links(event_ids: Iterable[str]) -> str:
    return ", ".join(event_link(i) for i in event_ids)


def link_column(label: str = "id") -> ColumnConfig:
    """A table column of ``event_url`` values, each shown as its id."""
    return st.column_config.LinkColumn(label, display_text=r"events\?id=(.+)$")


def selected_ids() -> list[str]:
    """The event ids the link selects (``?id=a&id=b``), bounded."""
    ids = [i for i in st.query_params.get_all(ID_KEY) if i and len(i) <= MAX_ID_LENGTH]
    return list(dict.fromkeys(ids))[:MAX_LINK_IDS]


def select(ids: Sequence[str]) -> None:
    """Put a selection in the link (an empty one removes it)."""
    if ids:
        st.query_params[ID_KEY] = list(ids[:MAX_LINK_IDS])
    elif ID_KEY in st.query_params:
        del st.query_params[ID_KEY]
    remember_events_query()


def page_number() -> int:
    """The page the link names, 0-based (``?page=3`` is the third page); 0 when absent or bad."""
    raw = st.query_params.get(PAGE_KEY, "")
    return int(raw) - 1 if raw.isdigit() and 0 < int(raw) < 10**9 else 0


def set_page(page: int) -> None:
    if page > 0:
        st.query_params[PAGE_KEY] = str(page + 1)
    elif PAGE_KEY in st.query_params:
        del st.query_params[PAGE_KEY]
    remember_events_query()


LAST_EVENTS_QUERY_KEY = "events_last_query"


def remember_events_query() -> None:
    """Keep the Events page's link (filters, page, selection) for the next visit."""
    st.session_state[LAST_EVENTS_QUERY_KEY] = {key: st.query_params.get_all(key) for key in st.query_params}


def restore_events_query() -> None:
    """Coming back to Events without a query (the page list's link): put back the last visit's
    filters, page and selection, which live in the link."""
    saved = st.session_state.get(LAST_EVENTS_QUERY_KEY)
    if saved and not st.query_params:
        st.query_params.from_dict(saved)

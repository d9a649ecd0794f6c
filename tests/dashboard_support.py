"""What the dashboard's AppTest tests share."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from streamlit.testing.v1 import AppTest

TIMEOUT = 60


@pytest.fixture(autouse=True)
def keep_main_module() -> Iterator[None]:
    """AppTest replaces ``__main__`` with its script; restore it, or later spawn-based tests break."""
    main = sys.modules.get("__main__")
    yield
    if main is not None:
        sys.modules["__main__"] = main


def dashboard_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, unset: tuple[str, ...] = ()
) -> Iterator[Engine]:
    """A migrated SQLite file the dashboard opens (``OUTBOX_DATABASE_URL``), no sign-in or read-only
    setting (nor the variables in ``unset``); afterwards the dashboard's services are stopped and its
    cached resources cleared."""
    import streamlit as st

    from outbox_admin import init_db, make_engine
    from outbox_admin.ui.context import stop_all_services

    url = f"sqlite:///{tmp_path / 'dashboard.db'}"
    monkeypatch.setenv("OUTBOX_DATABASE_URL", url)
    for name in ("OUTBOX_DASHBOARD_PASSWORD", "OUTBOX_DASHBOARD_READONLY", *unset):
        monkeypatch.delenv(name, raising=False)
    engine = make_engine(url)
    init_db(engine)
    yield engine
    engine.dispose()
    stop_all_services()
    st.cache_resource.clear()


def linked_ids(links: object) -> list[str]:
    """The event ids of a table's link column (``events?id=...``)."""
    from urllib.parse import parse_qs, urlsplit

    return [parse_qs(urlsplit(str(link)).query)["id"][0] for link in links]  # type: ignore[attr-defined]


def render(name: str, as_user: str | None = None) -> None:
    """The script AppTest runs: one page inside the dashboard's frame."""
    from outbox_admin.ui.app import render_page

    render_page(name, as_user=as_user)


def page(name: str, user: str | None = None, /, **query: str | list[str]) -> AppTest:
    """An AppTest of one page, as ``user`` (AppTest sends no cookie), opened with ``query`` in its link."""
    at = AppTest.from_function(render, kwargs={"name": name, "as_user": user}, default_timeout=TIMEOUT)
    for key, value in query.items():
        at.query_params[key] = value
    return at

"""Viewers and operators in the dashboard (AppTest on real SQLite files).

AppTest sends no cookies or headers, so the user is named through ``render_page(as_user=...)``;
their role comes from the real configuration, as it does for a signed-in browser.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import streamlit as st
from sqlalchemy import Engine
from streamlit.testing.v1 import AppTest

from outbox_admin import analytics, demo, init_db, make_engine
from outbox_admin.ui.components import table_key
from outbox_admin.ui.context import stop_all_services

from .dashboard_support import keep_main_module, linked_ids, page  # noqa: F401 - an autouse fixture
from .test_dashboard import DASHBOARD, TIMEOUT

WRITE_BUTTONS = {
    "Requeue selected",
    "Discard selected",
    "Requeue all FAILED matching",
    "Discard all FAILED matching",
    "Replay selected",
    "Replay all finished matching",
}
DISPATCHER_BUTTONS = {"Start", "Stop", "Tick"}


@pytest.fixture
def engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'roles.db'}"
    monkeypatch.setenv("OUTBOX_DATABASE_URL", url)
    for name in [n for n in os.environ if n.startswith("OUTBOX_DASHBOARD_") or n == "OUTBOX_CONFIG"]:
        monkeypatch.delenv(name)
    engine = make_engine(url)
    init_db(engine)
    yield engine
    engine.dispose()
    stop_all_services()
    st.cache_resource.clear()


@pytest.fixture
def demo_engine(engine: Engine) -> Engine:
    demo.load_demo_data(engine, 40, seed=3, always_fail_share=0.2)
    return engine


@pytest.fixture
def roles(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTBOX_DASHBOARD_PASSWORD", "pw")
    monkeypatch.setenv("OUTBOX_DASHBOARD_OPERATORS", "alice")  # everyone else: viewer


def test_a_viewer_sees_what_read_only_mode_shows(demo_engine, roles) -> None:
    at = page("events", "carol").run()
    assert not at.exception
    labels = {b.label for b in at.button} | {b.label for b in at.sidebar.button}
    assert not labels & (WRITE_BUTTONS | DISPATCHER_BUTTONS)
    assert "Signed in as `carol` (viewer)" in [c.value for c in at.sidebar.caption]
    at = page("failures", "carol").run()
    assert not {b.label for b in at.button} & {"Requeue the whole group", "Requeue selected"}
    at = page("publish", "carol").run()
    assert at.error[0].value == "Viewers cannot open this page." and not at.text_area


def test_an_operator_acts_and_the_history_names_them(demo_engine, roles) -> None:
    at = page("events", "alice")
    at.query_params["status"] = "FAILED"
    at.run()
    assert not at.exception
    assert {"Start", "Tick"} <= {b.label for b in at.sidebar.button}
    assert "Signed in as `alice` (operator)" in [c.value for c in at.sidebar.caption]
    ids = linked_ids(at.dataframe[0].value["link"])
    at.session_state[table_key("events_table", ids)] = {"selection": {"rows": [0], "columns": [], "cells": []}}
    at.run()
    [requeue] = [b for b in at.button if b.label == "Requeue selected"]
    requeue.click().run()
    [confirm] = [b for b in at.button if b.label == "Requeue 1 event(s)"]
    confirm.click().run()
    assert not at.exception
    manual = analytics.transitions_frame(demo_engine, ids[0]).iloc[-1]
    assert (manual["to_status"], manual["actor"]) == ("PENDING", "admin:alice")


def offered_pages(as_user: str) -> None:
    """The router's first half: the pages it would offer this user, as text."""
    import streamlit as st

    from outbox_admin.ui.app import navigation_pages, start

    ctx = start(as_user)
    if ctx is not None:
        st.text(", ".join(str(p.title) for p in navigation_pages(ctx)))


@pytest.mark.parametrize(
    ("user", "pages"),
    [("carol", "Overview, Live, Events, Failures"), ("alice", "Overview, Live, Events, Failures, Publish")],
)
def test_the_navigation_offers_publish_to_operators_only(engine, roles, user: str, pages: str) -> None:
    at = AppTest.from_function(offered_pages, kwargs={"as_user": user}, default_timeout=TIMEOUT).run()
    assert not at.exception
    assert at.text[0].value == pages


def test_a_viewer_cannot_load_demo_data(engine, roles) -> None:
    at = page("overview", "carol").run()
    assert not at.exception
    assert "Viewers cannot load demo data." in [c.value for c in at.caption]
    assert not [b for b in at.button if b.label == "Load demo data"]


def test_read_only_mode_makes_an_operator_a_viewer_too(demo_engine, roles, monkeypatch) -> None:
    monkeypatch.setenv("OUTBOX_DASHBOARD_READONLY", "1")
    at = page("events", "alice").run()
    assert not {b.label for b in at.button} & WRITE_BUTTONS
    assert "Signed in as `alice` (read-only mode)" in [c.value for c in at.sidebar.caption]


def test_an_open_dashboard_acts_as_dashboard_and_says_nothing_about_users(demo_engine) -> None:
    at = AppTest.from_file(DASHBOARD, default_timeout=TIMEOUT).run()
    assert not at.exception
    assert not [c for c in at.sidebar.caption if "Signed in" in c.value]
    assert {"Start", "Tick"} <= {b.label for b in at.sidebar.button}


def test_a_default_role_applies_to_an_open_dashboard(demo_engine, monkeypatch) -> None:
    monkeypatch.setenv("OUTBOX_DASHBOARD_DEFAULT_ROLE", "viewer")
    at = AppTest.from_file(DASHBOARD, default_timeout=TIMEOUT).run()
    assert not at.exception
    assert not {b.label for b in at.sidebar.button} & DISPATCHER_BUTTONS


def test_a_broken_access_configuration_is_one_message(engine, monkeypatch) -> None:
    monkeypatch.setenv("OUTBOX_DASHBOARD_DEFAULT_ROLE", "root")
    at = AppTest.from_file(DASHBOARD, default_timeout=TIMEOUT).run()
    assert not at.exception
    assert [e.value for e in at.error] == [
        "The dashboard's access configuration is unusable: `default role 'root': use 'viewer' or 'operator'`"
    ]
    assert not at.sidebar.button


def write_as(as_user: str) -> None:
    """A page that tries to write whatever its buttons say: the context itself refuses a viewer."""
    import streamlit as st

    from outbox_admin.errors import AdminActionError
    from outbox_admin.ui.app import start

    ctx = start(as_user=as_user)
    if ctx is not None:
        try:
            ctx.write_engine  # noqa: B018 - the property is the check
        except AdminActionError as exc:
            st.error(str(exc))
        else:
            st.success("may write")


def test_the_write_engine_itself_refuses_viewers(engine: Engine, roles: None) -> None:
    viewer = AppTest.from_function(write_as, kwargs={"as_user": "victor"}, default_timeout=TIMEOUT).run()
    assert [e.value for e in viewer.error] == ["viewers cannot change the outbox; ask an operator"]
    operator = AppTest.from_function(write_as, kwargs={"as_user": "alice"}, default_timeout=TIMEOUT).run()
    assert [s.value for s in operator.success] == ["may write"]

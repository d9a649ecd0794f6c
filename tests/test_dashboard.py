"""The Streamlit dashboard through ``streamlit.testing.v1.AppTest``, on real SQLite files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from outbox_admin import analytics, demo, init_db, make_engine
from outbox_admin.ui.components import table_key
from outbox_admin.ui.context import stop_all_services

from .dashboard_support import keep_main_module, linked_ids, page  # noqa: F401 - an autouse fixture

DASHBOARD = str(Path(__file__).resolve().parents[1] / "dashboard.py")
TIMEOUT = 60
PAGES = {"overview": "Overview", "live": "Live", "events": "Events", "failures": "Failures", "publish": "Publish"}


@pytest.fixture
def dash_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'dashboard.db'}"
    monkeypatch.setenv("OUTBOX_DATABASE_URL", url)
    for name in ("OUTBOX_DASHBOARD_PASSWORD", "OUTBOX_DASHBOARD_READONLY"):
        monkeypatch.delenv(name, raising=False)
    yield url
    stop_all_services()
    st.cache_resource.clear()


@pytest.fixture
def engine(dash_url: str):
    engine = make_engine(dash_url)
    init_db(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def demo_engine(engine):
    demo.load_demo_data(engine, 40, seed=3, always_fail_share=0.2)
    return engine


def test_first_run_shows_the_empty_state_and_loads_demo_data(engine) -> None:
    at = AppTest.from_file(DASHBOARD, default_timeout=TIMEOUT).run()
    assert not at.exception
    assert "same transaction" in at.info[0].value
    assert "sqlite:///" in at.sidebar.code[0].value  # the sidebar says which database
    [load] = [b for b in at.button if b.label == "Load demo data"]
    load.click().run()
    assert not at.exception
    assert analytics.count_events(engine) > 0
    assert [s.value for s in at.success] == [
        "Demo data loaded: projects created, updated and archived, some deliveries failed."
    ]


@pytest.mark.parametrize("name", list(PAGES))
@pytest.mark.parametrize("data", ["empty", "demo"])
def test_every_page_renders(name: str, data: str, request: pytest.FixtureRequest) -> None:
    request.getfixturevalue("demo_engine" if data == "demo" else "engine")
    at = page(name).run()
    assert not at.exception, at.exception
    assert at.title[0].value == PAGES[name]


def test_filters_in_the_link_narrow_the_table(demo_engine) -> None:
    failed = analytics.count_events(demo_engine, status="FAILED")
    assert 0 < failed < analytics.count_events(demo_engine)
    at = page("events")
    at.query_params["status"] = "FAILED"
    at.run()
    assert not at.exception
    table = at.dataframe[0].value
    assert len(table) == failed
    assert set(table["status"]) == {"FAILED"}
    assert f"of {failed:,} matching events" in at.caption[0].value


def test_the_filter_form_writes_the_link(demo_engine) -> None:
    at = page("events").run()
    at.multiselect[0].set_value(["PENDING"])
    at.button[0].click().run()  # Apply filters
    assert not at.exception
    assert at.query_params["status"] in ("PENDING", ["PENDING"])
    assert set(at.dataframe[0].value["status"]) == {"PENDING"}


def test_a_bad_filter_in_the_link_is_explained_not_raised(engine) -> None:
    at = page("events")
    at.query_params["status"] = "BOGUS"
    at.query_params["since"] = "yesterday"
    at.run()
    assert not at.exception
    assert "Ignoring the filter in the link" in at.error[0].value


def _publish(at: AppTest, payload: str) -> AppTest:
    at.text_area[0].set_value(payload)
    [button] = [b for b in at.button if b.label == "Publish"]
    return button.click().run()


def test_publishing_bad_json_shows_the_error_and_writes_nothing(engine) -> None:
    at = _publish(page("publish").run(), '{"name": "Apollo",')
    assert not at.exception
    assert "not valid JSON" in at.error[0].value
    at = _publish(at, '{"budget": NaN}')
    assert "not a finite number" in at.error[0].value
    assert analytics.count_events(engine) == 0


def test_publishing_a_valid_event_creates_it(engine) -> None:
    at = _publish(page("publish").run(), '{"name": "Zephyr", "budget": 10}')
    assert not at.exception
    frame = analytics.events_frame(engine)
    assert len(frame) == 1 and frame["payload"][0] == {"name": "Zephyr", "budget": 10}
    assert frame["id"][0] in at.success[0].value


def test_requeue_a_selected_failed_event(demo_engine) -> None:
    at = page("events")
    at.query_params["status"] = "FAILED"
    at.run()
    ids = linked_ids(at.dataframe[0].value["link"])
    # AppTest cannot click table rows: set the selection state the table widget would hold.
    at.session_state[table_key("events_table", ids)] = {"selection": {"rows": [0], "columns": [], "cells": []}}
    at.run()
    assert f"Selected: [`{ids[0]}`](events?id={ids[0]})" in [m.value for m in at.markdown]
    [requeue] = [b for b in at.button if b.label == "Requeue selected"]
    requeue.click().run()
    assert any("**Requeue 1 event(s)**" in m.value for m in at.markdown)  # the dry run
    [confirm] = [b for b in at.button if b.label == "Requeue 1 event(s)"]
    confirm.click().run()
    assert not at.exception
    assert [s.value for s in at.success] == ["Requeued 1 event(s)"]
    event = analytics.get_event(demo_engine, ids[0])
    assert event["status"] == "PENDING" and event["retry_count"] == 0
    manual = analytics.transitions_frame(demo_engine, ids[0]).iloc[-1]
    assert (manual["from_status"], manual["to_status"], manual["actor"]) == ("FAILED", "PENDING", "admin:dashboard")


def test_requeue_a_whole_error_group_from_the_failures_page(demo_engine) -> None:
    groups = analytics.error_summary(demo_engine, limit=50, order="failed")  # the page's order
    dead_group = groups[groups["failed"] > 0]["error_group"].iloc[0]
    at = page("failures").run()
    at.session_state[table_key("groups", groups["error_group"])] = {
        "selection": {"rows": [list(groups["error_group"]).index(dead_group)], "columns": [], "cells": []}
    }
    at.run()
    [whole] = [b for b in at.button if b.label == "Requeue the whole group"]
    whole.click().run()
    [confirm] = [b for b in at.button if b.label.startswith("Requeue ") and b.label.endswith("event(s)")]
    confirm.click().run()
    assert not at.exception
    assert analytics.count_events(demo_engine, status="FAILED", error_group=dead_group) == 0


def test_the_sidebar_runs_a_tick(engine) -> None:
    demo.generate_activity(engine, 5, seed=1)
    at = page("overview").run()
    [tick] = [b for b in at.sidebar.button if b.label == "Tick"]
    tick.click().run()
    assert not at.exception
    assert analytics.count_events(engine, status="COMPLETED") == 5


def test_without_a_session_only_the_sign_in_link_is_drawn(engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The password is checked by the sign-in page (tests/test_dashboard_access.py); a session that
    has none (AppTest sends no cookie) gets a link there that comes back to this page."""
    monkeypatch.setenv("OUTBOX_DASHBOARD_PASSWORD", "s3cret")
    at = AppTest.from_file(DASHBOARD, default_timeout=TIMEOUT)
    at.context = {"url": "http://127.0.0.1:8501/events"}
    at.query_params["status"] = "FAILED"
    at.run()
    assert not at.exception
    assert [t.value for t in at.title] == ["outbox_admin"]
    assert not at.sidebar.button and not at.sidebar.code  # nothing behind the gate was drawn
    assert (
        at.markdown[-1].value == '<a href="/_outbox/login?next=%2Fevents%3Fstatus%3DFAILED" target="_self">Sign in</a>'
    )


def test_read_only_hides_every_write_action(demo_engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTBOX_DASHBOARD_READONLY", "1")
    at = page("events").run()
    labels = {b.label for b in at.button}
    assert not labels & {"Requeue selected", "Discard selected", "Start", "Stop", "Tick"}
    at = page("publish").run()
    assert "read-only" in at.error[0].value
    assert not at.text_area


def test_live_page_can_show_only_manual_actions(demo_engine) -> None:
    from outbox_admin import admin

    admin.requeue(demo_engine, actor="ana")
    at = page("live").run()
    [manual_only] = [t for t in at.toggle if t.label == "Only manual actions"]
    manual_only.set_value(True).run()
    assert not at.exception
    feed = at.dataframe[0].value
    feed = getattr(feed, "data", feed)
    assert len(feed) > 0 and set(feed["actor"]) == {"admin:ana"}


def test_the_sidebar_shows_a_paused_handler(engine) -> None:
    """A handler whose circuit breaker opened is shown with its last error (and its events as waiting)."""
    from outbox_admin.ui.context import dashboard_dispatcher

    demo.generate_activity(engine, 12, seed=5)
    at = page("overview").run()
    assert not at.exception
    dashboard = dashboard_dispatcher(str(engine.url.render_as_string(hide_password=False)))
    dashboard.demo_handler.configure(fail_share=1.0)  # every delivery fails: the demo's sink is "down"
    report = dashboard.service.run_now(timeout=30)
    assert report is not None and report.waiting > 0
    at.run()
    assert not at.exception
    paused = [e.value for e in at.sidebar.error if "is paused" in e.value]
    assert len(paused) == 1 and "`demo`" in paused[0] and "ConnectionError" in paused[0]
    assert any("waiting for a paused handler" in c.value for c in at.sidebar.caption)


def test_a_payload_filter_in_the_link_narrows_the_table_and_the_form_writes_it(demo_engine) -> None:
    archived = analytics.count_events(demo_engine, payload={"status": "ARCHIVED"})
    assert 0 < archived < analytics.count_events(demo_engine)
    at = page("events")
    at.query_params["payload"] = "status=ARCHIVED"
    at.run()
    assert not at.exception
    table = at.dataframe[0].value
    assert len(table) == archived
    assert set(table["event_type"]) == {"PROJECT.ARCHIVED"}  # the demo archives with that status
    assert f"of {archived:,} matching events" in at.caption[0].value
    [field] = [t for t in at.text_area if t.label == "Payload"]
    assert field.value == "status=ARCHIVED"  # the form shows the link's filter

    field.set_value("status=ARCHIVED\nbudget=-1")
    [apply] = [b for b in at.button if b.label == "Apply filters"]
    apply.click().run()
    assert not at.exception
    assert at.query_params["payload"] in ("status=ARCHIVED\nbudget=-1", ["status=ARCHIVED\nbudget=-1"])
    assert "of 0 matching events" in at.caption[0].value


def test_a_bad_payload_filter_is_shown_like_the_other_filter_errors(demo_engine) -> None:
    at = page("events").run()
    [field] = [t for t in at.text_area if t.label == "Payload"]
    field.set_value("customer..id=42")
    [apply] = [b for b in at.button if b.label == "Apply filters"]
    apply.click().run()
    assert not at.exception
    assert "empty key" in at.error[0].value
    assert "payload" not in at.query_params
    at = page("events")
    at.query_params["payload"] = "tags=[1, 2]"
    at.run()
    assert not at.exception
    assert "Ignoring the filter in the link" in at.error[0].value and "not an object or array" in at.error[0].value

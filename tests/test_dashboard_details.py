"""The console's small things: the feed in time order, state kept across pages, one time
format, full error texts, wording that fits the dispatcher's state."""

from __future__ import annotations

import datetime as dt
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import streamlit as st
from sqlalchemy import text
from streamlit.testing.v1 import AppTest

from outbox_admin import analytics, charts, demo, init_db, make_engine, publish_outbox_event
from outbox_admin.ui.context import dashboard_dispatcher, stop_all_services

from .dashboard_support import keep_main_module  # noqa: F401 - an autouse fixture

MILLISECONDS = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}$")


def render_chosen() -> None:
    """One page of the dashboard, the one Session State names: page changes within one session."""
    import streamlit as st

    from outbox_admin.ui.app import render_page

    render_page(st.session_state.get("test_page", "overview"))


def session(name: str) -> AppTest:
    at = AppTest.from_function(render_chosen, default_timeout=60)
    at.session_state["test_page"] = name
    return at


@pytest.fixture
def url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'details.db'}"
    for name in ("OUTBOX_DASHBOARD_PASSWORD", "OUTBOX_DASHBOARD_READONLY", "OUTBOX_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OUTBOX_DATABASE_URL", url)
    monkeypatch.chdir(tmp_path)
    yield url
    stop_all_services()
    st.cache_resource.clear()
    st.cache_data.clear()


@pytest.fixture
def engine(url: str) -> Iterator[object]:
    engine = make_engine(url)
    init_db(engine)
    yield engine
    engine.dispose()


def _publish(engine, count: int, **fields: str) -> None:
    with engine.begin() as tx:
        for n in range(count):
            publish_outbox_event(
                tx,
                org_id=fields.get("org_id", "acme"),
                event_type="PROJECT.CREATED",
                entity_type="Project",
                entity_id=f"p{n}",
                payload={"n": n},
            )


def test_the_live_feed_is_in_time_order_not_row_order(engine) -> None:
    _publish(engine, 3)
    ids = analytics.events_frame(engine)["id"].tolist()
    base = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)  # after the publishing's own history rows
    with engine.begin() as conn:  # rows written in one order, happened in another (two dispatchers)
        for offset, event_id in zip((30, 10, 20), ids, strict=True):
            conn.execute(
                text(
                    'INSERT INTO "OutboxEventTransition" (event_id, from_status, to_status, at, actor, attempt) '
                    "VALUES (:id, 'PENDING', 'PROCESSING', :at, 'd', 1)"
                ),
                {"id": event_id, "at": (base + dt.timedelta(seconds=offset)).strftime("%Y-%m-%d %H:%M:%S.%f")},
            )
    feed = analytics.transitions_frame(engine, limit=3)
    assert feed["at"].is_monotonic_decreasing
    assert feed["event_id"].tolist() == [ids[0], ids[2], ids[1]]


def test_page_state_survives_leaving_the_page(engine) -> None:
    _publish(engine, 3)
    at = session("overview").run()
    at.segmented_control[0].set_value("24 hours").run()
    at.session_state["test_page"] = "publish"
    at.run()
    at.text_input(key="publish_org").set_value("globex")
    at.button[0].click().run()  # a form keeps what was submitted
    at.session_state["test_page"] = "events"
    at.run()
    at.session_state["test_page"] = "overview"
    at.run()
    assert not at.exception and not at.warning
    assert at.segmented_control[0].value == "24 hours"
    at.session_state["test_page"] = "publish"
    at.run()
    assert at.text_input(key="publish_org").value == "globex"


def test_the_events_page_keeps_its_link_when_you_come_back(engine) -> None:
    _publish(engine, 3)
    _publish(engine, 2, org_id="globex")
    at = session("events")
    at.query_params["org"] = "globex"
    at.run()
    assert "of 2 matching events" in at.caption[0].value
    at.session_state["test_page"] = "overview"
    at.query_params.clear()  # the page list's link carries no query
    at.run()
    at.session_state["test_page"] = "events"
    at.run()
    assert "of 2 matching events" in at.caption[0].value


def test_times_to_the_millisecond_and_one_format_in_exports(engine) -> None:
    _publish(engine, 2)
    at = session("events").run()
    table = at.dataframe[0].value
    table = getattr(table, "data", table)
    assert all(MILLISECONDS.match(value) for value in table["created_at"])
    from_csv = pd.read_csv(io.BytesIO(analytics.export_events(engine, fmt="csv")))
    from_json = json.loads(analytics.export_events(engine, fmt="json"))
    iso = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
    assert all(iso.match(v) for v in from_csv["created_at"]) and all(iso.match(e["created_at"]) for e in from_json)
    assert from_csv["created_at"].tolist() == [e["created_at"] for e in from_json]


def test_the_event_detail_shows_the_whole_error(engine) -> None:
    _publish(engine, 1)
    event_id = analytics.events_frame(engine)["id"][0]
    long_error = "receiver: HTTPStatusError: " + "upstream said no; " * 40
    with engine.begin() as conn:
        conn.execute(text('UPDATE "OutboxEvent" SET error_message = :m'), {"m": long_error})
    at = session("events")
    at.query_params["id"] = event_id
    at.run()
    assert any(code.value == long_error for code in at.code)


def test_the_demo_loader_is_not_a_dispatcher_elsewhere(engine) -> None:
    demo.load_demo_data(engine, 10, seed=1)
    at = session("overview").run()
    assert not at.exception
    assert not [i.value for i in at.sidebar.info if "elsewhere" in i.value]


def test_wording_follows_the_dispatcher_state(url: str, engine) -> None:
    demo.create_demo_schema(engine)  # a demo database: the dashboard's dispatcher exists
    at = session("publish").run()
    assert "Start" in {b.label for b in at.sidebar.button} and "Stop" not in {b.label for b in at.sidebar.button}
    at.button[0].click().run()
    assert "Start the dispatcher or run a tick" in at.success[0].value
    dashboard_dispatcher(url).service.start()
    at.run()
    assert "Stop" in {b.label for b in at.sidebar.button} and "Start" not in {b.label for b in at.sidebar.button}
    assert any("running" in m.value for m in at.sidebar.markdown)
    at.button[0].click().run()
    assert "is running and delivers it now" in at.success[0].value


def test_status_numbers_sit_inside_the_donut() -> None:
    figure = charts.status_figure(pd.DataFrame({"status": ["PENDING", "FAILED"], "count": [990, 1]}))
    pie = figure.data[0]
    assert pie.textposition == "inside" and pie.textinfo == "value" and figure.layout.showlegend

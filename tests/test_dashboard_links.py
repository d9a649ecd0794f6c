"""Links into the console: ``?id=`` opens an event, the page number and the selection live
in the link, and every event id shown in a table links to its event."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from outbox_admin import analytics, demo, init_db, make_engine, publish_outbox_event
from outbox_admin.ui.components import table_key
from outbox_admin.ui.context import stop_all_services

from .dashboard_support import keep_main_module, linked_ids, page  # noqa: F401 - an autouse fixture


@pytest.fixture
def engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    url = f"sqlite:///{tmp_path / 'links.db'}"
    for name in ("OUTBOX_DASHBOARD_PASSWORD", "OUTBOX_DASHBOARD_READONLY", "OUTBOX_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OUTBOX_DATABASE_URL", url)
    monkeypatch.chdir(tmp_path)
    engine = make_engine(url)
    init_db(engine)
    with engine.begin() as tx:
        for n in range(120):
            publish_outbox_event(
                tx, org_id="acme", event_type="PROJECT.CREATED", entity_type="Project", entity_id=f"p{n}", payload={}
            )
    yield engine
    stop_all_services()
    st.cache_resource.clear()
    st.cache_data.clear()
    engine.dispose()


def _shown_ids(at: AppTest) -> list[str]:
    return linked_ids(at.dataframe[0].value["link"])


def test_an_event_link_opens_that_event_wherever_it_is(engine) -> None:
    oldest = analytics.events_frame(engine, limit=1, offset=119)["id"][0]  # on the last page, not the first
    at = page("events", id=oldest).run()
    assert not at.exception
    assert oldest not in _shown_ids(at)
    assert any(oldest in m.value and m.value.startswith("Status ") for m in at.markdown)  # its detail
    assert any(m.value.startswith("Selected: ") and f"events?id={oldest}" in m.value for m in at.markdown)


def test_a_link_to_an_event_that_is_gone_says_so(engine) -> None:
    at = page("events", id="no-such-event").run()
    assert not at.exception
    assert any("no longer exists" in w.value for w in at.warning)


def test_the_page_number_is_in_the_link(engine) -> None:
    first = analytics.events_frame(engine, limit=50)["id"].tolist()
    at = page("events").run()
    assert _shown_ids(at) == first
    [next_page] = [b for b in at.button if b.label == "Next"]
    next_page.click().run()
    assert at.query_params["page"] in ("2", ["2"])
    second = analytics.events_frame(engine, limit=50, offset=50)["id"].tolist()
    assert _shown_ids(at) == second
    assert "Showing 51-100 of 120 matching events (page 2 of 3)" in at.caption[0].value
    reloaded = page("events", page="3").run()  # the same link, opened afresh
    assert _shown_ids(reloaded) == analytics.events_frame(engine, limit=50, offset=100)["id"].tolist()
    assert page("events", page="junk").run().caption[0].value.startswith("Showing 1-50 of 120")


def test_the_selection_is_in_the_link_and_comes_back_with_it(engine) -> None:
    at = page("events").run()
    ids = _shown_ids(at)
    at.session_state[table_key("events_table", ids)] = {"selection": {"rows": [1, 3], "columns": [], "cells": []}}
    at.run()
    assert not at.exception
    assert at.query_params["id"] == [ids[1], ids[3]]
    reloaded = page("events", id=[ids[1], ids[3]]).run()
    assert not reloaded.exception
    table_state = reloaded.session_state[table_key("events_table", ids)]
    assert list(table_state["selection"]["rows"]) == [1, 3]  # the table starts with the link's selection
    [clear] = [b for b in reloaded.button if b.label == "Clear selection"]
    clear.click().run()
    assert "id" not in reloaded.query_params


def test_event_ids_in_every_table_link_to_their_event(engine) -> None:
    demo.load_demo_data(engine, 20, seed=2, always_fail_share=0.3)
    live = page("live").run()
    assert not live.exception
    feed = live.dataframe[0].value
    feed = getattr(feed, "data", feed)
    assert all(str(link).startswith("events?id=") for link in feed["event_id"])
    failures = page("failures").run()
    assert not failures.exception
    groups = failures.dataframe[0].value
    assert all(str(link).startswith("events?id=") for link in groups["example_event_id"])
    for event_id in linked_ids(groups["example_event_id"]):
        assert analytics.get_event(engine, event_id) is not None

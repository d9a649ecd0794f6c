"""The delivery ledger in the console (AppTest on real SQLite files): each handler's state in the event
detail, the Failures page by handler, the Overview's per-handler table, and replays through the dry-run
dialog that reach the chosen handler only (a real dispatch after them)."""

from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import streamlit as st
from sqlalchemy import Engine, insert, select
from streamlit.testing.v1 import AppTest

from outbox_admin import analytics, init_db, make_engine, publish_outbox_event
from outbox_admin.models import DEFAULT_TABLES
from outbox_admin.ui import components
from outbox_admin.ui.components import table_key
from outbox_admin.ui.context import stop_all_services
from outbox_admin.ui.pages.actions import PENDING_KEY

from .dashboard_support import keep_main_module, linked_ids, page  # noqa: F401 - an autouse fixture
from .ledger_support import TwoHandlers, two_handlers

LEDGER = DEFAULT_TABLES.deliveries
#: A handler's name and an error that would be markup anywhere but in a table cell or a code span.
HOSTILE_NAME = "<b>beta</b> :red[boom] **x**"

APP_MODULE = """
class Named:
    def __init__(self, name):
        self.name = name

    def __call__(self, event):
        pass

def handlers():
    return [Named("alpha"), Named("beta")]
"""


@pytest.fixture
def engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    for name in [n for n in os.environ if n.startswith("OUTBOX_DASHBOARD_") or n == "OUTBOX_CONFIG"]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("OUTBOX_DATABASE_URL", url)
    monkeypatch.chdir(tmp_path)
    engine = make_engine(url)
    init_db(engine)
    yield engine
    stop_all_services()
    st.cache_resource.clear()
    st.cache_data.clear()
    engine.dispose()


@pytest.fixture
def run(engine: Engine) -> TwoHandlers:
    return two_handlers(engine)


@pytest.fixture
def configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The console's dispatcher delivers to ``alpha`` and ``beta`` (outbox.toml names the application's handlers)."""
    module = f"ledger_app_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(APP_MODULE))
    (tmp_path / "outbox.toml").write_text(f'handlers = "{module}:handlers"\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop(module, None)


def frame_with(at: AppTest, column: str) -> pd.DataFrame:
    """The one table on the page that has ``column``."""
    found = []
    for table in at.dataframe:
        value = getattr(table.value, "data", table.value)
        if column in value.columns:
            found.append(value)
    assert len(found) == 1, [list(getattr(t.value, "data", t.value).columns) for t in at.dataframe]
    return found[0]


def select_rows(at: AppTest, prefix: str, ids: Any, rows: list[int]) -> AppTest:
    """AppTest cannot click table rows: set the selection state the table widget would hold."""
    at.session_state[table_key(prefix, ids)] = {"selection": {"rows": rows, "columns": [], "cells": []}}
    return at.run()


def button(at: AppTest, label: str) -> Any:
    [found] = [b for b in at.button if b.label == label]
    return found


def ledger_row(engine: Engine, event_id: str, handler: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(LEDGER).where(LEDGER.c.event_id == event_id, LEDGER.c.handler == handler)).one()


# -- reads shown --------------------------------------------------------------------------------------------


def test_the_event_detail_shows_each_handlers_state(run: TwoHandlers) -> None:
    at = page("events", id=run.ids["p-2"]).run()
    assert not at.exception
    states = frame_with(at, "state")
    assert states[["handler", "state", "attempt"]].values.tolist() == [
        ["alpha", "delivered", 1],
        ["beta", "failing", 2],
    ]
    assert states["last_error"].tolist()[1] == "beta: ConnectionError: p-2 refused for good"
    assert states["delivered_at"].tolist()[1] in ("", None) and states["delivered_at"].tolist()[0] != ""
    assert "Deliveries, per handler" in [c.value for c in at.caption]


def test_the_star_row_reads_as_every_handler(engine: Engine) -> None:
    with engine.begin() as conn:
        event = publish_outbox_event(conn, org_id="o", event_type="PROJECT.CREATED", entity_type="P", entity_id="1")
        conn.execute(insert(LEDGER).values(event_id=event.id, handler="*", attempt=1, delivered_at=event.created_at))
    states = frame_with(page("events", id=event.id).run(), "state")
    assert states["handler"].tolist() == ["all handlers (delivered before the ledger existed)"]
    untried = page("events", id=run_one(engine)).run()
    assert "No handler has tried this event yet." in [c.value for c in untried.caption]


def run_one(engine: Engine) -> str:
    with engine.begin() as conn:
        return publish_outbox_event(conn, org_id="o", event_type="PROJECT.CREATED", entity_type="P", entity_id="2").id


def test_the_overview_has_the_per_handler_table(run: TwoHandlers) -> None:
    at = page("overview").run()
    assert not at.exception
    table = frame_with(at, "failure_rate").set_index("handler")
    assert table.loc["alpha", ["deliveries", "failing"]].tolist() == [6, 0]
    assert table.loc["beta", ["deliveries", "failing", "retried"]].tolist() == [5, 1, 1]
    assert table.loc["beta", "failure_rate"] == pytest.approx(100 / 6)  # shown as a percentage
    summary = analytics.handler_summary(run.engine).frame.set_index("handler")
    assert table.loc["beta", "latency_p95"] == pytest.approx(summary.loc["beta", "latency_p95"] * 1000)
    assert "Deliveries per handler" in [s.value for s in at.subheader]
    assert any(
        c.value.startswith("Since ") and "commit to the handler's acknowledgement" in c.value for c in at.caption
    )


def test_failures_by_handler_lists_groups_and_requeues_only_the_failing_handler(run: TwoHandlers) -> None:
    at = page("failures").run()
    at.segmented_control(key="failures_grouping").set_value("By handler").run()
    assert not at.exception
    groups = frame_with(at, "error_group")
    assert groups[["handler", "error_group", "events"]].values.tolist() == [
        ["beta", "beta: ConnectionError: p-<n> refused for good", 1]
    ]
    assert linked_ids(groups["example_event_id"]) == [run.ids["p-2"]]
    found = analytics.handler_failures(run.engine).frame
    select_rows(at, "handler_groups", found["handler"] + "\x1f" + found["error_group"], [0])
    assert not at.exception
    assert linked_ids(frame_with(at, "retry_count")["id"]) == [run.ids["p-2"]]
    button(at, "Requeue these 1 event(s)").click().run()
    button(at, "Requeue 1 event(s)").click().run()
    assert not at.exception and "Requeued 1 event(s)" in [s.value for s in at.success]
    run.beta.always.clear()  # the receiver is fixed
    run.dispatch()
    assert analytics.get_event(run.engine, run.ids["p-2"])["status"] == "COMPLETED"
    assert run.alpha.ids.count(run.ids["p-2"]) == 1, "alpha had it: not sent again"
    assert run.beta.seen.count(run.ids["p-2"]) == 3


def test_no_failing_handler_says_so(engine: Engine) -> None:
    at = page("failures").run()
    at.segmented_control(key="failures_grouping").set_value("By handler").run()
    assert not at.exception
    assert [s.value for s in at.success] == ["No FAILED event is waiting on a handler."]


# -- replay -------------------------------------------------------------------------------------------------


def test_replay_selected_to_a_configured_handler_reaches_it_only(run: TwoHandlers, configured: None) -> None:
    at = page("events", status="COMPLETED").run()
    ids = linked_ids(at.dataframe[0].value["link"])
    chosen = ids.index(run.ids["p-1"])
    select_rows(at, "events_table", ids, [chosen])
    button(at, "Replay selected").click().run()
    assert not at.exception
    assert any("**Replay 1 event(s)** in COMPLETED, FAILED, DISCARDED." in m.value for m in at.markdown)
    picker = at.multiselect(key="replay_handlers")
    assert picker.options == ["alpha", "beta"], "the console's dispatcher's handlers"
    assert button(at, "Replay 1 event(s)").disabled, "a replay names its handlers"
    picker.set_value(["alpha"]).run()
    button(at, "Replay 1 event(s)").click().run()
    assert not at.exception
    assert [s.value for s in at.success] == ["Queued 1 event(s) for replay to `alpha`"]
    assert ledger_row(run.engine, run.ids["p-1"], "alpha").requested_by == "admin:dashboard"
    run.dispatch()
    assert analytics.get_event(run.engine, run.ids["p-1"])["status"] == "COMPLETED"
    assert run.alpha.ids.count(run.ids["p-1"]) == 2, "alpha got it again"
    assert run.beta.seen.count(run.ids["p-1"]) == 2, "beta: its failure and its delivery, nothing more"
    # The history names who asked and for which handler.
    detail = page("events", id=run.ids["p-1"]).run()
    history = frame_with(detail, "actor")
    assert ["COMPLETED", "PENDING", "admin:dashboard", "replay to alpha"] in history[
        ["from_status", "to_status", "actor", "error_message"]
    ].values.tolist()
    states = frame_with(detail, "state").set_index("handler")
    assert states.loc["alpha", "state"] == "delivered (replayed)" and states.loc["alpha", "requested_by"] == (
        "admin:dashboard"
    )


def test_replay_by_filter_to_a_typed_handler(run: TwoHandlers) -> None:
    updated = analytics.event_ids(run.engine, event_type="PROJECT.UPDATED", status="COMPLETED")
    assert len(updated) == 3  # p-1, p-3, p-5
    at = page("events", type="PROJECT.UPDATED").run()
    button(at, "Replay all finished matching").click().run()
    assert not at.exception
    assert any("**Replay 3 event(s)**" in m.value for m in at.markdown)
    picker = at.multiselect(key="replay_handlers")
    assert picker.options == ["alpha", "beta"], "no dispatcher here: the names the ledger has seen"
    at.text_input(key="replay_other_handlers").input("beta").run()
    button(at, "Replay 3 event(s)").click().run()
    assert not at.exception
    assert [s.value for s in at.success] == ["Queued 3 event(s) for replay to `beta`"]
    before_alpha = list(run.alpha.ids)
    run.dispatch()
    assert run.alpha.ids == before_alpha, "alpha was not called"
    for event_id in updated:
        assert run.beta.seen.count(event_id) == (3 if event_id == run.ids["p-1"] else 2)
        assert analytics.get_event(run.engine, event_id)["status"] == "COMPLETED"
    assert analytics.get_event(run.engine, run.ids["p-0"])["retry_count"] == 0, "other types untouched"


def test_replay_by_filter_keeps_the_filters_statuses(run: TwoHandlers) -> None:
    at = page("events", status="FAILED").run()
    button(at, "Replay all finished matching").click().run()
    assert any("**Replay 1 event(s)** in FAILED." in m.value for m in at.markdown)
    pending = page("events", status="PENDING").run()
    assert button(pending, "Replay all finished matching").disabled


def test_a_wrong_handler_name_is_refused_in_the_dialog(run: TwoHandlers, configured: None) -> None:
    at = page("events", status="COMPLETED").run()
    ids = linked_ids(at.dataframe[0].value["link"])
    select_rows(at, "events_table", ids, [0])
    button(at, "Replay selected").click().run()
    at.text_input(key="replay_other_handlers").input("*").run()
    assert [e.value for e in at.error] == [components.literal("'*' is not a handler's name")]
    assert button(at, "Replay 1 event(s)").disabled
    at.text_input(key="replay_other_handlers").input("gamma").run()
    assert any("has no handler named `gamma`" in w.value for w in at.warning)
    assert not button(at, "Replay 1 event(s)").disabled


def test_a_viewer_cannot_replay(run: TwoHandlers, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTBOX_DASHBOARD_PASSWORD", "pw")
    monkeypatch.setenv("OUTBOX_DASHBOARD_OPERATORS", "alice")
    at = page("events", "carol", status="COMPLETED").run()
    assert not {b.label for b in at.button} & {"Replay selected", "Replay all finished matching"}
    at = page("failures", "carol").run()
    at.segmented_control(key="failures_grouping").set_value("By handler").run()
    found = analytics.handler_failures(run.engine).frame
    select_rows(at, "handler_groups", found["handler"] + "\x1f" + found["error_group"], [0])
    assert not {b.label for b in at.button} & {"Requeue these 1 event(s)"}
    assert analytics.get_event(run.engine, run.ids["p-1"])["status"] == "COMPLETED"
    assert ledger_row(run.engine, run.ids["p-1"], "alpha").requested_at is None


def test_the_dialog_refuses_a_viewers_pending_replay(run: TwoHandlers, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTBOX_DASHBOARD_PASSWORD", "pw")
    monkeypatch.setenv("OUTBOX_DASHBOARD_OPERATORS", "alice")
    at = page("overview", "carol")  # the Overview draws a pending request's dialog for everyone
    at.session_state[PENDING_KEY] = {"action": "replay", "event_ids": (run.ids["p-1"],), "status": None}
    at.run()
    assert not at.exception
    assert "Only operators can requeue, discard, retry, recover or replay events." in [e.value for e in at.error]
    assert PENDING_KEY not in at.session_state
    assert ledger_row(run.engine, run.ids["p-1"], "alpha").requested_at is None


# -- stored text as data ------------------------------------------------------------------------------------


def test_hostile_handler_names_and_errors_are_shown_as_data(engine: Engine) -> None:
    run = two_handlers(engine, beta_name=HOSTILE_NAME)
    detail = page("events", id=run.ids["p-2"]).run()
    assert not detail.exception
    states = frame_with(detail, "state").set_index("handler")
    assert sorted(states.index) == sorted(["alpha", HOSTILE_NAME])
    assert states.loc[HOSTILE_NAME, "last_error"] == f"{HOSTILE_NAME}: ConnectionError: p-2 refused for good"
    overview = page("overview").run()
    assert HOSTILE_NAME in frame_with(overview, "failure_rate")["handler"].tolist()
    failures = page("failures").run()
    failures.segmented_control(key="failures_grouping").set_value("By handler").run()
    found = analytics.handler_failures(engine).frame
    select_rows(failures, "handler_groups", found["handler"] + "\x1f" + found["error_group"], [0])
    assert not failures.exception
    assert f"Handler {components.literal(HOSTILE_NAME)}" in [m.value for m in failures.markdown]
    for at in (detail, overview, failures):
        texts = [e.value for e in (*at.markdown, *at.caption, *at.subheader, *at.error, *at.warning, *at.success)]
        for text in texts:
            if "boom" in text:  # only inside a code span
                assert components.literal(HOSTILE_NAME) in text, text
    # The replay dialog's picker shows the name as it is, and the result puts it in a code span.
    events = page("events", status="COMPLETED").run()
    ids = linked_ids(events.dataframe[0].value["link"])
    select_rows(events, "events_table", ids, [ids.index(run.ids["p-1"])])
    button(events, "Replay selected").click().run()
    picker = events.multiselect(key="replay_handlers")
    assert HOSTILE_NAME in picker.options
    picker.set_value([HOSTILE_NAME]).run()
    button(events, "Replay 1 event(s)").click().run()
    assert [s.value for s in events.success] == [f"Queued 1 event(s) for replay to {components.literal(HOSTILE_NAME)}"]
    run.dispatch()
    assert run.beta.seen.count(run.ids["p-1"]) == 3 and run.alpha.ids.count(run.ids["p-1"]) == 1

"""The dashboard's stuck and scheduled work (Overview tile, Events filters, next attempt, recover and retry now)
and the Failures page (ordering, paging, discard per group, the link to Events), through AppTest on SQLite."""

from __future__ import annotations

import datetime as dt
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from streamlit.testing.v1 import AppTest

from outbox_admin import Dispatcher, analytics
from outbox_admin.filters import EventFilter
from outbox_admin.ui.components import table_key

from .dashboard_support import dashboard_database, keep_main_module, linked_ids, page  # noqa: F401 - an autouse fixture
from .test_stuck import events, history, mixed, row, seed

TIMEOUT = 60


@pytest.fixture
def engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    yield from dashboard_database(tmp_path, monkeypatch, unset=("OUTBOX_MAX_ATTEMPTS",))


def button(at: AppTest, label: str):
    [found] = [b for b in at.button if b.label == label]
    return found


def select_rows(at: AppTest, prefix: str, ids: list[str], rows: list[int]) -> AppTest:
    """AppTest cannot click table rows: set the selection state the table widget would hold."""
    at.session_state[table_key(prefix, ids)] = {"selection": {"rows": rows, "columns": [], "cells": []}}
    return at.run()


def confirm(at: AppTest, label: str) -> AppTest:
    """Click the dialog's action button, whose label starts with ``label`` (then the count)."""
    [go] = [b for b in at.button if b.label.startswith(label + " ") and b.label.endswith("event(s)")]
    return go.click().run()


# --- the Overview -----------------------------------------------------------------------------


def test_the_overview_shows_expired_leases_apart_and_recovers_them(engine: Engine) -> None:
    mixed(engine)  # 3 expired leases (2 held by dead-a, 1 by dead-b), 2 live
    at = page("overview").run()
    assert not at.exception
    tiles = {m.label: m.value for m in at.metric}
    assert tiles["Processing"] == "2" and tiles["Expired leases"] == "3"
    [warning] = [w.value for w in at.warning if "stuck in PROCESSING" in w.value]
    assert warning.startswith("3 event(s) are stuck in PROCESSING: their lease expired (the oldest 20 min ago)")
    assert "`dead-a` (2), `dead-b` (1)" in warning
    assert "(events?lease_expired=true)" in warning
    button(at, "Recover now").click().run()
    assert "**Recover 3 event(s)** in PROCESSING." in [m.value for m in at.markdown]  # the dry run
    assert any("as a failed attempt (FAILED when it was the last of 5)" in c.value for c in at.caption)
    confirm(at, "Recover")
    assert not at.exception
    assert [s.value for s in at.success] == ["Recovered 3 event(s) from expired leases"]
    assert analytics.expired_leases(engine).count == 0
    rows = events(engine)
    assert (rows["dead-a2"]["status"], rows["dead-a1"]["status"]) == ("FAILED", "PENDING")
    assert {rows["live-1"]["status"], rows["live-2"]["status"]} == {"PROCESSING"}
    assert [h["actor"] for h in history(engine, "dead-b1")] == ["admin:dashboard"]
    tiles = {m.label: m.value for m in at.metric}
    assert tiles["Expired leases"] == "0" and not [w for w in at.warning if "stuck" in w.value]


def test_a_lease_renewed_between_the_dry_run_and_the_action_is_left_alone(engine: Engine) -> None:
    mixed(engine)
    at = page("overview").run()
    button(at, "Recover now").click().run()
    assert "**Recover 3 event(s)** in PROCESSING." in [m.value for m in at.markdown]
    # dead-a was only slow: it renews its leases (the real heartbeat statement) before the person confirms
    assert Dispatcher(engine, [], name="dead-a", lease_seconds=600)._renew_leases(["dead-a1", "dead-a2"]) == 2
    confirm(at, "Recover")
    assert [s.value for s in at.success] == [
        "Recovered 1 event(s) from expired leases; 2 had changed meanwhile and were left alone"
    ]
    rows = events(engine)
    assert {rows["dead-a1"]["locked_by"], rows["dead-a2"]["locked_by"]} == {"dead-a"}
    assert rows["dead-a1"]["status"] == "PROCESSING" and history(engine, "dead-a1") == []


def test_read_only_shows_the_tile_without_the_action(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    mixed(engine)
    monkeypatch.setenv("OUTBOX_DASHBOARD_READONLY", "1")
    at = page("overview").run()
    assert {m.label: m.value for m in at.metric}["Expired leases"] == "3"
    assert "Recover now" not in {b.label for b in at.button}
    at = page("events", lease_expired="true").run()
    labels = {b.label for b in at.button}
    assert not labels & {"Retry selected now", "Recover selected", "Recover all expired matching"}


# --- the Events page --------------------------------------------------------------------------


def test_the_events_filter_for_expired_leases(engine: Engine) -> None:
    mixed(engine)
    at = page("events", lease_expired="true").run()
    assert not at.exception
    table = at.dataframe[0].value
    assert set(linked_ids(table["link"])) == {"dead-a1", "dead-a2", "dead-b1"}
    assert [n.split(" ")[:2] for n in table["upcoming"]] == [["lease", "expired"]] * 3
    [expired_only] = [c for c in at.checkbox if c.label == "Only PROCESSING with an expired lease"]
    assert expired_only.value is True
    expired_only.uncheck()
    [waiting_only] = [c for c in at.checkbox if c.label == "Only PENDING waiting on a backoff"]
    waiting_only.check()
    button(at, "Apply filters").click().run()
    assert at.query_params["scheduled"] in ("true", ["true"]) and "lease_expired" not in at.query_params
    assert set(linked_ids(at.dataframe[0].value["link"])) == {"wait-1", "wait-2"}


def test_next_attempt_is_shown_and_retry_now_works_on_one_event(engine: Engine) -> None:
    mixed(engine)
    at = page("events", scheduled="true").run()
    table = at.dataframe[0].value
    ids = linked_ids(table["link"])
    notes = dict(zip(ids, table["upcoming"], strict=True))
    assert notes["wait-1"] in ("in 30 min", "in 29 min") and notes["wait-2"] in ("in 60 min", "in 59 min")
    select_rows(at, "events_table", ids, [ids.index("wait-1")])
    assert any(c.value.startswith("Next attempt in ") and "UTC" in c.value for c in at.caption)
    button(at, "Retry now").click().run()
    assert "**Retry now 1 event(s)** in PENDING." in [m.value for m in at.markdown]
    confirm(at, "Retry now")
    assert not at.exception
    assert [s.value for s in at.success] == ["1 event(s) due now"]
    assert events(engine)["wait-1"]["available_at"] <= dt.datetime.now(dt.UTC)
    assert set(analytics.events_frame(engine, scheduled=True)["id"]) == {"wait-2"}


def test_retry_now_and_recover_by_filter(engine: Engine) -> None:
    mixed(engine)
    at = page("events", type="BUDGET.UPDATED").run()
    button(at, "Retry now all waiting matching").click().run()
    assert "**Retry now 1 event(s)** in PENDING." in [m.value for m in at.markdown]
    confirm(at, "Retry now")
    assert set(analytics.events_frame(engine, scheduled=True)["id"]) == {"wait-1"}  # the other type waits on
    button(at, "Recover all expired matching").click().run()
    assert "**Recover 1 event(s)** in PROCESSING." in [m.value for m in at.markdown]
    confirm(at, "Recover")
    assert set(analytics.events_frame(engine, lease_expired=True)["id"]) == {"dead-a1", "dead-a2"}


def test_filter_wide_actions_honour_the_filter_and_are_disabled_when_it_excludes_their_events(engine: Engine) -> None:
    mixed(engine)
    seed(
        engine,
        [
            row("done-1", "COMPLETED"),
            row("failed-2", "FAILED", event_type="BUDGET.UPDATED", retry_count=5, error_message="boom"),
        ],
    )
    at = page("events", status="COMPLETED").run()
    assert len(at.dataframe[0].value) == 1
    assert "upcoming" not in at.dataframe[0].value.columns  # nothing waits: no next-attempt column
    for label in (
        "Requeue all FAILED matching",
        "Discard all FAILED matching",
        "Retry now all waiting matching",
        "Recover all expired matching",
    ):
        assert button(at, label).disabled, label
    at = page("events", lease_expired="true").run()
    assert button(at, "Requeue all FAILED matching").disabled and button(at, "Retry now all waiting matching").disabled
    assert not button(at, "Recover all expired matching").disabled
    at = page("events", status="FAILED,PENDING", type="PROJECT.CREATED").run()
    assert not button(at, "Requeue all FAILED matching").disabled
    assert button(at, "Recover all expired matching").disabled
    button(at, "Requeue all FAILED matching").click().run()
    assert "**Requeue 1 event(s)** in FAILED." in [m.value for m in at.markdown]  # not failed-2: another type
    confirm(at, "Requeue")
    rows = events(engine)
    assert rows["failed-1"]["status"] == "PENDING" and rows["failed-2"]["status"] == "FAILED"


# --- the Failures page ------------------------------------------------------------------------


def word(i: int) -> str:
    """A different word per number (error groups replace digits, so the groups must differ in letters)."""
    return "".join(chr(ord("a") + int(d)) for d in str(i))


def failures_data(engine: Engine) -> None:
    """Group "big" with 250 FAILED events, "many" with 300 events of which 1 FAILED, and 55 small groups."""
    rows = [row(f"big-{i:03d}", "FAILED", retry_count=5, error_message="big failure") for i in range(250)]
    rows += [row(f"many-{i:03d}", "PENDING", retry_count=1, error_message="many failure") for i in range(299)]
    rows += [row("many-299", "FAILED", retry_count=5, error_message="many failure")]
    rows += [row(f"small-{i}", "FAILED", retry_count=5, error_message=f"small failure {word(i)}") for i in range(55)]
    seed(engine, rows)


def groups_on_page(engine: Engine, offset: int = 0) -> list[str]:
    return list(analytics.error_summary(engine, limit=50, offset=offset, order="failed")["error_group"])


def test_failures_groups_sort_by_dead_letters_and_are_paged(engine: Engine) -> None:
    failures_data(engine)
    at = page("failures").run()
    assert not at.exception
    shown = at.dataframe[0].value
    assert list(shown["error_group"][:2]) == ["big failure", "many failure"]  # 250 FAILED, then 1 FAILED of 300
    assert list(shown["failed"][:2]) == [250, 1] and list(shown["events"][:2]) == [250, 300]
    assert "Showing 1-50 of 57 error groups" in [c.value for c in at.caption]
    at.button(key="failures_groups_page_next").click().run()
    assert "Showing 51-57 of 57 error groups" in [c.value for c in at.caption]
    assert list(at.dataframe[0].value["error_group"]) == groups_on_page(engine, 50)
    assert at.button(key="failures_groups_page_next").disabled


def test_a_groups_dead_letters_are_paged_and_linked_to_events(engine: Engine) -> None:
    failures_data(engine)
    at = page("failures").run()
    select_rows(at, "groups", groups_on_page(engine), [0])
    assert "Showing 1-200 of 250 FAILED events" in [c.value for c in at.caption]
    assert len(at.dataframe[1].value) == 200
    pager = table_key("failures_dead_page", ["big failure"])
    at.button(key=f"{pager}_next").click().run()
    assert "Showing 201-250 of 250 FAILED events" in [c.value for c in at.caption]
    dead = at.dataframe[1].value
    assert len(dead) == 50 and set(linked_ids(dead["id"])) == {f"big-{i:03d}" for i in range(50)}  # oldest last
    [link] = [m.value for m in at.markdown if "Open this group in Events" in m.value]
    target = link[link.index("](") + 2 : -1]
    path, _, query = target.partition("?")
    assert path == "events" and urllib.parse.parse_qs(query) == {"error": ["big failure"]}
    at = page("events", **{k: v[0] for k, v in urllib.parse.parse_qs(query).items()}).run()
    assert at.caption[0].value.startswith("Error group: `big failure`")
    assert any("of 250 matching events" in c.value for c in at.caption)


def test_the_link_encodes_any_group_text() -> None:
    from outbox_admin.ui.components import events_link

    group = "x](javascript:alert(1)) <b>&q=1 ü\n"
    link = events_link(EventFilter(error_group=group), "Open")
    target = link[len("[Open](") : -1]
    assert all(c.isalnum() or c in "%-_.~=&?" for c in target), target
    assert urllib.parse.parse_qs(target.partition("?")[2]) == {"error": [group]}


def test_discard_a_whole_group_from_the_failures_page(engine: Engine) -> None:
    failures_data(engine)
    at = page("failures").run()
    select_rows(at, "groups", groups_on_page(engine), [1])  # "many failure": 1 FAILED, 299 PENDING
    button(at, "Discard the whole group").click().run()
    assert "**Discard 1 event(s)** in FAILED." in [m.value for m in at.markdown]  # only the dead letters
    confirm(at, "Discard")
    assert not at.exception
    assert [s.value for s in at.success] == ["Discarded 1 event(s)"]
    assert events(engine)["many-299"]["status"] == "DISCARDED"
    assert analytics.count_events(engine, error_group="many failure", status="PENDING") == 299
    assert [h["actor"] for h in history(engine, "many-299")] == ["admin:dashboard"]

"""The Overview's pauses through ``AppTest``, on a real SQLite file: the list (pattern, who, when, why),
the pause form and the Resume buttons, and what read-only users get."""

from __future__ import annotations

from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from outbox_admin import admin, analytics

from .dashboard_support import keep_main_module  # noqa: F401 - an autouse fixture
from .test_dashboard import dash_url, demo_engine, engine, page  # noqa: F401 - fixtures


def widget(elements: Any, label: str) -> Any:
    [found] = [e for e in elements if e.label == label]
    return found


def pause_form(at: AppTest, pattern: str, reason: str) -> AppTest:
    widget(at.text_input, "Event types").set_value(pattern)
    widget(at.text_input, "Reason").set_value(reason)
    return widget(at.button, "Pause").click().run()


def paused_lines(at: AppTest) -> list[str]:
    return [w.value for w in at.warning if w.value.startswith("Paused: ")]


def test_an_operator_pauses_and_resumes_from_the_overview(demo_engine) -> None:  # noqa: F811
    at = page("overview").run()
    assert not at.exception and paused_lines(at) == []
    at = pause_form(at, "PROJECT.*", "consumer migration")
    assert not at.exception
    assert [s.value for s in at.success] == ["Paused `PROJECT.*`."]
    [line] = paused_lines(at)
    assert "`PROJECT.*` by `admin:dashboard` since " in line and " UTC. Why: `consumer migration`" in line
    [active] = analytics.pauses(demo_engine).itertuples()
    assert (active.pattern, active.reason, active.paused_by) == ("PROJECT.*", "consumer migration", "admin:dashboard")

    at = pause_form(at, "PROJECT.*", "another reason")
    assert [i.value for i in at.info if "paused already" in i.value] == [
        "`PROJECT.*` was paused already by `admin:dashboard`; that pause and its reason are kept."
    ]
    assert len(analytics.pauses(demo_engine, active_only=False)) == 1

    widget(at.button, "Resume").click().run()
    assert not at.exception
    assert [s.value for s in at.success] == ["Resumed `PROJECT.*`."]
    assert paused_lines(at) == [] and analytics.pauses(demo_engine).empty
    [ended] = analytics.pauses(demo_engine, active_only=False).itertuples()
    assert ended.resumed_by == "admin:dashboard"


@pytest.mark.parametrize(
    ("pattern", "reason", "error"),
    [
        ("PROJECT.[AB", "r", "pattern: 'PROJECT.[AB': the [ at position 9 is never closed"),
        ("", "r", "pattern: is empty"),
        ("PROJECT.*", "", "reason: is required"),
    ],
)
def test_a_refused_pause_is_one_line_and_writes_nothing(engine, pattern: str, reason: str, error: str) -> None:  # noqa: F811
    at = pause_form(page("overview").run(), pattern, reason)
    assert not at.exception
    [shown] = [e.value for e in at.error]
    assert shown.startswith("`") and error in shown  # one line, as data
    assert analytics.pauses(engine, active_only=False).empty


def test_pauses_made_elsewhere_show_their_text_as_data(engine) -> None:  # noqa: F811
    admin.pause(engine, "BUDGET.*", reason="**bold** :smile: <b>x</b>\nline two", actor="[ana](http://x)")
    at = page("overview").run()  # the empty state too shows what is paused
    [line] = paused_lines(at)
    assert "`admin:[ana](http://x)`" in line and "`**bold** :smile: <b>x</b>\\nline two`" in line
    assert "same transaction" in at.info[0].value


def test_read_only_users_see_the_pauses_but_cannot_change_them(demo_engine, monkeypatch) -> None:  # noqa: F811
    admin.pause(demo_engine, "PROJECT.*", reason="migration", actor="ana")
    monkeypatch.setenv("OUTBOX_DASHBOARD_READONLY", "1")
    at = page("overview").run()
    assert not at.exception
    assert len(paused_lines(at)) == 1
    assert not {b.label for b in at.button} & {"Resume", "Pause"}
    assert not [i for i in at.text_input if i.label in ("Event types", "Reason")]

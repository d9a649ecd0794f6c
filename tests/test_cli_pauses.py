"""``outbox-admin pause``, ``resume`` and ``pauses`` through ``main()`` (the console script's function),
on SQLite and PostgreSQL: what they print, what they store, and one error line for each bad input."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import Engine

from outbox_admin import analytics, make_engine, publish_outbox_event

from .cli_support import run_main
from .test_cli_ops import one_error_line

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run(db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Run:
    monkeypatch.setenv("OUTBOX_DATABASE_URL", db_url)
    return lambda *args: run_main(monkeypatch, capsys, *args)


@pytest.fixture
def cli_engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def test_pause_list_and_resume(run: Run, cli_engine: Engine) -> None:
    code, out, err = run("pause", "PROJECT.*", "--reason", "consumer migration", "--actor", "ana")
    assert (code, err) == (0, "")
    assert out.strip() == "paused PROJECT.*: dispatchers claim no matching event from their next batch on"
    code, out, _ = run("pause", "PROJECT.*", "--reason", "again")
    assert code == 0 and "PROJECT.* is paused already, by admin:ana since " in out
    assert "consumer migration (that pause is kept)" in out
    code, out, _ = run("pause", "BUDGET.*", "--reason", "budgets", "--json")
    created = json.loads(out)
    assert (code, created["pattern"], created["paused_by"], created["created"], created["active"]) == (
        0,
        "BUDGET.*",
        "admin:cli",
        True,
        True,
    )

    code, out, _ = run("pauses")
    assert code == 0 and "2 active pause(s)" in out
    for text in ("PROJECT.*", "consumer migration", "admin:ana", "BUDGET.*", " UTC"):
        assert text in out
    assert "resumed_by" not in out

    code, out, _ = run("resume", "PROJECT.*", "--actor", "bob")
    assert code == 0 and out.startswith("resumed PROJECT.* (paused by admin:ana since ")
    code, out, _ = run("pauses", "--json")
    assert [p["pattern"] for p in json.loads(out)["pauses"]] == ["BUDGET.*"]
    code, out, _ = run("pauses", "--all")
    assert code == 0 and "2 pause(s), newest first" in out and "admin:bob" in out and "resumed_at" in out
    code, out, _ = run("pauses", "--all", "--json")
    history = json.loads(out)["pauses"]
    assert [(p["pattern"], p["active"], p["resumed_by"]) for p in history] == [
        ("BUDGET.*", True, None),
        ("PROJECT.*", False, "admin:bob"),
    ]
    assert history[1]["resumed_at"].endswith("+00:00")


def test_dispatch_reports_the_pauses_it_honoured(run: Run, cli_engine: Engine) -> None:
    with cli_engine.begin() as conn:
        for event_type in ("PROJECT.CREATED", "PROJECT.UPDATED"):
            publish_outbox_event(conn, org_id="o", event_type=event_type, entity_type="P", entity_id="1")
    assert run("pause", "PROJECT.UPDATED", "--reason", "hold")[0] == 0
    code, out, _ = run("dispatch", "--once", "--log-only", "--quiet", "--json")
    report = json.loads(out)
    assert (code, report["claimed"], report["completed"], report["paused"]) == (0, 1, 1, 1)
    assert analytics.count_events(cli_engine, status="PENDING", event_type="PROJECT.UPDATED") == 1
    code, out, _ = run("dispatch", "--once", "--log-only", "--quiet")
    assert code == 0 and "paused" in out.splitlines()[1]  # the table's header


def test_stored_text_is_printed_as_data(run: Run) -> None:
    reason = "[bold]urgent[/bold] \x1b[31mred\nnext line"
    assert run("pause", "PROJECT.*", "--reason", reason, "--actor", "[link=x]me[/link]")[0] == 0
    code, out, _ = run("pauses")
    assert code == 0 and "[bold]urgent[/bold]" in out and "\\x1b[31mred\\nnext" in out and "\x1b" not in out
    assert "admin:[link=x]me[/link]" in out
    code, out, _ = run("pause", "PROJECT.*", "--reason", "other")
    assert "\\x1b[31mred\\nnext line (that pause is kept)" in out and "\x1b" not in out


BAD = {
    "bad-glob": (["pause", "PROJECT.[AB", "--reason", "r"], 2, "pattern: 'PROJECT.[AB': the [ at position 9"),
    "empty-pattern": (["pause", " ", "--reason", "r"], 2, "pattern: is empty"),
    "blank-reason": (["pause", "PROJECT.*", "--reason", "  "], 2, "reason: is required"),
    "no-reason": (["pause", "PROJECT.*"], 2, "--reason"),
    "long-pattern": (["pause", "A" * 300, "--reason", "r"], 2, "over the limit of 255"),
    "resume-unpaused": (["resume", "PROJECT*"], 1, "'PROJECT*' is not paused; the active pauses are 'BUDGET.*'"),
    "resume-bad-glob": (["resume", "[z-a]"], 2, "matches no character"),
    "bad-limit": (["pauses", "--limit", "0"], 2, "--limit"),
}


@pytest.mark.parametrize(("args", "code", "fragment"), list(BAD.values()), ids=list(BAD))
def test_bad_input_is_one_line(run: Run, cli_engine: Engine, args: list[str], code: int, fragment: str) -> None:
    assert run("pause", "BUDGET.*", "--reason", "kept")[0] == 0
    one_error_line(run(*args), code, fragment)
    assert list(analytics.pauses(cli_engine, active_only=False)["pattern"]) == ["BUDGET.*"]  # nothing written

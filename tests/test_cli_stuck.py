"""``outbox-admin recover``, ``outbox-admin retry-now`` and the ``--lease-expired``/``--scheduled`` filters,
through ``main()`` (the console script's function), on SQLite and PostgreSQL."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import Engine

from outbox_admin import analytics

from .cli_support import run_main
from .test_stuck import events, history, mixed


def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], db_url: str, *args: str):
    return run_main(monkeypatch, capsys, *args, "--database-url", db_url)


def test_recover_dry_run_then_action(
    engine: Engine, db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    mixed(engine)
    before = events(engine)
    code, out, err = cli(monkeypatch, capsys, db_url, "recover", "--dry-run")
    assert (code, err) == (0, "")
    assert out.startswith("recover would move 3 event(s) in PROCESSING; e.g. ")
    assert {"dead-a1", "dead-a2", "dead-b1"} <= set(out.split("e.g. ")[1].strip().split(", "))
    assert events(engine) == before  # a dry run writes nothing
    code, out, _ = cli(monkeypatch, capsys, db_url, "recover", "--event-type", "BUDGET.UPDATED", "--json")
    assert (code, json.loads(out)) == (0, {"action": "recover", "moved": 1})
    monkeypatch.setenv("OUTBOX_MAX_ATTEMPTS", "1")  # as the dispatchers are configured
    code, out, _ = cli(monkeypatch, capsys, db_url, "recover", "--actor", "ops")
    assert (code, out.strip()) == (0, "recover: 2 event(s) moved")
    after = events(engine)
    assert after["dead-a1"]["status"] == after["dead-a2"]["status"] == "FAILED"  # one attempt allowed: spent
    assert after["dead-b1"]["status"] == "PENDING"
    assert [h["actor"] for h in history(engine, "dead-a1")] == ["admin:ops"]
    assert {after[i]["status"] for i in ("live-1", "live-2")} == {"PROCESSING"}


def test_retry_now_dry_run_then_action(
    engine: Engine, db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    mixed(engine)
    code, out, _ = cli(
        monkeypatch, capsys, db_url, "retry-now", "--event-type", "BUDGET.UPDATED", "--dry-run", "--json"
    )
    plan = {"action": "retry-now", "dry_run": True, "count": 1, "sample_ids": ["wait-2"]}
    assert (code, json.loads(out)) == (0, plan)
    code, out, _ = cli(monkeypatch, capsys, db_url, "retry-now", "wait-1", "due-1")
    assert (code, out.strip()) == (0, "retry-now: 1 event(s) moved")
    code, out, _ = cli(monkeypatch, capsys, db_url, "retry-now")
    assert (code, out.strip()) == (0, "retry-now: 1 event(s) moved")
    assert analytics.count_events(engine, scheduled=True) == 0
    assert [h["actor"] for h in history(engine, "wait-2")] == ["admin:cli"]


def test_events_lists_stuck_and_waiting_events(
    engine: Engine, db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    mixed(engine)
    code, out, _ = cli(monkeypatch, capsys, db_url, "events", "--lease-expired", "--json")
    data = json.loads(out)
    assert code == 0 and data["total"] == 3
    assert {e["id"] for e in data["events"]} == {"dead-a1", "dead-a2", "dead-b1"}
    assert {e["locked_by"] for e in data["events"]} == {"dead-a", "dead-b"}
    code, out, _ = cli(monkeypatch, capsys, db_url, "events", "--scheduled")
    assert code == 0 and "2 of 2 events" in out and "wait-1" in out and "due-1" not in out


def test_bad_input_is_a_usage_error_and_no_database_a_failure(
    engine: Engine, db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli(monkeypatch, capsys, db_url, "recover", "--max-attempts", "0")
    assert code == 2 and "--max-attempts" in err
    code, _, err = cli(monkeypatch, capsys, db_url, "retry-now", "--since", "yesterday")
    assert code == 2 and err.startswith("error: since: 'yesterday' is not an ISO 8601 date")
    code, _, err = run_main(
        monkeypatch, capsys, "recover", "--dry-run", "--database-url", "postgresql+psycopg://nobody@127.0.0.1:1/nope"
    )
    assert code == 1 and err.startswith("error: database:")


def test_retry_now_and_recover_take_the_payload_filter(
    engine: Engine, db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    mixed(engine)
    for command in ("retry-now", "recover"):
        code, out, _ = cli(monkeypatch, capsys, db_url, command, "--payload", "absent.key=1", "--dry-run", "--json")
        assert code == 0 and json.loads(out)["count"] == 0  # no payload has that key: nothing would move
    code, out, _ = cli(monkeypatch, capsys, db_url, "retry-now", "--dry-run", "--json")
    assert json.loads(out)["count"] == 2  # without it, both waiting events

"""The ``outbox-admin`` operations commands: init, publish, stats, events, show, requeue, discard, purge.

Every command runs through the real entry point (``python -m outbox_admin`` in a subprocess), with
an exit-1 and an exit-2 path; each such call costs about two seconds of imports and the migrations
check, so independent calls run side by side. Table output, dry runs and the other bad inputs go
through the same ``main()`` (the console script's function) in this process, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, insert, inspect, select

from outbox_admin import analytics, make_engine
from outbox_admin.models import DEFAULT_TABLES

from .cli_support import clean_env, run_entry_point, run_main

EVENTS = DEFAULT_TABLES.events
TRANSITIONS = DEFAULT_TABLES.transitions
TIMEOUT_GROUP = "timeout after <n>s on <n>.<n>.<n>.<n>"
PAYLOAD = {"name": "Apollo ☄", "tags": ["a", "b"], "nested": {"quote": 'it\'s "fine"', "n": 1.5}}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def seed(engine: Engine) -> None:
    """Seven events with the history the publisher, a dispatcher and a person would have written."""
    now = utcnow()
    month_ago, two_hours_ago, hour_ago = (
        now - dt.timedelta(days=30),
        now - dt.timedelta(hours=2),
        now - dt.timedelta(hours=1),
    )
    rows: list[dict[str, Any]] = []
    steps: list[dict[str, Any]] = []

    def add(event_id: str, status: str, created: dt.datetime, path: Sequence[tuple[str, str]], **extra: Any) -> None:
        processed = extra.pop("latency", None)
        rows.append(
            {
                "id": event_id,
                "org_id": "org-1",
                "event_type": "PROJECT.CREATED",
                "entity_type": "Project",
                "entity_id": event_id,
                "payload": {"id": event_id},
                "status": status,
                "retry_count": 0,
                "error_message": None,
                "created_at": created,
                "processed_at": created + dt.timedelta(seconds=processed) if processed else None,
                "available_at": created,
                "locked_by": None,
                "locked_until": None,
                "idempotency_key": None,
                **extra,
            }
        )
        at = created
        for index, (old, new) in enumerate([(None, "PENDING"), *path]):
            steps.append(
                {
                    "event_id": event_id,
                    "from_status": old,
                    "to_status": new,
                    "at": at,
                    "actor": "publisher" if old is None else "admin:ops" if new == "DISCARDED" else "d1",
                    "attempt": index // 2,
                    "error_message": extra.get("error_message") if new == "FAILED" else None,
                }
            )
            at += dt.timedelta(milliseconds=500)

    done = [("PENDING", "PROCESSING"), ("PROCESSING", "COMPLETED")]
    failed = [("PENDING", "PROCESSING"), ("PROCESSING", "FAILED")]
    add("c-old-1", "COMPLETED", month_ago, done, latency=2)
    add("c-old-2", "COMPLETED", month_ago + dt.timedelta(seconds=1), done, latency=2)
    add("d-old", "DISCARDED", month_ago, [("PENDING", "DISCARDED")])
    add(
        "f-1",
        "FAILED",
        two_hours_ago,
        failed,
        event_type="PROJECT.UPDATED",
        retry_count=3,
        error_message="timeout after 30s on 10.0.0.7",
    )
    add(
        "f-2",
        "FAILED",
        hour_ago,
        failed,
        event_type="PROJECT.UPDATED",
        retry_count=3,
        error_message="timeout after 5s on 10.0.0.9",
    )
    add("p-1", "PENDING", now - dt.timedelta(minutes=5), [], available_at=now + dt.timedelta(days=1))
    add("c-new", "COMPLETED", hour_ago + dt.timedelta(seconds=1), done, latency=1.5, payload=PAYLOAD)
    with engine.begin() as conn:
        conn.execute(insert(EVENTS), rows)
        conn.execute(insert(TRANSITIONS), steps)


def snapshot(engine: Engine) -> tuple[dict[str, tuple[str, int]], int]:
    """(status and retry count by event id, number of history rows)."""
    with engine.connect() as conn:
        events = {r.id: (r.status, r.retry_count) for r in conn.execute(select(EVENTS))}
        return events, conn.execute(select(func.count()).select_from(TRANSITIONS)).scalar_one()


def history(engine: Engine, event_id: str) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                select(
                    TRANSITIONS.c.from_status, TRANSITIONS.c.to_status, TRANSITIONS.c.actor, TRANSITIONS.c.error_message
                )
                .where(TRANSITIONS.c.event_id == event_id)
                .order_by(TRANSITIONS.c.id)
            )
        ]


@pytest.fixture
def seeded(db_url: str) -> Iterator[tuple[str, Engine]]:
    engine = make_engine(db_url)
    seed(engine)
    yield db_url, engine
    engine.dispose()


# --- through the real entry point ---------------------------------------------------------


def run_cli(calls: Mapping[str, Sequence[str]], cwd: Path) -> dict[str, subprocess.CompletedProcess[str]]:
    """Run ``python -m outbox_admin ARGS`` for each named call, side by side; their results by name."""
    env = clean_env(PYTHONIOENCODING="utf-8", NO_COLOR="1", COLUMNS="200")

    def one(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        return run_entry_point(args, cwd, env)

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = {name: pool.submit(one, args) for name, args in calls.items()}
        return {name: future.result() for name, future in futures.items()}


def ok_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no traceback, and no warning either
    return json.loads(result.stdout)


def one_error_line(result: subprocess.CompletedProcess[str] | tuple[int, str, str], code: int, *fragments: str) -> str:
    """The command failed with ``code`` and said why in one line on stderr, with no traceback."""
    returncode, stdout, stderr = (
        (result.returncode, result.stdout, result.stderr) if isinstance(result, subprocess.CompletedProcess) else result
    )
    assert returncode == code, (returncode, stdout, stderr)
    assert "Traceback" not in stderr and stdout == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def test_read_commands_and_bad_input_through_the_entry_point(sqlite_url: str, tmp_path: Path) -> None:
    engine = make_engine(sqlite_url)
    seed(engine)
    before = snapshot(engine)
    url = ["--database-url", sqlite_url]
    results = run_cli(
        {
            "stats": ["stats", "--json", *url],
            "events": [
                "events",
                "--json",
                "--status",
                "FAILED",
                "--event-type",
                "PROJECT.UPDATED",
                "--limit",
                "1",
                *url,
            ],
            "show": ["show", "c-new", "--json", *url],
            "unknown_status": ["events", "--status", "LOST", *url],
            "refused": ["requeue", "c-new", *url],
        },
        tmp_path,
    )

    stats = ok_json(results["stats"])
    assert set(stats) == {"status_counts", "latency", "errors"}
    assert {r["status"]: r["count"] for r in stats["status_counts"]} == {
        "PENDING": 1,
        "PROCESSING": 0,
        "COMPLETED": 3,
        "FAILED": 2,
        "DISCARDED": 1,
    }
    overall = stats["latency"][0]
    assert set(overall) == {"event_type", "events", "mean", "p50", "p90", "p95", "p99", "max"}
    assert (overall["event_type"], overall["events"]) == ("*", 3)
    assert (overall["p50"], overall["max"]) == pytest.approx((2.0, 2.0), abs=1e-3)
    top = stats["errors"][0]
    assert (top["error_group"], top["events"], top["failed"], top["event_types"]) == (
        TIMEOUT_GROUP,
        2,
        2,
        "PROJECT.UPDATED",
    )
    assert dt.datetime.fromisoformat(top["last_seen"]).tzinfo is not None

    listed = ok_json(results["events"])
    assert listed["total"] == 2 and [e["id"] for e in listed["events"]] == ["f-2"]
    assert set(listed["events"][0]) == set(analytics.EVENT_COLUMNS)
    assert listed["events"][0]["error_message"] == "timeout after 5s on 10.0.0.9"
    assert dt.datetime.fromisoformat(listed["events"][0]["created_at"]).tzinfo is not None

    shown = ok_json(results["show"])
    assert set(shown) == {"event", "timeline"}
    assert (shown["event"]["id"], shown["event"]["status"], shown["event"]["payload"]) == (
        "c-new",
        "COMPLETED",
        PAYLOAD,
    )
    assert [s["to_status"] for s in shown["timeline"]] == ["PENDING", "PROCESSING", "COMPLETED"]

    one_error_line(results["unknown_status"], 2, "status", "LOST")
    one_error_line(results["refused"], 1, "c-new is COMPLETED", "force")
    assert snapshot(engine) == before  # nothing written by any of them
    engine.dispose()


def test_write_commands_through_the_entry_point(sqlite_url: str, tmp_path: Path) -> None:
    engine = make_engine(sqlite_url)
    seed(engine)
    payload_file = tmp_path / "payload.json"
    payload_file.write_text(json.dumps(PAYLOAD, ensure_ascii=False), encoding="utf-8")
    fresh = tmp_path / "fresh" / "outbox.db"
    fresh.parent.mkdir()
    url = ["--database-url", sqlite_url]
    # Each touches other events, so they can run side by side against the same file.
    results = run_cli(
        {
            "init": ["init", "--json", "--database-url", f"sqlite:///{fresh}"],
            "publish": [
                "publish",
                "PROJECT.CREATED",
                "--payload-file",
                str(payload_file),
                "--org",
                "org-9",
                "--entity-type",
                "Task",
                "--entity-id",
                "42",
                "--idempotency-key",
                "k-1",
                "--json",
                *url,
            ],
            "requeue": ["requeue", "--reset-attempts", "--actor", "ops", "--json", *url],
            "discard": ["discard", "p-1", "--reason", "bad data", "--json", *url],
            "purge": ["purge", "--older-than", "7d", "--batch-size", "1", "--json", *url],
        },
        tmp_path,
    )

    initialised = ok_json(results["init"])
    assert initialised["ok"] is True and str(fresh) in initialised["database"]
    fresh_engine = make_engine(f"sqlite:///{fresh}")
    assert {"OutboxEvent", "OutboxEventTransition"} <= set(inspect(fresh_engine).get_table_names())
    fresh_engine.dispose()

    published = ok_json(results["publish"])
    assert set(published) == {"id", "event_type", "status"}
    assert (published["event_type"], published["status"]) == ("PROJECT.CREATED", "PENDING")
    event = analytics.get_event(engine, published["id"])
    assert event is not None
    assert (event["org_id"], event["entity_type"], event["entity_id"], event["idempotency_key"]) == (
        "org-9",
        "Task",
        "42",
        "k-1",
    )
    assert event["payload"] == PAYLOAD

    assert ok_json(results["requeue"]) == {"action": "requeue", "moved": 2}
    assert ok_json(results["discard"]) == {"action": "discard", "moved": 1}
    assert json.loads(results["purge"].stdout) == {"events": 3, "transitions": 8, "batches": 3}

    events, _ = snapshot(engine)
    assert events == {
        "f-1": ("PENDING", 0),
        "f-2": ("PENDING", 0),
        "p-1": ("DISCARDED", 0),
        "c-new": ("COMPLETED", 0),
        published["id"]: ("PENDING", 0),
    }
    assert history(engine, "f-1")[-1] == ("FAILED", "PENDING", "admin:ops", None)
    assert history(engine, "p-1")[-1] == ("PENDING", "DISCARDED", "admin:cli", "discarded: bad data")
    engine.dispose()
    ok_json(results["purge"])  # "7d", the README's form, without a warning on stderr


# --- the same main(), in this process: tables, dry runs, both databases ---------------------------


def test_table_output_dry_runs_and_actions(
    seeded: tuple[str, Engine], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    db_url, engine = seeded
    monkeypatch.setenv("OUTBOX_DATABASE_URL", db_url)  # the environment, as in production

    def run(*args: str) -> tuple[int, str, str]:
        return run_main(monkeypatch, capsys, *args)

    code, out, err = run("stats")
    assert (code, err) == (0, "")
    for text in ("Events by status", "Latency (seconds)", "Top error groups", "COMPLETED", TIMEOUT_GROUP):
        assert text in out

    code, out, _ = run("events", "--status", "FAILED")
    assert code == 0 and "2 of 2 events" in out and "f-1" in out and "f-2" in out and "c-new" not in out
    code, out, _ = run("events", "--search", "10.0.0.7", "--json")
    assert code == 0 and [e["id"] for e in json.loads(out)["events"]] == ["f-1"]
    code, out, _ = run("events", "--entity", "Project/c-new", "--since", "2000-01-01", "--json")
    assert json.loads(out)["total"] == 1

    code, out, _ = run("show", "f-1")
    assert code == 0
    for text in ("error_message", "timeout after 30s on 10.0.0.7", "Timeline", "FAILED", '"id": "f-1"'):
        assert text in out

    before = snapshot(engine)
    code, out, _ = run("requeue", "--dry-run")
    assert code == 0 and "requeue would move 2 event(s) in FAILED; e.g. f-2, f-1" in out
    code, out, _ = run("requeue", "--error-group", TIMEOUT_GROUP, "--dry-run", "--json")
    assert json.loads(out) == {"action": "requeue", "dry_run": True, "count": 2, "sample_ids": ["f-2", "f-1"]}
    code, out, _ = run("discard", "--status", "PENDING", "--dry-run", "--json")
    assert json.loads(out)["sample_ids"] == ["p-1"]
    assert snapshot(engine) == before

    one_error_line(run("discard"), 2, "refusing to discard everything")
    one_error_line(run("discard", "c-new"), 1, "c-new is COMPLETED")
    one_error_line(run("requeue", "--status", "COMPLETED"), 1, "COMPLETED")
    assert snapshot(engine) == before

    code, out, _ = run("requeue", "f-1", "--json")
    assert (code, json.loads(out)) == (0, {"action": "requeue", "moved": 1})
    assert [h[:3] for h in history(engine, "f-1")[3:]] == [("FAILED", "PENDING", "admin:cli")]
    code, out, _ = run("requeue", "c-new", "--force")
    assert code == 0 and "requeue: 1 event(s) moved" in out
    code, out, _ = run("discard", "f-2", "--reason", "duplicate")
    assert code == 0 and "discard: 1 event(s) moved" in out

    code, out, err = run("purge", "--older-than", "168h")
    assert code == 0 and "purged 3 events and 8 history rows in 1 batch(es)" in out
    code, out, _ = run("publish", "PROJECT.UPDATED", "--payload", '{"a": [1, 2]}', "--entity-id", "9")
    assert code == 0 and out.startswith("published PROJECT.UPDATED ")
    event = analytics.get_event(engine, out.split()[-1])
    assert event is not None and event["payload"] == {"a": [1, 2]} and event["entity_id"] == "9"
    code, out, _ = run("init")
    assert code == 0 and "outbox tables ready in" in out
    assert {s for s, _ in snapshot(engine)[0].values()} == {"PENDING", "DISCARDED"}


@pytest.mark.parametrize(("age", "purged"), [("31d", 0), ("7 days", 3), ("2w", 3), ("1.5h", 3), ("90min", 3)])
def test_purge_takes_the_documented_ages(
    age: str, purged: int, sqlite_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ages in days or weeks, as in the README (``--older-than 30d``) and the help text; pytest turns
    warnings into errors, and a deprecation warning is what an operator would see today."""
    engine = make_engine(sqlite_url)
    seed(engine)
    code, out, err = run_main(monkeypatch, capsys, "purge", "--older-than", age, "--json", "--database-url", sqlite_url)
    assert (code, err) == (0, "")
    assert json.loads(out)["events"] == purged  # the old ones are 30 days old
    engine.dispose()


BAD_INPUT = {
    "show-missing": (["show", "no-such-id"], 1, "no event with id 'no-such-id'"),
    "bad-since": (["stats", "--since", "yesterday"], 2, "since: 'yesterday'"),
    "bad-age": (["purge", "--older-than", "soon"], 2, "--older-than 'soon'"),
    "payload-cut-short": (["publish", "PROJECT.CREATED", "--payload", '{"name": '], 2, "not valid JSON"),
    "unknown-event-type": (
        ["publish", "PROJECT.EXPLODED", "--payload", "{}"],
        2,
        "unknown event type 'PROJECT.EXPLODED'",
    ),
    "payload-file-missing": (["publish", "PROJECT.CREATED", "--payload-file", "{tmp}/missing.json"], 2, "payload"),
    "payload-and-file": (
        ["publish", "PROJECT.CREATED", "--payload", "{}", "--payload-file", "{tmp}/p.json"],
        2,
        "not both",
    ),
    "payload-not-json": (["publish", "PROJECT.CREATED", "--payload", "[1, 2"], 2, "not valid JSON"),
    "payload-file-not-utf8": (["publish", "PROJECT.CREATED", "--payload-file", "{tmp}/latin1.json"], 2, "payload"),
    "event-type-lower-case": (["publish", "project.created", "--payload", "{}"], 2, "event type"),
    "since-after-until": (["events", "--since", "2021-01-01", "--until", "2020-01-01"], 2, "later than since"),
    "no-such-date": (["events", "--until", "2026-02-30"], 2, "until"),
    "search-too-long": (["events", "--search", "x" * 201], 2, "search"),
    "requeue-unknown-status": (["requeue", "--status", "LOST"], 2, "LOST"),
    "stats-unknown-status": (["stats", "--status", "nope"], 2, "NOPE"),
    "age-nan": (["purge", "--older-than", "nan"], 2, "--older-than"),
    "age-negative": (["purge", "--older-than=-12h"], 2, "--older-than"),
    "purge-pending": (["purge", "--older-than", "12h", "--status", "PENDING"], 1, "never deletes"),
    "not-a-url": (["stats", "--database-url", "not a url"], 2, "not a database URL"),
}


@pytest.mark.parametrize(("args", "code", "fragment"), list(BAD_INPUT.values()), ids=list(BAD_INPUT))
def test_bad_input_is_one_line_and_never_a_traceback(
    args: list[str],
    code: int,
    fragment: str,
    sqlite_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    engine = make_engine(sqlite_url)
    seed(engine)
    before = snapshot(engine)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OUTBOX_DATABASE_URL", sqlite_url)
    (tmp_path / "p.json").write_text("{}", encoding="utf-8")
    (tmp_path / "latin1.json").write_bytes('{"name": "café"}'.encode("latin-1"))
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    one_error_line(run_main(monkeypatch, capsys, *args), code, fragment)
    assert snapshot(engine) == before
    engine.dispose()

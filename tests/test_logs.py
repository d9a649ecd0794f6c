"""JSON logs: a record per delivery (outbox_admin.logs) and ``outbox-admin dispatch --log-format json``."""

from __future__ import annotations

import io
import json
import logging
import os
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from outbox_admin import Dispatcher, make_engine
from outbox_admin.handlers.base import DeliveredEvent, RecordingHandler
from outbox_admin.logs import FIELDS, DeliveryLog, JsonLogFormatter

from .cli_support import clean_env, run_entry_point
from .sinks_support import NO_WAIT, publish_demo


class Refuser:
    name = "refuser"

    def __call__(self, event: DeliveredEvent) -> None:
        raise ConnectionError("receiver down\nsecond line \x1b[2J")


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """The ``outbox_admin.deliveries`` records, formatted as JSON lines into a buffer."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonLogFormatter())
    logger = logging.getLogger("outbox_admin.deliveries")
    saved = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield buffer
    logger.removeHandler(handler)
    logger.setLevel(saved)


def parsed(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_each_delivery_is_one_json_object_with_its_fields(engine: Engine, json_lines: io.StringIO) -> None:
    ids = [e["id"] for e in publish_demo(engine, 2)]
    observer = DeliveryLog(dispatcher="d-1")
    dispatcher = Dispatcher(
        engine, [RecordingHandler(name="ok"), Refuser()], max_attempts=1, backoff=NO_WAIT, observers=[observer]
    )
    assert dispatcher.dispatch_once().failed == 2
    records = parsed(json_lines)
    delivered = [r for r in records if r.get("outcome") == "delivered"]
    errors = [r for r in records if r.get("outcome") == "error"]
    dead = [r for r in records if r.get("outcome") == "failed"]
    assert sorted(r["event_id"] for r in delivered) == sorted(ids) and {r["handler"] for r in delivered} == {"ok"}
    assert sorted(r["event_id"] for r in errors) == sorted(ids) and {r["level"] for r in errors} == {"warning"}
    first = errors[0]
    assert first["handler"] == "refuser" and first["attempt"] == 1 and first["dispatcher"] == "d-1"
    assert first["event_type"].startswith("PROJECT.") and first["duration_ms"] >= 0
    assert first["error"] == "ConnectionError: receiver down\nsecond line \x1b[2J"  # as data, in the JSON
    assert sorted(r["event_id"] for r in dead) == sorted(ids) and {r["level"] for r in dead} == {"error"}
    assert "refuser: ConnectionError: receiver down" in dead[0]["error"]
    raw = json_lines.getvalue()
    assert "\x1b" not in raw and len(raw.splitlines()) == len(records)  # control characters escaped, one per line


def test_the_formatter_keeps_the_message_exception_and_core_keys() -> None:
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "boom %s", ("a\u2028b",), None)
    setattr(record, FIELDS, {"event_id": "e1", "message": "not this one"})
    try:
        raise ValueError("inner")
    except ValueError:
        record.exc_info = sys.exc_info()
    line = JsonLogFormatter().format(record)
    entry = json.loads(line)
    assert "\n" not in line and entry["message"] == "boom a\u2028b" and entry["event_id"] == "e1"
    assert entry["level"] == "error" and "ValueError: inner" in entry["exception"] and entry["time"].endswith("+00:00")


def test_dispatch_log_format_json_writes_only_json_lines(sqlite_url: str, tmp_path: Path) -> None:
    engine = make_engine(sqlite_url)
    ids = [e["id"] for e in publish_demo(engine, 2)]
    engine.dispose()
    (tmp_path / "refusing_handlers.py").write_text(
        textwrap.dedent(
            """
            class Refuser:
                name = "refuser"

                def __call__(self, event):
                    raise ConnectionError("down")

            handlers = [Refuser()]
            """
        )
    )
    (tmp_path / "outbox.toml").write_text('handlers = "refusing_handlers:handlers"\n')
    # the handlers' folder, then whatever path the tests run with (a checkout's own code before the installed one)
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH", "")) if p)
    env = clean_env(PYTHONIOENCODING="utf-8", OUTBOX_DATABASE_URL=sqlite_url, PYTHONPATH=path, OUTBOX_MAX_ATTEMPTS="1")
    result = run_entry_point(["dispatch", "--once", "--log-format", "json", "--json"], tmp_path, env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["failed"] == 2
    lines = [json.loads(line) for line in result.stderr.splitlines()]  # every stderr line is JSON
    refused = [r for r in lines if r.get("handler") == "refuser"]
    assert sorted(r["event_id"] for r in refused) == sorted(ids)
    assert {r["outcome"] for r in refused} == {"error"} and refused[0]["error"] == "ConnectionError: down"
    audit = [r for r in lines if r["logger"] == "outbox_admin.audit"]
    assert len(audit) == 2  # the audit log's records are JSON too


def test_an_unknown_log_format_is_refused(sqlite_url: str, tmp_path: Path) -> None:
    env = clean_env(OUTBOX_DATABASE_URL=sqlite_url)
    result = run_entry_point(["dispatch", "--once", "--log-only", "--log-format", "xml\x1b"], tmp_path, env)
    assert result.returncode == 2 and "--log-format takes 'text' or 'json'" in result.stderr
    assert "\x1b" not in result.stderr

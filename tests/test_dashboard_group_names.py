"""The Failures page offers the selected error group's exact name to copy, and the CLI command for it
(issue 18, point 4), through streamlit's AppTest on a real SQLite database."""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, update

from outbox_admin import analytics, publish_outbox_event
from outbox_admin.models import DEFAULT_TABLES
from outbox_admin.ui.components import table_key

from .dashboard_support import dashboard_database, keep_main_module, page  # noqa: F401 - an autouse fixture

EVENTS = DEFAULT_TABLES.events


@pytest.fixture
def engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    yield from dashboard_database(tmp_path, monkeypatch)


def fail(engine: Engine, messages: list[str]) -> None:
    with engine.begin() as conn:
        for i, message in enumerate(messages):
            event = publish_outbox_event(
                conn, org_id="o", event_type="PROJECT.CREATED", entity_type="P", entity_id=str(i), payload={}
            )
            conn.execute(update(EVENTS).where(EVENTS.c.id == event.id).values(status="FAILED", error_message=message))


def select_group(engine: Engine, group: str):  # noqa: ANN201 - an AppTest
    groups = analytics.error_summary(engine, limit=50, order="failed")  # the page's order
    at = page("failures").run()
    at.session_state[table_key("groups", groups["error_group"])] = {
        "selection": {"rows": [list(groups["error_group"]).index(group)], "columns": [], "cells": []}
    }
    return at.run()


def test_the_selected_group_is_offered_by_its_exact_name_and_a_command(engine: Engine) -> None:
    fail(engine, ["webhook: 'gateway' said 503 for 7 s", "webhook: 'gateway' said 502 for 9 s", "redis: refused"])
    group = "webhook: 'gateway' said <n> for <n> s"
    at = select_group(engine, group)
    assert not at.exception
    codes = [c.value for c in at.code]
    assert group in codes  # a code block: its copy button copies exactly this
    [command] = [c for c in codes if c.startswith("outbox-admin ")]
    assert shlex.split(command) == ["outbox-admin", "requeue", "--error-group", group, "--dry-run"]
    assert analytics.count_events(engine, error_group=shlex.split(command)[3]) == 2  # the copy selects the group
    assert not at.warning


def test_a_name_with_control_characters_is_shown_escaped_and_not_offered_as_a_command(engine: Engine) -> None:
    fail(engine, ["boom\x1b[31m red"])
    group = "boom\x1b[<n>m red"
    at = select_group(engine, group)
    assert not at.exception
    codes = [c.value for c in at.code]
    assert "boom\\x1b[<n>m red" in codes and not [c for c in codes if c.startswith("outbox-admin ")]
    assert "is not the name" in at.warning[0].value

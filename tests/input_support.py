"""Helpers of the input tests: publish one event, read it back as stored and as a handler receives it."""

from __future__ import annotations

import itertools
from typing import Any

from sqlalchemy import Engine, func, select

from outbox_admin import Dispatcher, publish_outbox_event
from outbox_admin.handlers import RecordingHandler
from outbox_admin.models import DEFAULT_TABLES

EVENTS = DEFAULT_TABLES.events
_entity_ids = itertools.count()


def publish(conn: Any, **overrides: Any) -> Any:
    """``publish_outbox_event`` with valid defaults and a new entity id per call (distinct rows)."""
    fields: dict[str, Any] = dict(
        org_id="org-1",
        event_type="PROJECT.CREATED",
        entity_type="Project",
        entity_id=f"p-{next(_entity_ids)}",
        payload={"name": "Apollo"},
    )
    fields.update(overrides)
    return publish_outbox_event(conn, **fields)


def stored(engine: Engine, event_id: str) -> dict[str, Any]:
    """The stored row of one event, as SQLAlchemy reads it (payload decoded by the JSON column type)."""
    with engine.connect() as conn:
        row = conn.execute(select(EVENTS).where(EVENTS.c.id == event_id)).one()
    return dict(row._mapping)


def delivered(engine: Engine) -> dict[str, Any]:
    """Run a dispatcher until nothing is due; what its one handler received, by event id."""
    recorder = RecordingHandler()
    report = Dispatcher(engine, [recorder], name="input-tests").drain()
    assert report.failed == 0 and report.retried == 0, report
    return {event.id: event for event in recorder.events}


def event_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(EVENTS)) or 0)


def same(a: Any, b: Any) -> bool:
    """``a == b`` with matching JSON kinds: a float stays a float, an int an int, text text."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b

"""A claimed row the dispatcher cannot decode is failed alone; the rest of its batch is delivered."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, select

from outbox_admin import Dispatcher, make_engine, publish_outbox_event
from outbox_admin.models import DEFAULT_TABLES

EV = DEFAULT_TABLES.events


def publish(engine: Engine, count: int) -> list[str]:
    with engine.begin() as conn:
        return [
            publish_outbox_event(
                conn, org_id="org-1", event_type="PROJECT.CREATED", entity_type="Project", entity_id=f"p-{i}"
            ).id
            for i in range(count)
        ]


@pytest.mark.parametrize("value", ["5", "12345678901234567890", "1.5"])
def test_an_undecodable_row_is_failed_alone(sqlite_url: str, value: str) -> None:
    """SQLite's NUMERIC affinity turns a stored scalar payload into a number (older versions allowed one)."""
    engine = make_engine(sqlite_url)
    ids = publish(engine, 5)
    with engine.begin() as conn:
        conn.exec_driver_sql('UPDATE "OutboxEvent" SET payload = ? WHERE id = ?', (value, ids[2]))
    delivered: list[str] = []
    report = Dispatcher(engine, [lambda e: delivered.append(e.id)]).dispatch_once()
    assert (report.claimed, report.completed, report.failed) == (5, 4, 1)
    assert sorted(delivered) == sorted(ids[:2] + ids[3:])
    with engine.connect() as conn:
        bad = conn.execute(select(EV.c.status, EV.c.error_message, EV.c.retry_count).where(EV.c.id == ids[2])).one()
    assert bad.status == "FAILED" and bad.retry_count == 1
    assert "stored event cannot be decoded" in bad.error_message and "not JSON text" in bad.error_message
    engine.dispose()

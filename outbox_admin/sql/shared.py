"""SQL fragments both dialects write the same way."""

from __future__ import annotations

from typing import Any

from sqlalchemy import literal_column

from ..db import db_now, db_now_plus
from ..models import EventStatus

PENDING = EventStatus.PENDING.value
PROCESSING = EventStatus.PROCESSING.value
COMPLETED = EventStatus.COMPLETED.value
FAILED = EventStatus.FAILED.value

# Leases are renewed while handlers run (outbox_admin.lease), so an expired one means its
# dispatcher stopped renewing: it died, hung, or could not reach the database.
EXPIRED_MESSAGE = (
    "'lease expired: dispatcher ' || coalesce(e.locked_by, '?') || "
    "' stopped renewing it before finishing (it crashed, hung or lost the database)'"
)


def out_of_attempts(max_attempts: str) -> str:
    """FAILED when the failed attempt being recorded was the last one, else PENDING."""
    return f"""CASE WHEN {max_attempts} IS NOT NULL AND e.retry_count + 1 >= {max_attempts}
                     THEN '{FAILED}' ELSE '{PENDING}' END"""


def finish_set(events: str, *, now: str, due: str) -> str:
    """``UPDATE events AS e SET ...`` from an outcome row ``c`` (outcome, failed, message, delay)."""
    return f"""UPDATE {events} AS e SET
                status = c.outcome,
                retry_count = e.retry_count + c.failed,
                error_message = CASE WHEN c.failed = 1 THEN c.message ELSE e.error_message END,
                processed_at = CASE WHEN c.outcome = '{COMPLETED}' THEN {now} ELSE e.processed_at END,
                available_at = CASE WHEN c.delay IS NULL THEN e.available_at ELSE {due} END,
                locked_by = NULL,
                locked_until = NULL"""


def expire_set(events: str, status_sql: str, *, now: str) -> str:
    """``UPDATE events AS e SET ...`` for an expired lease: a failed attempt, due now."""
    return f"""UPDATE {events} AS e SET
                status = {status_sql},
                retry_count = e.retry_count + 1,
                error_message = {EXPIRED_MESSAGE},
                available_at = {now},
                locked_by = NULL,
                locked_until = NULL"""


def older_unfinished(events: str) -> str:
    """``ordering="entity"``: no older event of the same entity is PENDING or PROCESSING."""
    return f"""
              AND NOT EXISTS (
                  SELECT 1 FROM {events} AS older
                  WHERE older.entity_type = candidate.entity_type AND older.entity_id = candidate.entity_id
                    AND older.status IN ('{PENDING}', '{PROCESSING}')
                    AND (older.created_at < candidate.created_at
                         OR (older.created_at = candidate.created_at AND older.id < candidate.id)))"""


def clock(dialect: Any, *, clocked: bool, time_param: str = "{}") -> tuple[str, str, str]:
    """SQL for now, the new lease's end and an outcome's due time (``c.delay`` seconds from now).

    The database's clock, or with ``clocked`` (tests that move time by hand) the
    parameters ``:now`` and ``:lease_until`` and the outcome's own ``c.due``;
    ``time_param`` wraps a time parameter (PostgreSQL casts it to timestamptz).
    """
    if clocked:
        return time_param.format(":now"), time_param.format(":lease_until"), "c.due"
    return (
        str(db_now().compile(dialect=dialect)),
        str(db_now_plus(literal_column(":lease_seconds")).compile(dialect=dialect)),
        str(db_now_plus(literal_column("c.delay")).compile(dialect=dialect)),
    )

"""Structured logs: one record per delivery, and a formatter that writes each record as one JSON object.

``DeliveryLog`` is a dispatcher observer (``outbox_admin.observe``) that logs every
handler's try of every event, and the events a tick dead-lettered or lost, with
the fields a log pipeline filters on (``event_id``, ``event_type``, ``handler``,
``outcome``, ``duration_ms``, ``error``, ``attempt``, ``dispatcher``) in the record's
``outbox`` attribute. ``JsonLogFormatter`` writes any record as one line of JSON,
those fields at the top level. ``outbox-admin dispatch --log-format json`` uses both.

The formatter is written here rather than taken from python-json-logger: it is a
dozen lines over ``json.dumps``, and the CLI should not need an extra to log JSON.
Every text is data: ``json.dumps`` escapes control characters, so a payload or an
error message cannot forge a second line.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .observe import DeliveryAttempt, DispatchObserver, EventResult

if TYPE_CHECKING:
    from .dispatcher import DispatchReport

#: The record attribute holding the structured fields (``logger.info(..., extra={FIELDS: {...}})``).
FIELDS = "outbox"
MAX_ERROR_LENGTH = 2000


class JsonLogFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", ...the record's outbox fields, "exception"?}`` per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, FIELDS, None)
        if isinstance(fields, dict):
            entry.update({k: v for k, v in fields.items() if k not in entry})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str, separators=(",", ":"))


class DeliveryLog(DispatchObserver):
    """Logs each delivery (INFO when delivered, WARNING when it failed) and each event a tick
    dead-lettered (ERROR) or lost to another dispatcher (WARNING).

    Retries need no record of their own: the failed delivery that caused one is logged.
    """

    def __init__(self, logger: logging.Logger | None = None, *, dispatcher: str | None = None) -> None:
        self.logger = logger or logging.getLogger("outbox_admin.deliveries")
        self.dispatcher = dispatcher

    def delivered(self, attempts: Sequence[DeliveryAttempt]) -> None:
        logger = self.logger
        for attempt in attempts:
            event, error = attempt.event, attempt.error
            level = logging.INFO if error is None else logging.WARNING
            if not logger.isEnabledFor(level):
                continue
            fields = self._fields(event.id, event.event_type, event.attempt)
            fields["handler"] = attempt.handler
            fields["outcome"] = "delivered" if error is None else "error"
            fields["duration_ms"] = round(attempt.seconds * 1000, 3)
            if error is None:
                logger.log(level, "delivered %s to %s", event.id, attempt.handler, extra={FIELDS: fields})
            else:
                fields["error"] = _error_text(error)
                logger.log(level, "delivery of %s to %s failed", event.id, attempt.handler, extra={FIELDS: fields})

    def finished(self, results: Sequence[EventResult], report: DispatchReport) -> None:
        for result in results:
            if result.outcome == "failed":
                level, text = logging.ERROR, "event %s failed for good (dead letter)"
            elif result.outcome == "lost":
                level, text = logging.WARNING, "event %s was taken over by another dispatcher (lease expired)"
            else:
                continue
            if self.logger.isEnabledFor(level):
                event = result.event
                fields = self._fields(event.id, event.event_type, event.attempt)
                fields["outcome"] = result.outcome
                fields["error"] = result.message
                self.logger.log(level, text, event.id, extra={FIELDS: fields})

    def _fields(self, event_id: str, event_type: str, attempt: int) -> dict[str, Any]:
        fields: dict[str, Any] = {"event_id": event_id, "event_type": event_type, "attempt": attempt}
        if self.dispatcher is not None:
            fields["dispatcher"] = self.dispatcher
        return fields


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= MAX_ERROR_LENGTH else text[: MAX_ERROR_LENGTH - 1] + "…"

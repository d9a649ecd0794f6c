"""outbox_admin: the transactional outbox for Python, with the tools to run it.

Publish events in your own database transaction with ``publish_outbox_event``;
a dispatcher delivers them at least once, with leases, retries and dead letters.
"""

from __future__ import annotations

from .bus import BusMessage, MessageBus, emit_message_bus_event, subscribe
from .config import Settings
from .db import init_db, make_engine, read_connection
from .dispatcher import Backoff, Dispatcher, DispatchReport
from .errors import (
    AdminActionError,
    ConfigurationError,
    DatabaseUnavailableError,
    FilterError,
    InvalidEventError,
    InvalidEventTypeError,
    NotInTransactionError,
    OutboxError,
    PayloadError,
    SinkError,
    UnknownEventTypeError,
)
from .event_types import EventTypeRegistry, MessageBusEventType, register_event_type, registered_event_types
from .models import EventStatus, OutboxEvent, OutboxEventPause, OutboxEventTransition, OutboxTables
from .publisher import EventSpec, flush_outbox, outbox_batch, publish_outbox_event, publish_outbox_events
from .service import DispatcherService, ServiceStatus

#: Async publishing, imported on first use (``outbox_admin.aio`` loads SQLAlchemy's asyncio layer).
_ASYNC = {
    "aflush_outbox": "aio",
    "aoutbox_batch": "aio",
    "apublish_outbox_event": "aio",
    "apublish_outbox_events": "aio",
    "make_async_engine": "db",
}


def __getattr__(name: str) -> object:
    if name in _ASYNC:
        import importlib

        return getattr(importlib.import_module(f".{_ASYNC[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AdminActionError",
    "Backoff",
    "BusMessage",
    "ConfigurationError",
    "DatabaseUnavailableError",
    "DispatchReport",
    "Dispatcher",
    "DispatcherService",
    "EventSpec",
    "EventStatus",
    "EventTypeRegistry",
    "FilterError",
    "InvalidEventError",
    "InvalidEventTypeError",
    "MessageBus",
    "MessageBusEventType",
    "NotInTransactionError",
    "OutboxError",
    "OutboxEvent",
    "OutboxEventPause",
    "OutboxEventTransition",
    "OutboxTables",
    "PayloadError",
    "ServiceStatus",
    "SinkError",
    "Settings",
    "UnknownEventTypeError",
    "aflush_outbox",
    "aoutbox_batch",
    "apublish_outbox_event",
    "apublish_outbox_events",
    "emit_message_bus_event",
    "flush_outbox",
    "init_db",
    "make_async_engine",
    "make_engine",
    "outbox_batch",
    "publish_outbox_event",
    "publish_outbox_events",
    "read_connection",
    "register_event_type",
    "registered_event_types",
    "subscribe",
]

"""Handlers (sinks): where delivered events go.

The audit log and the in-process message bus are built in; webhook, Redis
Streams, NATS JetStream and RabbitMQ sinks live in their own modules and need
their extras installed.
"""

from __future__ import annotations

from .base import (
    AuditLogHandler,
    BatchHandler,
    DeliveredEvent,
    Handler,
    MessageBusHandler,
    RecordingHandler,
    Route,
    default_handlers,
    handler_name,
    only,
)

__all__ = [
    "AuditLogHandler",
    "BatchHandler",
    "DeliveredEvent",
    "Handler",
    "MessageBusHandler",
    "RecordingHandler",
    "Route",
    "default_handlers",
    "handler_name",
    "only",
]

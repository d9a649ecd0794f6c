"""Handlers (sinks): where delivered events go.

The audit log and the in-process message bus are built in; the webhook, Redis
Streams, NATS JetStream and RabbitMQ sinks live in their own modules, are imported
on first access (``from outbox_admin.handlers import WebhookSink``), and need their
extras installed (``webhooks``, ``redis``, ``nats``, ``rabbitmq``). Importing this
package never imports httpx, redis, nats or pika.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ..errors import SinkError
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
from .envelope import DEFAULT_SOURCE, encode_envelope, to_envelope
from .sink import BatchSink, Sink, SinkBase

if TYPE_CHECKING:
    from .config import Deliveries, build_sinks, load_deliveries, load_sinks
    from .nats_jetstream import NatsJetStreamSink
    from .rabbitmq import RabbitMQSink
    from .redis_streams import RedisStreamSink
    from .webhook import WebhookSink

_LAZY = {
    "WebhookSink": ".webhook",
    "RedisStreamSink": ".redis_streams",
    "NatsJetStreamSink": ".nats_jetstream",
    "RabbitMQSink": ".rabbitmq",
    "load_sinks": ".config",
    "build_sinks": ".config",
    "load_deliveries": ".config",
    "Deliveries": ".config",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "DEFAULT_SOURCE",
    "AuditLogHandler",
    "BatchHandler",
    "BatchSink",
    "Deliveries",
    "DeliveredEvent",
    "Handler",
    "MessageBusHandler",
    "NatsJetStreamSink",
    "RabbitMQSink",
    "RecordingHandler",
    "RedisStreamSink",
    "Route",
    "Sink",
    "SinkBase",
    "SinkError",
    "WebhookSink",
    "build_sinks",
    "default_handlers",
    "encode_envelope",
    "handler_name",
    "load_deliveries",
    "load_sinks",
    "only",
    "to_envelope",
]

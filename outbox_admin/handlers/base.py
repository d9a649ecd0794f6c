"""What a handler is, and the two the original does by default (audit log, message bus).

A handler is any callable taking one ``DeliveredEvent``; raising means the
delivery failed. A handler may also offer ``handle_batch(events)`` returning
``{event_id: exception}`` for the events that failed (sinks that deliver many at
once), an ``event_types`` tuple of glob patterns and an ``org_ids`` tuple that
limit what it receives, a ``name`` used in error messages, and ``close()``.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ..bus import MessageBus, default_bus


@dataclass(frozen=True, slots=True)
class DeliveredEvent:
    """An event as handlers see it: immutable, with its id as the idempotency key."""

    id: str
    org_id: str
    event_type: str
    entity_type: str
    entity_id: str
    payload: Any
    retry_count: int
    created_at: dt.datetime
    # The W3C trace context it was published in ({"traceparent": ..., "tracestate": ...}), or None.
    # Last, with a default, so handlers and tests that build events keep working. Sinks send
    # ``outbox_admin.tracing.trace_headers(event)``, which prefers the delivery span's context.
    trace_context: Mapping[str, str] | None = None

    @property
    def attempt(self) -> int:
        """This delivery's attempt number (1 for the first)."""
        return self.retry_count + 1


@runtime_checkable
class BatchHandler(Protocol):
    """A handler that delivers many events at once."""

    def handle_batch(self, events: Sequence[DeliveredEvent]) -> Mapping[str, BaseException]: ...


Handler = Callable[[DeliveredEvent], Any]


def handler_name(handler: object) -> str:
    """A short name for error messages: ``name`` attribute, function name or class name."""
    name = getattr(handler, "name", None)
    if isinstance(name, str) and name:
        return name
    if hasattr(handler, "__qualname__"):
        return handler.__qualname__  # type: ignore[no-any-return]
    return type(handler).__name__


@dataclass(frozen=True)
class Route:
    """A handler with the event types and orgs it accepts (``None``: all)."""

    handler: Any
    event_types: tuple[str, ...] | None = None
    org_ids: frozenset[str] | None = None
    label: str | None = None  # an explicit name, else the handler's own (``handler_name``)

    @property
    def name(self) -> str:
        """Unique within a dispatcher: how its breaker, its errors and its deliveries are named."""
        return self.label or handler_name(self.handler)

    def accepts(self, event: DeliveredEvent) -> bool:
        if self.org_ids is not None and event.org_id not in self.org_ids:
            return False
        if self.event_types is None:
            return True
        return any(fnmatch.fnmatchcase(event.event_type, p) for p in self.event_types)

    @classmethod
    def of(cls, handler: Any) -> Route:
        if isinstance(handler, Route):
            return handler
        types = getattr(handler, "event_types", None)
        orgs = getattr(handler, "org_ids", None)
        return cls(
            handler,
            tuple([types] if isinstance(types, str) else types) if types else None,
            frozenset([orgs] if isinstance(orgs, str) else orgs) if orgs else None,
        )


def only(
    event_types: str | Iterable[str], handler: Any, *, org_ids: Iterable[str] | None = None, name: str | None = None
) -> Route:
    """Limit ``handler`` to event types matching the patterns (``"PROJECT.*"``) and, optionally, orgs;
    ``name`` names the route when the handler's own name is taken by another route."""
    patterns = (event_types,) if isinstance(event_types, str) else tuple(event_types)
    return Route(handler, patterns, frozenset(org_ids) if org_ids is not None else None, name)


class AuditLogHandler:
    """Logs every delivered event with its payload, as the original's ``console.log`` audit."""

    name = "audit-log"

    def __init__(self, logger: logging.Logger | None = None, level: int = logging.INFO) -> None:
        self.logger = logger or logging.getLogger("outbox_admin.audit")
        self.level = level

    def __call__(self, event: DeliveredEvent) -> None:
        if self.logger.isEnabledFor(self.level):
            self.logger.log(
                self.level,
                "outbox event %s %s %s/%s org=%s attempt=%d payload=%s",
                event.id,
                event.event_type,
                event.entity_type,
                event.entity_id,
                event.org_id,
                event.attempt,
                json.dumps(event.payload, ensure_ascii=False, separators=(",", ":")),
            )

    def close(self) -> None:
        pass


class MessageBusHandler:
    """Emits every delivered event on an in-process ``MessageBus`` (the default bus unless given one).

    If subscribers raise, the delivery fails and is retried, so in-process consumers
    get the same at-least-once guarantee as any other sink.
    """

    name = "message-bus"

    def __init__(self, bus: MessageBus | None = None) -> None:
        self.bus = bus or default_bus

    def __call__(self, event: DeliveredEvent) -> None:
        self.bus.emit(event.event_type, event.payload, event=event)

    def close(self) -> None:
        pass


class RecordingHandler:
    """Keeps every delivered event in memory: a sink double for tests and demos."""

    name = "recording"

    def __init__(self, event_types: Iterable[str] | None = None, *, name: str | None = None) -> None:
        if name is not None:
            self.name = name
        self.events: list[DeliveredEvent] = []
        self.event_types = tuple(event_types) if event_types else None

    def __call__(self, event: DeliveredEvent) -> None:
        self.events.append(event)

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self.events]

    def close(self) -> None:
        pass


def default_handlers() -> list[Any]:
    """What the original does: log the payload for audit; plus the in-process bus."""
    return [AuditLogHandler(), MessageBusHandler()]

"""The in-process message bus: ``subscribe(type, callback)`` and ``emit(type, payload)``.

The Python counterpart of the original's ``useMessageBus`` hook and
``emitMessageBusEvent`` helper. The dispatcher emits every delivered event here,
so code in the same process can react without polling.
"""

from __future__ import annotations

import fnmatch
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

WILDCARD = "*"


@dataclass(frozen=True)
class BusMessage:
    """What a subscriber receives. Events from the dispatcher also carry their fields in ``event``."""

    event_type: str
    payload: Any
    event: Any = None
    meta: Mapping[str, Any] = field(default_factory=dict)


Callback = Callable[[BusMessage], Any]
Unsubscribe = Callable[[], None]


class MessageBus:
    """Thread-safe publish/subscribe within one process.

    ``subscribe("PROJECT.CREATED", cb)``, ``subscribe("PROJECT.*", cb)`` or
    ``subscribe("*", cb)``; the call returns a function that unsubscribes. If
    some callbacks raise, the others still run and an ``ExceptionGroup`` is raised.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: list[tuple[str, Callback]] = []

    def subscribe(self, event_type: str, callback: Callback) -> Unsubscribe:
        entry = (event_type, callback)
        with self._lock:
            self._subscribers = [*self._subscribers, entry]  # copy-on-write: emit never holds the lock

        def unsubscribe() -> None:
            with self._lock:
                self._subscribers = [s for s in self._subscribers if s is not entry]

        return unsubscribe

    def subscriber_count(self, event_type: str | None = None) -> int:
        subs = self._subscribers
        if event_type is None:
            return len(subs)
        return sum(1 for pattern, _ in subs if _matches(pattern, event_type))

    def emit(
        self, event_type: str, payload: Any = None, *, event: Any = None, meta: Mapping[str, Any] | None = None
    ) -> int:
        """Call every matching subscriber; return how many were called."""
        message = BusMessage(event_type, payload, event, meta or {})
        errors: list[Exception] = []
        called = 0
        for pattern, callback in self._subscribers:
            if not _matches(pattern, event_type):
                continue
            called += 1
            try:
                callback(message)
            except Exception as exc:  # noqa: BLE001 - collected and re-raised below
                errors.append(exc)
        if errors:
            raise ExceptionGroup(f"{len(errors)} message bus subscriber(s) failed for {event_type}", errors)
        return called

    def clear(self) -> None:
        with self._lock:
            self._subscribers = []


def _matches(pattern: str, event_type: str) -> bool:
    if pattern in (WILDCARD, event_type):
        return True
    return any(ch in pattern for ch in "*?[") and fnmatch.fnmatchcase(event_type, pattern)


#: The process-wide bus the default dispatcher handler emits to.
default_bus = MessageBus()


def subscribe(event_type: str, callback: Callback) -> Unsubscribe:
    """Subscribe to the default bus (the original's ``useMessageBus``)."""
    return default_bus.subscribe(event_type, callback)


def emit_message_bus_event(event_type: str, payload: Any = None) -> int:
    """Emit on the default bus, for tests (the original's ``emitMessageBusEvent``)."""
    return default_bus.emit(event_type, payload)

"""The registry of event types: a closed set, as the original's ``MessageBusEventType``.

Publishing an unregistered type is refused, so a typo cannot create events no
consumer listens for. Names have the ``ENTITY.ACTION`` form in upper case.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
import threading
from collections.abc import Iterable, Iterator
from typing import Literal

from .errors import InvalidEventTypeError, UnknownEventTypeError

EVENT_TYPE_PATTERN = re.compile(r"^[A-Z][A-Z0-9_]*\.[A-Z][A-Z0-9_]*$")

#: For type checkers, like the original's TypeScript union; extend it in your code
#: (``MyEventType = MessageBusEventType | Literal["MY_ENTITY.UPDATED"]``).
MessageBusEventType = Literal["PROJECT.CREATED", "PROJECT.UPDATED"]
SEED_EVENT_TYPES: tuple[str, ...] = ("PROJECT.CREATED", "PROJECT.UPDATED")


def validate_event_type_name(name: object) -> str:
    """Return ``name`` if it has the ``ENTITY.ACTION`` form, else raise ``InvalidEventTypeError``."""
    if not isinstance(name, str) or not EVENT_TYPE_PATTERN.match(name):
        raise InvalidEventTypeError(name)
    return name


class EventTypeRegistry:
    """A thread-safe set of allowed event type names."""

    def __init__(self, names: Iterable[str] = SEED_EVENT_TYPES) -> None:
        self._lock = threading.Lock()
        self._names: set[str] = {validate_event_type_name(n) for n in names}

    def register(self, name: str) -> str:
        """Add ``name`` (idempotent) and return it."""
        validate_event_type_name(name)
        with self._lock:
            self._names.add(name)
        return name

    def require(self, name: object) -> str:
        """Return ``name`` if registered, else raise ``UnknownEventTypeError`` naming close matches."""
        if isinstance(name, str) and name in self._names:
            return name
        text = name if isinstance(name, str) else repr(name)
        matches = difflib.get_close_matches(text.upper(), sorted(self._names), n=3, cutoff=0.6)
        raise UnknownEventTypeError(text, matches)

    def matching(self, pattern: str) -> list[str]:
        """Registered names matching a glob pattern such as ``PROJECT.*``."""
        return sorted(n for n in self._names if fnmatch.fnmatchcase(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._names))

    def __len__(self) -> int:
        return len(self._names)


#: The registry ``publish_outbox_event`` uses unless given another.
default_registry = EventTypeRegistry()


def register_event_type(name: str, registry: EventTypeRegistry | None = None) -> str:
    """Register an event type (``"MY_ENTITY.UPDATED"``) so it can be published."""
    return (registry or default_registry).register(name)


def registered_event_types(registry: EventTypeRegistry | None = None) -> list[str]:
    """The registered names, sorted."""
    return list(registry or default_registry)

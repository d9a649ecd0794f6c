"""The exceptions outbox_admin raises.

Every error is an ``OutboxError``, so callers can catch the whole family::

    OutboxError
    ├── ConfigurationError        a setting, URL or table name is unusable
    ├── NotInTransactionError     publish was given no active transaction
    ├── UnknownEventTypeError     the event type is not registered
    ├── InvalidEventTypeError     a name to register is not ENTITY.ACTION
    ├── InvalidEventError         org, entity type or entity id is empty or too long
    ├── PayloadError              the payload cannot be stored as JSON
    ├── FilterError               a filter (status, time, search, ...) is unusable
    ├── AdminActionError          a manual action was refused (wrong status, ...)
    ├── DatabaseUnavailableError  the database could not be reached
    └── SinkError                 a sink could not deliver an event (the message says why)
"""

from __future__ import annotations

from collections.abc import Sequence


class OutboxError(Exception):
    """Base class of every error raised by outbox_admin."""


class ConfigurationError(OutboxError):
    """A setting, URL or identifier cannot be used."""


class NotInTransactionError(OutboxError):
    """``publish_outbox_event`` was not given an active transaction."""


class InvalidEventTypeError(OutboxError, ValueError):
    """An event type name does not have the ``ENTITY.ACTION`` upper-case form."""

    def __init__(self, name: object) -> None:
        self.name = name
        super().__init__(
            f"invalid event type {name!r}: use the ENTITY.ACTION form in upper case, "
            "e.g. 'PROJECT.CREATED' or 'MY_ENTITY.UPDATED'"
        )


class UnknownEventTypeError(OutboxError, ValueError):
    """The event type is not in the registry."""

    def __init__(self, name: str, close_matches: Sequence[str] = ()) -> None:
        self.name = name
        self.close_matches = list(close_matches)
        hint = f"; did you mean {', '.join(map(repr, self.close_matches))}?" if self.close_matches else ""
        super().__init__(
            f"unknown event type {name!r}{hint} (register new types with outbox_admin.register_event_type)"
        )


class InvalidEventError(OutboxError, ValueError):
    """An event field other than the payload is unusable (empty, too long, wrong type)."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        super().__init__(f"{field}: {reason}")


class PayloadError(OutboxError, ValueError):
    """The payload holds a value that cannot be stored as JSON; ``path`` says where."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class FilterError(OutboxError, ValueError):
    """A filter value is unusable; ``field`` names which one."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        super().__init__(f"{field}: {reason}")


class AdminActionError(OutboxError):
    """A manual action (requeue, discard, ...) was refused."""


class DatabaseUnavailableError(OutboxError):
    """The database could not be reached."""


class SinkError(OutboxError):
    """A sink could not deliver an event; the message says why (status code, timeout, refusal).

    Raising it makes the dispatcher retry the event; ``sink`` names the sink (and its
    target), ``status_code`` is set for HTTP responses.
    """

    def __init__(self, message: str, *, sink: str | None = None, status_code: int | None = None) -> None:
        self.sink = sink
        self.status_code = status_code
        super().__init__(message)

"""The sink protocol, and what the network sinks share (routing, naming, envelope, lazy imports).

A sink is a handler that sends events out of the process. It is called with one
``DeliveredEvent`` and raises on a failed delivery (so the dispatcher retries it,
backs off, and finally dead-letters it); it may deliver many at once with
``handle_batch``; it is limited to event types and orgs by ``event_types`` and
``org_ids``; its ``name`` says which target failed in the stored error message;
``close()`` releases its connections.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping, Sequence
from types import ModuleType, TracebackType
from typing import Any, Protocol, Self, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

from ..errors import ConfigurationError
from .base import DeliveredEvent
from .envelope import DEFAULT_SOURCE, check_source, to_envelope


@runtime_checkable
class Sink(Protocol):
    """Delivers one event or raises; the dispatcher routes by ``event_types`` / ``org_ids`` (``None``: all)."""

    name: str
    event_types: tuple[str, ...] | None
    org_ids: frozenset[str] | None

    def __call__(self, event: DeliveredEvent) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class BatchSink(Sink, Protocol):
    """A sink that sends a batch at once and reports the failures: ``{event_id: exception}``."""

    def handle_batch(self, events: Sequence[DeliveredEvent]) -> Mapping[str, BaseException]: ...


def require(module: str, extra: str, sink: str) -> ModuleType:
    """Import an optional dependency when a sink is built, with the install hint if it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigurationError(f"{sink} needs the {module!r} package: pip install 'outbox_admin[{extra}]'") from exc


def redact_url(url: str) -> str:
    """``url`` for names and messages: a password (or NATS token) becomes ``***``, a query ``?...``.

    Names end up in stored error messages, and query strings often carry tokens.
    """
    servers = []
    for server in url.split(","):
        parts = urlsplit(server.strip())
        if parts.password is not None or (parts.username and parts.scheme in ("nats", "tls", "ws", "wss")):
            user = f"{parts.username}:***" if parts.password is not None else "***"
            host = parts.netloc.rpartition("@")[2]
            parts = parts._replace(netloc=f"{user}@{host}")
        servers.append(urlunsplit(parts._replace(query="...", fragment="") if parts.query else parts))
    return ",".join(servers)


def check_url(url: object, schemes: Iterable[str], sink: str) -> str:
    """A URL with one of ``schemes`` and a host, or a ``ConfigurationError`` saying what is wrong."""
    allowed = tuple(schemes)
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError(f"{sink}: url must be a non-empty string, not {url!r}")
    for server in url.split(","):
        parts = urlsplit(server.strip())
        if parts.scheme not in allowed:
            raise ConfigurationError(
                f"{sink}: url {redact_url(url)!r} must start with {' or '.join(s + '://' for s in allowed)}"
            )
        if not parts.hostname and parts.scheme != "unix":
            raise ConfigurationError(f"{sink}: url {redact_url(url)!r} has no host")
    return url


def _patterns(event_types: str | Iterable[str] | None) -> tuple[str, ...] | None:
    if event_types is None:
        return None
    patterns = (event_types,) if isinstance(event_types, str) else tuple(event_types)
    if not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise ConfigurationError(
            f"event_types must be non-empty patterns like 'PROJECT.*' (or None for all), not {event_types!r}"
        )
    return patterns


def _orgs(org_ids: str | Iterable[str] | None) -> frozenset[str] | None:
    if org_ids is None:
        return None
    orgs = frozenset((org_ids,) if isinstance(org_ids, str) else org_ids)
    if not orgs or not all(isinstance(o, str) and o for o in orgs):
        raise ConfigurationError(f"org_ids must be non-empty org ids (or None for all), not {org_ids!r}")
    return orgs


class SinkBase:
    """Routing, naming and the envelope for a sink; subclasses deliver and close.

    ``name`` defaults to ``"<kind> <target>"`` (credentials redacted), so a stored
    error reads ``webhook https://example.com/hook: SinkError: HTTP 503 ...``.
    """

    kind = "sink"

    def __init__(
        self,
        target: str,
        *,
        event_types: str | Iterable[str] | None = None,
        org_ids: str | Iterable[str] | None = None,
        name: str | None = None,
        source: str = DEFAULT_SOURCE,
    ) -> None:
        self.event_types = _patterns(event_types)
        self.org_ids = _orgs(org_ids)
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise ConfigurationError(f"name must be a non-empty string, not {name!r}")
        self.name = name or f"{self.kind} {target}"
        self.source = check_source(source)

    def envelope(self, event: DeliveredEvent) -> dict[str, Any]:
        return to_envelope(event, source=self.source)

    def __call__(self, event: DeliveredEvent) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release connections; the sink may not be used afterwards."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

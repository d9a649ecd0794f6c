"""Redis Streams sink: ``XADD`` each event to one stream, or to a stream per event type or org.

An entry's fields: ``id`` (the event id), ``type``, ``orgid``, ``subject`` (for
consumers that filter without parsing), ``envelope`` (the CloudEvents JSON) and, when
the event has a trace context, ``traceparent`` / ``tracestate``
(``outbox_admin.tracing.trace_headers``): a stream entry has no headers, so they are fields.
A batch goes out as one pipeline: one round trip, failures reported per event.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..errors import ConfigurationError, SinkError
from ..tracing import trace_headers
from .base import DeliveredEvent
from .envelope import DEFAULT_SOURCE, encode_envelope
from .sink import SinkBase, check_url, redact_url, require

DEFAULT_STREAM = "outbox"
DEFAULT_TIMEOUT = 5.0
STREAM_FIELDS = ("event_type", "org_id")


def check_stream_template(stream: object) -> str:
    """A stream name, possibly with ``{event_type}`` / ``{org_id}`` placeholders."""
    if not isinstance(stream, str) or not stream:
        raise ConfigurationError(f"RedisStreamSink: stream must be a non-empty string, not {stream!r}")
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(stream) if f is not None]
    except ValueError as exc:
        raise ConfigurationError(f"RedisStreamSink: stream {stream!r} is not a valid template: {exc}") from None
    unknown = [f for f in fields if f not in STREAM_FIELDS]
    if unknown:
        raise ConfigurationError(
            f"RedisStreamSink: stream {stream!r} uses {', '.join('{' + f + '}' for f in unknown)}; "
            "only {event_type} and {org_id} can be used"
        )
    return stream


class RedisStreamSink(SinkBase):
    """``XADD``\\s each event to ``stream`` (``"outbox"``; ``"outbox:{event_type}"`` for one per type).

    ``maxlen`` trims each stream to about that many entries (``MAXLEN ~``), so a
    stream without consumers cannot fill the server's memory.
    """

    kind = "redis-stream"

    def __init__(
        self,
        url: str,
        *,
        stream: str = DEFAULT_STREAM,
        maxlen: int | None = None,
        event_types: str | Iterable[str] | None = None,
        org_ids: str | Iterable[str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        name: str | None = None,
        source: str = DEFAULT_SOURCE,
    ) -> None:
        check_url(url, ("redis", "rediss", "unix"), "RedisStreamSink")
        self.stream = check_stream_template(stream)
        super().__init__(
            f"{redact_url(url)} stream={stream}", event_types=event_types, org_ids=org_ids, name=name, source=source
        )
        if maxlen is not None and (isinstance(maxlen, bool) or not isinstance(maxlen, int) or maxlen < 1):
            raise ConfigurationError(f"RedisStreamSink: maxlen must be a positive integer or None, not {maxlen!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise ConfigurationError(f"RedisStreamSink: timeout must be a positive number of seconds, not {timeout!r}")
        redis = require("redis", "redis", "RedisStreamSink")
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.url = url
        self.maxlen = maxlen
        self.timeout = float(timeout)
        # One immediate retry: a pooled connection may be stale after a server restart. Longer
        # waits belong to the dispatcher's backoff, not to a blocked handler.
        self._client: Any = redis.Redis.from_url(
            url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout, retry=Retry(NoBackoff(), 1)
        )

    def stream_for(self, event: DeliveredEvent) -> str:
        return self.stream.format(event_type=event.event_type, org_id=event.org_id)

    def fields(self, event: DeliveredEvent) -> dict[str, str | bytes]:
        """The stream entry for ``event``."""
        envelope = self.envelope(event)
        return {
            "id": event.id,
            "type": event.event_type,
            "orgid": event.org_id,
            "subject": envelope["subject"],
            "envelope": encode_envelope(envelope),
            **trace_headers(event),
        }

    def __call__(self, event: DeliveredEvent) -> None:
        failures = self.handle_batch([event])
        if event.id in failures:
            raise failures[event.id]

    def handle_batch(self, events: Sequence[DeliveredEvent]) -> Mapping[str, BaseException]:
        """One pipeline of ``XADD``\\s; returns ``{event_id: SinkError}`` for the entries that failed."""
        import redis

        pipe = self._client.pipeline(transaction=False)
        for event in events:
            pipe.xadd(self.stream_for(event), self.fields(event), maxlen=self.maxlen, approximate=True)
        try:
            results = pipe.execute(raise_on_error=False)
        except redis.RedisError as exc:
            error = SinkError(f"XADD failed: {type(exc).__name__}: {exc}", sink=self.name)
            error.__cause__ = exc
            return {event.id: error for event in events}
        return {
            event.id: SinkError(
                f"XADD to stream {self.stream_for(event)!r} failed: {type(result).__name__}: {result}", sink=self.name
            )
            for event, result in zip(events, results, strict=True)
            if isinstance(result, Exception)
        }

    def close(self) -> None:
        self._client.close()

"""NATS JetStream sink: publish each event to ``<subject_prefix>.<EVENT_TYPE>`` and wait for the ack.

The ``Nats-Msg-Id`` header is the event id, so JetStream's duplicate window
(2 minutes by default) drops a redelivery of an event it already stored. The W3C
``traceparent`` / ``tracestate`` headers (``outbox_admin.tracing.trace_headers``) are
added when the event has a trace context; they are taken in the dispatcher's thread,
where the delivery span is, before the batch goes to the sink's loop. The
dispatcher is synchronous and nats-py is asyncio-only: the sink runs a private
event loop in a background thread and hands it coroutines; ``close()`` closes the
connection and stops the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import re
import threading
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from ..errors import ConfigurationError, SinkError
from ..tracing import trace_headers
from .base import DeliveredEvent
from .envelope import CONTENT_TYPE, DEFAULT_SOURCE, encode_envelope
from .sink import SinkBase, check_url, redact_url, require

log = logging.getLogger(__name__)

DEFAULT_SUBJECT_PREFIX = "outbox"
DEFAULT_TIMEOUT = 5.0
RECONNECT_WAIT = 0.5  # seconds between reconnection attempts once connected
MSG_ID_HEADER = "Nats-Msg-Id"
_TOKEN = re.compile(r"[^\s.*>]+")
_STREAM_NAME = re.compile(r"[^\s.*>/\\]+")
T = TypeVar("T")


def check_subject_prefix(prefix: object) -> str:
    """Dot-separated tokens without wildcards or spaces (``outbox``, ``acme.events``)."""
    if not isinstance(prefix, str) or not all(_TOKEN.fullmatch(t) for t in prefix.split(".")):
        raise ConfigurationError(
            f"NatsJetStreamSink: subject_prefix {prefix!r} must be dot-separated tokens without spaces, "
            "'*' or '>' (e.g. 'outbox' or 'acme.events')"
        )
    return prefix


class _LoopThread:
    """An asyncio event loop running in a daemon thread, fed from other threads."""

    def __init__(self, name: str) -> None:
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), name=name, daemon=True)
        self._thread.start()
        self._ready.wait()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run ``coro`` on the loop and wait for its result (cancelled after ``timeout`` seconds)."""
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def stop(self, timeout: float) -> None:
        """Stop the loop; ``asyncio.run`` then cancels what is left and closes it."""
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)


class NatsJetStreamSink(SinkBase):
    """Publishes each event to JetStream on ``<subject_prefix>.<EVENT_TYPE>`` and waits for the ack.

    A stream must capture those subjects. ``stream="OUTBOX"`` makes JetStream refuse
    a publish that would land in another stream; with ``create_stream=True`` the
    sink also creates that stream (subjects ``<subject_prefix>.>``) when it is
    missing. The connection is opened on first use and reconnects by itself.
    """

    kind = "nats-jetstream"

    def __init__(
        self,
        url: str,
        *,
        subject_prefix: str = DEFAULT_SUBJECT_PREFIX,
        stream: str | None = None,
        create_stream: bool = False,
        event_types: str | Iterable[str] | None = None,
        org_ids: str | Iterable[str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        name: str | None = None,
        source: str = DEFAULT_SOURCE,
    ) -> None:
        check_url(url, ("nats", "tls", "ws", "wss"), "NatsJetStreamSink")
        self.subject_prefix = check_subject_prefix(subject_prefix)
        super().__init__(
            f"{redact_url(url)} subjects={subject_prefix}.>",
            event_types=event_types,
            org_ids=org_ids,
            name=name,
            source=source,
        )
        if stream is not None and (not isinstance(stream, str) or not _STREAM_NAME.fullmatch(stream)):
            raise ConfigurationError(f"NatsJetStreamSink: stream {stream!r} is not a valid JetStream stream name")
        if create_stream and stream is None:
            raise ConfigurationError("NatsJetStreamSink: create_stream=True needs stream='NAME'")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise ConfigurationError(
                f"NatsJetStreamSink: timeout must be a positive number of seconds, not {timeout!r}"
            )
        require("nats", "nats", "NatsJetStreamSink")
        self.url = url
        self.stream = stream
        self.create_stream = bool(create_stream)
        self.timeout = float(timeout)
        self._nc: Any = None
        self._js: Any = None
        self._last_error: BaseException | None = None
        self._closed = False
        self._connect_lock = asyncio.Lock()  # binds to the sink's loop on first use
        self._loop = _LoopThread(f"outbox-nats-{id(self):x}")

    def subject_for(self, event: DeliveredEvent) -> str:
        return f"{self.subject_prefix}.{event.event_type}"

    # -- delivering (called from the dispatcher's thread) ----------------------------

    def __call__(self, event: DeliveredEvent) -> None:
        failures = self.handle_batch([event])
        if event.id in failures:
            raise failures[event.id]

    def handle_batch(self, events: Sequence[DeliveredEvent]) -> Mapping[str, BaseException]:
        """Publish the batch concurrently and wait for every ack; ``{event_id: SinkError}`` for failures."""
        if self._closed:
            raise SinkError("the sink is closed", sink=self.name)
        # Each step (connect, look up / create the stream, publish) stops after ``timeout`` by itself;
        # this bound only guards against a stuck loop.
        bound = 4 * self.timeout + 5
        traced = {event.id: trace_headers(event) for event in events}  # read here: the loop has its own context
        try:
            return self._loop.run(self._publish_all(events, traced), timeout=bound)
        except concurrent.futures.TimeoutError:
            raise SinkError(f"no answer from the sink's event loop within {bound:g} s", sink=self.name) from None

    # -- on the sink's event loop -------------------------------------------------

    async def _publish_all(
        self, events: Sequence[DeliveredEvent], traced: Mapping[str, Mapping[str, str]]
    ) -> dict[str, BaseException]:
        try:
            js = await self._connected()
        except SinkError as unreachable:
            return {event.id: unreachable for event in events}
        results = await asyncio.gather(
            *(self._publish(js, event, traced[event.id]) for event in events), return_exceptions=True
        )
        failures: dict[str, BaseException] = {}
        for event, result in zip(events, results, strict=True):
            if isinstance(result, BaseException):
                error = SinkError(self._why(result, self.subject_for(event)), sink=self.name)
                error.__cause__ = result
                failures[event.id] = error
        return failures

    async def _publish(self, js: Any, event: DeliveredEvent, trace: Mapping[str, str]) -> None:
        headers = {MSG_ID_HEADER: event.id, "Content-Type": CONTENT_TYPE, **trace}
        ack = await js.publish(
            self.subject_for(event),
            encode_envelope(self.envelope(event)),
            timeout=self.timeout,
            stream=self.stream,
            headers=headers,
        )
        if ack.duplicate:
            log.debug("%s: JetStream already had event %s (duplicate window)", self.name, event.id)

    async def _connected(self) -> Any:
        """The JetStream context, connecting first when there is no live connection."""
        async with self._connect_lock:  # concurrent batches must not open two connections
            if self._nc is not None and not self._nc.is_closed:
                return self._js
            nc = await self._connect()
            js = nc.jetstream(timeout=self.timeout)
            if self.create_stream:
                try:
                    await self._ensure_stream(js)
                except Exception as exc:
                    await _quietly_close(nc)
                    raise SinkError(
                        f"cannot create JetStream stream {self.stream!r}: {type(exc).__name__}: {exc}", sink=self.name
                    ) from exc
            self._nc, self._js = nc, js
            return js

    async def _connect(self) -> Any:
        """A new connection that reconnects by itself once established; ``SinkError`` if none within ``timeout``."""
        import nats

        nc = nats.NATS()
        self._last_error = None

        async def remember(exc: Exception) -> None:
            self._last_error = exc
            log.debug("%s: %s: %s", self.name, type(exc).__name__, exc)

        async def disconnected() -> None:
            if not nc.is_closed:  # closing on purpose also calls this
                log.warning("%s: disconnected; reconnecting", self.name)

        async def reconnected() -> None:
            log.info("%s: reconnected", self.name)

        try:
            await asyncio.wait_for(
                nc.connect(
                    self.url.split(","),
                    name="outbox-admin",
                    connect_timeout=self.timeout,  # type: ignore[arg-type] # annotated int, used as float
                    reconnect_time_wait=RECONNECT_WAIT,  # type: ignore[arg-type]
                    max_reconnect_attempts=-1,  # once connected, never give up: outages end
                    error_cb=remember,
                    disconnected_cb=disconnected,
                    reconnected_cb=reconnected,
                ),
                self.timeout,
            )
        except asyncio.CancelledError:
            await _quietly_close(nc)
            raise
        except Exception as exc:
            await _quietly_close(nc)
            why = self._last_error or exc
            raise SinkError(
                f"cannot connect to {redact_url(self.url)} within {self.timeout:g} s ({type(why).__name__}: {why})",
                sink=self.name,
            ) from why
        return nc

    async def _ensure_stream(self, js: Any) -> None:
        from nats.js.errors import NotFoundError

        try:
            await js.stream_info(self.stream)
        except NotFoundError:
            await js.add_stream(name=self.stream, subjects=[f"{self.subject_prefix}.>"])
            log.info("%s: created JetStream stream %s", self.name, self.stream)

    def _why(self, exc: BaseException, subject: str) -> str:
        import nats.errors
        import nats.js.errors

        if isinstance(exc, nats.js.errors.NoStreamResponseError):
            return (
                f"no JetStream stream captures subject {subject!r} (add one for '{self.subject_prefix}.>', "
                "or pass stream=... with create_stream=True)"
            )
        if isinstance(exc, nats.js.errors.APIError):
            return f"JetStream refused the message on {subject!r}: {exc.description or exc}"
        if isinstance(exc, TimeoutError):
            return f"no publish ack from JetStream within {self.timeout:g} s for subject {subject!r}"
        if isinstance(exc, nats.errors.ConnectionClosedError | nats.errors.OutboundBufferLimitError):
            return f"connection to {redact_url(self.url)} is closed ({type(exc).__name__})"
        return f"publishing to {subject!r} failed: {type(exc).__name__}: {exc}"

    async def _close_connection(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None:
            await _quietly_close(nc)

    # -- closing -------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection (flushing what is buffered) and stop the private event loop."""
        if self._closed:
            return
        self._closed = True
        try:
            self._loop.run(self._close_connection(), timeout=self.timeout + 5)
        except (concurrent.futures.TimeoutError, RuntimeError):
            log.warning("%s: closing the NATS connection timed out", self.name)
        finally:
            self._loop.stop(timeout=self.timeout + 5)


async def _quietly_close(nc: Any) -> None:
    try:
        await nc.close()
    except Exception as exc:  # noqa: BLE001 - closing after a failure must not hide the failure
        log.debug("closing a NATS connection failed: %s: %s", type(exc).__name__, exc)

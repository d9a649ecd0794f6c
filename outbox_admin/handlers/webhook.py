"""Webhook sink: POST the envelope to a URL, signed as the Standard Webhooks spec says.

Headers: ``webhook-id`` (the event id, the same on every retry), ``webhook-timestamp``
(Unix seconds) and ``webhook-signature`` (``v1,<base64 HMAC-SHA256 of
"id.timestamp.body">``), made by the ``standardwebhooks`` package, so receivers can
verify with any Standard Webhooks library; ``traceparent`` / ``tracestate`` (W3C Trace
Context, ``outbox_admin.tracing.trace_headers``) when the event was published inside a
span or is delivered by a tracing dispatcher (not signed: tracing headers never are).
Any non-2xx answer, a timeout or a refused connection fails the delivery (redirects are
not followed: a moved endpoint should be fixed in the configuration, not silently followed).

``timeout`` is a total deadline for one delivery — connect, send and the whole
answer together. httpx's own timeouts apply per network operation, so a receiver
that trickles its answer a byte at a time would otherwise hold a call for ever; at
the deadline a timer shuts the call's sockets down and the delivery fails with
``timed out after N s``. The lease heartbeat keeps the claim alive meanwhile.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import secrets
import socket
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import ConfigurationError, SinkError
from ..tracing import trace_headers
from .base import DeliveredEvent
from .envelope import CONTENT_TYPE, DEFAULT_SOURCE, encode_envelope
from .sink import SinkBase, check_url, redact_url, require

DEFAULT_TIMEOUT = 10.0
DEFAULT_CONNECT_TIMEOUT = 5.0
SECRET_PREFIX = "whsec_"
MIN_SECRET_BYTES = 24  # the spec's lower bound for a secret
USER_AGENT = "outbox-admin-webhooks/1"
_BODY_EXCERPT = 200
_TRACE_PHASES = {  # httpcore trace events -> what the call was doing
    "connection.connect_tcp.started": "connecting",
    "connection.start_tls.started": "connecting",
    "http11.send_request_headers.started": "sending the request",
    "http11.receive_response_headers.started": "waiting for the response",
    "http11.receive_response_body.started": "reading the response",
}
_TIMEOUT_PHASES = {
    "ConnectTimeout": "connecting",
    "ReadTimeout": "waiting for the response",
    "WriteTimeout": "sending the request",
    "PoolTimeout": "waiting for a free connection",
}


def generate_secret() -> str:
    """A new random secret in the Standard Webhooks form: ``whsec_`` + base64 of 32 bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def secret_key(secret: str | bytes) -> bytes:
    """The HMAC key: raw ``bytes``, or the base64 text of a ``whsec_...`` secret."""
    if isinstance(secret, bytes):
        key = secret
    elif isinstance(secret, str):
        text = secret.strip().removeprefix(SECRET_PREFIX)
        try:
            key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ConfigurationError(
                "webhook secret must be 'whsec_' followed by base64 (the Standard Webhooks form), "
                "e.g. from outbox_admin.handlers.webhook.generate_secret()"
            ) from None
    else:
        raise ConfigurationError(f"webhook secret must be text or bytes, not {type(secret).__name__}")
    if len(key) < MIN_SECRET_BYTES:
        raise ConfigurationError(
            f"webhook secret is {len(key)} bytes; use at least {MIN_SECRET_BYTES} random bytes "
            "(outbox_admin.handlers.webhook.generate_secret() makes one)"
        )
    return key


class WebhookSink(SinkBase):
    """POSTs each event's envelope as signed JSON to ``url``; one pooled HTTP client per sink.

    ``WebhookSink("https://example.com/hooks", secret=os.environ["WEBHOOK_SECRET"],
    event_types=["PROJECT.*"], timeout=5)``. ``timeout`` bounds the whole delivery
    (connect + send + answer); ``connect_timeout`` bounds the connect phase alone.
    """

    kind = "webhook"

    def __init__(
        self,
        url: str,
        *,
        secret: str | bytes,
        event_types: str | Iterable[str] | None = None,
        org_ids: str | Iterable[str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
        name: str | None = None,
        source: str = DEFAULT_SOURCE,
    ) -> None:
        check_url(url, ("http", "https"), "WebhookSink")
        super().__init__(redact_url(url), event_types=event_types, org_ids=org_ids, name=name, source=source)
        require("httpx", "webhooks", "WebhookSink")
        standardwebhooks = require("standardwebhooks", "webhooks", "WebhookSink")
        for label, value in (("timeout", timeout), ("connect_timeout", connect_timeout)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value <= 0):
                raise ConfigurationError(f"WebhookSink: {label} must be a positive number of seconds, not {value!r}")
        self.url = url
        self.timeout = float(timeout)
        self.connect_timeout = float(connect_timeout or min(self.timeout, DEFAULT_CONNECT_TIMEOUT))
        self._signer = standardwebhooks.Webhook(secret_key(secret))
        self._headers = {"user-agent": USER_AGENT, **dict(headers or {})}
        self._lock = threading.Lock()
        self._client = _Client(self._new_client())

    def _new_client(self) -> Any:
        import httpx

        # Each network operation may take up to the whole deadline; the deadline itself (see
        # ``__call__``) is what ends a call, so its message is the same whichever phase was slow.
        return httpx.Client(
            timeout=httpx.Timeout(self.timeout + 1, connect=self.connect_timeout),
            follow_redirects=False,
            headers=self._headers,
        )

    def _expire(self, client: _Client, expired: threading.Event) -> None:
        """The deadline passed: end the call in flight (its sockets shut down) and start a new client."""
        expired.set()
        with self._lock:
            if self._client is client:
                self._client = _Client(self._new_client())
        client.abort()

    def signed_request(self, event: DeliveredEvent, *, timestamp: int | None = None) -> tuple[bytes, dict[str, str]]:
        """The body and headers the sink sends for ``event`` (signed at ``timestamp``, default now)."""
        body = encode_envelope(self.envelope(event))
        ts = int(time.time()) if timestamp is None else timestamp
        signature = self._signer.sign(event.id, dt.datetime.fromtimestamp(ts, dt.UTC), body.decode("utf-8"))
        headers = {
            "content-type": CONTENT_TYPE,
            "webhook-id": event.id,
            "webhook-timestamp": str(ts),
            "webhook-signature": signature,
            **trace_headers(event),
        }
        return body, headers

    def __call__(self, event: DeliveredEvent) -> None:
        import httpx

        body, headers = self.signed_request(event)
        with self._lock:
            client = self._client
        expired = threading.Event()
        client.phase = "connecting"
        timer = threading.Timer(self.timeout, self._expire, (client, expired))
        timer.daemon = True
        timer.start()
        try:
            response = client.http.post(self.url, content=body, headers=headers, extensions={"trace": client.trace})
            response.read()
        except Exception as exc:
            if expired.is_set():
                raise self._deadline_error(client) from exc
            if isinstance(exc, httpx.TimeoutException):
                raise self._timeout_error(exc) from exc
            if isinstance(exc, httpx.HTTPError):
                raise SinkError(f"request failed: {type(exc).__name__}: {exc}", sink=self.name) from exc
            raise
        finally:
            timer.cancel()
        if expired.is_set():  # the answer came in just as the deadline passed: it is late, and counted so
            raise self._deadline_error(client)
        if not response.is_success:
            raise SinkError(_describe(response), sink=self.name, status_code=response.status_code)

    def _deadline_error(self, client: _Client) -> SinkError:
        return SinkError(f"timed out after {self.timeout:g} s {client.phase} (total deadline)", sink=self.name)

    def _timeout_error(self, exc: Any) -> SinkError:
        kind = type(exc).__name__
        seconds = self.connect_timeout if kind == "ConnectTimeout" else self.timeout
        phase = f" {_TIMEOUT_PHASES[kind]}" if kind in _TIMEOUT_PHASES else ""
        return SinkError(f"timed out after {seconds:g} s{phase} ({kind})", sink=self.name)

    def close(self) -> None:
        with self._lock:
            self._client.http.close()


class _Client:
    """An httpx client and the sockets of its connections (learnt from httpcore's trace).

    The deadline needs the sockets: closing a socket does not wake a thread blocked
    reading it, ``shutdown`` does.
    """

    def __init__(self, http: Any) -> None:
        self.http = http
        self._sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        self.phase = "connecting"  # of the call in flight, for the deadline's message

    def trace(self, event: str, info: Mapping[str, Any]) -> None:
        phase = _TRACE_PHASES.get(event)
        if phase is not None:
            self.phase = phase
        if event == "connection.connect_tcp.complete":
            stream = info.get("return_value")
            sock = stream.get_extra_info("socket") if stream is not None else None
            if sock is not None:
                self._sockets.add(sock)

    def abort(self) -> None:
        for sock in list(self._sockets):
            with contextlib.suppress(OSError):  # already closed
                sock.shutdown(socket.SHUT_RDWR)
        self.http.close()


def _describe(response: Any) -> str:
    """``HTTP 503 Service Unavailable: <start of the body>``, and where a redirect pointed."""
    text = f"HTTP {response.status_code} {response.reason_phrase}".rstrip()
    if response.is_redirect:
        return f"{text} to {response.headers.get('location', '?')} (redirects are not followed; fix the URL)"
    excerpt = " ".join(response.text.split())[:_BODY_EXCERPT]
    return f"{text}: {excerpt}" if excerpt else text

"""RabbitMQ sink: publish each event to a topic exchange, routed by its event type, with publisher confirms.

Messages are persistent, carry ``message_id`` = the event id and ``type`` = the
event type, W3C ``traceparent`` / ``tracestate`` headers when the event has a trace
context (``outbox_admin.tracing.trace_headers``), and the body is the CloudEvents
JSON. A delivery counts only when the broker confirms it; a message no queue would
receive is returned by the broker (``mandatory``) and fails the delivery, so it is
retried and finally dead-lettered in the outbox instead of silently dropped.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable
from typing import Any

from ..errors import ConfigurationError, SinkError
from ..tracing import trace_headers
from .base import DeliveredEvent
from .envelope import DEFAULT_SOURCE, encode_envelope
from .sink import SinkBase, check_url, redact_url, require

DEFAULT_EXCHANGE = "outbox"
DEFAULT_TIMEOUT = 10.0
AMQP_CONTENT_TYPE = "application/cloudevents+json"
APP_ID = "outbox-admin"


class RabbitMQSink(SinkBase):
    """Publishes each event to the topic ``exchange`` with the event type as routing key.

    Bind queues with patterns such as ``PROJECT.*`` or ``#``. ``declare_exchange``
    (default) declares the exchange (topic, durable) on connect; ``mandatory=False``
    accepts messages that no queue receives. The connection is opened on first use
    and again after it breaks.
    """

    kind = "rabbitmq"

    def __init__(
        self,
        url: str,
        *,
        exchange: str = DEFAULT_EXCHANGE,
        declare_exchange: bool = True,
        mandatory: bool = True,
        event_types: str | Iterable[str] | None = None,
        org_ids: str | Iterable[str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        name: str | None = None,
        source: str = DEFAULT_SOURCE,
    ) -> None:
        check_url(url, ("amqp", "amqps"), "RabbitMQSink")
        if not isinstance(exchange, str) or not exchange or len(exchange) > 255:
            raise ConfigurationError(
                f"RabbitMQSink: exchange must be a name of 1 to 255 characters (not the default exchange), "
                f"not {exchange!r}"
            )
        super().__init__(
            f"{redact_url(url)} exchange={exchange}", event_types=event_types, org_ids=org_ids, name=name, source=source
        )
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise ConfigurationError(f"RabbitMQSink: timeout must be a positive number of seconds, not {timeout!r}")
        pika = require("pika", "rabbitmq", "RabbitMQSink")
        self.url = url
        self.exchange = exchange
        self.declare_exchange = bool(declare_exchange)
        self.mandatory = bool(mandatory)
        self.timeout = float(timeout)
        try:
            self._parameters = pika.URLParameters(url)
        except Exception as exc:  # noqa: BLE001 - pika raises assorted types for a bad URL
            raise ConfigurationError(f"RabbitMQSink: url {redact_url(url)!r} is not usable: {exc}") from None
        self._parameters.socket_timeout = self.timeout
        self._parameters.stack_timeout = self.timeout
        self._parameters.blocked_connection_timeout = self.timeout
        self._parameters.connection_attempts = 1  # retrying is the dispatcher's job
        self._lock = threading.Lock()  # a pika connection belongs to one thread at a time
        self._connection: Any = None
        self._channel: Any = None

    def properties(self, event: DeliveredEvent) -> Any:
        """The AMQP properties of ``event``'s message."""
        import pika

        return pika.BasicProperties(
            content_type=AMQP_CONTENT_TYPE,
            content_encoding="utf-8",
            delivery_mode=pika.DeliveryMode.Persistent,
            message_id=event.id,
            type=event.event_type,
            timestamp=int(event.created_at.timestamp()),
            app_id=APP_ID,
            headers=trace_headers(event) or None,
        )

    def __call__(self, event: DeliveredEvent) -> None:
        import pika.exceptions as amqp

        body = encode_envelope(self.envelope(event))
        with self._lock:
            try:
                channel = self._open_channel()
                channel.basic_publish(
                    self.exchange, event.event_type, body, self.properties(event), mandatory=self.mandatory
                )
            except amqp.UnroutableError:
                raise SinkError(
                    f"no queue is bound to exchange {self.exchange!r} for routing key {event.event_type!r}: "
                    "the broker returned the message (bind a queue, or set mandatory=False to drop such messages)",
                    sink=self.name,
                ) from None
            except amqp.NackError:
                raise SinkError("the broker refused the message (basic.nack)", sink=self.name) from None
            except amqp.ChannelClosed as exc:
                self._reset()
                raise SinkError(
                    f"the broker closed the channel: {exc.reply_code} {exc.reply_text}", sink=self.name
                ) from exc
            except (amqp.AMQPError, OSError) as exc:
                self._reset()
                raise SinkError(f"cannot reach the broker: {_describe(exc)}", sink=self.name) from exc

    def _open_channel(self) -> Any:
        """A confirm-mode channel on a live connection, connecting (and declaring) when needed."""
        import pika
        import pika.exceptions as amqp

        if self._channel is not None and self._channel.is_open and self._connection.is_open:
            try:
                # Answers heartbeats and notices a connection the broker dropped while we were idle.
                self._connection.process_data_events(time_limit=0)
                return self._channel
            except amqp.AMQPError:
                self._reset()
        self._reset()
        self._connection = pika.BlockingConnection(self._parameters)
        channel = self._connection.channel()
        channel.confirm_delivery()
        if self.declare_exchange:
            channel.exchange_declare(self.exchange, exchange_type="topic", durable=True)
        self._channel = channel
        return channel

    def _reset(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            with contextlib.suppress(Exception):  # it is being thrown away after a failure
                connection.close()

    def close(self) -> None:
        with self._lock:
            self._reset()


def _describe(exc: BaseException) -> str:
    """pika wraps the socket error in layers (``args[0]``, ``.exception``); name the outer and inner ones."""
    inner: BaseException = exc
    for _ in range(5):
        nested = getattr(inner, "exception", None) or (inner.args[0] if inner.args else None)
        if not isinstance(nested, BaseException):
            break
        inner = nested
    if inner is exc:
        return f"{type(exc).__name__}: {exc}"
    return f"{type(exc).__name__}: {type(inner).__name__}: {inner}"

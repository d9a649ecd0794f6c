"""RabbitMQ sink against the real broker: topic routing, persistent confirmed messages, refusals."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pika
import pytest
from sqlalchemy import Engine

from outbox_admin import ConfigurationError, make_engine
from outbox_admin.handlers import RabbitMQSink

from .services import RABBITMQ_URL, free_port, require_rabbitmq
from .sinks_support import drain, publish_demo, received, rows, wait_until


@pytest.fixture
def engine(sqlite_url: str) -> Iterator[Engine]:
    engine = make_engine(sqlite_url)
    yield engine
    engine.dispose()


@pytest.fixture
def channel() -> Iterator[Any]:
    """A consumer's channel on the shared broker."""
    require_rabbitmq()
    connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
    yield connection.channel()
    connection.close()


@pytest.fixture
def exchange(channel: Any) -> Iterator[str]:
    """A topic exchange of this test's own, deleted afterwards."""
    name = f"outbox-test-{uuid.uuid4().hex[:12]}"
    channel.exchange_declare(name, exchange_type="topic", durable=True)
    yield name
    channel.exchange_delete(name)


def bound_queue(channel: Any, exchange: str, pattern: str) -> str:
    """An exclusive queue (gone with the connection) bound to ``exchange`` with ``pattern``."""
    queue = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(queue, exchange, routing_key=pattern)
    return queue


def take(channel: Any, queue: str, count: int) -> list[tuple[Any, Any, bytes]]:
    """``count`` messages from ``queue`` (confirmed messages are there already; poll with a deadline anyway)."""
    got: list[tuple[Any, Any, bytes]] = []

    def more() -> bool:
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        if method is not None:
            got.append((method, properties, body))
        return len(got) >= count

    wait_until(more, 10, f"{count} messages on {queue}", interval=0.01)
    method, _, _ = channel.basic_get(queue, auto_ack=True)
    assert method is None, "more messages than events"
    return got


def test_events_are_routed_by_type_as_persistent_messages(engine: Engine, channel: Any, exchange: str) -> None:
    created = bound_queue(channel, exchange, "PROJECT.CREATED")
    everything = bound_queue(channel, exchange, "#")
    sink = RabbitMQSink(RABBITMQ_URL, exchange=exchange, timeout=5)
    published = publish_demo(engine, 6)
    try:
        assert drain(engine, [sink]).completed == 6
    finally:
        sink.close()

    messages = take(channel, everything, 6)
    assert [received(json.loads(body)) for _, _, body in messages] == published
    for (method, properties, _), event in zip(messages, published, strict=True):
        assert method.routing_key == event["type"]
        assert properties.message_id == event["id"]
        assert properties.type == event["type"]
        assert properties.delivery_mode == 2  # persistent
        assert properties.content_type == "application/cloudevents+json"
    only_created = take(channel, created, 3)
    assert [json.loads(body)["id"] for _, _, body in only_created] == [
        e["id"] for e in published if e["type"] == "PROJECT.CREATED"
    ]


def test_the_sink_declares_its_exchange(engine: Engine, channel: Any) -> None:
    name = f"outbox-test-{uuid.uuid4().hex[:12]}"
    sink = RabbitMQSink(RABBITMQ_URL, exchange=name, mandatory=False)
    publish_demo(engine, 1)
    try:
        assert drain(engine, [sink]).completed == 1  # unroutable, but mandatory=False accepts that
        channel.exchange_declare(name, passive=True)  # raises if it does not exist
    finally:
        sink.close()
        channel.exchange_delete(name)


def test_a_message_no_queue_receives_fails_the_event(engine: Engine, exchange: str) -> None:
    sink = RabbitMQSink(RABBITMQ_URL, exchange=exchange)
    [event] = publish_demo(engine, 1)
    try:
        assert drain(engine, [sink], max_attempts=2).failed == 1
    finally:
        sink.close()
    row = rows(engine)[event["id"]]
    assert row.status == "FAILED" and row.retry_count == 2
    assert sink.name.startswith("rabbitmq amqp://") and sink.name.endswith(f" exchange={exchange}")
    assert row.error_message.startswith(
        f"{sink.name}: SinkError: no queue is bound to exchange '{exchange}' for routing key 'PROJECT.CREATED'"
    )


def test_an_exchange_of_another_type_closes_the_channel_and_says_why(
    engine: Engine, channel: Any, exchange: str
) -> None:
    other = f"{exchange}-fanout"
    channel.exchange_declare(other, exchange_type="fanout")
    sink = RabbitMQSink(RABBITMQ_URL, exchange=other)
    [event] = publish_demo(engine, 1)
    try:
        drain(engine, [sink], max_attempts=1)
    finally:
        sink.close()
        channel.exchange_delete(other)
    message = rows(engine)[event["id"]].error_message
    assert "SinkError: the broker closed the channel: 406 PRECONDITION_FAILED" in message


def test_a_broker_that_is_not_there_fails_the_event_with_the_reason(engine: Engine) -> None:
    url = f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F"
    sink = RabbitMQSink(url, timeout=2)
    [event] = publish_demo(engine, 1)
    try:
        assert drain(engine, [sink], max_attempts=2).failed == 1
    finally:
        sink.close()
    message = rows(engine)[event["id"]].error_message
    assert message == (
        f"rabbitmq {url.replace('guest:guest', 'guest:***')} exchange=outbox: SinkError: "
        "cannot reach the broker: AMQPConnectionError: ConnectionRefusedError: [Errno 111] Connection refused"
    )


@pytest.mark.parametrize(
    ("kwargs", "complaint"),
    [
        ({"exchange": ""}, "exchange must be a name of 1 to 255 characters"),
        ({"timeout": "5"}, "timeout must be a positive number"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, object], complaint: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        RabbitMQSink("amqp://guest:guest@127.0.0.1:5672/%2F", **kwargs)  # type: ignore[arg-type]
    assert complaint in str(caught.value)

"""NATS JetStream sink against the real server, and against a nats-server of the test's own that it kills."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.errors import NotFoundError
from sqlalchemy import Engine

from outbox_admin import ConfigurationError, Dispatcher, make_engine
from outbox_admin.handlers import NatsJetStreamSink

from .services import NATS_URL, free_port, require_nats
from .sinks_support import NO_WAIT, drain, private_nats, publish_demo, received, rows, wait_until


@pytest.fixture
def engine(sqlite_url: str) -> Iterator[Engine]:
    engine = make_engine(sqlite_url)
    yield engine
    engine.dispose()


async def _jetstream(url: str, work: Callable[[Any], Awaitable[Any]]) -> Any:
    nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=0)
    try:
        return await work(nc.jetstream())
    finally:
        await nc.close()


def add_stream(url: str, stream: str, subjects: list[str]) -> None:
    asyncio.run(_jetstream(url, lambda js: js.add_stream(name=stream, subjects=subjects)))


def delete_stream(url: str, stream: str) -> None:
    async def delete(js: Any) -> None:
        with contextlib.suppress(NotFoundError):
            await js.delete_stream(stream)

    asyncio.run(_jetstream(url, delete))


def stream_messages(url: str, stream: str) -> list[tuple[str, dict[str, str], dict[str, Any]]]:
    """Every message in ``stream``: subject, headers, envelope."""

    async def read(js: Any) -> list[tuple[str, dict[str, str], dict[str, Any]]]:
        info = await js.stream_info(stream)
        messages = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            message = await js.get_msg(stream, seq)
            messages.append((message.subject, dict(message.headers or {}), json.loads(message.data)))
        return messages

    return asyncio.run(_jetstream(url, read))


@pytest.fixture
def subjects() -> Iterator[tuple[str, str]]:
    """A subject prefix and a stream capturing it, both this test's own; the stream is deleted afterwards."""
    require_nats()
    token = uuid.uuid4().hex[:12]
    prefix, stream = f"outbox_test.{token}", f"OUTBOX_TEST_{token}"
    add_stream(NATS_URL, stream, [f"{prefix}.>"])
    yield prefix, stream
    delete_stream(NATS_URL, stream)


def test_events_are_published_with_their_id_as_msg_id(engine: Engine, subjects: tuple[str, str]) -> None:
    prefix, stream = subjects
    sink = NatsJetStreamSink(NATS_URL, subject_prefix=prefix, stream=stream, event_types=["PROJECT.*"], timeout=2)
    published = publish_demo(engine, 6)
    try:
        assert drain(engine, [sink]).completed == 6
    finally:
        sink.close()

    messages = stream_messages(NATS_URL, stream)
    assert [received(envelope) for _, _, envelope in messages] == published
    assert [subject for subject, _, _ in messages] == [f"{prefix}.{e['type']}" for e in published]
    assert [headers["Nats-Msg-Id"] for _, headers, _ in messages] == [e["id"] for e in published]


def test_a_redelivered_event_is_stored_once(engine: Engine, subjects: tuple[str, str]) -> None:
    prefix, stream = subjects
    sink = NatsJetStreamSink(NATS_URL, subject_prefix=prefix, timeout=2)
    [event] = publish_demo(engine, 1)
    try:
        assert drain(engine, [sink]).completed == 1
        # Redeliveries, as after a dispatcher crash between the publish and COMPLETED: acked, not stored.
        assert sink.handle_batch([_delivered(engine, event["id"])] * 2) == {}
    finally:
        sink.close()
    assert [received(m[2]) for m in stream_messages(NATS_URL, stream)] == [event]


def test_create_stream_makes_the_stream_when_missing(engine: Engine) -> None:
    require_nats()
    token = uuid.uuid4().hex[:12]
    prefix, stream = f"outbox_test.{token}", f"OUTBOX_TEST_{token}"
    sink = NatsJetStreamSink(NATS_URL, subject_prefix=prefix, stream=stream, create_stream=True, timeout=2)
    published = publish_demo(engine, 2)
    try:
        assert drain(engine, [sink]).completed == 2
        assert [received(m[2]) for m in stream_messages(NATS_URL, stream)] == published
    finally:
        sink.close()
        delete_stream(NATS_URL, stream)


def test_no_stream_for_the_subject_fails_the_event_saying_so(engine: Engine) -> None:
    require_nats()
    prefix = f"outbox_nostream.{uuid.uuid4().hex[:12]}"
    sink = NatsJetStreamSink(NATS_URL, subject_prefix=prefix, timeout=2)
    [event] = publish_demo(engine, 1)
    try:
        assert drain(engine, [sink], max_attempts=2).failed == 1
    finally:
        sink.close()
    message = rows(engine)[event["id"]].error_message
    assert message.startswith(f"nats-jetstream {NATS_URL} subjects={prefix}.>: SinkError: no JetStream stream captures")


def test_delivery_fails_while_nats_is_down_and_succeeds_once_it_is_back(engine: Engine, tmp_path: Path) -> None:
    server = private_nats(tmp_path)
    url = f"nats://{server.url_host}"
    sink = NatsJetStreamSink(url, subject_prefix="outbox", stream="OUTBOX", create_stream=True, timeout=1)
    dispatcher = Dispatcher(engine, [sink], max_attempts=None, backoff=NO_WAIT)
    try:
        server.start()
        [first] = publish_demo(engine, 1, prefix="before")
        assert dispatcher.drain().completed == 1

        server.kill()
        [second] = publish_demo(engine, 1, prefix="during")
        assert dispatcher.dispatch_once().retried == 1
        row = rows(engine)[second["id"]]
        assert row.status == "PENDING" and row.retry_count == 1
        assert row.error_message == (
            f"nats-jetstream {url} subjects=outbox.>: SinkError: "
            "no publish ack from JetStream within 1 s for subject 'outbox.PROJECT.CREATED'"
        )

        server.start()  # same port and store: the stream survives, the sink reconnects by itself
        wait_until(lambda: dispatcher.dispatch_once().completed == 1, 20, "the event to be delivered after restart")
        # A publish buffered while the server was down may also arrive: Nats-Msg-Id keeps one copy.
        assert [received(m[2]) for m in stream_messages(url, "OUTBOX")] == [first, second]
    finally:
        sink.close()
        server.kill()


def test_nothing_listening_fails_the_event_with_the_reason(engine: Engine) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    sink = NatsJetStreamSink(url, timeout=0.5)
    [event] = publish_demo(engine, 1)
    try:
        assert drain(engine, [sink], max_attempts=1).failed == 1
    finally:
        sink.close()
    message = rows(engine)[event["id"]].error_message
    assert message.startswith(
        f"nats-jetstream {url} subjects=outbox.>: SinkError: cannot connect to {url} within 0.5 s"
    )
    assert "ConnectionRefusedError" in message


def test_close_stops_the_private_event_loop_thread() -> None:
    before = set(threading.enumerate())
    sink = NatsJetStreamSink(f"nats://127.0.0.1:{free_port()}")
    started = set(threading.enumerate()) - before
    assert [t.name for t in started] == [f"outbox-nats-{id(sink):x}"]
    sink.close()
    assert not any(t.is_alive() for t in started)
    sink.close()  # twice is harmless


@pytest.mark.parametrize(
    ("kwargs", "complaint"),
    [
        ({"subject_prefix": "outbox.*"}, "must be dot-separated tokens"),
        ({"subject_prefix": "a..b"}, "must be dot-separated tokens"),
        ({"stream": "bad.name"}, "is not a valid JetStream stream name"),
        ({"create_stream": True}, "create_stream=True needs stream="),
        ({"timeout": 0}, "timeout must be a positive number"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, object], complaint: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        NatsJetStreamSink("nats://127.0.0.1:4222", **kwargs)  # type: ignore[arg-type]
    assert complaint in str(caught.value)


def _delivered(engine: Engine, event_id: str) -> Any:
    from outbox_admin.handlers import DeliveredEvent

    row = rows(engine)[event_id]
    return DeliveredEvent(
        row.id, row.org_id, row.event_type, row.entity_type, row.entity_id, row.payload, row.retry_count, row.created_at
    )

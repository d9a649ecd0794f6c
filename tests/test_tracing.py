"""OpenTelemetry traces (outbox_admin.tracing): from the publishing span, through the delivery span, to each sink.

Spans go to the SDK's in-memory exporter of a provider of the test's own (never the global
one); the sinks deliver to real servers (HTTP on a real socket, Redis, NATS, RabbitMQ).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pika
import pytest
import redis
import standardwebhooks
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, StatusCode, TraceFlags, TraceState
from sqlalchemy import Engine, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from outbox_admin import (
    Dispatcher,
    EventSpec,
    apublish_outbox_event,
    make_async_engine,
    make_engine,
    outbox_batch,
    publish_outbox_event,
    publish_outbox_events,
)
from outbox_admin.db import async_url
from outbox_admin.handlers import NatsJetStreamSink, RabbitMQSink, RedisStreamSink, WebhookSink
from outbox_admin.handlers.base import DeliveredEvent, RecordingHandler
from outbox_admin.handlers.envelope import to_envelope
from outbox_admin.handlers.webhook import generate_secret
from outbox_admin.models import DEFAULT_TABLES
from outbox_admin.tracing import MAX_TRACESTATE, DeliveryTracer, decode, encode, trace_headers

from .services import NATS_URL, RABBITMQ_URL, REDIS_URL, require_nats, require_rabbitmq, require_redis
from .sinks_support import NO_WAIT, WebhookReceiver
from .test_sink_nats import add_stream, delete_stream, stream_messages
from .test_sink_rabbitmq import bound_queue, take

EVENTS = DEFAULT_TABLES.events
FIELDS = dict(org_id="org-1", event_type="PROJECT.CREATED", entity_type="Project")
ROOT = Path(__file__).resolve().parents[1]


class Spans:
    """A tracer provider of the test's own and what it exported."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("tests")

    def finished(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.finished() if s.name == name]


@pytest.fixture
def spans() -> Iterator[Spans]:
    spans = Spans()
    yield spans
    spans.provider.shutdown()


def traceparent(span: Any) -> str:
    context = span.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def publish(engine: Engine, entity_id: str = "p-1") -> str:
    with engine.begin() as conn:
        return publish_outbox_event(conn, **FIELDS, entity_id=entity_id, payload={"n": 1}).id


def stored(engine: Engine) -> dict[str, str | None]:
    with engine.connect() as conn:
        return {row.id: row.trace_context for row in conn.execute(select(EVENTS.c.id, EVENTS.c.trace_context))}


# --- publishing -----------------------------------------------------------------------------------


def test_publishing_inside_a_span_stores_its_context_and_outside_stores_null(engine: Engine, spans: Spans) -> None:
    outside = publish(engine, "outside")
    with spans.tracer.start_as_current_span("POST /projects") as request:
        inside = publish(engine, "inside")
        with engine.begin() as conn:
            many = [
                e.id for e in publish_outbox_events(conn, [EventSpec(**FIELDS, entity_id=f"m-{i}") for i in range(3)])
            ]
        with engine.begin() as conn, outbox_batch(conn):
            buffered = publish_outbox_event(conn, **FIELDS, entity_id="buffered").id
            with spans.tracer.start_as_current_span("nested") as nested:
                deeper = publish_outbox_event(conn, **FIELDS, entity_id="deeper").id
    with engine.begin() as conn, outbox_batch(conn):  # one write holding a traced and an untraced event
        untraced = publish_outbox_event(conn, **FIELDS, entity_id="untraced").id
        with spans.tracer.start_as_current_span("late") as late:
            traced = publish_outbox_event(conn, **FIELDS, entity_id="traced").id
    # "deeper" was buffered in the nested span and written after it ended: each event keeps the span of its call
    contexts = stored(engine)
    assert contexts[outside] is None and contexts[untraced] is None
    assert json.loads(contexts[traced]) == {"traceparent": traceparent(late)}  # type: ignore[arg-type]
    for event_id in [inside, *many, buffered]:
        assert json.loads(contexts[event_id]) == {"traceparent": traceparent(request)}  # type: ignore[arg-type]
    assert json.loads(contexts[deeper]) == {"traceparent": traceparent(nested)}  # type: ignore[arg-type]


def test_async_publishing_inside_a_span_stores_its_context(db_url: str, spans: Spans, engine: Engine) -> None:
    async def body() -> tuple[str, str]:
        async_engine = make_async_engine(async_url(db_url))
        try:
            with spans.tracer.start_as_current_span("async request") as request:
                async with AsyncSession(async_engine) as session, session.begin():
                    event = await apublish_outbox_event(session, **FIELDS, entity_id="a-1")
            return event.id, traceparent(request)
        finally:
            await async_engine.dispose()

    event_id, expected = asyncio.run(body())
    assert json.loads(stored(engine)[event_id]) == {"traceparent": expected}  # type: ignore[arg-type]


def remote_span(state: TraceState) -> NonRecordingSpan:
    """A span context as it arrives from an upstream service, with the ``tracestate`` it carried."""
    context = SpanContext(
        trace_id=uuid.uuid4().int, span_id=uuid.uuid4().int >> 64, is_remote=True, trace_flags=TraceFlags(1),
        trace_state=state,
    )  # fmt: skip
    return NonRecordingSpan(context)


def test_a_tracestate_is_kept_and_an_oversized_one_dropped(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    small = remote_span(TraceState([("vendor", "abc"), ("other", "x-1")]))
    big = remote_span(TraceState([(f"k{i}", "v" * 250) for i in range(3)]))
    with trace.use_span(small):
        kept = publish(engine, "kept")
    with trace.use_span(big):
        dropped = publish(engine, "dropped")
    contexts = stored(engine)
    assert json.loads(contexts[kept]) == {"traceparent": traceparent(small), "tracestate": "vendor=abc,other=x-1"}  # type: ignore[arg-type]
    assert len(big.get_span_context().trace_state.to_header()) > MAX_TRACESTATE
    assert json.loads(contexts[dropped]) == {"traceparent": traceparent(big)}  # type: ignore[arg-type]
    engine.dispose()


def test_stored_values_are_checked_both_ways() -> None:
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert decode(encode({"traceparent": parent, "tracestate": "a=1"})) == {"traceparent": parent, "tracestate": "a=1"}
    for bad in (
        "",
        "nonsense",
        "[1]",
        '{"traceparent": "00-abc"}',
        json.dumps({"traceparent": "00-" + "0" * 32 + "-00f067aa0ba902b7-01"}),
    ):
        assert decode(bad) is None
    with_newline = json.dumps({"traceparent": parent, "tracestate": "a=1\r\nx-injected: 1"})
    assert decode(with_newline) == {"traceparent": parent}  # never a header line of its own
    assert decode(json.dumps({"traceparent": parent + "\n"})) is None
    assert decode(json.dumps({"traceparent": parent, "tracestate": "a=1\n"})) == {"traceparent": parent}
    assert encode({"tracestate": "a=1"}) is None


# --- dispatching ----------------------------------------------------------------------------------


class Failing:
    name = "failing"

    def __call__(self, event: DeliveredEvent) -> None:
        raise ValueError(f"refused {event.entity_id}")


class SeesItsSpan:
    """A single-event handler that notes the current span and opens a child span of its own."""

    name = "sees-span"

    def __init__(self, tracer: trace.Tracer) -> None:
        self.tracer = tracer
        self.current: list[SpanContext] = []

    def __call__(self, event: DeliveredEvent) -> None:
        self.current.append(trace.get_current_span().get_span_context())
        with self.tracer.start_as_current_span("inside the handler"):
            pass


class Batcher:
    """A batch handler that keeps what ``trace_headers`` gives for each event, as a sink would send it."""

    name = "batcher"

    def __init__(self) -> None:
        self.headers: dict[str, dict[str, str]] = {}

    def handle_batch(self, events: Sequence[DeliveredEvent]) -> Mapping[str, BaseException]:
        for event in events:
            self.headers[event.id] = trace_headers(event)
        return {}


def test_the_delivery_span_is_the_publishing_spans_child(engine: Engine, spans: Spans) -> None:
    with spans.tracer.start_as_current_span("POST /projects") as request:
        event_id = publish(engine)
    outside_id = publish(engine, "outside")
    recording, failing, sees = RecordingHandler(), Failing(), SeesItsSpan(spans.tracer)
    report = Dispatcher(
        engine, [recording, failing, sees], max_attempts=1, backoff=NO_WAIT, observers=[DeliveryTracer(spans.provider)]
    ).drain()
    assert report.failed == 2
    published = request.get_span_context()
    assert recording.events[0].trace_context == {"traceparent": traceparent(request)}
    assert recording.events[1].trace_context is None

    for name in ("send recording", "send failing", "send sees-span"):
        mine, other = sorted(spans.named(name), key=lambda s: s.attributes["outbox.event.id"] != event_id)  # type: ignore[index]
        assert mine.context.trace_id == published.trace_id and mine.parent.span_id == published.span_id  # type: ignore[union-attr]
        assert other.context.trace_id != published.trace_id and other.parent is None  # a root of its own
        assert mine.kind == SpanKind.PRODUCER
        handler = name.removeprefix("send ")
        assert dict(mine.attributes) == {  # type: ignore[arg-type]
            "outbox.event.id": event_id,
            "outbox.event.type": "PROJECT.CREATED",
            "outbox.handler": handler,
            "outbox.event.attempt": 1,
            "messaging.operation.type": "send",
            "messaging.destination.name": handler,
            "messaging.message.id": event_id,
            **({"error.type": "ValueError"} if handler == "failing" else {}),
        }
        assert other.attributes["outbox.event.id"] == outside_id  # type: ignore[index]

    for failed in spans.named("send failing"):
        assert failed.status.status_code == StatusCode.ERROR
        assert failed.status.description.startswith("ValueError: refused")  # type: ignore[union-attr]
        [exception] = [e for e in failed.events if e.name == "exception"]
        assert exception.attributes["exception.type"] == "ValueError"  # type: ignore[index]
    for ok in spans.named("send recording"):
        assert ok.status.status_code == StatusCode.UNSET and not ok.events

    # a single event's span is current during the call: the handler's own spans nest under it
    mine = next(s for s in spans.named("send sees-span") if s.attributes["outbox.event.id"] == event_id)  # type: ignore[index]
    assert sees.current[0] == mine.context
    [inner] = [s for s in spans.named("inside the handler") if s.context.trace_id == published.trace_id]
    assert inner.parent.span_id == mine.context.span_id  # type: ignore[union-attr]


def test_a_batch_gets_one_span_per_event_and_sinks_their_headers(engine: Engine, spans: Spans) -> None:
    ids, requests = [], []
    for i in range(2):
        with spans.tracer.start_as_current_span(f"request {i}") as request:
            ids.append(publish(engine, f"p-{i}"))
            requests.append(request)
    batcher = Batcher()
    assert (
        Dispatcher(engine, [batcher], backoff=NO_WAIT, observers=[DeliveryTracer(spans.provider)]).drain().completed
        == 2
    )
    sent = {s.attributes["outbox.event.id"]: s for s in spans.named("send batcher")}  # type: ignore[index]
    assert sorted(sent) == sorted(ids)
    for event_id, request in zip(ids, requests, strict=True):
        span = sent[event_id]
        assert span.parent.span_id == request.get_span_context().span_id  # type: ignore[union-attr]
        assert span.attributes["messaging.batch.message_count"] == 2  # type: ignore[index]
        assert batcher.headers[event_id] == {"traceparent": traceparent(span)}  # the delivery span, not the request


def test_without_a_tracer_sinks_send_the_stored_context(engine: Engine, spans: Spans) -> None:
    with spans.tracer.start_as_current_span("POST /projects") as request:
        event_id = publish(engine)
    outside_id = publish(engine, "outside")
    batcher = Batcher()
    assert Dispatcher(engine, [batcher], backoff=NO_WAIT).drain().completed == 2
    assert batcher.headers == {event_id: {"traceparent": traceparent(request)}, outside_id: {}}


def test_an_unreadable_stored_context_is_ignored(engine: Engine, spans: Spans) -> None:
    event_id = publish(engine)
    with engine.begin() as conn:
        conn.execute(text('UPDATE "OutboxEvent" SET trace_context = :t'), {"t": '{"traceparent": "garbage"'})
    recording = RecordingHandler()
    assert Dispatcher(engine, [recording], observers=[DeliveryTracer(spans.provider)]).drain().completed == 1
    assert recording.events[0].trace_context is None
    [span] = spans.named("send recording")
    assert span.parent is None and span.attributes["outbox.event.id"] == event_id  # type: ignore[index]


def test_the_envelope_carries_the_publishing_context() -> None:
    import datetime as dt

    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    base = DeliveredEvent("e-1", "org-1", "PROJECT.CREATED", "Project", "p-1", {"a": 1}, 0, dt.datetime.now(dt.UTC))
    assert "traceparent" not in to_envelope(base)
    traced = dataclasses.replace(base, trace_context={"traceparent": parent, "tracestate": "a=1"})
    envelope = to_envelope(traced)
    assert (envelope["traceparent"], envelope["tracestate"], envelope["data"]) == (parent, "a=1", {"a": 1})


# --- sinks ----------------------------------------------------------------------------------------


def traced_event(engine: Engine, spans: Spans) -> tuple[str, Any]:
    with spans.tracer.start_as_current_span("POST /projects") as request:
        event_id = publish(engine)
    return event_id, request


def delivery_span(spans: Spans, event_id: str) -> ReadableSpan:
    [span] = [s for s in spans.finished() if s.name.startswith("send ") and s.attributes["outbox.event.id"] == event_id]  # type: ignore[index]
    return span


@pytest.mark.parametrize("traced", [True, False], ids=["tracing-dispatcher", "plain-dispatcher"])
def test_a_webhook_receiver_sees_the_publishing_trace(engine: Engine, spans: Spans, traced: bool) -> None:
    event_id, request = traced_event(engine, spans)
    secret = generate_secret()
    receiver = WebhookReceiver()
    sink = WebhookSink(receiver.url("/ok"), secret=secret)
    observers = [DeliveryTracer(spans.provider)] if traced else []
    try:
        assert Dispatcher(engine, [sink], backoff=NO_WAIT, observers=observers).drain().completed == 1
    finally:
        sink.close()
        receiver.close()
    [got] = receiver.at("/ok")
    envelope = standardwebhooks.Webhook(secret).verify(got.body, got.headers)  # the signature still verifies
    header = got.headers["traceparent"]
    assert header.split("-")[1] == f"{request.get_span_context().trace_id:032x}"
    assert header == (traceparent(delivery_span(spans, event_id)) if traced else traceparent(request))
    assert envelope["traceparent"] == traceparent(request)  # the extension names the event's origin


def test_a_redis_stream_entry_has_the_traceparent_field(engine: Engine, spans: Spans) -> None:
    require_redis()
    event_id, request = traced_event(engine, spans)
    stream = f"outbox-test:{uuid.uuid4().hex[:12]}"
    client = redis.Redis.from_url(REDIS_URL)
    sink = RedisStreamSink(REDIS_URL, stream=stream)
    try:
        assert Dispatcher(engine, [sink], observers=[DeliveryTracer(spans.provider)]).drain().completed == 1
        [(_, fields)] = client.xrange(stream)
    finally:
        sink.close()
        client.delete(stream)
        client.close()
    assert fields[b"traceparent"].decode() == traceparent(delivery_span(spans, event_id))
    assert json.loads(fields[b"envelope"])["traceparent"] == traceparent(request)


def test_a_nats_message_has_the_traceparent_header(engine: Engine, spans: Spans) -> None:
    require_nats()
    event_id, request = traced_event(engine, spans)
    token = uuid.uuid4().hex[:12]
    prefix, stream = f"outbox_test.{token}", f"OUTBOX_TEST_{token}"
    add_stream(NATS_URL, stream, [f"{prefix}.>"])
    sink = NatsJetStreamSink(NATS_URL, subject_prefix=prefix, stream=stream, timeout=2)
    try:
        assert Dispatcher(engine, [sink], observers=[DeliveryTracer(spans.provider)]).drain().completed == 1
        [(_, headers, envelope)] = stream_messages(NATS_URL, stream)
    finally:
        sink.close()
        delete_stream(NATS_URL, stream)
    assert headers["traceparent"] == traceparent(delivery_span(spans, event_id))
    assert headers["Nats-Msg-Id"] == event_id and envelope["traceparent"] == traceparent(request)


def test_a_rabbitmq_message_has_the_traceparent_header(engine: Engine, spans: Spans) -> None:
    require_rabbitmq()
    event_id, request = traced_event(engine, spans)
    connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
    channel = connection.channel()
    exchange = f"outbox-test-{uuid.uuid4().hex[:12]}"
    channel.exchange_declare(exchange, exchange_type="topic", durable=True)
    queue = bound_queue(channel, exchange, "#")
    sink = RabbitMQSink(RABBITMQ_URL, exchange=exchange, timeout=5)
    try:
        assert Dispatcher(engine, [sink], observers=[DeliveryTracer(spans.provider)]).drain().completed == 1
        [(_, properties, body)] = take(channel, queue, 1)
    finally:
        sink.close()
        channel.exchange_delete(exchange)
        connection.close()
    assert properties.headers["traceparent"] == traceparent(delivery_span(spans, event_id))
    assert properties.message_id == event_id and json.loads(body)["traceparent"] == traceparent(request)


# --- without opentelemetry ------------------------------------------------------------------------

WITHOUT_OPENTELEMETRY = """
import sys

class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ImportError(f"{name} is blocked for this test")
        return None

if BLOCK:
    sys.meta_path.insert(0, Block())

from outbox_admin import ConfigurationError, Dispatcher, init_db, make_engine, publish_outbox_event
from outbox_admin.handlers.base import RecordingHandler
from outbox_admin.tracing import DeliveryTracer

engine = make_engine(URL)
init_db(engine)
with engine.begin() as conn:
    publish_outbox_event(conn, org_id="o", event_type="PROJECT.CREATED", entity_type="P", entity_id="1")
handler = RecordingHandler()
report = Dispatcher(engine, [handler]).drain()
assert report.completed == 1 and handler.events[0].trace_context is None, report
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry")
assert not loaded, loaded
if BLOCK:
    try:
        DeliveryTracer()
    except ConfigurationError as exc:
        assert "outbox_admin[tracing]" in str(exc), exc
    else:
        raise AssertionError("DeliveryTracer() without opentelemetry")
print("ok")
"""


@pytest.mark.parametrize("block", [True, False], ids=["not-installed", "installed-unused"])
def test_without_opentelemetry_nothing_is_imported_and_nothing_changes(tmp_path: Path, block: bool) -> None:
    url = f"sqlite:///{tmp_path / 'o.db'}"
    script = f"BLOCK = {block}\nURL = {url!r}\n" + textwrap.dedent(WITHOUT_OPENTELEMETRY)
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


# --- outbox-admin dispatch --trace ----------------------------------------------------------------

TRACED_APP = """
import json
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

class FileExporter(SpanExporter):
    def export(self, spans):
        with open("spans.jsonl", "a") as out:
            for span in spans:
                parent = span.parent.span_id if span.parent else None
                out.write(json.dumps([span.name, span.context.trace_id, parent]) + "\\n")
        return SpanExportResult.SUCCESS

provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(FileExporter()))
trace.set_tracer_provider(provider)  # the application's own setup, as opentelemetry-instrument would do

def receive(event):
    pass

handlers = [receive]
"""


@pytest.mark.slow
def test_cli_dispatch_trace_uses_the_global_provider_the_application_set_up(
    sqlite_url: str, spans: Spans, tmp_path: Path
) -> None:
    engine = make_engine(sqlite_url)
    with spans.tracer.start_as_current_span("POST /projects") as request:
        publish(engine)
    engine.dispose()
    (tmp_path / "traced_app.py").write_text(TRACED_APP)
    (tmp_path / "outbox.toml").write_text('handlers = "traced_app:handlers"\n')
    done = subprocess.run(
        [sys.executable, "-m", "outbox_admin", "dispatch", "--once", "--quiet", "--trace", "--json",
         "--database-url", sqlite_url],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OUTBOX_CONFIG": str(tmp_path / "outbox.toml")},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["completed"] == 1
    exported = [json.loads(line) for line in (tmp_path / "spans.jsonl").read_text().splitlines()]
    published = request.get_span_context()
    assert ["send receive", published.trace_id, published.span_id] in exported, exported

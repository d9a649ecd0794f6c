"""What every sink shares: the CloudEvents envelope, the protocol, routing, lazy optional imports."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from outbox_admin import Dispatcher, make_engine
from outbox_admin.handlers import (
    BatchSink,
    DeliveredEvent,
    NatsJetStreamSink,
    RabbitMQSink,
    RedisStreamSink,
    Route,
    Sink,
    WebhookSink,
    encode_envelope,
    to_envelope,
)
from outbox_admin.handlers.webhook import generate_secret

EVENT = DeliveredEvent(
    id="0190f3a2-7c1e-7d33-9b7a-5f2d8e0c1a44",
    org_id="org-1",
    event_type="PROJECT.CREATED",
    entity_type="Project",
    entity_id="p/1",
    payload={"name": "Apollo ñ", "budget": 1250.5},
    retry_count=2,
    created_at=dt.datetime(2024, 7, 1, 12, 0, 0, 123456, tzinfo=dt.UTC),
)
CLOUDEVENTS_REQUIRED = ("id", "source", "specversion", "type")
CLOUDEVENTS_NAME = re.compile(r"[a-z0-9]{1,20}")


def test_envelope_is_cloudevents_1_0_with_the_event_in_it() -> None:
    envelope = to_envelope(EVENT, source="/acme/billing")
    assert envelope == {
        "specversion": "1.0",
        "id": EVENT.id,
        "source": "/acme/billing",
        "type": "PROJECT.CREATED",
        "subject": "Project/p/1",
        "time": "2024-07-01T12:00:00.123456Z",
        "datacontenttype": "application/json",
        "orgid": "org-1",
        "entitytype": "Project",
        "entityid": "p/1",
        "data": {"name": "Apollo ñ", "budget": 1250.5},
    }
    assert all(envelope[name] for name in CLOUDEVENTS_REQUIRED)
    assert all(CLOUDEVENTS_NAME.fullmatch(name) for name in envelope)  # the spec's rule for attribute names


def test_envelope_is_the_same_on_every_attempt_and_encodes_as_utf8_json() -> None:
    later = dataclasses.replace(EVENT, retry_count=7)
    assert encode_envelope(to_envelope(EVENT)) == encode_envelope(to_envelope(later))
    raw = encode_envelope(to_envelope(EVENT))
    assert "Apollo ñ".encode() in raw and json.loads(raw)["data"] == EVENT.payload


def test_a_naive_time_is_read_as_utc_and_other_zones_are_converted() -> None:
    naive = dataclasses.replace(EVENT, created_at=dt.datetime(2024, 1, 2, 3, 4, 5))
    assert to_envelope(naive)["time"] == "2024-01-02T03:04:05Z"
    madrid = dt.timezone(dt.timedelta(hours=2))
    shifted = dataclasses.replace(EVENT, created_at=dt.datetime(2024, 1, 2, 5, 4, 5, tzinfo=madrid))
    assert to_envelope(shifted)["time"] == "2024-01-02T03:04:05Z"


def all_sinks() -> list[Any]:
    """One of each network sink; building them connects to nothing."""
    return [
        WebhookSink("https://example.com/hook", secret=generate_secret(), event_types="PROJECT.*", org_ids=["org-1"]),
        RedisStreamSink("redis://127.0.0.1:1/0", event_types=["PROJECT.*"], org_ids="org-1"),
        NatsJetStreamSink("nats://127.0.0.1:1", event_types=["PROJECT.*"], org_ids=["org-1"]),
        RabbitMQSink("amqp://guest:guest@127.0.0.1:1/%2F", event_types=("PROJECT.*",), org_ids={"org-1"}),
    ]


def test_every_sink_follows_the_protocol_and_routes_by_type_and_org(sqlite_url: str) -> None:
    sinks = all_sinks()
    engine = make_engine(sqlite_url)
    try:
        dispatcher = Dispatcher(engine, sinks)  # accepted as they are
        for sink, route in zip(sinks, dispatcher.routes, strict=True):
            assert isinstance(sink, Sink)
            assert route == Route(sink, ("PROJECT.*",), frozenset({"org-1"}))
            assert route.accepts(EVENT)
            assert not route.accepts(dataclasses.replace(EVENT, org_id="org-2"))
            assert not route.accepts(dataclasses.replace(EVENT, event_type="BUDGET.APPROVED"))
        assert [isinstance(s, BatchSink) for s in sinks] == [False, True, True, False]
        assert [s.name.split()[0] for s in sinks] == ["webhook", "redis-stream", "nats-jetstream", "rabbitmq"]
    finally:
        for sink in sinks:
            sink.close()
        engine.dispose()


@pytest.mark.parametrize(
    ("kwargs", "complaint"),
    [
        ({"event_types": []}, "event_types must be non-empty patterns"),
        ({"event_types": [""]}, "event_types must be non-empty patterns"),
        ({"org_ids": []}, "org_ids must be non-empty org ids"),
        ({"source": "has space"}, "source must be a non-empty URI reference"),
        ({"name": " "}, "name must be a non-empty string"),
    ],
)
def test_routing_and_naming_mistakes_are_refused(kwargs: dict[str, Any], complaint: str) -> None:
    from outbox_admin import ConfigurationError

    with pytest.raises(ConfigurationError) as caught:
        RedisStreamSink("redis://127.0.0.1:1/0", **kwargs)
    assert complaint in str(caught.value)


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "error", "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60
    )


def test_importing_the_package_imports_no_optional_library_and_a_missing_one_names_its_extra() -> None:
    result = run_python(
        """
        import sys
        import outbox_admin, outbox_admin.handlers
        from outbox_admin.handlers import Sink, to_envelope
        from outbox_admin.handlers import WebhookSink, RedisStreamSink, NatsJetStreamSink, RabbitMQSink, load_sinks
        optional = ("httpx", "standardwebhooks", "redis", "nats", "pika")
        print(sorted(m for m in sys.modules if m.split(".")[0] in optional))

        sys.modules["redis"] = None  # what importing a package that is not installed does: ImportError
        try:
            RedisStreamSink("redis://127.0.0.1:6379/0")
        except outbox_admin.ConfigurationError as exc:
            print(exc)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "[]",
        "RedisStreamSink needs the 'redis' package: pip install 'outbox_admin[redis]'",
    ]


def test_unknown_attributes_of_the_handlers_package_raise_attribute_error() -> None:
    import outbox_admin.handlers as handlers

    with pytest.raises(AttributeError, match="has no attribute 'KafkaSink'"):
        handlers.KafkaSink  # noqa: B018
    assert {"WebhookSink", "RedisStreamSink", "NatsJetStreamSink", "RabbitMQSink", "load_sinks"} <= set(dir(handlers))


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://example.com/hook", "https://example.com/hook"),
        ("https://example.com/hook?token=abc#part", "https://example.com/hook?..."),
        ("amqp://app:s3cret@mq:5672/%2F?heartbeat=30", "amqp://app:***@mq:5672/%2F?..."),
        ("redis://:s3cret@cache:6379/0", "redis://:***@cache:6379/0"),
        ("nats://t0ken@n1:4222,nats://n2:4222", "nats://***@n1:4222,nats://n2:4222"),
    ],
)
def test_names_never_show_credentials(url: str, shown: str) -> None:
    from outbox_admin.handlers.sink import redact_url

    assert redact_url(url) == shown

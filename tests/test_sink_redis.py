"""Redis Streams sink against the real Redis, and against a redis-server of the test's own that it kills."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine

from outbox_admin import ConfigurationError, Dispatcher, make_engine
from outbox_admin.handlers import RedisStreamSink

from .services import REDIS_URL, free_port, require_redis
from .sinks_support import NO_WAIT, drain, private_redis, publish_demo, received, rows, wait_until


@pytest.fixture
def engine(sqlite_url: str) -> Iterator[Engine]:
    engine = make_engine(sqlite_url)
    yield engine
    engine.dispose()


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    """A plain client on the shared Redis."""
    require_redis()
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()


@pytest.fixture
def prefix(client: redis.Redis) -> Iterator[str]:
    """A key prefix of this test's own; its streams are deleted afterwards."""
    prefix = f"outbox-test:{uuid.uuid4().hex[:12]}"
    yield prefix
    for key in client.scan_iter(match=f"{prefix}*"):
        client.delete(key)


def entries(client: redis.Redis, stream: str) -> list[dict[str, object]]:
    """Each entry's envelope, checked against its plain fields."""
    out = []
    for _, fields in client.xrange(stream):
        envelope = json.loads(fields[b"envelope"])
        assert fields[b"id"].decode() == envelope["id"]
        assert fields[b"type"].decode() == envelope["type"]
        assert fields[b"orgid"].decode() == envelope["orgid"]
        assert fields[b"subject"].decode() == envelope["subject"]
        out.append(received(envelope))
    return out


def test_events_reach_one_stream_and_streams_per_type(engine: Engine, client: redis.Redis, prefix: str) -> None:
    everything = RedisStreamSink(REDIS_URL, stream=f"{prefix}:all")
    per_type = RedisStreamSink(REDIS_URL, stream=prefix + ":{event_type}", event_types="PROJECT.CREATED")
    published = publish_demo(engine, 6)
    try:
        report = drain(engine, [everything, per_type])
    finally:
        everything.close()
        per_type.close()

    assert report.completed == 6
    assert entries(client, f"{prefix}:all") == published
    assert entries(client, f"{prefix}:PROJECT.CREATED") == [e for e in published if e["type"] == "PROJECT.CREATED"]
    assert not client.exists(f"{prefix}:PROJECT.UPDATED")


def test_maxlen_trims_the_stream(engine: Engine, client: redis.Redis, prefix: str) -> None:
    sink = RedisStreamSink(REDIS_URL, stream=prefix, maxlen=10)
    publish_demo(engine, 300)
    try:
        assert drain(engine, [sink]).completed == 300
    finally:
        sink.close()
    # MAXLEN ~ trims whole macro nodes (100 entries by default), so "about 10" is well under 300.
    assert 10 <= client.xlen(prefix) < 300


def test_delivery_fails_while_redis_is_down_and_succeeds_once_it_is_back(engine: Engine, tmp_path: Path) -> None:
    server = private_redis(tmp_path)
    url = f"redis://{server.url_host}/0"
    sink = RedisStreamSink(url, stream="outbox", timeout=2)
    dispatcher = Dispatcher(engine, [sink], max_attempts=5, backoff=NO_WAIT)
    try:
        server.start()
        [first] = publish_demo(engine, 1, prefix="before")
        assert dispatcher.drain().completed == 1

        server.kill()
        [second] = publish_demo(engine, 1, prefix="during")
        report = dispatcher.dispatch_once()
        assert report.retried == 1
        row = rows(engine)[second["id"]]
        assert row.status == "PENDING" and row.retry_count == 1
        assert row.error_message.startswith(
            f"redis-stream {url} stream=outbox: SinkError: XADD failed: ConnectionError"
        )
        assert "Connection refused" in row.error_message

        server.start()  # same port; this server keeps nothing on disk, so the stream starts empty
        assert dispatcher.drain().completed == 1
        check = redis.Redis.from_url(url)
        assert [received(json.loads(f[b"envelope"])) for _, f in check.xrange("outbox")] == [second]
        check.close()
        assert {r.status for r in rows(engine).values()} == {"COMPLETED"}
        assert first["id"] != second["id"]
    finally:
        sink.close()
        server.kill()


def test_nothing_listening_fails_the_event_with_the_reason(engine: Engine) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    sink = RedisStreamSink(url, timeout=1)
    [event] = publish_demo(engine, 1)
    try:
        assert drain(engine, [sink], max_attempts=2).failed == 1
    finally:
        sink.close()
    row = rows(engine)[event["id"]]
    assert row.status == "FAILED" and row.retry_count == 2
    assert "XADD failed: ConnectionError: Error 111 connecting to" in row.error_message


@pytest.mark.parametrize(
    ("kwargs", "complaint"),
    [
        ({"stream": "outbox:{type}"}, "only {event_type} and {org_id} can be used"),
        ({"stream": "outbox:{"}, "is not a valid template"),
        ({"stream": ""}, "stream must be a non-empty string"),
        ({"maxlen": 0}, "maxlen must be a positive integer"),
        ({"timeout": -1}, "timeout must be a positive number"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, object], complaint: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        RedisStreamSink("redis://127.0.0.1:6379/0", **kwargs)  # type: ignore[arg-type]
    assert complaint in str(caught.value)


def test_url_scheme_is_checked_and_passwords_stay_out_of_the_name() -> None:
    with pytest.raises(ConfigurationError, match="must start with redis:// or rediss:// or unix://"):
        RedisStreamSink("http://127.0.0.1:6379")
    sink = RedisStreamSink("redis://:hunter2@127.0.0.1:6379/0")
    try:
        assert sink.name == "redis-stream redis://:***@127.0.0.1:6379/0 stream=outbox"
    finally:
        sink.close()


@pytest.mark.slow
@pytest.mark.parametrize("breaker", [True, False], ids=["breaker", "no-breaker"])
def test_a_redis_outage_dead_letters_nothing_with_breakers(engine: Engine, tmp_path: Path, breaker: bool) -> None:
    """A private Redis down for 6 s under a running service. Retries are fast here (0.2 s up), so
    without breakers the outage spends every claimed event's 5 attempts; with them, none is FAILED."""
    from outbox_admin import Backoff, DispatcherService
    from outbox_admin.breaker import BreakerPolicy

    server = private_redis(tmp_path)
    url = f"redis://{server.url_host}/0"
    sink = RedisStreamSink(url, stream="outbox", timeout=1)
    dispatcher = Dispatcher(
        engine,
        [sink],
        batch_size=20,
        backoff=Backoff(base=0.2, cap=1),
        breaker=BreakerPolicy(open_seconds=2, max_open_seconds=4) if breaker else None,
    )
    service = DispatcherService(dispatcher, interval_seconds=0.2)
    try:
        server.start()
        publish_demo(engine, 200)
        service.start()
        wait_until(lambda: service.status().totals.completed >= 20, 20, "the first deliveries")
        server.kill()
        outage_ends = time.monotonic() + 6
        while time.monotonic() < outage_ends:
            publish_demo(engine, 5, prefix=f"during-{time.monotonic_ns()}")
            time.sleep(0.1)  # a trickle of new events while Redis is down
        server.start()
        wait_until(
            lambda: {r.status for r in rows(engine).values()} <= {"COMPLETED", "FAILED"}, 60, "the backlog to drain"
        )
        statuses = Counter(r.status for r in rows(engine).values())
        spent = sum(r.retry_count for r in rows(engine).values())
        if breaker:
            assert statuses["FAILED"] == 0, statuses
            assert spent <= 20, f"{spent} attempts spent: only the failures before the breaker opened and probes"
        else:
            assert statuses["FAILED"] > 0, "without breakers the outage dead-letters events"
    finally:
        service.stop()
        dispatcher.close()
        server.kill()

"""Webhook sink against a real HTTP server started by the test: signatures, routing, failures, retries."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator

import pytest
import standardwebhooks
from sqlalchemy import Engine

from outbox_admin import ConfigurationError, Dispatcher, SinkError, make_engine
from outbox_admin.handlers import WebhookSink
from outbox_admin.handlers.base import DeliveredEvent
from outbox_admin.handlers.webhook import generate_secret

from .sinks_support import WebhookReceiver, drain, publish_demo, received, rows, wait_until


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver()
    yield server
    server.close()


@pytest.fixture
def engine(sqlite_url: str) -> Iterator[Engine]:
    engine = make_engine(sqlite_url)
    yield engine
    engine.dispose()


def test_delivers_signed_cloudevents_to_the_routed_events_only(engine: Engine, receiver: WebhookReceiver) -> None:
    secret = generate_secret()
    sink = WebhookSink(receiver.url("/ok"), secret=secret, event_types=["PROJECT.CREATED"], org_ids=["org-1"])
    wanted = publish_demo(engine, 4)  # CREATED, UPDATED, CREATED, UPDATED
    other_org = publish_demo(engine, 1, org_id="org-2", prefix="q")
    try:
        report = drain(engine, [sink])
    finally:
        sink.close()

    assert report.completed == 5 and report.retried == 0
    got = receiver.at("/ok")
    verifier = standardwebhooks.Webhook(secret)
    bodies = [verifier.verify(r.body, r.headers) for r in got]  # raises unless the signature is right
    assert [received(b) for b in bodies] == [e for e in wanted if e["type"] == "PROJECT.CREATED"]
    assert [r.headers["webhook-id"] for r in got] == [b["id"] for b in bodies]
    assert all(r.headers["content-type"].startswith("application/cloudevents+json") for r in got)
    assert other_org[0]["id"] not in {b["id"] for b in bodies}
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(generate_secret()).verify(got[0].body, got[0].headers)
    tampered = got[0].body.replace(b"Project 0", b"Project 9")
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        verifier.verify(tampered, got[0].headers)


def test_http_500_is_retried_then_failed_with_the_status(engine: Engine, receiver: WebhookReceiver) -> None:
    sink = WebhookSink(receiver.url("/fail"), secret=generate_secret())
    [event] = publish_demo(engine, 1)
    try:
        report = drain(engine, [sink], max_attempts=3)
    finally:
        sink.close()

    assert report.failed == 1 and report.retried == 2
    row = rows(engine)[event["id"]]
    assert row.status == "FAILED" and row.retry_count == 3
    assert row.error_message == (
        f"webhook {receiver.url('/fail')}: SinkError: HTTP 500 Internal Server Error: boom: database is down"
    )
    attempts = receiver.at("/fail")
    assert [r.headers["webhook-id"] for r in attempts] == [event["id"]] * 3  # the same id on every retry


def test_a_timeout_is_retried_then_failed_saying_it_timed_out(engine: Engine, receiver: WebhookReceiver) -> None:
    sink = WebhookSink(receiver.url("/slow"), secret=generate_secret(), timeout=0.3)
    [event] = publish_demo(engine, 1)
    try:
        report = drain(engine, [sink], max_attempts=2)
    finally:
        sink.close()

    assert report.failed == 1 and report.retried == 1
    row = rows(engine)[event["id"]]
    assert row.status == "FAILED" and row.retry_count == 2
    assert row.error_message == (
        f"webhook {receiver.url('/slow')}: SinkError: timed out after 0.3 s waiting for the response (total deadline)"
    )
    assert len(receiver.at("/slow")) == 2


def test_redirects_are_not_followed(engine: Engine, receiver: WebhookReceiver) -> None:
    sink = WebhookSink(receiver.url("/redirect"), secret=generate_secret())
    [event] = publish_demo(engine, 1)
    try:
        drain(engine, [sink], max_attempts=1)
    finally:
        sink.close()
    message = rows(engine)[event["id"]].error_message
    assert "HTTP 302 Found to " in message and "redirects are not followed" in message
    assert receiver.at("/ok") == []


def test_a_refused_connection_says_so(engine: Engine) -> None:
    from .services import free_port

    url = f"http://127.0.0.1:{free_port()}/hook"
    sink = WebhookSink(url, secret=generate_secret(), timeout=2)
    [event] = publish_demo(engine, 1)
    try:
        drain(engine, [sink], max_attempts=1)
    finally:
        sink.close()
    message = rows(engine)[event["id"]].error_message
    assert message.startswith(f"webhook {url}: SinkError: request failed: ConnectError: ")
    assert "refused" in message.lower()


@pytest.mark.parametrize(
    ("secret", "complaint"),
    [
        ("not base64 at all!", "must be 'whsec_' followed by base64"),
        ("whsec_c2hvcnQ=", "is 5 bytes; use at least 24"),
        (b"", "is 0 bytes"),
        (None, "must be text or bytes"),
    ],
)
def test_unusable_secrets_are_refused(secret: object, complaint: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        WebhookSink("https://example.com/hook", secret=secret)  # type: ignore[arg-type]
    assert complaint in str(caught.value)


def test_bad_urls_and_timeouts_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="must start with http:// or https://"):
        WebhookSink("ftp://example.com/hook", secret=generate_secret())
    with pytest.raises(ConfigurationError, match="timeout must be a positive number"):
        WebhookSink("https://example.com/hook", secret=generate_secret(), timeout=0)


def test_the_secret_never_shows_in_the_name_or_repr() -> None:
    secret = generate_secret()
    sink = WebhookSink("https://user:pw@example.com/hook", secret=secret)
    try:
        assert sink.name == "webhook https://user:***@example.com/hook"
        assert secret not in repr(sink) and "pw" not in repr(sink)
    finally:
        sink.close()


def test_a_trickling_answer_is_cut_at_the_total_deadline(receiver: WebhookReceiver) -> None:
    """httpx's timeouts are per read: one byte every 0.2 s would hold a call for 8 s without a deadline."""
    sink = WebhookSink(receiver.url("/trickle"), secret=generate_secret(), timeout=1)
    event = DeliveredEvent("e-1", "org-1", "PROJECT.CREATED", "Project", "p-1", {}, 0, dt.datetime.now(dt.UTC))
    started = time.monotonic()
    with pytest.raises(SinkError, match=r"timed out after 1 s .*\(total deadline\)"):
        sink(event)
    assert time.monotonic() - started < 2.0
    assert len(receiver.at("/trickle")) == 1
    # The sink works on: the next call gets a fresh client.
    sink.url = receiver.url("/ok")
    sink(event)
    assert len(receiver.at("/ok")) == 1
    sink.close()


def test_an_answer_slower_than_the_lease_is_delivered_once(engine: Engine, receiver: WebhookReceiver) -> None:
    """The field report: a 3 s lease, two dispatchers, a slow 200: POSTed 5 times and FAILED. Now: once."""
    receiver.late_seconds = 2.5
    publish_demo(engine, 1)
    sink = WebhookSink(receiver.url("/late"), secret=generate_secret(), timeout=10)
    first = Dispatcher(engine, [sink], lease_seconds=1.0, name="first")
    second = Dispatcher(engine, [sink], lease_seconds=1.0, name="second")
    second.recover_every_seconds = 0
    worker = threading.Thread(target=first.dispatch_once)
    worker.start()
    wait_until(lambda: receiver.at("/late"), 10, "the first POST")
    while worker.is_alive():
        assert second.dispatch_once().claimed == 0
        worker.join(0.1)
    assert len(receiver.at("/late")) == 1
    assert [r.status for r in rows(engine).values()] == ["COMPLETED"]
    first.close()

"""Fan-out without duplicates: the delivery ledger, retries of the missing handlers only, replay to one.

Real sinks: a webhook receiver on a real socket that fails each event twice before it
accepts it, beside the Redis Streams sink on the real Redis.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, select
from sqlalchemy import event as sa_event

from outbox_admin import Dispatcher, admin
from outbox_admin.errors import AdminActionError, ConfigurationError
from outbox_admin.handlers.base import DeliveredEvent, RecordingHandler, only
from outbox_admin.handlers.redis_streams import RedisStreamSink
from outbox_admin.handlers.webhook import WebhookSink, generate_secret
from outbox_admin.models import DEFAULT_TABLES

from .services import REDIS_URL, require_redis
from .sinks_support import NO_WAIT, WebhookReceiver, publish_demo, rows

LEDGER = DEFAULT_TABLES.deliveries
TRANSITIONS = DEFAULT_TABLES.transitions


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver()
    yield server
    server.close()


@pytest.fixture
def stream() -> Iterator[str]:
    """A Redis stream of this test's own, deleted afterwards."""
    require_redis()
    name = f"outbox-test:{uuid.uuid4().hex[:12]}"
    yield name
    redis.Redis.from_url(REDIS_URL).delete(name)


def stream_ids(stream: str) -> list[str]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        return [fields[b"id"].decode() for _, fields in client.xrange(stream)]
    finally:
        client.close()


def ledger(engine: Engine) -> dict[tuple[str, str], Any]:
    with engine.connect() as conn:
        return {(r.event_id, r.handler): r for r in conn.execute(select(LEDGER))}


def webhook_posts(receiver: WebhookReceiver, path: str = "/flaky") -> dict[str, int]:
    counts: dict[str, int] = {}
    for request in receiver.at(path):
        event_id = request.json()["id"]
        counts[event_id] = counts.get(event_id, 0) + 1
    return counts


def sinks(receiver: WebhookReceiver, stream: str) -> list[Any]:
    return [
        WebhookSink(receiver.url("/flaky"), secret=generate_secret(), name="webhook"),
        RedisStreamSink(REDIS_URL, stream=stream, name="redis"),
    ]


def drain(engine: Engine, handlers: list[Any]) -> None:
    with Dispatcher(engine, handlers, max_attempts=5, backoff=NO_WAIT, breaker=None) as dispatcher:
        dispatcher.drain(max_seconds=30)


def test_a_flaky_webhook_beside_redis_each_event_reaches_redis_once(
    engine: Engine, receiver: WebhookReceiver, stream: str
) -> None:
    published = [e["id"] for e in publish_demo(engine, 5)]
    drain(engine, sinks(receiver, stream))
    assert sorted(stream_ids(stream)) == sorted(published), "Redis holds exactly one entry per event"
    assert webhook_posts(receiver) == dict.fromkeys(published, 3), "the webhook failed twice, then accepted"
    events = rows(engine)
    assert {events[i].status for i in published} == {"COMPLETED"}
    assert {events[i].retry_count for i in published} == {2}
    found = ledger(engine)
    for event_id in published:
        webhook, redis_row = found[(event_id, "webhook")], found[(event_id, "redis")]
        assert (webhook.attempt, redis_row.attempt) == (3, 1)
        assert webhook.delivered_at is not None and redis_row.delivered_at is not None
        assert webhook.duration_ms is not None and webhook.duration_ms >= 0
        assert "503" in webhook.last_error, "the last error before the delivery is kept"
        assert redis_row.last_error is None


def test_replay_to_the_webhook_only_leaves_redis_alone(engine: Engine, receiver: WebhookReceiver, stream: str) -> None:
    receiver.flaky_failures = 0
    published = [e["id"] for e in publish_demo(engine, 12)]
    drain(engine, sinks(receiver, stream))
    assert len(receiver.at("/flaky")) == 12
    chosen = published[:10]
    plan = admin.plan_action(engine, "replay", chosen, handlers=["webhook"])
    assert plan.count == 10 and set(plan.sample_ids) == set(chosen)
    assert len(receiver.at("/flaky")) == 12, "a dry run sends nothing"
    assert admin.replay(engine, chosen, handlers=["webhook"], actor="alice") == 10
    drain(engine, sinks(receiver, stream))
    assert len(receiver.at("/flaky")) == 22, "ten more POSTs"
    assert webhook_posts(receiver) == {**dict.fromkeys(chosen, 2), **dict.fromkeys(published[10:], 1)}
    assert sorted(stream_ids(stream)) == sorted(published), "Redis unchanged"
    replayed = [r.json()["id"] for r in receiver.at("/flaky")[12:]]
    assert sorted(replayed) == sorted(chosen), "each replay keeps the event's id"
    events = rows(engine)
    assert {events[i].status for i in published} == {"COMPLETED"}
    with engine.connect() as conn:
        history = conn.execute(
            select(TRANSITIONS.c.event_id, TRANSITIONS.c.actor, TRANSITIONS.c.error_message).where(
                TRANSITIONS.c.from_status == "COMPLETED", TRANSITIONS.c.to_status == "PENDING"
            )
        ).all()
    assert sorted(h.event_id for h in history) == sorted(chosen)
    assert {(h.actor, h.error_message) for h in history} == {("admin:alice", "replay to webhook")}
    found = ledger(engine)
    assert all(found[(i, "webhook")].requested_by == "admin:alice" for i in chosen)
    assert all(found[(i, "webhook")].delivered_at is not None for i in chosen)
    assert all(found[(i, "webhook")].requested_at is None for i in published[10:])


def test_two_handlers_with_one_name_are_refused(engine: Engine) -> None:
    with pytest.raises(ConfigurationError, match="two handlers are named 'sink'"):
        Dispatcher(engine, [RecordingHandler(name="sink"), RecordingHandler(name="sink")])
    with pytest.raises(ConfigurationError, match="not '\\*'"):
        Dispatcher(engine, [RecordingHandler(name="*")])


class Flaky:
    """Fails the events whose entity id is in ``failing``, while they stay there."""

    def __init__(self, name: str, failing: set[str] | None = None) -> None:
        self.name = name
        self.failing = failing or set()
        self.seen: list[str] = []

    def __call__(self, event: DeliveredEvent) -> None:
        self.seen.append(event.id)
        if event.entity_id in self.failing:
            raise ConnectionError(f"{self.name} refused {event.entity_id}")


def test_a_retry_runs_only_the_handlers_still_missing_and_names_them(engine: Engine) -> None:
    published = [e["id"] for e in publish_demo(engine, 3)]
    good, bad, worse = Flaky("good"), Flaky("bad", {"p-1"}), Flaky("worse", {"p-1", "p-2"})
    dispatcher = Dispatcher(engine, [good, bad, worse], max_attempts=5, backoff=NO_WAIT, breaker=None)
    dispatcher.dispatch_once()
    events = rows(engine)
    assert events[published[0]].status == "COMPLETED"
    assert events[published[1]].error_message == (
        "bad: ConnectionError: bad refused p-1; worse: ConnectionError: worse refused p-1"
    )
    assert events[published[2]].error_message == "worse: ConnectionError: worse refused p-2"
    bad.failing.clear()
    worse.failing.clear()
    dispatcher.dispatch_once()
    assert {r.status for r in rows(engine).values()} == {"COMPLETED"}
    assert sorted(good.seen) == sorted(published), "the handler that succeeded never ran again"
    assert sorted(bad.seen) == sorted([*published, published[1]])
    assert sorted(worse.seen) == sorted([*published, published[1], published[2]])


def test_a_requeued_dead_letter_runs_only_the_failed_handler(engine: Engine) -> None:
    (event_id,) = [e["id"] for e in publish_demo(engine, 1)]
    good, bad = Flaky("good"), Flaky("bad", {"p-0"})
    Dispatcher(engine, [good, bad], max_attempts=2, backoff=NO_WAIT, breaker=None).drain(max_seconds=10)
    assert rows(engine)[event_id].status == "FAILED"
    assert (len(good.seen), len(bad.seen)) == (1, 2)
    bad.failing.clear()
    admin.requeue(engine, event_id, reset_attempts=True)
    Dispatcher(engine, [good, bad], backoff=NO_WAIT, breaker=None).drain(max_seconds=10)
    assert rows(engine)[event_id].status == "COMPLETED"
    assert (len(good.seen), len(bad.seen)) == (1, 3)


def test_replaying_a_dead_letter_to_another_handler_leaves_it_failed(engine: Engine) -> None:
    (event_id,) = [e["id"] for e in publish_demo(engine, 1)]
    good, bad = Flaky("good"), Flaky("bad", {"p-0"})
    Dispatcher(engine, [good, bad], max_attempts=1, breaker=None).dispatch_once()
    assert admin.replay(engine, event_id, handlers="good") == 1
    Dispatcher(engine, [good, bad], breaker=None).dispatch_once()
    event = rows(engine)[event_id]
    assert (event.status, len(good.seen), len(bad.seen)) == ("FAILED", 2, 1)
    assert event.error_message == "bad: ConnectionError: bad refused p-0", "the failing handler is still named"
    with engine.connect() as conn:
        note = conn.execute(
            select(TRANSITIONS.c.error_message).where(TRANSITIONS.c.event_id == event_id).order_by(TRANSITIONS.c.id)
        ).all()[-1][0]
    assert note == "replay delivered; still not delivered to bad (requeue it to retry those)"


def test_a_replay_to_a_handler_the_dispatcher_lacks_fails_visibly(engine: Engine) -> None:
    (event_id,) = [e["id"] for e in publish_demo(engine, 1)]
    good = Flaky("good")
    Dispatcher(engine, [good], breaker=None).dispatch_once()
    admin.replay(engine, event_id, handlers=["gone"])
    Dispatcher(engine, [good], max_attempts=1, breaker=None).dispatch_once()
    event = rows(engine)[event_id]
    assert event.status == "FAILED"
    assert "a replay asked for handler 'gone'" in event.error_message
    assert len(good.seen) == 1


def test_replay_refuses_unfinished_events_and_bad_names(engine: Engine) -> None:
    ids = [e["id"] for e in publish_demo(engine, 2)]
    with pytest.raises(AdminActionError, match="cannot replay"):
        admin.replay(engine, ids, handlers=["webhook"])
    with pytest.raises(AdminActionError, match="at least one handler"):
        admin.replay(engine, ids, handlers=[])
    with pytest.raises(AdminActionError, match="not a handler's name"):
        admin.replay(engine, ids, handlers=["*"])
    assert {r.status for r in rows(engine).values()} == {"PENDING"}
    assert ledger(engine) == {}


def test_replay_by_filter_moves_only_finished_events_of_the_filter(engine: Engine) -> None:
    publish_demo(engine, 4)
    recorder = RecordingHandler(name="rec")
    Dispatcher(engine, [only("PROJECT.CREATED", recorder)], breaker=None).dispatch_once()
    publish_demo(engine, 2, prefix="late")  # PENDING: a filter replay leaves them alone
    assert admin.plan_action(engine, "replay", event_type="PROJECT.CREATED", handlers=["rec"]).count == 2
    assert admin.replay(engine, event_type="PROJECT.CREATED", handlers=["rec"]) == 2
    Dispatcher(engine, [only("PROJECT.CREATED", recorder)], breaker=None).dispatch_once()
    created = [i for i, r in rows(engine).items() if r.event_type == "PROJECT.CREATED"]
    replayed = [i for i in created if rows(engine)[i].entity_id.startswith("p-")]
    assert sorted(recorder.ids) == sorted(created + replayed), "the replayed twice, the late one once"


def test_a_database_at_0005_upgrades_and_its_delivered_events_count_for_every_handler(
    db_url: str, request: pytest.FixtureRequest
) -> None:
    from sqlalchemy import text

    from outbox_admin import init_db, make_engine
    from outbox_admin.migrate import upgrade

    url = (
        request.getfixturevalue("empty_postgres_url")
        if db_url.startswith("postgresql")
        else db_url.replace("outbox.db", "at_0005.db")
    )
    engine = make_engine(url)
    try:
        upgrade(engine, revision="0005")
        done, dead, waiting = (e["id"] for e in publish_demo(engine, 3))
        with engine.begin() as conn:  # dispatched by an older version: no ledger
            conn.execute(
                text(
                    "UPDATE \"OutboxEvent\" SET status = 'COMPLETED', processed_at = created_at, retry_count = 1 "
                    "WHERE id = :id"
                ),
                {"id": done},
            )
            conn.execute(
                text("UPDATE \"OutboxEvent\" SET status = 'FAILED', retry_count = 3 WHERE id = :id"), {"id": dead}
            )
            conn.execute(text('UPDATE "OutboxEvent" SET retry_count = 1 WHERE id = :id'), {"id": waiting})
        init_db(engine)
        found = ledger(engine)
        assert list(found) == [(done, "*")], "only the delivered event counts as delivered, to every handler"
        assert found[(done, "*")].attempt == 2 and found[(done, "*")].delivered_at is not None
        a, b = Flaky("a"), Flaky("b")
        Dispatcher(engine, [a, b], breaker=None).dispatch_once()  # the retry of `waiting`: nothing recorded
        assert (a.seen, b.seen) == ([waiting], [waiting])
        admin.replay(engine, done, handlers=["b"])
        admin.requeue(engine, dead)
        Dispatcher(engine, [a, b], breaker=None).dispatch_once()
        assert sorted(a.seen) == sorted([waiting, dead]), "the old delivered event went to the replayed handler only"
        assert sorted(b.seen) == sorted([waiting, dead, done])
        assert {r.status for r in rows(engine).values()} == {"COMPLETED"}
    finally:
        engine.dispose()


class Batch:
    """A batch handler that accepts everything and records what it got."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.seen: list[str] = []

    def handle_batch(self, events: list[DeliveredEvent]) -> dict[str, BaseException]:
        self.seen.extend(e.id for e in events)
        return {}


def test_a_stop_mid_batch_keeps_the_deliveries_already_made(engine: Engine) -> None:
    published = [e["id"] for e in publish_demo(engine, 5)]
    batch, single = Batch("batch"), Flaky("single")
    dispatcher = Dispatcher(engine, [], breaker=None)

    def stop_after_two(event: DeliveredEvent) -> None:
        single(event)
        if len(single.seen) == 2:
            dispatcher.request_stop()

    dispatcher.routes = Dispatcher(engine, [batch, only("*", stop_after_two, name="single")]).routes
    report = dispatcher.dispatch_once()
    assert (report.completed, report.released) == (2, 3)
    found = ledger(engine)
    assert all(found[(i, "batch")].delivered_at is not None for i in published), "the batch handler had them all"
    assert {i for i in published if (i, "single") in found} == set(published[:2])
    dispatcher.clear_stop()
    dispatcher.drain(max_seconds=10)
    assert sorted(batch.seen) == sorted(published), "the released events did not go to the batch handler again"
    assert sorted(single.seen) == sorted(published)
    assert {r.status for r in rows(engine).values()} == {"COMPLETED"}


def test_a_batch_of_first_tries_skips_the_ledger_read_and_a_retry_does_not(engine: Engine) -> None:
    ledger_name = DEFAULT_TABLES.deliveries.name
    reads: list[str] = []

    def count_reads(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if ledger_name in statement and statement.lstrip().upper().startswith("SELECT"):
            reads.append(statement)

    sa_event.listen(engine, "before_cursor_execute", count_reads)
    try:
        published = [e["id"] for e in publish_demo(engine, 3)]
        good, bad = Flaky("good"), Flaky("bad", {"p-1"})
        dispatcher = Dispatcher(engine, [good, bad], max_attempts=5, backoff=NO_WAIT, breaker=None)
        dispatcher.dispatch_once()
        assert reads == [], "first tries cannot have ledger rows"
        bad.failing.clear()
        dispatcher.dispatch_once()
        assert len(reads) == 1, "the retried event's ledger is read"
        assert sorted(good.seen) == sorted(published), "and its delivered handler is not run again"
    finally:
        sa_event.remove(engine, "before_cursor_execute", count_reads)


def test_a_dispatcher_that_lost_its_claim_records_no_delivery(engine: Engine) -> None:
    import datetime as dt

    (event_id,) = [e["id"] for e in publish_demo(engine, 1)]
    now = dt.datetime.now(dt.UTC)
    late = Flaky("late")
    rescuer = Dispatcher(
        engine, [Flaky("late")], name="B", lease_seconds=60, clock=lambda: now + dt.timedelta(minutes=2)
    )

    def stall(event: DeliveredEvent) -> None:
        late(event)
        rescuer.drain(max_seconds=10)  # A's lease expires meanwhile: B recovers and delivers

    stalled = Dispatcher(engine, [only("*", stall, name="late")], name="A", lease_seconds=60, clock=lambda: now)
    assert stalled.dispatch_once().lost == 1
    found = ledger(engine)
    assert list(found) == [(event_id, "late")]
    assert found[(event_id, "late")].attempt == 1, "only B's delivery is recorded"
    assert found[(event_id, "late")].delivered_at == now + dt.timedelta(minutes=2), "at B's clock"


def test_a_ledger_row_written_during_the_claim_is_updated_not_a_failed_finish(engine: Engine) -> None:
    """A batch's first tries are inserted without a conflict check (PostgreSQL); a row that appears for one
    of them meanwhile (nothing in the library writes one, a person by hand could) must not lose the finish."""
    from sqlalchemy import insert

    (event_id,) = [e["id"] for e in publish_demo(engine, 1)]
    seen = Flaky("hand")

    def write_a_row_first(event: DeliveredEvent) -> None:
        seen(event)
        with engine.begin() as conn:
            conn.execute(insert(LEDGER).values(event_id=event.id, handler="hand", attempt=5, last_error="by hand"))

    report = Dispatcher(engine, [only("*", write_a_row_first, name="hand")], breaker=None).dispatch_once()
    assert (report.completed, report.lost) == (1, 0)
    assert rows(engine)[event_id].status == "COMPLETED"
    row = ledger(engine)[(event_id, "hand")]
    assert (row.attempt, row.delivered_at is not None) == (6, True), "the row written meanwhile was updated"

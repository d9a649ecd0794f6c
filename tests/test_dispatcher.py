"""The dispatcher's state machine, on SQLite and PostgreSQL, with an injectable clock."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Sequence

import pytest
from sqlalchemy import Engine, select, text

from outbox_admin import (
    Backoff,
    ConfigurationError,
    Dispatcher,
    DispatchReport,
    EventStatus,
    MessageBus,
    publish_outbox_event,
)
from outbox_admin.bus import BusMessage, default_bus
from outbox_admin.handlers import DeliveredEvent, MessageBusHandler, RecordingHandler, only
from outbox_admin.models import DEFAULT_TABLES

EVENTS = DEFAULT_TABLES.events
TRANSITIONS = DEFAULT_TABLES.transitions


class FakeClock:
    """A clock the test moves by hand; starts at the real time so published events are due."""

    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


def publish(
    engine: Engine, count: int = 1, *, entity: str = "p", event_type: str = "PROJECT.CREATED", org_id: str = "org-1"
) -> list[str]:
    with engine.begin() as conn:
        return [
            publish_outbox_event(
                conn,
                org_id=org_id,
                event_type=event_type,
                entity_type="Project",
                entity_id=f"{entity}-{i}" if count > 1 else entity,
                payload={"n": i},
            ).id
            for i in range(count)
        ]


def row(engine: Engine, event_id: str):
    with engine.connect() as conn:
        return conn.execute(select(EVENTS).where(EVENTS.c.id == event_id)).one()


def history(engine: Engine, event_id: str) -> list[tuple]:
    with engine.connect() as conn:
        return [
            (r.from_status, r.to_status, r.attempt, r.error_message)
            for r in conn.execute(
                select(TRANSITIONS).where(TRANSITIONS.c.event_id == event_id).order_by(TRANSITIONS.c.id)
            )
        ]


class Flaky:
    """Fails every delivery of the entity ids it is given."""

    name = "flaky"

    def __init__(self, failing: Sequence[str] = ("p",)) -> None:
        self.failing = set(failing)
        self.calls = 0

    def __call__(self, event: DeliveredEvent) -> None:
        self.calls += 1
        if event.entity_id in self.failing:
            raise ValueError(f"boom on attempt {event.attempt}")


def test_happy_path_completes_with_history(engine: Engine) -> None:
    (event_id,) = publish(engine)
    recorder = RecordingHandler()
    dispatcher = Dispatcher(engine, [recorder], name="d1")
    report = dispatcher.dispatch_once()
    assert (report.claimed, report.completed, report.retried, report.failed) == (1, 1, 0, 0)
    stored = row(engine, event_id)
    assert stored.status == "COMPLETED"
    assert stored.processed_at is not None and stored.processed_at >= stored.created_at
    assert (stored.locked_by, stored.locked_until, stored.retry_count) == (None, None, 0)
    assert recorder.ids == [event_id]
    delivered = recorder.events[0]
    assert (delivered.event_type, delivered.payload, delivered.retry_count, delivered.attempt) == (
        "PROJECT.CREATED",
        {"n": 0},
        0,
        1,
    )
    assert history(engine, event_id) == [
        (None, "PENDING", 0, None),
        ("PENDING", "PROCESSING", 1, None),
        ("PROCESSING", "COMPLETED", 1, None),
    ]
    with engine.connect() as conn:
        actors = conn.execute(select(TRANSITIONS.c.actor).order_by(TRANSITIONS.c.id)).scalars().all()
    assert actors == ["publisher", "d1", "d1"]


def test_retries_back_off_then_fail(engine: Engine) -> None:
    (event_id,) = publish(engine)
    clock = FakeClock()
    flaky = Flaky()
    dispatcher = Dispatcher(
        engine, [flaky], max_attempts=3, clock=clock, backoff=Backoff(base=10, factor=2, cap=1000, jitter=0)
    )
    first = dispatcher.dispatch_once()
    assert (first.claimed, first.retried) == (1, 1)
    stored = row(engine, event_id)
    assert (stored.status, stored.retry_count) == ("PENDING", 1)
    assert stored.error_message == "flaky: ValueError: boom on attempt 1"
    assert stored.available_at == clock.now + dt.timedelta(seconds=10)

    assert dispatcher.dispatch_once().claimed == 0  # not due yet
    clock.advance(9.9)
    assert dispatcher.dispatch_once().claimed == 0
    clock.advance(0.2)
    assert dispatcher.dispatch_once().retried == 1
    assert row(engine, event_id).available_at == clock.now + dt.timedelta(seconds=20)  # doubled
    clock.advance(20)
    third = dispatcher.dispatch_once()
    assert (third.claimed, third.failed) == (1, 1)
    stored = row(engine, event_id)
    assert (stored.status, stored.retry_count) == ("FAILED", 3)
    assert flaky.calls == 3
    clock.advance(10_000)
    assert dispatcher.dispatch_once().claimed == 0  # dead letters wait for a person
    assert history(engine, event_id) == [
        (None, "PENDING", 0, None),
        ("PENDING", "PROCESSING", 1, None),
        ("PROCESSING", "PENDING", 1, "flaky: ValueError: boom on attempt 1"),
        ("PENDING", "PROCESSING", 2, None),
        ("PROCESSING", "PENDING", 2, "flaky: ValueError: boom on attempt 2"),
        ("PENDING", "PROCESSING", 3, None),
        ("PROCESSING", "FAILED", 3, "flaky: ValueError: boom on attempt 3"),
    ]


def test_retry_forever_when_max_attempts_is_none(engine: Engine) -> None:
    (event_id,) = publish(engine)
    clock = FakeClock()
    dispatcher = Dispatcher(engine, [Flaky()], max_attempts=None, clock=clock, backoff=Backoff(base=0, jitter=0))
    for _ in range(12):
        assert dispatcher.dispatch_once().retried == 1
    stored = row(engine, event_id)
    assert (stored.status, stored.retry_count) == ("PENDING", 12)


def test_backoff_is_capped_and_jittered() -> None:
    import random

    backoff = Backoff(base=1, factor=2, cap=30, jitter=0.5, rng=random.Random(7))
    delays = [backoff.delay(n) for n in range(1, 12)]
    assert all(0.5 <= d <= 1 for d in delays[:1])
    assert all(15 <= d <= 30 for d in delays[6:])
    assert len(set(delays)) == len(delays)  # jitter spreads retries
    assert Backoff(base=1, jitter=0).delay(3) == 4
    with pytest.raises(ConfigurationError):
        Backoff(jitter=2)


def test_only_failing_events_retry_and_others_complete(engine: Engine) -> None:
    ids = publish(engine, 5)
    dispatcher = Dispatcher(engine, [Flaky(failing=["p-1", "p-3"])], backoff=Backoff(base=60, jitter=0))
    report = dispatcher.dispatch_once()
    assert (report.claimed, report.completed, report.retried) == (5, 3, 2)
    assert [row(engine, i).status for i in ids] == ["COMPLETED", "PENDING", "COMPLETED", "PENDING", "COMPLETED"]


def test_oldest_first_and_batch_size(engine: Engine) -> None:
    ids = publish(engine, 7)
    recorder = RecordingHandler()
    dispatcher = Dispatcher(engine, [recorder], batch_size=3)
    assert dispatcher.dispatch_once().claimed == 3
    assert recorder.ids == ids[:3]
    report = dispatcher.drain()
    assert (report.claimed, report.completed) == (4, 4)
    assert recorder.ids == ids
    assert report.ticks == 3  # 3 + 1 events, then an empty tick that ends the drain


def test_default_handlers_log_the_payload_and_emit_on_the_bus(engine: Engine, caplog) -> None:
    (event_id,) = publish(engine)
    seen: list[BusMessage] = []
    unsubscribe = default_bus.subscribe("PROJECT.*", seen.append)
    try:
        with caplog.at_level(logging.INFO, logger="outbox_admin.audit"):
            assert Dispatcher(engine).dispatch_once().completed == 1
    finally:
        unsubscribe()
    assert any(event_id in r.getMessage() and '"n":0' in r.getMessage() for r in caplog.records)
    assert [(m.event_type, m.payload, m.event.id) for m in seen] == [("PROJECT.CREATED", {"n": 0}, event_id)]


def test_a_failing_bus_subscriber_makes_the_delivery_retry(engine: Engine) -> None:
    (event_id,) = publish(engine)
    bus = MessageBus()
    bus.subscribe("*", lambda m: 1 / 0)
    assert Dispatcher(engine, [MessageBusHandler(bus)]).dispatch_once().retried == 1
    assert "message-bus: ExceptionGroup" in row(engine, event_id).error_message
    assert "ZeroDivisionError" in row(engine, event_id).error_message


def test_handlers_limited_by_type_and_org(engine: Engine) -> None:
    created = publish(engine, 2, event_type="PROJECT.CREATED")
    updated = publish(engine, 1, entity="u", event_type="PROJECT.UPDATED", org_id="org-2")
    projects_created = RecordingHandler(event_types=["PROJECT.CREATED"], name="created")
    everything = RecordingHandler(name="everything")
    org_two = RecordingHandler(name="org-two")
    dispatcher = Dispatcher(
        engine, [projects_created, only("PROJECT.*", everything), only("*", org_two, org_ids=["org-2"])]
    )
    assert dispatcher.drain().completed == 3
    assert projects_created.ids == created
    assert everything.ids == created + updated
    assert org_two.ids == updated


class HalfBatch:
    """A batch handler that fails every other event, and records what it was given."""

    name = "half"

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def handle_batch(self, events: Sequence[DeliveredEvent]) -> dict[str, BaseException]:
        self.batches.append([e.id for e in events])
        return {e.id: RuntimeError("refused") for e in events[1::2]}


def test_batch_handlers_report_failures_per_event(engine: Engine) -> None:
    ids = publish(engine, 4)
    batch = HalfBatch()
    after = RecordingHandler()
    report = Dispatcher(engine, [batch, after], backoff=Backoff(base=60, jitter=0)).dispatch_once()
    assert batch.batches == [ids]
    assert (report.completed, report.retried) == (2, 2)
    assert after.ids == ids  # handlers are independent: one failing does not hold back the others
    assert row(engine, ids[1]).error_message == "half: RuntimeError: refused"


def test_a_batch_handler_that_raises_fails_the_whole_batch(engine: Engine) -> None:
    publish(engine, 3)

    class Broken:
        name = "broken"

        def handle_batch(self, events):
            raise ConnectionError("broker down")

    report = Dispatcher(engine, [Broken()], backoff=Backoff(base=60, jitter=0)).dispatch_once()
    assert report.retried == 3


def test_error_messages_are_bounded(engine: Engine) -> None:
    (event_id,) = publish(engine)

    def verbose(event: DeliveredEvent) -> None:
        raise ValueError("x" * 10_000)

    Dispatcher(engine, [verbose]).dispatch_once()
    message = row(engine, event_id).error_message
    assert len(message) == 2000 and message.startswith("test_error_messages_are_bounded.<locals>.verbose: ValueError")


def test_stop_releases_the_unhandled_rest_of_the_batch(engine: Engine) -> None:
    ids = publish(engine, 5)
    handled: list[str] = []
    dispatcher = Dispatcher(engine, [])

    def stop_after_two(event: DeliveredEvent) -> None:
        handled.append(event.id)
        if len(handled) == 2:
            dispatcher.request_stop()

    dispatcher.routes = Dispatcher(engine, [stop_after_two]).routes
    report = dispatcher.dispatch_once()
    assert (report.claimed, report.completed, report.released) == (5, 2, 3)
    assert handled == ids[:2]
    for event_id in ids[2:]:
        stored = row(engine, event_id)
        assert (stored.status, stored.retry_count, stored.locked_by) == ("PENDING", 0, None)
        assert history(engine, event_id)[-1][:2] == ("PROCESSING", "PENDING")
    assert dispatcher.drain().claimed == 0  # a stopping dispatcher claims nothing more
    dispatcher.clear_stop()
    assert dispatcher.drain().completed == 3


def test_expired_lease_is_recovered_and_the_late_dispatcher_cannot_overwrite(engine: Engine) -> None:
    """A claims, stalls past its lease; B recovers and completes; A's late write is refused."""
    (event_id,) = publish(engine)
    clock = FakeClock()
    b_clock = FakeClock()
    b_clock.now = clock.now + dt.timedelta(seconds=120)
    b_report: list[DispatchReport] = []
    b = Dispatcher(engine, [RecordingHandler()], name="B", lease_seconds=60, clock=b_clock)

    def stall_then_let_b_run(event: DeliveredEvent) -> None:
        b_report.append(b.drain())

    a = Dispatcher(engine, [stall_then_let_b_run], name="A", lease_seconds=60, clock=clock)
    report = a.dispatch_once()
    assert (report.claimed, report.completed, report.lost) == (1, 0, 1)
    assert (b_report[0].recovered, b_report[0].completed) == (1, 1)
    stored = row(engine, event_id)
    assert (stored.status, stored.retry_count) == ("COMPLETED", 1)
    assert "lease expired: dispatcher A stopped renewing it before finishing" in stored.error_message
    steps = history(engine, event_id)
    assert [s[:2] for s in steps] == [
        (None, "PENDING"),
        ("PENDING", "PROCESSING"),
        ("PROCESSING", "PENDING"),
        ("PENDING", "PROCESSING"),
        ("PROCESSING", "COMPLETED"),
    ]


def test_a_finish_writes_the_events_it_holds_and_reports_the_one_taken_from_it(engine: Engine) -> None:
    """Of a batch of three, one event is taken over by another holder while the handlers run: the finish
    writes the other two (status, history, ledger) and reports that one lost, leaving it untouched."""
    ids = publish(engine, 3)
    taken = ids[1]

    def take_over_the_second(event: DeliveredEvent) -> None:
        if event.id == ids[0]:
            with engine.begin() as conn:
                conn.execute(EVENTS.update().where(EVENTS.c.id == taken).values(locked_by="someone-else"))

    report = Dispatcher(engine, [take_over_the_second], name="A").dispatch_once()
    assert (report.claimed, report.completed, report.lost) == (3, 2, 1)
    assert [row(engine, i).status for i in ids] == ["COMPLETED", "PROCESSING", "COMPLETED"]
    assert row(engine, taken).locked_by == "someone-else"
    assert history(engine, taken)[-1][:2] == ("PENDING", "PROCESSING")
    ledger = DEFAULT_TABLES.deliveries
    with engine.connect() as conn:
        recorded = set(conn.execute(select(ledger.c.event_id)).scalars())
    assert recorded == {ids[0], ids[2]}


def test_expired_lease_without_attempts_left_is_failed(engine: Engine) -> None:
    (event_id,) = publish(engine)
    clock = FakeClock()
    stuck = Dispatcher(engine, [], max_attempts=1, lease_seconds=5, clock=clock)
    stuck._claim()  # claims and never finishes, like a crashed process
    assert row(engine, event_id).status == "PROCESSING"
    clock.advance(4)
    assert stuck.recover_expired_leases() == 0
    clock.advance(2)
    assert stuck.recover_expired_leases() == 1
    stored = row(engine, event_id)
    assert (stored.status, stored.retry_count, stored.locked_until) == ("FAILED", 1, None)


def test_leases_use_the_database_clock(engine: Engine) -> None:
    publish(engine)
    dispatcher = Dispatcher(engine, [], lease_seconds=45)
    dispatcher._claim()
    with engine.connect() as conn:
        locked_until = conn.execute(select(EVENTS.c.locked_until)).scalar_one()
        from outbox_admin.db import db_now

        db_time = conn.execute(select(db_now())).scalar_one()
    assert dt.timedelta(seconds=43) < locked_until - db_time <= dt.timedelta(seconds=45)


def test_entity_ordering_holds_back_newer_events(engine: Engine) -> None:
    with engine.begin() as conn:
        x1, x2 = (
            publish_outbox_event(
                conn, org_id="o", event_type="PROJECT.UPDATED", entity_type="Project", entity_id="X", payload={"v": v}
            ).id
            for v in (1, 2)
        )
        y1 = publish_outbox_event(
            conn, org_id="o", event_type="PROJECT.UPDATED", entity_type="Project", entity_id="Y"
        ).id
    clock = FakeClock()
    recorder = RecordingHandler()

    def fail_x1_once(event: DeliveredEvent) -> None:
        if event.id == x1 and event.attempt == 1:
            raise ValueError("not yet")
        recorder(event)

    dispatcher = Dispatcher(engine, [fail_x1_once], ordering="entity", clock=clock, backoff=Backoff(base=30, jitter=0))
    first = dispatcher.drain()
    assert recorder.ids == [y1]  # x2 waits behind the retrying x1
    assert (first.retried, first.completed) == (1, 1)
    clock.advance(31)
    dispatcher.drain()
    assert recorder.ids == [y1, x1, x2]
    unordered = RecordingHandler()
    with engine.begin() as conn:
        conn.execute(text('DELETE FROM "OutboxEventTransition"'))
        conn.execute(text('DELETE FROM "OutboxEvent"'))
    publish(engine, 1, entity="Z")
    assert Dispatcher(engine, [unordered]).drain().completed == 1


def test_bad_configuration_is_refused(engine: Engine) -> None:
    for kwargs in ({"batch_size": 0}, {"max_attempts": 0}, {"lease_seconds": 0}, {"ordering": "global"}):
        with pytest.raises(ConfigurationError):
            Dispatcher(engine, [], **kwargs)


def test_a_sqlite_engine_not_made_by_make_engine_is_refused(tmp_path) -> None:
    from sqlalchemy import create_engine

    raw = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(ConfigurationError, match="make_engine"):
        Dispatcher(raw)
    raw.dispose()


def test_reports_add_up() -> None:
    total = DispatchReport(claimed=2, completed=1, ticks=1) + DispatchReport(claimed=3, failed=1, ticks=1)
    assert (total.claimed, total.completed, total.failed, total.ticks) == (5, 1, 1, 2)
    assert total.as_dict()["claimed"] == 5


def test_many_threads_publishing_while_a_dispatcher_drains(engine: Engine) -> None:
    recorder = RecordingHandler()
    dispatcher = Dispatcher(engine, [recorder], batch_size=20)
    stop = threading.Event()

    def keep_draining() -> None:
        while not stop.is_set():
            dispatcher.drain(max_seconds=1)

    worker = threading.Thread(target=keep_draining)
    worker.start()
    try:
        published = [i for _ in range(5) for i in publish(engine, 40)]
    finally:
        stop.set()
        worker.join()
    dispatcher.drain()
    assert sorted(recorder.ids) == sorted(published)
    with engine.connect() as conn:
        statuses = conn.execute(select(EVENTS.c.status).distinct()).scalars().all()
    assert statuses == [EventStatus.COMPLETED.value]


class _ClosingSink:
    def __init__(self, name: str, log_to: list[str], fail: bool = False) -> None:
        self.name, self.log_to, self.fail = name, log_to, fail

    def __call__(self, event: DeliveredEvent) -> None:
        pass

    def close(self) -> None:
        self.log_to.append(self.name)
        if self.fail:
            raise ConnectionError(f"{self.name} is gone")


def test_close_closes_every_handler_once_even_when_one_fails(engine: Engine, caplog) -> None:
    closed: list[str] = []
    broken = _ClosingSink("broken", closed, fail=True)
    shared = _ClosingSink("shared", closed)
    # One handler on two routes (each with its own name): closed once.
    handlers = [broken, shared, only("PROJECT.*", shared, name="shared-projects"), lambda e: None]
    with caplog.at_level(logging.ERROR, logger="outbox_admin.dispatcher"), Dispatcher(engine, handlers):
        pass
    assert closed == ["broken", "shared"]
    assert "closing handler broken failed" in caplog.text


def test_two_handlers_with_one_name_are_refused(engine: Engine) -> None:
    """A handler's name is how its breaker, its errors and (issue 15) its deliveries are recorded."""
    with pytest.raises(ConfigurationError, match="two handlers are named 'recording'"):
        Dispatcher(engine, [RecordingHandler(), RecordingHandler()])
    shared = RecordingHandler()
    with pytest.raises(ConfigurationError, match="two handlers are named 'recording'"):
        Dispatcher(engine, [shared, only("PROJECT.*", shared)])
    dispatcher = Dispatcher(engine, [shared, only("PROJECT.*", shared, name="projects")])
    assert [route.name for route in dispatcher.routes] == ["recording", "projects"]
    dispatcher.close()

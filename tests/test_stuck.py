"""Stuck and scheduled work: expired leases (filter, summary, ``admin.recover_expired``), events waiting on a
backoff (filter, ``admin.retry_now``), and the wake-ups that make requeue, retry now and recover reach a
running dispatcher at once; on SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from sqlalchemy import Engine, insert, select, update

from outbox_admin import AdminActionError, Dispatcher, DispatcherService, analytics, make_engine
from outbox_admin.admin import RETRY_NOW_NOTE, plan_action, recover_expired, requeue, retry_now
from outbox_admin.errors import FilterError
from outbox_admin.filters import EventFilter, filter_from_query, filter_to_query
from outbox_admin.handlers import DeliveredEvent
from outbox_admin.models import DEFAULT_TABLES
from outbox_admin.sql.shared import EXPIRED_MESSAGE
from outbox_admin.wakeup import WakeSignal, wake_key, wake_signal

EVENTS = DEFAULT_TABLES.events
TRANSITIONS = DEFAULT_TABLES.transitions
EXPIRED_TEXT = EXPIRED_MESSAGE.split("' || ")[0].strip("'")  # "lease expired: dispatcher "


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def row(event_id: str, status: str, **extra: Any) -> dict[str, Any]:
    created = utcnow() - dt.timedelta(minutes=30)
    values: dict[str, Any] = {
        "id": event_id,
        "org_id": "org-1",
        "event_type": "PROJECT.CREATED",
        "entity_type": "Project",
        "entity_id": event_id,
        "payload": {"id": event_id},
        "status": status,
        "retry_count": 0,
        "error_message": None,
        "created_at": created,
        "processed_at": None,
        "available_at": created,
        "locked_by": None,
        "locked_until": None,
        "idempotency_key": None,
    }
    values.update(extra)
    return values


def held(event_id: str, by: str, minutes: float, **extra: Any) -> dict[str, Any]:
    """A PROCESSING event held by ``by``, its lease ending ``minutes`` from now (negative: expired)."""
    return row(event_id, "PROCESSING", locked_by=by, locked_until=utcnow() + dt.timedelta(minutes=minutes), **extra)


def waiting(event_id: str, minutes: float, **extra: Any) -> dict[str, Any]:
    """A PENDING event due ``minutes`` from now (positive: waiting on a backoff)."""
    return row(event_id, "PENDING", available_at=utcnow() + dt.timedelta(minutes=minutes), **extra)


def seed(engine: Engine, rows: Sequence[dict[str, Any]]) -> None:
    """Insert events directly (no publisher: nothing wakes a dispatcher)."""
    with engine.begin() as conn:
        conn.execute(insert(EVENTS), list(rows))


def events(engine: Engine) -> dict[str, dict[str, Any]]:
    with engine.connect() as conn:
        return {r.id: dict(r._mapping) for r in conn.execute(select(EVENTS))}


def history(engine: Engine, event_id: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(select(TRANSITIONS).where(TRANSITIONS.c.event_id == event_id).order_by(TRANSITIONS.c.id))
        return [dict(r._mapping) for r in rows]


def mixed(engine: Engine) -> None:
    """Three expired leases of two dead dispatchers, two live ones, two waiting, one due, one FAILED."""
    seed(
        engine,
        [
            held("dead-a1", "dead-a", -20),
            held("dead-a2", "dead-a", -5, retry_count=4),  # its last attempt (max_attempts=5)
            held("dead-b1", "dead-b", -1, event_type="BUDGET.UPDATED"),
            held("live-1", "alive", 10),
            held("live-2", "alive", 10, event_type="BUDGET.UPDATED"),
            waiting("wait-1", 30, retry_count=2, error_message="timeout"),
            waiting("wait-2", 60, event_type="BUDGET.UPDATED", retry_count=1, error_message="timeout"),
            waiting("due-1", -1),
            row("failed-1", "FAILED", retry_count=5, error_message="boom"),
        ],
    )


# --- the filters -----------------------------------------------------------------------------


def test_lease_and_backoff_filters(engine: Engine) -> None:
    mixed(engine)

    def ids(**loose: Any) -> set[str]:
        return set(analytics.events_frame(engine, **loose)["id"])

    assert ids(lease_expired=True) == {"dead-a1", "dead-a2", "dead-b1"}
    assert ids(status="PROCESSING", lease_expired=False) == {"live-1", "live-2"}
    assert len(ids(lease_expired=False)) == 9 - 3
    assert ids(scheduled=True) == {"wait-1", "wait-2"}
    assert ids(scheduled=True, event_type="BUDGET.UPDATED") == {"wait-2"}
    assert ids(status="PENDING", scheduled=False) == {"due-1"}
    assert ids(lease_expired=True, scheduled=True) == set()
    assert analytics.count_events(engine, lease_expired="true", org_id="org-1") == 3  # as a form or the CLI gives it


def test_the_flags_travel_in_the_link_and_bad_values_are_filter_errors() -> None:
    flt = EventFilter.build(status="PROCESSING", lease_expired=True, scheduled=False)
    assert filter_to_query(flt) == {"status": "PROCESSING", "lease_expired": "true", "scheduled": "false"}
    assert filter_from_query(filter_to_query(flt)) == flt
    assert EventFilter.build(lease_expired="") == EventFilter()
    for bad in ({"lease_expired": "maybe"}, {"scheduled": 1}, {"lease_expired": "x" * 5000}):
        with pytest.raises(FilterError):
            EventFilter.build(**bad)
    with pytest.raises(FilterError, match="scheduled"):
        EventFilter(scheduled=1)  # type: ignore[arg-type]
    assert not EventFilter.build(status="COMPLETED").allows_status("FAILED")
    assert not EventFilter(lease_expired=True).allows_status("PENDING")
    assert not EventFilter(scheduled=True).allows_status("PROCESSING")
    assert EventFilter.build(status="FAILED,PENDING", search="x").allows_status("FAILED")


def test_expired_leases_summary(engine: Engine) -> None:
    assert analytics.expired_leases(engine).count == 0
    mixed(engine)
    summary = analytics.expired_leases(engine)
    assert summary.count == 3
    assert list(summary.by_dispatcher["dispatcher"]) == ["dead-a", "dead-b"]
    assert list(summary.by_dispatcher["events"]) == [2, 1]
    rows = events(engine)
    assert summary.oldest_expiry == rows["dead-a1"]["locked_until"]
    assert 19 * 60 < (summary.oldest_seconds or 0) < 21 * 60
    assert summary.by_dispatcher["newest_expiry"].iloc[0] == rows["dead-a2"]["locked_until"]
    assert analytics.expired_leases(engine, event_type="BUDGET.UPDATED").count == 1
    assert analytics.expired_leases(engine, status="COMPLETED").count == 0


# --- recover_expired -------------------------------------------------------------------------


def test_recover_expired_moves_expired_leases_as_a_dispatcher_would(engine: Engine) -> None:
    mixed(engine)
    plan = plan_action(engine, "recover")
    assert (plan.count, set(plan.sample_ids), plan.statuses) == (3, {"dead-a1", "dead-a2", "dead-b1"}, ("PROCESSING",))
    before = events(engine)
    assert recover_expired(engine, actor="ana", max_attempts=5) == 3
    after = events(engine)
    assert after["dead-a1"]["status"] == "PENDING" and after["dead-a1"]["retry_count"] == 1
    assert after["dead-a2"]["status"] == "FAILED" and after["dead-a2"]["retry_count"] == 5  # its last attempt
    for event_id in ("dead-a1", "dead-a2", "dead-b1"):
        event = after[event_id]
        assert event["locked_by"] is None and event["locked_until"] is None
        assert event["error_message"].startswith(EXPIRED_TEXT)
        assert event["available_at"] <= utcnow()
        [step] = history(engine, event_id)
        assert (step["from_status"], step["to_status"], step["actor"]) == ("PROCESSING", event["status"], "admin:ana")
        assert (step["attempt"], step["error_message"]) == (event["retry_count"], event["error_message"])
    assert "dead-a" in after["dead-a1"]["error_message"]
    for untouched in ("live-1", "live-2", "wait-1", "due-1", "failed-1"):
        assert after[untouched] == before[untouched]
        assert history(engine, untouched) == []
    assert recover_expired(engine) == 0


def test_recover_expired_matches_the_dispatchers_own_recovery(engine: Engine) -> None:
    """Two identical expired leases: one recovered by a dispatcher's tick, one by a person; same result."""
    seed(engine, [held("by-dispatcher", "dead", -3, retry_count=1), held("by-person", "dead", -3, retry_count=1)])
    recover_expired(engine, ["by-person"], max_attempts=3, actor="ana")
    Dispatcher(engine, [], max_attempts=3, name="rescuer").recover_expired_leases()
    rows = events(engine)
    fields = ("status", "retry_count", "error_message", "locked_by", "locked_until", "processed_at")
    assert [rows["by-person"][f] for f in fields] == [rows["by-dispatcher"][f] for f in fields]
    assert rows["by-person"]["status"] == "PENDING" and rows["by-person"]["retry_count"] == 2
    person, dispatcher = history(engine, "by-person"), history(engine, "by-dispatcher")
    keep = ("from_status", "to_status", "attempt", "error_message")
    assert [[h[k] for k in keep] for h in person] == [[h[k] for k in keep] for h in dispatcher]
    assert (person[0]["actor"], dispatcher[0]["actor"]) == ("admin:ana", "rescuer")


def test_recover_by_ids_and_filter_and_what_it_refuses(engine: Engine) -> None:
    mixed(engine)
    assert recover_expired(engine, ["dead-a1", "live-1", "wait-1"], actor="ana") == 1  # only the expired one
    assert recover_expired(engine, event_type="BUDGET.UPDATED") == 1
    assert set(analytics.events_frame(engine, lease_expired=True)["id"]) == {"dead-a2"}
    assert events(engine)["live-1"]["status"] == events(engine)["live-2"]["status"] == "PROCESSING"
    with pytest.raises(AdminActionError, match="PROCESSING"):
        recover_expired(engine, status="FAILED")
    with pytest.raises(AdminActionError, match="PROCESSING events only"):
        plan_action(engine, "recover", status="FAILED")
    with pytest.raises(AdminActionError, match="max_attempts"):
        recover_expired(engine, max_attempts=0)
    assert recover_expired(engine, max_attempts=None) == 1
    assert events(engine)["dead-a2"]["status"] == "PENDING"  # never FAILED without a limit


def test_a_lease_renewed_after_the_dry_run_is_left_alone(engine: Engine) -> None:
    """The dispatcher that held the lease comes back and renews it (its heartbeat) between the dry run
    and the action: the action must not take the event from it."""
    seed(engine, [held("slow", "slow-dispatcher", -1)])
    assert plan_action(engine, "recover").count == 1
    owner = Dispatcher(engine, [], name="slow-dispatcher", lease_seconds=600)
    assert owner._renew_leases(["slow"]) == 1  # the real renewal statement
    assert recover_expired(engine, ["slow"], actor="ana") == 0
    event = events(engine)["slow"]
    assert (event["status"], event["locked_by"], event["retry_count"]) == ("PROCESSING", "slow-dispatcher", 0)
    assert history(engine, "slow") == []


def test_a_dispatcher_holding_live_leases_is_not_disturbed(engine: Engine) -> None:
    """A real dispatcher is in the middle of a batch (handler running, leases live) while a person recovers
    the expired leases of a dead one: the batch stays the dispatcher's and finishes as COMPLETED."""
    seed(engine, [row(f"fresh-{i}", "PENDING") for i in range(3)])
    in_handler, release = threading.Event(), threading.Event()

    def slow(event: DeliveredEvent) -> None:
        in_handler.set()
        assert release.wait(30)

    worker = Dispatcher(engine, [slow], name="busy", lease_seconds=120, breaker=None)
    reports: list[Any] = []
    thread = threading.Thread(target=lambda: reports.append(worker.dispatch_once()))
    thread.start()
    try:
        assert in_handler.wait(30)
        seed(engine, [held("dead-1", "dead", -2), held("dead-2", "dead", -2)])  # after the worker's recovery
        assert set(analytics.events_frame(engine, status="PROCESSING", lease_expired=False)["id"]) == {
            "fresh-0",
            "fresh-1",
            "fresh-2",
        }
        assert recover_expired(engine, actor="ana") == 2
    finally:
        release.set()
        thread.join(30)
    [report] = reports
    assert (report.claimed, report.completed, report.lost) == (3, 3, 0)
    rows = events(engine)
    assert {rows[f"fresh-{i}"]["status"] for i in range(3)} == {"COMPLETED"}
    assert {rows["dead-1"]["status"], rows["dead-2"]["status"]} == {"PENDING"}


@pytest.mark.postgres
def test_recover_skips_a_row_another_transaction_holds(postgres_url: str) -> None:
    """SKIP LOCKED, as the dispatcher's recovery: a row locked elsewhere is left for later, not waited for."""
    engine = make_engine(postgres_url)
    try:
        seed(engine, [held("locked", "dead", -2), held("free", "dead", -2)])
        with engine.connect() as other, other.begin():
            other.execute(select(EVENTS.c.id).where(EVENTS.c.id == "locked").with_for_update())
            started = time.monotonic()
            assert recover_expired(engine, actor="ana") == 1
            assert time.monotonic() - started < 5
        assert events(engine)["locked"]["status"] == "PROCESSING"
        assert recover_expired(engine, actor="ana") == 1
    finally:
        engine.dispose()


# --- retry_now ------------------------------------------------------------------------------


def test_retry_now_makes_waiting_events_due_and_records_it(engine: Engine) -> None:
    mixed(engine)
    plan = plan_action(engine, "retry_now")
    assert (plan.count, set(plan.sample_ids), plan.statuses) == (2, {"wait-1", "wait-2"}, ("PENDING",))
    before = events(engine)
    assert retry_now(engine, actor="bo") == 2
    after = events(engine)
    for event_id in ("wait-1", "wait-2"):
        event = after[event_id]
        assert event["status"] == "PENDING" and event["available_at"] <= utcnow()
        assert event["retry_count"] == before[event_id]["retry_count"]  # attempts kept
        assert event["error_message"] == "timeout"
        [step] = history(engine, event_id)
        assert (step["from_status"], step["to_status"], step["actor"], step["error_message"]) == (
            "PENDING",
            "PENDING",
            "admin:bo",
            RETRY_NOW_NOTE,
        )
        assert step["attempt"] == event["retry_count"]
    for untouched in ("due-1", "failed-1", "live-1", "dead-a1"):
        assert after[untouched] == before[untouched]
    assert retry_now(engine) == 0


def test_retry_now_by_ids_and_filter_moves_only_waiting_events(engine: Engine) -> None:
    mixed(engine)
    plan = plan_action(engine, "retry_now", ["wait-1", "due-1", "failed-1", "live-1"])
    assert (plan.count, plan.sample_ids) == (1, ["wait-1"])
    due_before = events(engine)["due-1"]["available_at"]
    assert retry_now(engine, ["wait-1", "due-1", "failed-1", "live-1", "no-such-id"], actor="bo") == 1
    assert events(engine)["due-1"]["available_at"] == due_before  # due already: not touched
    assert events(engine)["failed-1"]["status"] == "FAILED"
    seed(engine, [waiting("wait-3", 5, org_id="org-2")])
    assert retry_now(engine, filters=EventFilter.build(org_id="org-2")) == 1
    assert set(analytics.events_frame(engine, scheduled=True)["id"]) == {"wait-2"}
    with pytest.raises(AdminActionError, match="PENDING"):
        retry_now(engine, filters=EventFilter.build(status="FAILED"))
    with pytest.raises(AdminActionError, match="PENDING"):
        plan_action(engine, "retry_now", filters=EventFilter(lease_expired=True))
    with pytest.raises(AdminActionError, match="unknown action"):
        plan_action(engine, "explode")  # type: ignore[arg-type]


# --- wake-ups -------------------------------------------------------------------------------

#: The service's interval: far longer than the deadline, so only a wake-up can explain a pickup.
INTERVAL = 30.0
DEADLINE = 5.0


class Deliveries:
    """Records when each event reached the handler."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self.changed = threading.Condition()

    def __call__(self, event: DeliveredEvent) -> None:
        with self.changed:
            self.at.setdefault(event.id, time.monotonic())
            self.changed.notify_all()

    def wait_for(self, event_id: str, timeout: float) -> float | None:
        with self.changed:
            self.changed.wait_for(lambda: event_id in self.at, timeout=timeout)
            return self.at.get(event_id)


#: Per action: the event it applies to (seeded directly, so nothing wakes the dispatcher), and the action.
ACTIONS: dict[str, tuple[Callable[[], dict[str, Any]], Callable[[Engine], int]]] = {
    "requeue": (
        lambda: row("stuck", "FAILED", retry_count=5, error_message="boom"),
        lambda engine: requeue(engine, ["stuck"], actor="t"),
    ),
    "retry_now": (
        lambda: waiting("stuck", 60, retry_count=1, error_message="boom"),
        lambda engine: retry_now(engine, ["stuck"], actor="t"),
    ),
    "recover": (lambda: held("stuck", "dead", -1), lambda engine: recover_expired(engine, ["stuck"], actor="t")),
}


def settle(service: DispatcherService) -> None:
    """Wait (with a deadline) until the service is idle: its tick at start and the wake-up of its LISTEN
    connection have run, so the next tick is the scheduled one, 30 s away."""
    deadline = time.monotonic() + 10
    seen = -1
    while True:
        status = service.status()
        if status.current_run is None and status.ticks == seen:
            return
        assert time.monotonic() < deadline, "the service never became idle"
        seen = status.ticks
        service.wait_for_tick(seen, timeout=0.3)


@pytest.mark.parametrize("action", list(ACTIONS))
def test_the_action_wakes_a_running_dispatcher(db_url: str, action: str) -> None:
    """SQLite: the service in this process is woken directly. PostgreSQL: the service listens on its own
    connection and is given a private in-process signal, so only the NOTIFY sent by the action (another
    engine, another connection) can wake it before its 30 s interval."""
    make_row, act = ACTIONS[action]
    service_engine = make_engine(db_url)
    admin_engine = make_engine(db_url)
    postgres = service_engine.dialect.name == "postgresql"
    deliveries = Deliveries()
    service = DispatcherService(
        Dispatcher(service_engine, [deliveries], breaker=None),
        interval_seconds=INTERVAL,
        signal=WakeSignal() if postgres else wake_signal,
    )
    try:
        service.start()
        deadline = time.monotonic() + 10
        while postgres and not service.status().listening:
            assert time.monotonic() < deadline, "the LISTEN connection did not come up"
            time.sleep(0.01)
        assert service.wait_for_tick(0, timeout=10)
        settle(service)
        ticks = service.status().ticks
        seed(admin_engine, [make_row()])
        assert deliveries.wait_for("stuck", timeout=0.5) is None  # nothing woke it: the event waits
        assert (service.status().seconds_to_next_tick() or 0) > INTERVAL - 10
        acted = time.monotonic()
        assert act(admin_engine) == 1
        arrived = deliveries.wait_for("stuck", timeout=DEADLINE)
        assert arrived is not None, f"{action} did not wake the dispatcher within {DEADLINE} s"
        assert arrived - acted < DEADLINE
        assert service.wait_for_tick(ticks, timeout=DEADLINE)  # the run that delivered it ends
    finally:
        service.stop()
        service_engine.dispose()
        admin_engine.dispose()


def test_discard_does_not_wake_and_a_no_op_does_not_either(engine: Engine) -> None:
    """Only actions that made events due wake the dispatchers (a wake-up costs every dispatcher a query)."""
    from outbox_admin.admin import discard

    woken: list[int] = []
    remove = wake_signal.listen(wake_key(engine.url), lambda: woken.append(1))
    try:
        seed(engine, [row("f1", "FAILED", error_message="x"), row("f2", "FAILED", error_message="x")])
        discard(engine, ["f1"], actor="t")
        assert retry_now(engine) == 0 and recover_expired(engine) == 0 and requeue(engine, event_type="NONE.X") == 0
        assert woken == []
        assert requeue(engine, ["f2"], actor="t") == 1
        assert woken == [1]
        with engine.begin() as conn:  # make it wait on a backoff, as a failed attempt would
            conn.execute(
                update(EVENTS).where(EVENTS.c.id == "f2").values(available_at=utcnow() + dt.timedelta(hours=1))
            )
        assert retry_now(engine) == 1
        assert woken == [1, 1]
    finally:
        remove()

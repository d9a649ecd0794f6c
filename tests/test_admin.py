"""The write side (``outbox_admin.admin``): requeue, discard, purge and their dry run, on SQLite and
PostgreSQL; and a requeue loop racing a draining dispatcher.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest
from sqlalchemy import Engine, func, insert, select

from outbox_admin import AdminActionError, Dispatcher, analytics, publish_outbox_event
from outbox_admin.admin import PurgeResult, actor_name, discard, plan_action, purge, requeue
from outbox_admin.db import db_now
from outbox_admin.errors import FilterError
from outbox_admin.filters import EventFilter, normalize_error
from outbox_admin.handlers import DeliveredEvent, RecordingHandler
from outbox_admin.models import DEFAULT_TABLES

EVENTS = DEFAULT_TABLES.events
TRANSITIONS = DEFAULT_TABLES.transitions


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def event(
    event_id: str,
    status: str,
    *,
    created: dt.datetime | None = None,
    event_type: str = "PROJECT.CREATED",
    org: str = "org-1",
    retries: int = 0,
    error: str | None = None,
    available: dt.datetime | None = None,
    locked_by: str | None = None,
) -> dict[str, Any]:
    created = created or utcnow() - dt.timedelta(minutes=10)
    return {
        "id": event_id,
        "org_id": org,
        "event_type": event_type,
        "entity_type": "Project",
        "entity_id": event_id,
        "payload": {"id": event_id},
        "status": status,
        "retry_count": retries,
        "error_message": error,
        "created_at": created,
        "processed_at": created + dt.timedelta(seconds=1) if status == "COMPLETED" else None,
        "available_at": available or created,
        "locked_by": locked_by,
        "locked_until": utcnow() + dt.timedelta(minutes=5) if locked_by else None,
        "idempotency_key": None,
    }


def seed(engine: Engine, rows: Sequence[dict[str, Any]]) -> None:
    """Insert events with the first history row each would have."""
    with engine.begin() as conn:
        conn.execute(insert(EVENTS), list(rows))
        conn.execute(
            insert(TRANSITIONS),
            [
                {
                    "event_id": r["id"],
                    "from_status": None,
                    "to_status": "PENDING",
                    "at": r["created_at"],
                    "actor": "publisher",
                    "attempt": 0,
                    "error_message": None,
                }
                for r in rows
            ],
        )


def stored(engine: Engine, event_id: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(EVENTS).where(EVENTS.c.id == event_id)).one()


def statuses(engine: Engine) -> dict[str, str]:
    with engine.connect() as conn:
        return dict(conn.execute(select(EVENTS.c.id, EVENTS.c.status)).all())


def history(engine: Engine, event_id: str) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [
            (r.from_status, r.to_status, r.actor, r.attempt, r.error_message)
            for r in conn.execute(
                select(TRANSITIONS).where(TRANSITIONS.c.event_id == event_id).order_by(TRANSITIONS.c.id)
            )
        ]


def transition_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(TRANSITIONS)).scalar_one()


def database_now(engine: Engine) -> dt.datetime:
    with engine.connect() as conn:
        return conn.execute(select(db_now())).scalar_one()


# --- requeue ------------------------------------------------------------------------------


def test_requeue_moves_failed_events_back_to_pending_due_now(engine: Engine) -> None:
    later = utcnow() + dt.timedelta(days=1)
    seed(
        engine,
        [
            event("f1", "FAILED", retries=3, error="boom 1", available=later),
            event("f2", "FAILED", retries=2, error="boom 2", available=later),
            event("p1", "PENDING", retries=1, error="boom 3", available=later),  # backing off: not touched
        ],
    )
    before = database_now(engine)
    assert requeue(engine, actor="alice") == 2
    after = database_now(engine)
    for event_id, retries in (("f1", 3), ("f2", 2)):
        row = stored(engine, event_id)
        assert (row.status, row.retry_count, row.locked_by, row.locked_until) == ("PENDING", retries, None, None)
        assert before <= row.available_at <= after
        assert history(engine, event_id)[-1] == ("FAILED", "PENDING", "admin:alice", retries, None)
    assert stored(engine, "p1").available_at == later
    assert len(history(engine, "p1")) == 1

    recorder = RecordingHandler()
    assert Dispatcher(engine, [recorder]).drain().completed == 2  # due now: delivered at once
    assert sorted(recorder.ids) == ["f1", "f2"]
    assert requeue(engine) == 0  # nothing FAILED any more


def test_requeue_can_reset_attempts(engine: Engine) -> None:
    seed(engine, [event("f1", "FAILED", retries=5, error="boom"), event("f2", "FAILED", retries=4, error="boom")])
    assert requeue(engine, ["f1"], reset_attempts=True, actor="admin:bob") == 1
    row = stored(engine, "f1")
    assert (row.status, row.retry_count) == ("PENDING", 0)
    assert history(engine, "f1")[-1] == ("FAILED", "PENDING", "admin:bob", 0, None)
    assert stored(engine, "f2").status == "FAILED"  # not among the ids


def test_requeue_of_explicit_processing_or_completed_ids_is_refused_unless_forced(engine: Engine) -> None:
    seed(
        engine,
        [
            event("c1", "COMPLETED"),
            event("pr1", "PROCESSING", locked_by="dispatcher-1"),
            event("f1", "FAILED", retries=3, error="boom"),
            event("d1", "DISCARDED"),
        ],
    )
    rows_before = transition_count(engine)
    with pytest.raises(AdminActionError, match=r"c1 is COMPLETED.*force"):
        requeue(engine, ["c1"], status=None)
    with pytest.raises(AdminActionError, match="pr1 is PROCESSING"):
        requeue(engine, ["f1", "pr1"], status=None)  # one wrong id refuses the whole action
    with pytest.raises(AdminActionError, match="no such event: nope"):
        requeue(engine, ["f1", "nope"], status=None)
    with pytest.raises(AdminActionError, match="no event ids"):
        requeue(engine, [], status=None)
    with pytest.raises(AdminActionError, match="force"):
        requeue(engine, status="COMPLETED")
    with pytest.raises(AdminActionError):
        requeue(engine, status=["FAILED", "PROCESSING"])
    with pytest.raises(FilterError):
        requeue(engine, status="LOST")
    assert statuses(engine) == {"c1": "COMPLETED", "pr1": "PROCESSING", "f1": "FAILED", "d1": "DISCARDED"}
    assert transition_count(engine) == rows_before  # nothing written

    assert requeue(engine, ["c1", "pr1", "f1", "d1"], status=None, force=True, actor="carol") == 4
    assert set(statuses(engine).values()) == {"PENDING"}
    assert stored(engine, "pr1").locked_by is None
    moved_from = {event_id: history(engine, event_id)[-1][:3] for event_id in ("c1", "pr1", "f1", "d1")}
    assert moved_from == {
        "c1": ("COMPLETED", "PENDING", "admin:carol"),
        "pr1": ("PROCESSING", "PENDING", "admin:carol"),
        "f1": ("FAILED", "PENDING", "admin:carol"),
        "d1": ("DISCARDED", "PENDING", "admin:carol"),
    }


def test_requeue_moves_and_records_each_event_once(engine: Engine) -> None:
    """Requeuing several statuses at once (``status=None``, what the CLI does for ids): an event moved
    FAILED -> PENDING is not matched again as PENDING, so it counts once and has one history row."""
    seed(engine, [event("f1", "FAILED", retries=3, error="boom"), event("p1", "PENDING"), event("d1", "DISCARDED")])
    plan = plan_action(engine, "requeue", ["f1", "p1", "d1"], status=None)
    assert plan.count == 3
    assert requeue(engine, ["f1", "p1", "d1"], status=None, actor="dan") == 3
    assert history(engine, "f1")[1:] == [("FAILED", "PENDING", "admin:dan", 3, None)]
    assert history(engine, "p1")[1:] == [("PENDING", "PENDING", "admin:dan", 0, None)]
    assert history(engine, "d1")[1:] == [("DISCARDED", "PENDING", "admin:dan", 0, None)]
    seed(engine, [event("f2", "FAILED", retries=1, error="boom")])
    assert requeue(engine, status=["FAILED", "PENDING"]) == 4  # f2, and f1, p1, d1 made due now again
    assert [h[:2] for h in history(engine, "f2")[1:]] == [("FAILED", "PENDING")]


def test_requeue_by_id_with_the_default_status_refuses_completed_and_processing(engine: Engine) -> None:
    """The documented call, ``requeue(engine, ids)``: a COMPLETED or PROCESSING id is an error, not a
    silent zero, and ``force=True`` moves it."""
    seed(engine, [event("c1", "COMPLETED"), event("pr1", "PROCESSING", locked_by="dispatcher-1")])
    with pytest.raises(AdminActionError, match="c1 is COMPLETED"):
        requeue(engine, "c1")
    with pytest.raises(AdminActionError, match="pr1 is PROCESSING"):
        requeue(engine, ["pr1"])
    assert statuses(engine) == {"c1": "COMPLETED", "pr1": "PROCESSING"}
    assert requeue(engine, "c1", force=True) == 1
    assert stored(engine, "c1").status == "PENDING"


def test_requeue_by_error_group_and_filters(engine: Engine) -> None:
    seed(
        engine,
        [
            event("t1", "FAILED", error="timeout after 30s on 10.0.0.7"),
            event("t2", "FAILED", error="timeout after 5s on 10.0.0.9", event_type="PROJECT.UPDATED"),
            event("t3", "PENDING", error="timeout after 7s on 10.0.0.1"),  # same group, not FAILED
            event("h1", "FAILED", error="HTTP 503 from hook", org="org-2"),
            event("h2", "FAILED", error="HTTP 503 from hook", org="org-3"),
        ],
    )
    group = normalize_error("timeout after 1s on 127.0.0.1")
    assert requeue(engine, error_group=group, actor="ops") == 2
    assert statuses(engine) == {"t1": "PENDING", "t2": "PENDING", "t3": "PENDING", "h1": "FAILED", "h2": "FAILED"}
    assert history(engine, "t3")[-1][1] == "PENDING" and len(history(engine, "t3")) == 1
    assert requeue(engine, org_id="org-3") == 1
    assert statuses(engine)["h2"] == "PENDING" and statuses(engine)["h1"] == "FAILED"
    assert requeue(engine, filters=EventFilter.build(search="hook")) == 1
    assert statuses(engine)["h1"] == "PENDING"


def test_plan_action_counts_and_samples_exactly_what_the_action_moves(engine: Engine) -> None:
    base = utcnow() - dt.timedelta(hours=1)
    seed(
        engine,
        [
            *(event(f"f{i}", "FAILED", created=base + dt.timedelta(seconds=i), error=f"boom {i}") for i in range(6)),
            *(event(f"u{i}", "FAILED", event_type="PROJECT.UPDATED", error="other") for i in range(2)),
            event("p1", "PENDING", created=base + dt.timedelta(seconds=30)),
            event("c1", "COMPLETED"),
        ],
    )
    plan = plan_action(engine, "requeue", event_type="PROJECT.CREATED", sample=3)
    assert (plan.action, plan.statuses, plan.count) == ("requeue", ("FAILED",), 6)
    assert plan.sample_ids == ["f5", "f4", "f3"]  # newest first
    full = plan_action(engine, "requeue", event_type="PROJECT.CREATED")
    before = statuses(engine)
    assert requeue(engine, event_type="PROJECT.CREATED") == full.count
    moved = {i for i, s in statuses(engine).items() if s != before[i]}
    assert moved == set(full.sample_ids) == {f"f{i}" for i in range(6)}

    discard_plan = plan_action(engine, "discard", event_type="PROJECT.CREATED")  # the same arguments as below
    assert discard_plan.statuses == ("FAILED", "PENDING") and discard_plan.count == 7  # f0..f5 and p1
    before = statuses(engine)
    assert discard(engine, event_type="PROJECT.CREATED") == discard_plan.count
    moved = {i for i, s in statuses(engine).items() if s != before[i]}
    assert moved == set(discard_plan.sample_ids)
    assert plan_action(engine, "requeue", event_type="PROJECT.CREATED").count == 0
    assert plan_action(engine, "requeue", ["u0", "u1"]).count == 2

    with pytest.raises(AdminActionError):
        plan_action(engine, "explode")  # type: ignore[arg-type]
    with pytest.raises(AdminActionError):
        plan_action(engine, "requeue", status="COMPLETED")


# --- discard ------------------------------------------------------------------------------


def test_discard_sets_failed_and_pending_aside_with_the_reason(engine: Engine) -> None:
    seed(
        engine,
        [
            event("f1", "FAILED", retries=3, error="boom"),
            event("p1", "PENDING"),
            event("c1", "COMPLETED"),
            event("d1", "DISCARDED"),
            event("p2", "PENDING", org="org-2"),
        ],
    )
    rows_before = transition_count(engine)
    with pytest.raises(AdminActionError, match="c1 is COMPLETED"):
        discard(engine, ["c1"])
    with pytest.raises(AdminActionError, match="d1 is DISCARDED"):
        discard(engine, ["d1"])
    with pytest.raises(AdminActionError, match="c1 is COMPLETED"):
        discard(engine, ["f1", "c1"])
    with pytest.raises(AdminActionError, match="cannot discard events that are COMPLETED"):
        discard(engine, status="COMPLETED")
    assert transition_count(engine) == rows_before
    assert stored(engine, "f1").status == "FAILED"

    assert discard(engine, ["f1", "p1"], reason="customer deleted the project", actor="carol") == 2
    assert history(engine, "f1")[-1] == (
        "FAILED",
        "DISCARDED",
        "admin:carol",
        3,
        "discarded: customer deleted the project",
    )
    assert history(engine, "p1")[-1] == (
        "PENDING",
        "DISCARDED",
        "admin:carol",
        0,
        "discarded: customer deleted the project",
    )
    assert stored(engine, "f1").error_message == "boom"  # the event itself is kept as it was
    assert discard(engine, org_id="org-2") == 1
    assert history(engine, "p2")[-1][1:] == ("DISCARDED", "admin:admin", 0, "discarded")

    recorder = RecordingHandler()
    assert Dispatcher(engine, [recorder]).drain().claimed == 0  # p1 and p2 were due: never claimed now
    assert recorder.ids == []
    assert statuses(engine) == {
        "f1": "DISCARDED",
        "p1": "DISCARDED",
        "c1": "COMPLETED",
        "d1": "DISCARDED",
        "p2": "DISCARDED",
    }

    assert requeue(engine, ["p1"], status="DISCARDED", actor="carol") == 1  # undo
    assert Dispatcher(engine, [recorder]).drain().completed == 1
    assert recorder.ids == ["p1"]


# --- purge --------------------------------------------------------------------------------


def test_purge_deletes_old_finished_events_and_their_history_in_batches(engine: Engine) -> None:
    old = utcnow() - dt.timedelta(days=10)
    rows = [
        *(event(f"c-old-{i}", "COMPLETED", created=old + dt.timedelta(seconds=i)) for i in range(3)),
        *(event(f"d-old-{i}", "DISCARDED", created=old + dt.timedelta(seconds=10 + i)) for i in range(2)),
        event("f-old", "FAILED", created=old, error="boom"),
        event("p-old", "PENDING", created=old),
        event("pr-old", "PROCESSING", created=old, locked_by="dispatcher-1"),
        event("c-young", "COMPLETED", created=utcnow() - dt.timedelta(hours=1)),
    ]
    seed(engine, rows)
    progress: list[int] = []
    result = purge(engine, dt.timedelta(days=7), batch_size=2, progress=progress.append)
    assert result == PurgeResult(events=5, transitions=5, batches=3)
    assert progress == [2, 4, 5]
    assert sorted(statuses(engine)) == ["c-young", "f-old", "p-old", "pr-old"]
    with engine.connect() as conn:
        left = conn.execute(select(TRANSITIONS.c.event_id)).scalars().all()
    assert sorted(left) == ["c-young", "f-old", "p-old", "pr-old"]

    for refused in (("PENDING",), ("COMPLETED", "PROCESSING"), ()):
        with pytest.raises(AdminActionError):
            purge(engine, dt.timedelta(days=7), refused)
    with pytest.raises(AdminActionError):
        purge(engine, dt.timedelta(days=7), batch_size=0)
    with pytest.raises(FilterError):
        purge(engine, dt.timedelta(days=7), ("GONE",))
    assert len(statuses(engine)) == 4

    assert purge(engine, dt.timedelta(days=7), progress=progress.append) == PurgeResult(0, 0, 0)
    assert progress == [2, 4, 5]  # no batch, no call
    assert purge(engine, dt.timedelta(days=7), ["failed"]).events == 1
    # A cut-off time instead of an age (naive means UTC).
    assert purge(engine, (utcnow() - dt.timedelta(minutes=30)).replace(tzinfo=None)).events == 1
    assert sorted(statuses(engine)) == ["p-old", "pr-old"]


# --- the actor --------------------------------------------------------------------------------


def test_actor_names_are_prefixed_once() -> None:
    assert actor_name("alice") == "admin:alice"
    assert actor_name("admin:alice") == "admin:alice"
    assert actor_name("  ") == "admin:admin"
    assert len(actor_name("x" * 1000)) == 255


# --- requeue while a dispatcher drains ----------------------------------------------------------


class FailFirstDelivery:
    """Fails the first delivery of every event, then succeeds; counts both per event."""

    name = "fail-first"

    def __init__(self, expected: int) -> None:
        self.lock = threading.Lock()
        self.failures: Counter[str] = Counter()
        self.successes: Counter[str] = Counter()
        self.expected = expected
        self.all_delivered = threading.Event()

    def __call__(self, event: DeliveredEvent) -> None:
        with self.lock:
            if not self.failures[event.id]:
                self.failures[event.id] += 1
                raise ConnectionError("broker not ready")
            self.successes[event.id] += 1
            if len(self.successes) == self.expected:
                self.all_delivered.set()


def test_requeue_while_a_dispatcher_drains_loses_nothing(engine: Engine) -> None:
    count = 300
    with engine.begin() as conn:
        ids = [
            publish_outbox_event(
                conn, org_id="org-1", event_type="PROJECT.CREATED", entity_type="Project", entity_id=f"p-{i}"
            ).id
            for i in range(count)
        ]
    handler = FailFirstDelivery(count)
    # A lease longer than the deadline: a claim lost in the race must fail the test, not be
    # quietly recovered when its lease expires.
    # No breaker: every first delivery fails on purpose, which would otherwise pause the handler.
    dispatcher = Dispatcher(
        engine, [handler], max_attempts=1, batch_size=25, lease_seconds=120, name="drainer", breaker=None
    )
    stop = threading.Event()
    errors: list[BaseException] = []
    requeued: list[int] = []

    def keep_draining() -> None:
        try:
            while not stop.is_set():
                if dispatcher.drain(max_seconds=1).claimed == 0:
                    stop.wait(0.005)  # pacing only: nothing due right now
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)

    def keep_requeuing() -> None:
        try:
            while not stop.is_set():
                requeued.append(requeue(engine, reset_attempts=True, actor="sweeper"))
                stop.wait(0.005)  # pacing only
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=keep_draining), threading.Thread(target=keep_requeuing)]
    for thread in threads:
        thread.start()
    try:
        finished = handler.all_delivered.wait(timeout=30)  # about a second when all is well
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert errors == []
    assert finished, (
        f"only {len(handler.successes)} of {count} delivered before the deadline; "
        f"statuses: {analytics.status_counts(engine).to_dict('records')}"
    )

    counts = analytics.status_counts(engine)
    assert dict(zip(counts["status"], counts["count"], strict=True)) == {
        "PENDING": 0,
        "PROCESSING": 0,
        "COMPLETED": count,
        "FAILED": 0,
        "DISCARDED": 0,
    }
    assert set(handler.failures) == set(handler.successes) == set(ids)
    assert set(handler.failures.values()) == {1} and set(handler.successes.values()) == {1}
    assert sum(requeued) == count  # each event requeued exactly once: it failed exactly once
    with engine.connect() as conn:
        paths = Counter(
            tuple(
                conn.execute(
                    select(TRANSITIONS.c.from_status, TRANSITIONS.c.to_status, TRANSITIONS.c.actor)
                    .where(TRANSITIONS.c.event_id == event_id)
                    .order_by(TRANSITIONS.c.id)
                ).all()
            )
            for event_id in ids
        )
        locked = conn.execute(select(func.count()).where(EVENTS.c.locked_by.is_not(None))).scalar_one()
    assert locked == 0
    assert paths == {
        (
            (None, "PENDING", "publisher"),
            ("PENDING", "PROCESSING", "drainer"),
            ("PROCESSING", "FAILED", "drainer"),
            ("FAILED", "PENDING", "admin:sweeper"),
            ("PENDING", "PROCESSING", "drainer"),
            ("PROCESSING", "COMPLETED", "drainer"),
        ): count
    }

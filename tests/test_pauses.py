"""Pausing event types: ``admin.pause`` / ``admin.resume``, the pauses table, and every dispatcher obeying them.

The databases are real (SQLite and PostgreSQL through the ``engine`` fixture); the "other"
dispatcher has an engine of its own, so it shares nothing with the first but the database.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, func, inspect, select, text

from outbox_admin import Backoff, Dispatcher, DispatcherService, OutboxTables, admin, analytics, init_db, make_engine
from outbox_admin import publish_outbox_event as publish_event
from outbox_admin.errors import AdminActionError, FilterError
from outbox_admin.event_types import register_event_type
from outbox_admin.handlers.base import DeliveredEvent
from outbox_admin.migrate import head_revision, upgrade
from outbox_admin.models import DEFAULT_TABLES
from outbox_admin.wakeup import WakeSignal

EV, TR, PAUSES = DEFAULT_TABLES.events, DEFAULT_TABLES.transitions, DEFAULT_TABLES.pauses
register_event_type("BUDGET.APPROVED")


def publish(engine: Engine, event_type: str, count: int) -> list[str]:
    with engine.begin() as conn:
        return [
            publish_event(conn, org_id="o", event_type=event_type, entity_type="E", entity_id=str(i)).id
            for i in range(count)
        ]


def rows(engine: Engine, ids: list[str]) -> dict[str, tuple[str, int]]:
    """(status, retry_count) of each event."""
    with engine.connect() as conn:
        found = conn.execute(select(EV.c.id, EV.c.status, EV.c.retry_count).where(EV.c.id.in_(ids))).all()
    return {r.id: (r.status, r.retry_count) for r in found}


def claims(engine: Engine, ids: list[str]) -> int:
    """How many times these events were claimed (PENDING -> PROCESSING history rows)."""
    with engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count()).where(TR.c.event_id.in_(ids), TR.c.to_status == "PROCESSING")
            ).scalar_one()
        )


class Recording:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, event: DeliveredEvent) -> None:
        self.seen.append(event.id)


@pytest.fixture
def other_engine(engine: Engine) -> Iterator[Engine]:
    """A second engine on the same database, for a dispatcher that shares no connection with the first."""
    other = make_engine(engine.url.render_as_string(hide_password=False))
    yield other
    other.dispose()


# --- pausing and resuming ------------------------------------------------------------------


def test_every_dispatcher_leaves_paused_types_alone_until_resumed(engine: Engine, other_engine: Engine) -> None:
    projects = publish(engine, "PROJECT.CREATED", 4) + publish(engine, "PROJECT.UPDATED", 2)
    budgets = publish(engine, "BUDGET.APPROVED", 3)
    first, second = Recording(), Recording()
    one = Dispatcher(engine, [first], batch_size=2, name="one")
    two = Dispatcher(other_engine, [second], batch_size=50, name="two")

    paused = admin.pause(engine, "PROJECT.*", reason="consumer migration", actor="ana")
    assert (paused.pattern, paused.paused_by, paused.active, paused.created) == (
        "PROJECT.*",
        "admin:ana",
        True,
        True,
    )
    report = one.dispatch_once()
    assert (report.claimed, report.completed, report.paused) == (2, 2, 1)
    report = two.dispatch_once()
    assert (report.claimed, report.paused) == (1, 1)
    assert sorted(first.seen + second.seen) == sorted(budgets)
    assert two.dispatch_once().claimed == 0 and one.dispatch_once().claimed == 0
    assert rows(engine, projects) == dict.fromkeys(projects, ("PENDING", 0))
    assert claims(engine, projects) == 0  # never claimed: no attempt, no history

    resumed = admin.resume(engine, "PROJECT.*", actor="bob")
    assert (resumed.id, resumed.resumed_by, resumed.active) == (paused.id, "admin:bob", False)
    report = two.dispatch_once()
    assert (report.claimed, report.completed, report.paused) == (6, 6, 0)
    assert sorted(second.seen[-6:]) == sorted(projects)
    assert rows(engine, projects) == dict.fromkeys(projects, ("COMPLETED", 0))


def test_a_pause_is_obeyed_from_the_next_batch_of_a_running_drain(engine: Engine, other_engine: Engine) -> None:
    ids = publish(engine, "PROJECT.CREATED", 6)
    dispatcher = Dispatcher(engine, [Recording()], batch_size=2)
    batches: list[int] = []

    def after_batch(report: Any) -> None:
        batches.append(report.claimed)
        if len(batches) == 1:
            admin.pause(other_engine, "PROJECT.CREATED", reason="stop now", actor="ops")

    total = dispatcher.drain(max_seconds=30, on_tick=after_batch)
    assert batches == [2, 0]
    assert (total.claimed, total.paused) == (2, 1)
    assert sorted(rows(engine, ids).values()) == [("COMPLETED", 0)] * 2 + [("PENDING", 0)] * 4


def test_paused_events_keep_their_attempts_and_backoff(engine: Engine) -> None:
    [event_id] = publish(engine, "PROJECT.CREATED", 1)

    def failing(event: DeliveredEvent) -> None:
        raise ValueError("receiver said no")

    Dispatcher(engine, [failing], backoff=Backoff(base=0, jitter=0), breaker=None).dispatch_once()
    assert rows(engine, [event_id]) == {event_id: ("PENDING", 1)}
    with engine.connect() as conn:
        due_before = conn.execute(select(EV.c.available_at).where(EV.c.id == event_id)).scalar_one()
    admin.pause(engine, "PROJECT.*", reason="fixing the receiver")
    dispatcher = Dispatcher(engine, [Recording()])
    for _ in range(3):
        assert dispatcher.dispatch_once().claimed == 0
    with engine.connect() as conn:
        due_after = conn.execute(select(EV.c.available_at).where(EV.c.id == event_id)).scalar_one()
    assert rows(engine, [event_id]) == {event_id: ("PENDING", 1)} and due_after == due_before
    assert claims(engine, [event_id]) == 1  # the one failed attempt before the pause
    admin.resume(engine, "PROJECT.*")
    assert dispatcher.dispatch_once().completed == 1
    assert rows(engine, [event_id]) == {event_id: ("COMPLETED", 1)}


@pytest.mark.parametrize(
    ("pattern", "held"),
    [
        ("NOTHING.*", []),  # matches no type: pauses nothing
        ("PROJECT.CREATE", []),  # a glob matches the whole type, not a prefix
        ("*", ["PROJECT.CREATED", "PROJECT.UPDATED", "BUDGET.APPROVED"]),
        ("PROJECT.[C]*", ["PROJECT.CREATED"]),
        ("[AB]*", ["BUDGET.APPROVED"]),
        ("[!B]*", ["PROJECT.CREATED", "PROJECT.UPDATED"]),
        ("*.?PPROVED", ["BUDGET.APPROVED"]),
    ],
)
def test_patterns_hold_exactly_the_types_they_match(engine: Engine, pattern: str, held: list[str]) -> None:
    by_type = {t: publish(engine, t, 2) for t in ("PROJECT.CREATED", "PROJECT.UPDATED", "BUDGET.APPROVED")}
    admin.pause(engine, pattern, reason="test")
    report = Dispatcher(engine, [Recording()]).drain(max_seconds=30)
    assert report.paused == 1
    for event_type, ids in by_type.items():
        expected = "PENDING" if event_type in held else "COMPLETED"
        assert {status for status, _ in rows(engine, ids).values()} == {expected}, event_type


def test_pauses_and_open_breakers_hold_back_together(engine: Engine) -> None:
    """A pause joins the breakers' list in the claim: both hold their events, the rest flows."""
    from outbox_admin.breaker import BreakerPolicy
    from outbox_admin.handlers.base import only

    budgets = publish(engine, "BUDGET.APPROVED", 6)

    def down(event: DeliveredEvent) -> None:
        raise ConnectionError("refused")

    dispatcher = Dispatcher(
        engine,
        [only("BUDGET.*", down), Recording()],
        breaker=BreakerPolicy(failure_threshold=5, open_seconds=3600, max_open_seconds=3600),
    )
    dispatcher.dispatch_once()  # opens the budget handler's breaker; its events wait
    assert dispatcher.handler_health()[0].state == "open"
    created = publish(engine, "PROJECT.CREATED", 2)
    updated = publish(engine, "PROJECT.UPDATED", 2)
    admin.pause(engine, "PROJECT.UPDATED", reason="test")
    report = dispatcher.drain(max_seconds=30)
    assert (report.claimed, report.completed, report.paused) == (2, 2, 1)
    assert {s for s, _ in rows(engine, created).values()} == {"COMPLETED"}
    assert {s for s, _ in rows(engine, updated + budgets).values()} == {"PENDING"}


def test_pausing_twice_keeps_the_first_pause(engine: Engine) -> None:
    first = admin.pause(engine, " PROJECT.* ", reason="migration", actor="ana")
    again = admin.pause(engine, "PROJECT.*", reason="something else", actor="bob")
    assert again.created is False
    assert (again.id, again.reason, again.paused_by, again.paused_at) == (
        first.id,
        "migration",
        "admin:ana",
        first.paused_at,
    )
    assert list(analytics.pauses(engine)["pattern"]) == ["PROJECT.*"]


def test_the_pause_history_is_the_audit_trail(engine: Engine) -> None:
    admin.pause(engine, "PROJECT.*", reason="first", actor="ana")
    admin.resume(engine, "PROJECT.*", actor="bob")
    again = admin.pause(engine, "PROJECT.*", reason="second", actor="cy")
    admin.pause(engine, "BUDGET.*", reason="budgets\nline two", actor="admin:dee")
    assert again.created is True

    active = analytics.pauses(engine)
    assert list(active.columns) == analytics.PAUSE_COLUMNS
    assert list(zip(active["pattern"], active["paused_by"], strict=True)) == [
        ("BUDGET.*", "admin:dee"),
        ("PROJECT.*", "admin:cy"),
    ]
    assert active["active"].all() and active["resumed_at"].isna().all()
    history = analytics.pauses(engine, active_only=False)
    assert list(history["reason"]) == ["budgets\nline two", "second", "first"]
    ended = history.iloc[-1]
    assert (ended["resumed_by"], bool(ended["active"])) == ("admin:bob", False)
    assert ended["resumed_at"] >= ended["paused_at"]
    assert str(ended["paused_at"].tz) == "UTC"
    assert len(analytics.pauses(engine, active_only=False, limit=1)) == 1


def test_resuming_what_is_not_paused_is_refused_and_names_the_active_pauses(engine: Engine) -> None:
    with pytest.raises(AdminActionError, match="nothing is paused"):
        admin.resume(engine, "PROJECT.*")
    admin.pause(engine, "PROJECT.*", reason="test")
    with pytest.raises(AdminActionError, match=r"'PROJECT\*' is not paused; the active pauses are 'PROJECT\.\*'"):
        admin.resume(engine, "PROJECT*")
    assert analytics.pauses(engine)["pattern"].tolist() == ["PROJECT.*"]


BAD_PATTERNS = {
    "empty": ("", "is empty"),
    "blank": ("   ", "is empty"),
    "inner blank": ("PROJECT. *", "holds ' '"),
    "newline": ("PROJECT.*\nBUDGET.*", "holds '\\n'"),
    "invisible": ("PROJECT\u200b.*", "holds"),
    "unclosed set": ("PROJECT.[AB", "never closed"),
    "empty range": ("[z-a]*", "matches no character"),
    "too long": ("A" * 256, "over the limit of 255"),
    "huge": ("*" * 10_000_000, "over the limit of 255"),
    "nul": ("PROJECT\x00", "NUL"),
    "surrogate": ("PROJECT.\udcff", "UTF-8"),
    "not text": (42, "must be text"),
}


@pytest.mark.parametrize(("pattern", "message"), list(BAD_PATTERNS.values()), ids=list(BAD_PATTERNS))
def test_bad_patterns_are_refused_before_anything_is_written(engine: Engine, pattern: Any, message: str) -> None:
    started = time.perf_counter()
    with pytest.raises(FilterError, match="^pattern: ") as raised:
        admin.pause(engine, pattern, reason="test")
    assert message in str(raised.value)
    with pytest.raises(FilterError, match="^pattern: "):
        admin.resume(engine, pattern)
    assert time.perf_counter() - started < 1.0  # bounded, however big the input
    assert analytics.pauses(engine, active_only=False).empty


@pytest.mark.parametrize(
    ("reason", "message"),
    [("", "is required"), ("  \n ", "is required"), ("x" * 1001, "over the limit"), ("a\x00b", "NUL"), (None, "text")],
)
def test_a_pause_needs_a_reason(engine: Engine, reason: Any, message: str) -> None:
    with pytest.raises(FilterError, match="^reason: ") as raised:
        admin.pause(engine, "PROJECT.*", reason=reason)
    assert message in str(raised.value)
    assert analytics.pauses(engine, active_only=False).empty


def test_the_number_of_active_pauses_is_bounded(engine: Engine) -> None:
    for i in range(admin.MAX_ACTIVE_PAUSES):
        admin.pause(engine, f"TYPE{i}.*", reason="test")
    admin.pause(engine, "TYPE0.*", reason="again")  # idempotent: not one more
    with pytest.raises(AdminActionError, match="100 pauses are active"):
        admin.pause(engine, "ONE_TOO_MANY.*", reason="test")
    admin.resume(engine, "TYPE0.*")
    assert admin.pause(engine, "ONE_TOO_MANY.*", reason="test").created
    # Every active pause is in the claim: 100 patterns still claim the unpaused events.
    ids = publish(engine, "PROJECT.CREATED", 3)
    report = Dispatcher(engine, [Recording()]).dispatch_once()
    assert (report.completed, report.paused) == (3, 100)
    assert {s for s, _ in rows(engine, ids).values()} == {"COMPLETED"}


def test_concurrent_pauses_of_one_pattern_write_one_row(engine: Engine, other_engine: Engine) -> None:
    from concurrent.futures import ThreadPoolExecutor

    engines = [engine, other_engine] * 4
    with ThreadPoolExecutor(max_workers=len(engines)) as pool:
        results = list(pool.map(lambda e: admin.pause(e[1], "PROJECT.*", reason=f"r{e[0]}"), enumerate(engines)))
    assert sum(r.created for r in results) == 1
    assert len({r.id for r in results}) == 1
    assert len(analytics.pauses(engine, active_only=False)) == 1


# --- the service notices a resume at once --------------------------------------------------------


def wait_until(condition: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_a_resume_wakes_the_service_of_this_process(engine: Engine) -> None:
    ids = publish(engine, "PROJECT.CREATED", 3)
    admin.pause(engine, "PROJECT.*", reason="test")
    seen = Recording()
    service = DispatcherService(Dispatcher(engine, [seen]), interval_seconds=3600, listen=False)
    with service:
        assert service.wait_for_tick(0, timeout=10)
        assert seen.seen == []
        admin.resume(engine, "PROJECT.*")
        wait_until(lambda: len(seen.seen) == 3, "the resumed events")  # well before the next interval
    assert sorted(seen.seen) == sorted(ids)


@pytest.mark.postgres
def test_a_resume_wakes_listening_services_elsewhere_on_postgres(postgres_url: str) -> None:
    """The service has a signal of its own, so only the NOTIFY that ``resume`` sends can wake it."""
    engine = make_engine(postgres_url)
    ids = publish(engine, "PROJECT.CREATED", 3)
    admin.pause(engine, "PROJECT.*", reason="test")
    seen = Recording()
    service = DispatcherService(Dispatcher(engine, [seen]), interval_seconds=3600, signal=WakeSignal())
    try:
        service.start()
        wait_until(lambda: service.status().listening, "the LISTEN connection")
        assert service.wait_for_tick(0, timeout=10)
        wait_until(lambda: service.status().current_run is None, "the start-up run to end")
        assert seen.seen == []
        admin.resume(engine, "PROJECT.*")
        wait_until(lambda: len(seen.seen) == 3, "the resumed events")
        assert sorted(seen.seen) == sorted(ids)
    finally:
        service.stop()
        engine.dispose()


# --- the table and its migration -----------------------------------------------------------------


def test_the_migration_creates_the_pauses_table(engine: Engine) -> None:
    inspector = inspect(engine)
    columns = {c["name"]: c for c in inspector.get_columns("OutboxEventPause")}
    assert list(columns) == ["id", "pattern", "reason", "paused_by", "paused_at", "resumed_by", "resumed_at"]
    assert [name for name, c in columns.items() if not c["nullable"]] == [
        "id",
        "pattern",
        "reason",
        "paused_by",
        "paused_at",
    ]
    [active] = [ix for ix in inspector.get_indexes("OutboxEventPause") if ix["name"] == "uq_OutboxEventPause_active"]
    assert active["unique"] and active["column_names"] == ["pattern"]
    with engine.connect() as conn:
        where = conn.execute(
            text(
                "SELECT sql FROM sqlite_master WHERE name = 'uq_OutboxEventPause_active'"
                if engine.dialect.name == "sqlite"
                else "SELECT indexdef FROM pg_indexes WHERE indexname = 'uq_OutboxEventPause_active'"
            )
        ).scalar_one()
    assert "resumed_at IS NULL" in where


def test_a_database_at_0003_upgrades(db_url: str, request: pytest.FixtureRequest) -> None:
    url = (
        request.getfixturevalue("empty_postgres_url")
        if db_url.startswith("postgresql")
        else db_url.replace("outbox.db", "at_0003.db")
    )
    engine = make_engine(url)
    upgrade(engine, revision="0003")
    assert not inspect(engine).has_table("OutboxEventPause")
    ids = publish(engine, "PROJECT.CREATED", 2)
    init_db(engine)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM outbox_alembic_version")).scalar_one() == head_revision()
    assert inspect(engine).has_table("OutboxEventPause")
    admin.pause(engine, "PROJECT.*", reason="after the upgrade")
    assert Dispatcher(engine, [Recording()]).dispatch_once().claimed == 0
    assert rows(engine, ids) == dict.fromkeys(ids, ("PENDING", 0))
    engine.dispose()


def test_other_table_names_get_their_own_pauses_table(db_url: str) -> None:
    tables = OutboxTables.named("app_outbox")
    assert tables.pauses.name == "app_outboxPause"
    assert OutboxTables.named("app_outbox", pauses="app_holds").pauses.name == "app_holds"
    assert OutboxTables.named("OutboxEvent").pauses.name == DEFAULT_TABLES.pauses.name
    engine = make_engine(db_url)
    init_db(engine, tables)
    with engine.begin() as conn:
        event = publish_event(
            conn, org_id="o", event_type="PROJECT.CREATED", entity_type="P", entity_id="1", tables=tables
        )
    admin.pause(engine, "PROJECT.*", reason="custom tables", tables=tables)
    assert analytics.pauses(engine).empty  # the default tables know nothing of it
    assert list(analytics.pauses(engine, tables=tables)["pattern"]) == ["PROJECT.*"]
    dispatcher = Dispatcher(engine, [Recording()], tables=tables)
    assert dispatcher.dispatch_once().claimed == 0
    admin.resume(engine, "PROJECT.*", tables=tables)
    assert dispatcher.dispatch_once().completed == 1
    with engine.connect() as conn:
        assert conn.execute(text("SELECT status FROM app_outbox WHERE id = :id"), {"id": event.id}).scalar_one() == (
            "COMPLETED"
        )
    engine.dispose()


@pytest.mark.parametrize("names", [("a", "b", "a"), ("a", "a_t", "a_t"), ("a", None, "bad name")])
def test_pause_table_names_are_checked(names: tuple[str, str | None, str]) -> None:
    from outbox_admin import ConfigurationError

    with pytest.raises(ConfigurationError):
        OutboxTables.named(names[0], names[1], pauses=names[2])


def test_the_report_line_names_the_pauses_in_effect(engine: Engine) -> None:
    """The line the sidebar and the toasts print (``DispatchReport.describe``)."""
    publish(engine, "PROJECT.CREATED", 1)
    admin.pause(engine, "PROJECT.*", reason="test")
    admin.pause(engine, "BUDGET.*", reason="test")
    line = Dispatcher(engine, [Recording()]).dispatch_once().describe()
    assert line.startswith("0 claimed: 0 completed") and line.endswith(", 2 event-type pause(s) in effect")

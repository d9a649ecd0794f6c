"""Circuit breakers: a handler that is down pauses its events without spending their attempts.

The dispatcher's clock is injected, so the breaker's open time passes when the test
says so; the databases are real (SQLite and PostgreSQL).
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, create_engine, func, select, text

from outbox_admin import Backoff, Dispatcher, publish_outbox_event
from outbox_admin.breaker import BreakerPolicy
from outbox_admin.event_types import register_event_type
from outbox_admin.handlers.base import DeliveredEvent, RecordingHandler, only
from outbox_admin.models import DEFAULT_TABLES
from outbox_admin.patterns import glob_for_postgres, glob_for_sqlite

EV = DEFAULT_TABLES.events
register_event_type("BUDGET.APPROVED")


class FakeClock:
    def __init__(self) -> None:
        self.now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


class Switchable:
    """A sink that is down (raises) until ``up`` is set; records what it delivered."""

    def __init__(self, name: str = "sink", event_types: tuple[str, ...] | None = None) -> None:
        self.name = name
        self.event_types = event_types
        self.up = False
        self.calls = 0
        self.delivered: list[str] = []

    def __call__(self, event: DeliveredEvent) -> None:
        self.calls += 1
        if not self.up:
            raise ConnectionError("connection refused")
        self.delivered.append(event.id)


class SwitchableBatch(Switchable):
    def handle_batch(self, events: Sequence[DeliveredEvent]) -> dict[str, BaseException]:
        self.calls += 1
        if not self.up:
            raise ConnectionError("connection refused")
        self.delivered.extend(e.id for e in events)
        return {}


def publish(engine: Engine, count: int, *, event_type: str = "PROJECT.CREATED", org_id: str = "org-1") -> list[str]:
    ids = []
    with engine.begin() as conn:
        for i in range(count):
            event = publish_outbox_event(
                conn, org_id=org_id, event_type=event_type, entity_type="Project", entity_id=f"p-{i}", payload={"i": i}
            )
            ids.append(event.id)
    return ids


def statuses(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(conn.execute(select(EV.c.status, func.count()).group_by(EV.c.status)).all())  # type: ignore[arg-type]


def attempts_spent(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.coalesce(func.sum(EV.c.retry_count), 0))).scalar_one())


def dispatcher(engine: Engine, handlers: list[object], clock: FakeClock, **kwargs: object) -> Dispatcher:
    kwargs.setdefault("backoff", Backoff(base=1, jitter=0))
    return Dispatcher(engine, handlers, clock=clock, batch_size=50, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("sink_class", [Switchable, SwitchableBatch])
def test_an_outage_spends_no_attempts_and_ends_with_every_event_delivered(
    engine: Engine, sink_class: type[Switchable], caplog: pytest.LogCaptureFixture
) -> None:
    ids = publish(engine, 30)
    clock = FakeClock()
    sink = sink_class()
    d = dispatcher(engine, [sink], clock)
    caplog.set_level(logging.WARNING, logger="outbox_admin.breaker")

    first = d.dispatch_once()
    assert (first.claimed, first.waiting, first.retried, first.failed) == (30, 30, 0, 0)
    assert attempts_spent(engine) == 0, "the failures that opened the breaker are given back"
    (health,) = d.handler_health()
    assert health.state == "open" and "connection refused" in (health.last_error or "")
    assert health.next_probe_at is not None

    # While open, nothing routed to the sink is claimed, however often the dispatcher ticks.
    calls = sink.calls
    for _ in range(5):
        assert d.dispatch_once().claimed == 0
    assert sink.calls == calls

    clock.advance(5)  # the first probe: still down; a failed probe is the handler's failure, given back
    probe = d.dispatch_once()
    assert sink.calls == calls + 1
    assert probe.retried == 0 and probe.waiting == probe.claimed
    assert d.handler_health()[0].state == "open"
    assert d.seconds_to_next_probe() == pytest.approx(10)  # doubled

    sink.up = True
    clock.advance(10)
    total = d.drain()
    assert statuses(engine) == {"COMPLETED": 30}
    assert sorted(sink.delivered) == sorted(ids)
    assert attempts_spent(engine) == 0, "the whole outage cost no event an attempt"
    assert d.handler_health()[0].state == "closed"
    opened = [r for r in caplog.records if "circuit open" in r.getMessage()]
    closed = [r for r in caplog.records if "circuit closed" in r.getMessage()]
    assert len(opened) == 2 and len(closed) == 1, "one log line per state change, not one per event"
    assert total.completed == 30


def test_events_of_other_handlers_keep_flowing_while_one_is_open(engine: Engine) -> None:
    projects = publish(engine, 10)
    budgets = publish(engine, 10, event_type="BUDGET.APPROVED")
    clock = FakeClock()
    down = Switchable("projects-sink")
    up = RecordingHandler()
    d = dispatcher(engine, [only("PROJECT.*", down), only("BUDGET.*", up)], clock)
    d.batch_size = 5  # batches of projects first (oldest first): they open the breaker
    d.drain()
    assert sorted(up.ids) == sorted(budgets), "budgets are claimed past the paused projects"
    with engine.connect() as conn:
        rows = conn.execute(select(EV.c.id, EV.c.status, EV.c.retry_count).where(EV.c.id.in_(projects))).all()
    assert {r.status for r in rows} == {"PENDING"} and sum(r.retry_count for r in rows) == 0
    # The claim itself leaves them: a tick with the breaker open claims nothing at all now.
    assert d.dispatch_once().claimed == 0


def test_an_org_scoped_handler_pauses_only_its_org(engine: Engine) -> None:
    a = publish(engine, 6, org_id="org-a")
    b = publish(engine, 6, org_id="org-b")
    clock = FakeClock()
    down = Switchable("org-a-sink")
    everyone = RecordingHandler()
    d = dispatcher(engine, [only("*", down, org_ids=["org-a"]), everyone], clock, breaker=BreakerPolicy(3))
    d.batch_size = 3
    d.drain()
    assert set(b) <= set(everyone.ids)
    # The first org-a batch reached the other handler before the breaker opened; the rest were not claimed.
    assert set(everyone.ids) & set(a) == set(a[:3]), "org-a events wait: their sink is down"
    with engine.connect() as conn:
        waiting = conn.execute(select(func.count()).where(EV.c.id.in_(a), EV.c.status == "PENDING")).scalar_one()
    assert waiting == 6
    down.up = True
    clock.advance(60)
    d.drain()
    assert sorted(down.delivered) == sorted(a)
    assert sorted(everyone.ids) == sorted(a + b), "each event reached the other handler exactly once"
    assert statuses(engine) == {"COMPLETED": 12}


def test_one_poison_event_does_not_open_the_breaker(engine: Engine) -> None:
    (poison,) = publish(engine, 1)
    clock = FakeClock()

    def handler(event: DeliveredEvent) -> None:
        if event.id == poison:
            raise ValueError("bad payload")

    d = dispatcher(engine, [handler], clock, max_attempts=5, backoff=Backoff(base=0, jitter=0))
    for _ in range(5):
        d.dispatch_once()
    assert statuses(engine) == {"FAILED": 1}
    assert d.handler_health()[0].state == "closed"
    assert d.handler_health()[0].failures_in_a_row == 1, "the same event failing again counts once"


def test_without_breakers_an_outage_dead_letters_events(engine: Engine) -> None:
    """The old behaviour, kept behind ``breaker=None``: proves the outage test above can fail."""
    publish(engine, 10)
    clock = FakeClock()
    d = dispatcher(engine, [Switchable()], clock, breaker=None, max_attempts=3, backoff=Backoff(base=0, jitter=0))
    for _ in range(3):
        d.dispatch_once()
    assert statuses(engine) == {"FAILED": 10}


def test_a_success_between_failures_keeps_it_closed(engine: Engine) -> None:
    publish(engine, 20)
    clock = FakeClock()
    seen = 0

    def every_other_fails(event: DeliveredEvent) -> None:
        nonlocal seen
        seen += 1
        if seen % 2:
            raise ConnectionError("flaky")

    d = dispatcher(engine, [every_other_fails], clock, breaker=BreakerPolicy(failure_threshold=2))
    report = d.dispatch_once()
    assert (report.completed, report.retried, report.waiting) == (10, 10, 0)
    assert d.handler_health()[0].state == "closed"


# --- the glob patterns as the databases match them ----------------------------------------------------

PATTERN_CHARS = "AB_.*?[]!-"
TEXT_CHARS = "AB_.-]!["


@pytest.fixture(scope="module")
def sqlite_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path_factory.mktemp('glob') / 'glob.db'}")
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def postgres_engine(postgres_databases: Any) -> Iterator[Engine]:
    name = postgres_databases.create(migrated=False)
    engine = create_engine(postgres_databases.url_for(name))
    yield engine
    engine.dispose()
    postgres_databases.drop(name)


patterns_and_texts = given(
    patterns=st.lists(st.text(PATTERN_CHARS, max_size=6), min_size=1, max_size=8),
    texts=st.lists(st.text(TEXT_CHARS, max_size=5), min_size=1, max_size=8),
)


@settings(max_examples=200, deadline=None)
@patterns_and_texts
def test_sqlite_glob_matches_as_fnmatch(sqlite_engine: Engine, patterns: list[str], texts: list[str]) -> None:
    with sqlite_engine.connect() as conn:
        for pattern in patterns:
            glob = glob_for_sqlite(pattern)
            got = [conn.execute(text("SELECT :v GLOB :p"), {"v": v, "p": glob}).scalar_one() for v in texts]
            assert [bool(g) for g in got] == [fnmatch.fnmatchcase(v, pattern) for v in texts], (pattern, glob)


@pytest.mark.postgres
@settings(max_examples=150, deadline=None)
@example(patterns=["[?[.]", "[[=]", "[a[:]*"], texts=["[", ".", "?", "=", ":", "a:", "b"])  # [. [= [: in a set
@patterns_and_texts
def test_postgres_regex_matches_as_fnmatch(postgres_engine: Engine, patterns: list[str], texts: list[str]) -> None:
    with postgres_engine.connect() as conn:
        for pattern in patterns:
            regex = glob_for_postgres(pattern)
            got = (
                conn.execute(
                    text("SELECT v ~ :p FROM unnest(CAST(:vs AS text[])) WITH ORDINALITY AS t(v, n) ORDER BY n"),
                    {"vs": texts, "p": regex},
                )
                .scalars()
                .all()
            )
            assert [bool(g) for g in got] == [fnmatch.fnmatchcase(v, pattern) for v in texts], (pattern, regex)

from __future__ import annotations

import datetime as dt
import enum
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
from sqlalchemy import Column, Engine, MetaData, String, Table, func, insert, select
from sqlalchemy.orm import Session

from outbox_admin import (
    EventSpec,
    EventStatus,
    InvalidEventError,
    NotInTransactionError,
    OutboxError,
    OutboxEvent,
    OutboxEventTransition,
    OutboxTables,
    PayloadError,
    UnknownEventTypeError,
    flush_outbox,
    publish_outbox_event,
    publish_outbox_events,
)
from outbox_admin.models import DEFAULT_TABLES
from outbox_admin.publisher import BUFFER_LIMIT


def publish(tx, **overrides):
    fields = dict(
        org_id="org-1", event_type="PROJECT.CREATED", entity_type="Project", entity_id="p-1", payload={"name": "Apollo"}
    )
    fields.update(overrides)
    return publish_outbox_event(tx, **fields)


def counts(engine: Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        events = conn.scalar(select(func.count()).select_from(DEFAULT_TABLES.events))
        transitions = conn.scalar(select(func.count()).select_from(DEFAULT_TABLES.transitions))
    return events, transitions


def test_commit_leaves_one_event_and_its_first_transition(engine: Engine) -> None:
    with Session(engine) as session, session.begin():
        event = publish(session, payload={"budget": Decimal("1250.50")})
    assert counts(engine) == (1, 1)
    with Session(engine) as session:
        stored = session.get(OutboxEvent, event.id)
        assert stored is not None
        assert stored.status == EventStatus.PENDING
        assert stored.retry_count == 0
        assert stored.payload == {"budget": 1250.5}
        assert stored.created_at.tzinfo is not None and stored.created_at.utcoffset() == dt.timedelta(0)
        assert stored.available_at >= stored.created_at
        transition = session.scalars(select(OutboxEventTransition)).one()
    assert (transition.event_id, transition.from_status, transition.to_status) == (event.id, None, "PENDING")
    assert transition.actor == "publisher"


def test_rollback_leaves_nothing(engine: Engine) -> None:
    with pytest.raises(RuntimeError), Session(engine) as session, session.begin():
        publish(session)
        raise RuntimeError("the business change failed")
    with engine.connect() as conn, conn.begin() as tx:
        publish(conn)
        tx.rollback()
    assert counts(engine) == (0, 0)


def test_connection_transaction_commits_with_the_change(engine: Engine) -> None:
    with engine.begin() as conn:
        event = publish(conn)
    assert counts(engine) == (1, 1)
    assert len(event.id) == 36 and uuid.UUID(event.id).version == 7


def test_publish_outside_a_transaction_is_refused(engine: Engine) -> None:
    with pytest.raises(NotInTransactionError, match="Engine"):
        publish(engine)
    with Session(engine) as session, pytest.raises(NotInTransactionError, match="session has no transaction"):
        publish(session)
    with engine.connect() as conn, pytest.raises(NotInTransactionError, match="connection has no transaction"):
        publish(conn)
    with pytest.raises(NotInTransactionError, match="not a Session or Connection"):
        publish("sqlite:///outbox.db")
    assert counts(engine) == (0, 0)


def test_unknown_event_type_names_close_matches(engine: Engine) -> None:
    with Session(engine) as session, session.begin():
        with pytest.raises(UnknownEventTypeError) as info:
            publish(session, event_type="PROJECT.CREATD")
        assert "PROJECT.CREATED" in info.value.close_matches
        assert "did you mean 'PROJECT.CREATED'" in str(info.value)
        with pytest.raises(UnknownEventTypeError):
            publish(session, event_type=42)
    assert counts(engine) == (0, 0)


@pytest.mark.parametrize(
    ("field", "value"),
    [("org_id", ""), ("entity_type", "   "), ("entity_id", "x" * 256), ("entity_id", None), ("org_id", True)],
)
def test_bad_fields_are_refused(engine: Engine, field: str, value: object) -> None:
    with Session(engine) as session, session.begin(), pytest.raises(InvalidEventError, match=field):
        publish(session, **{field: value})


def test_integer_entity_ids_are_stored_as_text(engine: Engine) -> None:
    with engine.begin() as conn:
        event = publish(conn, entity_id=42)
    assert event.entity_id == "42"


class Colour(enum.Enum):
    RED = "red"


def test_payload_normalisation_round_trips(engine: Engine) -> None:
    some_uuid = uuid.uuid4()
    payload = {
        "price": Decimal("19.99"),
        "units": Decimal("3"),
        "big": Decimal("1E+3"),
        "when": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        "day": dt.date(2026, 1, 2),
        "id": some_uuid,
        "colour": Colour.RED,
        "pair": (1, 2),
        "tags": {"b", "a"},
        "nested": {"list": [Decimal("0.5"), None, True]},
    }
    with engine.begin() as conn:
        event = publish(conn, payload=payload)
    expected = {
        "price": 19.99,
        "units": 3,
        "big": 1000,
        "when": "2026-01-02T03:04:05+00:00",
        "day": "2026-01-02",
        "id": str(some_uuid),
        "colour": "red",
        "pair": [1, 2],
        "tags": ["a", "b"],
        "nested": {"list": [0.5, None, True]},
    }
    assert event.payload == expected
    with Session(engine) as session:
        stored = session.get(OutboxEvent, event.id).payload
    assert stored == expected
    assert isinstance(stored["units"], int) and isinstance(stored["price"], float)


@pytest.mark.parametrize(
    ("payload", "path"),
    [
        ({"items": [{"price": 1}, {"price": 2}, {"price": 3}, {"price": float("nan")}]}, r"payload\.items\[3\]\.price"),
        ({"x": float("inf")}, r"payload\.x"),
        ({"x": Decimal("NaN")}, r"payload\.x"),
        ({"x": b"bytes"}, r"payload\.x.*bytes"),
        ({"x": object()}, r"payload\.x.*object"),
        ({1: "one"}, r"^payload: key 1"),
        ({"a": {"b c": "\x00"}}, r'payload\.a\["b c"\].*NUL'),
        ({"s": "\ud800"}, r"payload\.s.*surrogate"),
        ({"x": "x" * (300 * 1024)}, r"payload: is .*over the limit of 262144 bytes"),
        ([1.5] * (100 * 1024), r"payload: is 409601 bytes encoded, over the limit of 262144 bytes"),
    ],
)
def test_payload_errors_name_the_path_and_write_nothing(engine: Engine, payload: object, path: str) -> None:
    with Session(engine) as session, session.begin(), pytest.raises(PayloadError, match=path):
        publish(session, payload=payload)
    assert counts(engine) == (0, 0)


def test_payload_size_limit_is_configurable(engine: Engine) -> None:
    with engine.begin() as conn:
        with pytest.raises(PayloadError, match="limit of 10 bytes"):
            publish(conn, payload={"name": "long enough"}, max_payload_bytes=10)
        publish(conn, payload={"x": "x" * (300 * 1024)}, max_payload_bytes=None)
    assert counts(engine) == (1, 1)


def test_deep_nesting_is_a_payload_error(engine: Engine) -> None:
    deep: object = 1
    for _ in range(200):
        deep = [deep]
    with engine.begin() as conn, pytest.raises(PayloadError, match="nested deeper"):
        publish(conn, payload=deep)


def test_idempotency_key_stores_one_event(engine: Engine) -> None:
    with engine.begin() as conn:
        first = publish(conn, idempotency_key="order-7")
        second = publish(conn, idempotency_key="order-7", payload={"ignored": True})
        other_org = publish(conn, idempotency_key="order-7", org_id="org-2")
    with engine.begin() as conn:
        later = publish(conn, idempotency_key="order-7")
    assert first.id == second.id == later.id != other_org.id
    assert later.payload == {"name": "Apollo"}
    assert counts(engine) == (2, 2)


def test_idempotency_under_two_racing_transactions(engine: Engine) -> None:
    """Two transactions publish the same key at once: one event, both get its id."""
    inside = threading.Barrier(2, timeout=10)

    def racer(i: int) -> str:
        with Session(engine) as session, session.begin():
            inside.wait()  # both transactions are open before either publishes
            event = publish(session, idempotency_key="same-key", entity_id=f"p-{i}")
            return event.id

    # On SQLite the second writer waits for the write lock; on PostgreSQL for the unique index.
    with ThreadPoolExecutor(2) as pool:
        ids = list(pool.map(racer, range(2)))
    assert ids[0] == ids[1]
    assert counts(engine) == (1, 1)


def test_eight_threads_publish_eight_thousand_distinct_events(engine: Engine) -> None:
    def worker(thread_no: int) -> list[str]:
        made: list[str] = []
        for batch in range(20):
            with Session(engine) as session, session.begin():
                for i in range(50):
                    made.append(publish(session, entity_id=f"{thread_no}-{batch}-{i}").id)
        return made

    with ThreadPoolExecutor(8) as pool:
        all_ids = [i for ids in pool.map(worker, range(8)) for i in ids]
    assert len(all_ids) == 8000 == len(set(all_ids))
    assert counts(engine) == (8000, 8000)


def test_bulk_publish_checks_everything_before_writing(engine: Engine) -> None:
    specs = [EventSpec("org-1", "PROJECT.UPDATED", "Project", str(i), {"i": i}) for i in range(100)]
    with engine.begin() as conn:
        with pytest.raises(PayloadError, match="payload"):
            publish_outbox_events(conn, [*specs, EventSpec("org-1", "PROJECT.UPDATED", "Project", "x", {1: 2})])
        events = publish_outbox_events(conn, specs)
        assert publish_outbox_events(conn, []) == []
        with pytest.raises(InvalidEventError, match="unexpected keyword"):
            publish_outbox_events(conn, [{"org": "x"}])
    assert [e.payload["i"] for e in events] == list(range(100))
    assert counts(engine) == (100, 100)
    with engine.connect() as conn:
        order = (
            conn.execute(
                select(DEFAULT_TABLES.events.c.entity_id).order_by(
                    DEFAULT_TABLES.events.c.created_at, DEFAULT_TABLES.events.c.id
                )
            )
            .scalars()
            .all()
        )
    assert order == [str(i) for i in range(100)]


def test_all_errors_derive_from_outbox_error() -> None:
    import outbox_admin.errors as errors

    for name in dir(errors):
        obj = getattr(errors, name)
        if isinstance(obj, type) and issubclass(obj, Exception) and obj.__module__ == errors.__name__:
            assert issubclass(obj, OutboxError)


# --- the per-connection buffer ---------------------------------------------------------

PROJECTS = Table("test_project", MetaData(), Column("id", String(36), primary_key=True))


def test_a_later_statement_in_the_transaction_sees_buffered_events(engine: Engine) -> None:
    with Session(engine) as session, session.begin():
        event = publish(session)
        assert event.created_at is None  # buffered: not written yet
        assert session.scalar(select(func.count()).select_from(DEFAULT_TABLES.events)) == 1
        assert event.created_at is not None and event.available_at == event.created_at
    with engine.begin() as conn:
        event = publish(conn)
        assert conn.exec_driver_sql('SELECT count(*) FROM "OutboxEventTransition"').scalar() == 2
        assert event.created_at is not None
    assert counts(engine) == (2, 2)


def test_flush_outbox_writes_now_and_commit_fills_the_times(engine: Engine) -> None:
    with Session(engine) as session, session.begin():
        first = publish(session)
        flush_outbox(session)
        assert first.created_at is not None
        second = publish(session)
    assert second.created_at is not None and second.created_at >= first.created_at
    with Session(engine) as session:
        stored = session.get(OutboxEvent, second.id)
        assert stored is not None and stored.created_at == second.created_at
    with pytest.raises(NotInTransactionError):
        flush_outbox(engine)


def test_a_rolled_back_savepoint_drops_its_buffered_events(engine: Engine) -> None:
    with Session(engine) as session, session.begin():
        kept = publish(session, entity_id="kept")
        savepoint = session.begin_nested()
        publish(session, entity_id="dropped")
        savepoint.rollback()
        later = publish(session, entity_id="later")
    with engine.begin() as conn:
        conn_kept = publish(conn, entity_id="conn-kept")
        savepoint = conn.begin_nested()
        publish(conn, entity_id="conn-dropped")
        savepoint.rollback()
    with engine.connect() as conn:
        stored = set(conn.execute(select(DEFAULT_TABLES.events.c.id)).scalars())
    assert stored == {kept.id, later.id, conn_kept.id}
    assert counts(engine) == (3, 3)


def test_idempotent_publish_writes_the_buffer_first(engine: Engine) -> None:
    with engine.begin() as conn:
        plain = publish(conn, entity_id="plain")
        keyed = publish(conn, entity_id="keyed", idempotency_key="k-1")
        assert plain.created_at is not None and keyed.created_at is not None
        assert plain.created_at <= keyed.created_at
    assert counts(engine) == (2, 2)


def test_a_large_transaction_is_written_in_bounded_statements(engine: Engine) -> None:
    with engine.begin() as conn:
        events = [publish(conn, entity_id=f"p-{i}") for i in range(BUFFER_LIMIT + 1)]
        assert all(e.created_at is not None for e in events[:BUFFER_LIMIT])  # the full buffer was written
        assert events[-1].created_at is None
    assert counts(engine) == (BUFFER_LIMIT + 1, BUFFER_LIMIT + 1)


def test_a_failed_write_keeps_the_change_from_committing(engine: Engine) -> None:
    """Events for tables that do not exist: the write fails at commit, and the business change goes too."""
    PROJECTS.create(engine)
    missing = OutboxTables.named("MissingEvent", "MissingEventTransition")
    with engine.connect() as conn:
        transaction = conn.begin()
        conn.execute(insert(PROJECTS), {"id": "p-1"})
        event = publish(conn, tables=missing)
        with pytest.raises(Exception, match="MissingEvent") as info:
            transaction.commit()
        assert any("stay unwritten" in note for note in getattr(info.value, "__notes__", []))
        assert event.created_at is None
        transaction.rollback()
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(PROJECTS)) == 0


def test_a_failed_write_inside_a_session_leaves_it_to_roll_back(engine: Engine) -> None:
    PROJECTS.create(engine)
    missing = OutboxTables.named("MissingEvent", "MissingEventTransition")
    with Session(engine) as session:
        session.begin()
        session.execute(insert(PROJECTS), {"id": "p-1"})
        publish(session, tables=missing)
        with pytest.raises(Exception, match="MissingEvent"):
            session.commit()
        session.rollback()
        with session.begin():
            publish(session)  # the session is usable again, and the failed buffer is gone
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(PROJECTS)) == 0
    assert counts(engine) == (1, 1)


def test_an_autocommit_connection_writes_at_once(engine: Engine) -> None:
    """Its changes commit statement by statement: a buffer would be lost if it closed without a commit."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.begin()
        event = publish(conn)
        assert event.created_at is not None
    assert counts(engine) == (1, 1)
    with engine.connect() as conn, conn.begin() as tx:  # the pooled connection is transactional again
        publish(conn)
        conn.execute(DEFAULT_TABLES.events.delete())
        tx.rollback()
    assert counts(engine) == (1, 1)


def test_a_scoped_session_publishes_in_its_current_session(engine: Engine) -> None:
    from sqlalchemy.orm import scoped_session, sessionmaker

    registry = scoped_session(sessionmaker(engine))
    try:
        with pytest.raises(NotInTransactionError, match="session has no transaction"):
            publish(registry)
        with registry.begin():
            event = publish(registry)
        assert event.created_at is not None
    finally:
        registry.remove()
    assert counts(engine) == (1, 1)

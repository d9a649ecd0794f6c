from __future__ import annotations

import datetime as dt
import enum
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, nullcontext
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Column, Engine, MetaData, String, Table, event, func, insert, select
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
    outbox_batch,
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


# --- write-through: every commit path carries the events ---------------------------------

PROJECTS = Table("test_project", MetaData(), Column("id", String(36), primary_key=True))
MISSING = OutboxTables.named("MissingEvent", "MissingEventTransition")


def project_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(PROJECTS))


@contextmanager
def statements(engine: Engine) -> Iterator[list[str]]:
    """Every statement the engine's connections send while the block runs."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def test_publish_writes_in_the_transaction_before_returning(engine: Engine) -> None:
    with Session(engine) as session, session.begin():
        event_ = publish(session)
        assert event_.created_at is not None and event_.available_at == event_.created_at
        raw = session.connection().connection.dbapi_connection.cursor()  # below SQLAlchemy: it is written
        raw.execute('SELECT count(*) FROM "OutboxEventTransition"')
        assert raw.fetchone()[0] == 1
        raw.close()
    with Session(engine) as session:
        stored = session.get(OutboxEvent, event_.id)
        assert stored is not None and stored.created_at == event_.created_at


@pytest.mark.parametrize("exit_with", ["exception", "normal exit"])
def test_a_raw_dbapi_commit_commits_the_change_with_its_events(engine: Engine, exit_with: str) -> None:
    """The field report: INSERT, publish, a raw DBAPI commit, then the block ends: both or neither."""
    PROJECTS.create(engine)
    with pytest.raises(RuntimeError) if exit_with == "exception" else nullcontext(), engine.begin() as conn:
        conn.execute(insert(PROJECTS), {"id": "p-1"})
        publish(conn)
        conn.connection.dbapi_connection.commit()
        if exit_with == "exception":
            raise RuntimeError("after the raw commit")
    assert (project_count(engine), *counts(engine)) == (1, 1, 1)


def test_without_a_commit_neither_the_change_nor_the_event_stays(engine: Engine) -> None:
    PROJECTS.create(engine)
    with pytest.raises(RuntimeError), engine.begin() as conn:
        conn.execute(insert(PROJECTS), {"id": "p-1"})
        publish(conn)
        raise RuntimeError("the business change failed")
    assert (project_count(engine), *counts(engine)) == (0, 0, 0)


def test_a_rolled_back_savepoint_drops_its_events(engine: Engine) -> None:
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


def test_idempotent_publish_writes_in_order(engine: Engine) -> None:
    with engine.begin() as conn:
        plain = publish(conn, entity_id="plain")
        keyed = publish(conn, entity_id="keyed", idempotency_key="k-1")
        assert plain.created_at is not None and keyed.created_at is not None
        assert plain.created_at <= keyed.created_at
    assert counts(engine) == (2, 2)


def test_a_large_bulk_call_is_written_in_bounded_statements(engine: Engine) -> None:
    specs = [EventSpec("org-1", "PROJECT.UPDATED", "Project", f"p-{i}") for i in range(2 * BUFFER_LIMIT + 1)]
    with engine.begin() as conn, statements(engine) as seen:
        events = publish_outbox_events(conn, specs)
        assert all(e.created_at is not None for e in events)
    per_write = 1 if engine.dialect.name == "postgresql" else 2
    assert len([s for s in seen if "INSERT" in s]) == 3 * per_write
    assert counts(engine) == (len(specs), len(specs))


def test_a_failed_write_raises_and_keeps_the_change_from_committing(engine: Engine) -> None:
    """Events for tables that do not exist: the publish raises, and the commit cannot succeed."""
    PROJECTS.create(engine)
    with engine.connect() as conn:
        transaction = conn.begin()
        conn.execute(insert(PROJECTS), {"id": "p-1"})
        with pytest.raises(Exception, match="MissingEvent") as info:
            publish(conn, tables=MISSING)
        assert any("cannot commit" in note for note in getattr(info.value, "__notes__", []))
        with pytest.raises(Exception):  # noqa: B017 - SQLite: the same error; PostgreSQL: the transaction is aborted
            transaction.commit()
        transaction.rollback()
    with engine.connect() as conn, conn.begin() as transaction:
        conn.execute(insert(PROJECTS), {"id": "p-2"})
        with pytest.raises(Exception, match="MissingEvent"):
            publish(conn, tables=MISSING, idempotency_key="k-1")
        with pytest.raises(Exception):  # noqa: B017
            transaction.commit()
        transaction.rollback()
    assert project_count(engine) == 0


def test_a_failed_write_inside_a_session_leaves_it_to_roll_back(engine: Engine) -> None:
    PROJECTS.create(engine)
    with Session(engine) as session:
        session.begin()
        session.execute(insert(PROJECTS), {"id": "p-1"})
        with pytest.raises(Exception, match="MissingEvent"):
            publish(session, tables=MISSING)
        with pytest.raises(Exception):  # noqa: B017
            session.commit()
        session.rollback()
        with session.begin():
            publish(session)  # the session is usable again, and the failed events are gone
    assert project_count(engine) == 0
    assert counts(engine) == (1, 1)


def test_a_failed_write_inside_a_rolled_back_savepoint_goes_with_it(engine: Engine) -> None:
    PROJECTS.create(engine)
    with engine.begin() as conn:
        conn.execute(insert(PROJECTS), {"id": "p-1"})
        savepoint = conn.begin_nested()
        with pytest.raises(Exception, match="MissingEvent"):
            publish(conn, tables=MISSING)
        savepoint.rollback()
        publish(conn)
    assert (project_count(engine), *counts(engine)) == (1, 1, 1)


# --- outbox_batch: buffered publishing, opted into -------------------------------------


@pytest.mark.parametrize("tx_kind", ["connection", "session"])
def test_a_batch_writes_ten_thousand_calls_in_a_handful_of_statements(engine: Engine, tx_kind: str) -> None:
    with ExitStack() as stack:
        if tx_kind == "session":
            tx: Any = stack.enter_context(Session(engine))
            stack.enter_context(tx.begin())
        else:
            tx = stack.enter_context(engine.begin())
        with statements(engine) as seen:
            with outbox_batch(tx):
                events = [publish(tx, entity_id=f"p-{i}") for i in range(10_000)]
            assert all(e.created_at is not None for e in events)  # written when the block exited
        assert len(seen) <= 12, seen  # 5 writes of 2,000 (two statements each on SQLite)
    assert counts(engine) == (10_000, 10_000)


def test_a_batch_rolls_back_cleanly(engine: Engine) -> None:
    with engine.connect() as conn:
        with conn.begin() as transaction:
            with outbox_batch(conn):
                for i in range(BUFFER_LIMIT + 10):
                    publish(conn, entity_id=f"p-{i}")
            transaction.rollback()
        with conn.begin() as transaction, outbox_batch(conn):
            publish(conn)
            transaction.rollback()  # inside the block: the buffer goes with the transaction
        assert counts(engine) == (0, 0)
    with pytest.raises(RuntimeError), Session(engine) as session, session.begin(), outbox_batch(session):
        publish(session)
        raise RuntimeError("the business change failed")
    assert counts(engine) == (0, 0)


def test_a_batch_is_written_before_the_next_statement_by_flush_and_at_exit(engine: Engine) -> None:
    with Session(engine) as session, session.begin():
        with outbox_batch(session):
            event_ = publish(session)
            assert event_.created_at is None  # buffered: not written yet
            assert session.scalar(select(func.count()).select_from(DEFAULT_TABLES.events)) == 1
            assert event_.created_at is not None and event_.available_at == event_.created_at
            second = publish(session)
            flush_outbox(session)
            assert second.created_at is not None
            third = publish(session)
        assert third.created_at is not None  # the block's exit wrote it
        outside = publish(session)
        assert outside.created_at is not None  # write-through again after the block
    assert counts(engine) == (4, 4)
    with pytest.raises(NotInTransactionError):
        flush_outbox(engine)
    with pytest.raises(NotInTransactionError), outbox_batch(engine):  # type: ignore[arg-type]
        pass


def test_a_raw_commit_after_the_batch_block_carries_its_events(engine: Engine) -> None:
    """Inside the block a raw commit is not allowed; after it (even after an exception) it is safe."""
    PROJECTS.create(engine)
    with engine.begin() as conn:
        conn.execute(insert(PROJECTS), {"id": "p-1"})
        with pytest.raises(RuntimeError), outbox_batch(conn):
            publish(conn)
            raise RuntimeError("caught by the caller")
        conn.connection.dbapi_connection.commit()
    assert (project_count(engine), *counts(engine)) == (1, 1, 1)


def test_batches_nest_and_the_scope_ends_with_the_outer_block(engine: Engine) -> None:
    with engine.begin() as conn, outbox_batch(conn):
        with outbox_batch(conn):
            inner = publish(conn)
        assert inner.created_at is not None  # every exit writes the buffer
        still_batched = publish(conn)
        assert still_batched.created_at is None
    assert counts(engine) == (2, 2)


def test_a_rolled_back_savepoint_drops_its_buffered_events(engine: Engine) -> None:
    with Session(engine) as session, session.begin(), outbox_batch(session):
        kept = publish(session, entity_id="kept")
        savepoint = session.begin_nested()
        publish(session, entity_id="dropped")
        savepoint.rollback()
        later = publish(session, entity_id="later")
    with engine.begin() as conn, outbox_batch(conn):
        conn_kept = publish(conn, entity_id="conn-kept")
        savepoint = conn.begin_nested()
        inner = conn.begin_nested()
        publish(conn, entity_id="conn-dropped")
        inner.commit()
        publish(conn, entity_id="conn-dropped-too")
        savepoint.rollback()
    with engine.connect() as conn:
        stored = set(conn.execute(select(DEFAULT_TABLES.events.c.id)).scalars())
    assert stored == {kept.id, later.id, conn_kept.id}
    assert counts(engine) == (3, 3)


def test_idempotent_publish_in_a_batch_writes_the_buffer_first(engine: Engine) -> None:
    with engine.begin() as conn, outbox_batch(conn):
        plain = publish(conn, entity_id="plain")
        keyed = publish(conn, entity_id="keyed", idempotency_key="k-1")
        assert plain.created_at is not None and keyed.created_at is not None
        assert plain.created_at <= keyed.created_at
    assert counts(engine) == (2, 2)


def test_a_large_batch_is_written_in_bounded_statements(engine: Engine) -> None:
    with engine.begin() as conn, outbox_batch(conn):
        events = [publish(conn, entity_id=f"p-{i}") for i in range(BUFFER_LIMIT + 1)]
        assert all(e.created_at is not None for e in events[:BUFFER_LIMIT])  # the full buffer was written
        assert events[-1].created_at is None
    assert counts(engine) == (BUFFER_LIMIT + 1, BUFFER_LIMIT + 1)


def test_a_failed_batch_write_keeps_the_change_from_committing(engine: Engine) -> None:
    PROJECTS.create(engine)
    with engine.connect() as conn:
        transaction = conn.begin()
        conn.execute(insert(PROJECTS), {"id": "p-1"})
        with pytest.raises(Exception, match="MissingEvent") as info, outbox_batch(conn):
            event_ = publish(conn, tables=MISSING)
            transaction.commit()
        assert any("stay unwritten" in note for note in getattr(info.value, "__notes__", []))
        assert event_.created_at is None
        transaction.rollback()
    assert project_count(engine) == 0


def test_a_failed_write_at_the_end_of_a_batch_raises_there(engine: Engine) -> None:
    with engine.connect() as conn, conn.begin() as transaction:
        with pytest.raises(Exception, match="MissingEvent"), outbox_batch(conn):
            publish(conn, tables=MISSING)
        with pytest.raises(Exception):  # noqa: B017
            transaction.commit()
        transaction.rollback()
    with engine.connect() as conn, conn.begin() as transaction:
        with pytest.raises(RuntimeError) as info, outbox_batch(conn):
            publish(conn, tables=MISSING)
            raise RuntimeError("the block's own error")
        assert any("on the way out failed too" in note for note in info.value.__notes__)
        transaction.rollback()
    assert counts(engine) == (0, 0)


def test_an_autocommit_connection_writes_at_once(engine: Engine) -> None:
    """Its changes commit statement by statement: a buffer would be lost if it closed without a commit."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.begin()
        event = publish(conn)
        assert event.created_at is not None
        with outbox_batch(conn):
            assert publish(conn).created_at is not None  # not buffered, even in a batch
    assert counts(engine) == (2, 2)
    with engine.connect() as conn, conn.begin() as tx:  # the pooled connection is transactional again
        publish(conn)
        conn.execute(DEFAULT_TABLES.events.delete())
        tx.rollback()
    assert counts(engine) == (2, 2)


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

"""``publish_outbox_event``: write an event with the caller's transaction.

The event row and its first history row (``None -> PENDING``) are written on
the caller's connection, so they commit or roll back with the business change.
The publisher never commits, never opens a session, and never runs a handler.
After the caller's commit it wakes this process's dispatchers; on PostgreSQL it
also issues ``pg_notify`` inside the transaction, which PostgreSQL delivers to
listeners in other processes only if the transaction commits.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, event, insert, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, make_transient_to_detached, scoped_session

from .db import db_now
from .errors import InvalidEventError, NotInTransactionError
from .event_types import EventTypeRegistry, default_registry
from .ids import new_event_id
from .models import DEFAULT_TABLES, EventStatus, OutboxEvent, OutboxTables
from .payload import DEFAULT_MAX_PAYLOAD_BYTES, encode_payload
from .wakeup import NOTIFY_CHANNEL, WakeSignal, wake_signal

PUBLISHER_ACTOR = "publisher"
MAX_FIELD_LENGTH = 255

_USAGE = (
    "publish_outbox_event needs the transaction of your change: "
    "`with Session(engine) as s, s.begin(): ...; publish_outbox_event(s, ...)` "
    "or `with engine.begin() as conn: publish_outbox_event(conn, ...)`"
)


@dataclass(frozen=True)
class EventSpec:
    """One event to publish with ``publish_outbox_events``."""

    org_id: str
    event_type: str
    entity_type: str
    entity_id: str
    payload: Any = None
    idempotency_key: str | None = None


def publish_outbox_event(
    tx: Session | Connection,
    *,
    org_id: str,
    event_type: str,
    entity_type: str,
    entity_id: str | int,
    payload: Any = None,
    idempotency_key: str | None = None,
    registry: EventTypeRegistry | None = None,
    tables: OutboxTables = DEFAULT_TABLES,
    max_payload_bytes: int | None = DEFAULT_MAX_PAYLOAD_BYTES,
) -> OutboxEvent:
    """Write one event inside ``tx``'s active transaction and return it.

    ``tx`` is a ``Session`` or ``Connection`` with a transaction begun. The event
    exists only if that transaction commits. With ``idempotency_key``, publishing
    the same key again for the same org returns the stored event instead of a new one.
    """
    spec = EventSpec(org_id, event_type, entity_type, entity_id, payload, idempotency_key)  # type: ignore[arg-type]
    return publish_outbox_events(tx, [spec], registry=registry, tables=tables, max_payload_bytes=max_payload_bytes)[0]


def publish_outbox_events(
    tx: Session | Connection,
    events: Iterable[EventSpec | Mapping[str, Any]],
    *,
    registry: EventTypeRegistry | None = None,
    tables: OutboxTables = DEFAULT_TABLES,
    max_payload_bytes: int | None = DEFAULT_MAX_PAYLOAD_BYTES,
) -> list[OutboxEvent]:
    """Write many events in ``tx``'s transaction with two statements; same rules as ``publish_outbox_event``.

    Every event is checked before anything is written, so one bad event writes none.
    """
    executor, conn = _transaction_of(tx)
    registry = registry or default_registry
    rows = [_event_row(_as_spec(item), registry, max_payload_bytes) for item in events]
    if not rows:
        return []
    stored = _insert_events(executor, conn, rows, tables)
    _after_publish(tx, conn)
    if tables is DEFAULT_TABLES:
        for obj in stored:
            make_transient_to_detached(obj)
    return stored


def _as_spec(item: EventSpec | Mapping[str, Any]) -> EventSpec:
    if isinstance(item, EventSpec):
        return item
    try:
        return EventSpec(**item)
    except TypeError as exc:
        raise InvalidEventError("event", str(exc)) from None


def _text_field(name: str, value: object, *, allow_int: bool = True) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int) if allow_int else str):
        raise InvalidEventError(name, f"must be text, not {type(value).__name__}")
    text = str(value)
    if not text.strip():
        raise InvalidEventError(name, "must not be empty")
    if len(text) > MAX_FIELD_LENGTH:
        raise InvalidEventError(name, f"is {len(text)} characters, over the limit of {MAX_FIELD_LENGTH}")
    if "\x00" in text:
        raise InvalidEventError(name, "contains a NUL character")
    return text


def _event_row(spec: EventSpec, registry: EventTypeRegistry, max_payload_bytes: int | None) -> dict[str, Any]:
    event_type = registry.require(spec.event_type)
    data, _size = encode_payload(spec.payload if spec.payload is not None else {}, max_bytes=max_payload_bytes)
    key = None if spec.idempotency_key is None else _text_field("idempotency_key", spec.idempotency_key)
    return {
        "id": new_event_id(),
        "org_id": _text_field("org_id", spec.org_id),
        "event_type": event_type,
        "entity_type": _text_field("entity_type", spec.entity_type, allow_int=False),
        "entity_id": _text_field("entity_id", spec.entity_id),
        "payload": data,
        "status": EventStatus.PENDING.value,
        "retry_count": 0,
        "idempotency_key": key,
    }


def _transaction_of(tx: object) -> tuple[Session | Connection, Connection]:
    """The object to execute on and its connection, or ``NotInTransactionError``."""
    if isinstance(tx, scoped_session):
        tx = tx()
    if isinstance(tx, Session):
        if not tx.in_transaction():
            raise NotInTransactionError(f"the session has no transaction begun; {_USAGE}")
        return tx, tx.connection()
    if isinstance(tx, Connection):
        if not tx.in_transaction():
            raise NotInTransactionError(f"the connection has no transaction begun; {_USAGE}")
        return tx, tx
    if isinstance(tx, Engine):
        raise NotInTransactionError(f"got an Engine, which has no transaction; {_USAGE}")
    raise NotInTransactionError(f"got {type(tx).__name__}, not a Session or Connection; {_USAGE}")


@functools.lru_cache(maxsize=64)
def _statements(tables: OutboxTables, dialect_name: str, keyed: bool) -> tuple[Any, Any, Any]:
    """The insert statements, built once: SQLAlchemy then reuses their compiled form."""
    events_t, transitions_t = tables.events, tables.transitions
    if keyed:
        dialect_insert = postgresql.insert if dialect_name == "postgresql" else sqlite.insert
        stmt: Any = dialect_insert(events_t).on_conflict_do_nothing(
            index_elements=[events_t.c.org_id, events_t.c.idempotency_key]
        )
    else:
        stmt = insert(events_t)
    now = db_now()
    stmt = stmt.values(created_at=now, available_at=now)
    returned = (events_t.c.id, events_t.c.created_at, events_t.c.available_at)
    one = stmt.returning(*returned)
    many = stmt.returning(*returned, sort_by_parameter_order=True)
    return one, many, insert(transitions_t)


def _insert_events(
    executor: Session | Connection, conn: Connection, rows: list[dict[str, Any]], tables: OutboxTables
) -> list[OutboxEvent]:
    events_t = tables.events
    keyed = any(row["idempotency_key"] is not None for row in rows)
    insert_one, insert_many, insert_transitions = _statements(tables, conn.dialect.name, keyed)
    if len(rows) == 1:
        result = executor.execute(insert_one, rows[0])
    else:
        result = executor.execute(insert_many, rows)
    stamps = {r[0]: (r[1], r[2]) for r in result}
    stored: list[Mapping[str, Any]] = []
    transitions: list[dict[str, Any]] = []
    missing: list[dict[str, Any]] = []
    for row in rows:
        stamp = stamps.get(row["id"])
        if stamp is None:
            missing.append(row)
            continue
        row.update(
            created_at=stamp[0],
            available_at=stamp[1],
            error_message=None,
            processed_at=None,
            locked_by=None,
            locked_until=None,
        )
        transitions.append(
            {
                "event_id": row["id"],
                "from_status": None,
                "to_status": EventStatus.PENDING.value,
                "at": stamp[0],
                "actor": PUBLISHER_ACTOR,
                "attempt": 0,
                "error_message": None,
            }
        )
    if transitions:
        executor.execute(insert_transitions, transitions)
    existing: dict[tuple[str, str], Mapping[str, Any]] = {}
    if missing:
        # Lost the race for an idempotency key (or repeated it): return the stored event.
        pairs = sorted({(row["org_id"], row["idempotency_key"]) for row in missing})
        found = executor.execute(
            select(events_t).where(tuple_(events_t.c.org_id, events_t.c.idempotency_key).in_(pairs))
        )
        existing = {(r.org_id, r.idempotency_key): r._mapping for r in found}
    for row in rows:
        stored.append(row if row["id"] in stamps else existing[(row["org_id"], row["idempotency_key"])])
    return [OutboxEvent(**dict(r)) for r in stored]


# --- wake-up after commit -------------------------------------------------------------

_session_hooks: weakref.WeakSet[Session] = weakref.WeakSet()
_connection_hooks: weakref.WeakSet[Connection] = weakref.WeakSet()
_PENDING_WAKE = "outbox_admin.pending_wake"


def _engine_key(conn: Connection) -> str:
    return conn.engine.url.render_as_string(hide_password=True)


def _innermost(tx: Session | Connection) -> object:
    return tx.get_nested_transaction() or tx.get_transaction()


def _after_publish(tx: Session | Connection, conn: Connection, signal: WakeSignal = wake_signal) -> None:
    """Once per (sub)transaction: ``pg_notify`` now, and a wake-up after the commit."""
    holder: Any = tx.info if isinstance(tx, Session) else _connection_state(conn)
    current = _innermost(tx)
    pending = holder.get(_PENDING_WAKE)
    if pending is not None and pending[1] is current:
        return
    holder[_PENDING_WAKE] = (_engine_key(conn), current)
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_notify('{NOTIFY_CHANNEL}', '')")
    if isinstance(tx, Session):
        _hook_session(tx, signal)
    else:
        _hook_connection(conn, signal)


_connection_state_map: weakref.WeakKeyDictionary[Connection, dict[str, Any]] = weakref.WeakKeyDictionary()


def _connection_state(conn: Connection) -> dict[str, Any]:
    return _connection_state_map.setdefault(conn, {})


def _hook_session(session: Session, signal: WakeSignal) -> None:
    if session in _session_hooks:
        return
    _session_hooks.add(session)

    def after_commit(sess: Session) -> None:
        pending = sess.info.pop(_PENDING_WAKE, None)
        if pending is not None:
            signal.notify(pending[0])

    def after_rollback(sess: Session) -> None:
        sess.info.pop(_PENDING_WAKE, None)

    event.listen(session, "after_commit", after_commit)
    event.listen(session, "after_rollback", after_rollback)


def _hook_connection(conn: Connection, signal: WakeSignal) -> None:
    if conn in _connection_hooks:
        return
    _connection_hooks.add(conn)

    # ConnectionEvents.commit fires just before the DBAPI commit; the service re-checks
    # shortly after a wake-up that found nothing, which covers that gap.
    def on_commit(c: Connection) -> None:
        pending = _connection_state(c).pop(_PENDING_WAKE, None)
        if pending is not None:
            signal.notify(pending[0])

    def on_rollback(c: Connection) -> None:
        _connection_state(c).pop(_PENDING_WAKE, None)

    event.listen(conn, "commit", on_commit)
    event.listen(conn, "rollback", on_rollback)

"""``publish_outbox_event``: write an event with the caller's transaction.

The event row and its first history row (``None -> PENDING``) are written on
the caller's connection, so they commit or roll back with the business change:
one statement on PostgreSQL (two on SQLite), for one event or ten thousand.
The publisher never commits, never opens a session, and never runs a handler.
After the caller's commit it wakes this process's dispatchers; on PostgreSQL it
also issues ``pg_notify`` inside the transaction, which PostgreSQL delivers to
listeners in other processes only if the transaction commits.
"""

from __future__ import annotations

import functools
import json
import threading
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, event, select, tuple_
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session, class_mapper, scoped_session
from sqlalchemy.orm.attributes import instance_state, manager_of_class

from .coltypes import UTCDateTime
from .db import db_now
from .errors import InvalidEventError, NotInTransactionError
from .event_types import EventTypeRegistry, default_registry
from .ids import new_event_id
from .models import DEFAULT_TABLES, EventStatus, OutboxEvent, OutboxTables
from .payload import DEFAULT_MAX_PAYLOAD_BYTES, encode_payload
from .wakeup import NOTIFY_CHANNEL, WakeSignal, wake_signal

PUBLISHER_ACTOR = "publisher"
PENDING = EventStatus.PENDING.value
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
    """Write many events in ``tx``'s transaction in one statement (two on SQLite); rules as ``publish_outbox_event``.

    Every event is checked before anything is written, so one bad event writes none.
    """
    executor, conn = _transaction_of(tx)
    registry = registry or default_registry
    rows = [_event_row(_as_spec(item), registry, max_payload_bytes) for item in events]
    if not rows:
        return []
    return _insert_events(executor, conn, rows, tables)


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


# --- the statements -------------------------------------------------------------------
#
# Publishing is on the caller's hot path, so it is one round trip on PostgreSQL and
# plain SQL text on both databases (built once per table set, so the driver can keep it
# prepared), executed with ``exec_driver_sql``: SQLAlchemy's events, logging and error
# wrapping still apply, but no statement is compiled per call.

_INSERTED = ("id", "org_id", "event_type", "entity_type", "entity_id", "payload", "idempotency_key")


@dataclass(frozen=True)
class _PublishSql:
    """The statements of one table set on one dialect."""

    insert: str  # the events (PostgreSQL: and their first history rows), returning id, created_at, available_at
    insert_and_notify: str  # the same plus pg_notify (the first publish of a PostgreSQL transaction)
    history: str | None  # SQLite: the first history rows, a second statement


@functools.lru_cache(maxsize=64)
def _publish_sql(tables: OutboxTables, dialect: Dialect, keyed: bool) -> _PublishSql:
    quote = dialect.identifier_preparer
    events, transitions = quote.format_table(tables.events), quote.format_table(tables.transitions)
    columns = ", ".join(quote.quote(c) for c in _INSERTED)
    now = str(db_now().compile(dialect=dialect))
    conflict = ""
    if keyed:
        conflict = f" ON CONFLICT ({quote.quote('org_id')}, {quote.quote('idempotency_key')}) DO NOTHING"
    insert_events = (
        f"INSERT INTO {events} ({columns}, status, retry_count, created_at, available_at) "
        f"SELECT {{source_columns}}, '{PENDING}', 0, {now}, {now} FROM {{source}}{conflict} "
        "RETURNING id, created_at, available_at"
    )
    if dialect.name == "postgresql":
        # One statement: every event travels in one JSON document (json_to_recordset; the same
        # text for 1 or 10,000 events, and far cheaper for the driver than one array per column),
        # a data-modifying CTE writes the history rows, and the first publish of a transaction
        # also sends the NOTIFY that wakes other processes after the commit.
        record = ", ".join(f"{c} {'jsonb' if c == 'payload' else 'text'}" for c in _INSERTED)
        ev = insert_events.format(
            source_columns=", ".join(f"r.{c}" for c in _INSERTED),
            source=f"json_to_recordset(CAST(%(events)s AS json)) AS r({record})",
        )
        with_history = (
            f"WITH new AS ({ev}), history AS ("
            f"INSERT INTO {transitions} (event_id, from_status, to_status, at, actor, attempt) "
            f"SELECT id, NULL, '{PENDING}', created_at, '{PUBLISHER_ACTOR}', 0 FROM new) "
            "SELECT id, created_at, available_at{notify} FROM new"
        )
        return _PublishSql(
            insert=with_history.format(notify=""),
            insert_and_notify=with_history.format(notify=f", (SELECT pg_notify('{NOTIFY_CHANNEL}', ''))"),
            history=None,
        )
    # SQLite: every event in one JSON array parameter (json_each), so one statement serves
    # any number of events; the history rows follow in a second statement.
    source_columns = ", ".join(f"json_extract(value, '$[{i}]')" for i in range(len(_INSERTED)))
    ev = insert_events.format(source_columns=source_columns, source="json_each(?) WHERE true")
    history = (
        f"INSERT INTO {transitions} (event_id, from_status, to_status, at, actor, attempt) "
        f"VALUES (?, NULL, '{PENDING}', ?, '{PUBLISHER_ACTOR}', 0)"
    )
    return _PublishSql(insert=ev, insert_and_notify=ev, history=history)


def _insert_events(
    tx: Session | Connection, conn: Connection, rows: list[dict[str, Any]], tables: OutboxTables
) -> list[OutboxEvent]:
    dialect = conn.dialect
    keyed = any(row["idempotency_key"] is not None for row in rows)
    sql = _publish_sql(tables, dialect, keyed)
    dumps = getattr(dialect, "_json_serializer", None) or json.dumps  # what the JSON column type would use
    notify = _needs_notify(tx, conn)
    if dialect.name == "postgresql":
        events = dumps([{c: row[c] for c in _INSERTED} for row in rows])
        result = conn.exec_driver_sql(sql.insert_and_notify if notify else sql.insert, {"events": events})
    else:
        # The payload travels as JSON text inside the JSON array, so json_extract gives back exactly that text.
        values = [[dumps(row["payload"]) if c == "payload" else row[c] for c in _INSERTED] for row in rows]
        result = conn.exec_driver_sql(sql.insert, (json.dumps(values),))
    stamps = {r[0]: (r[1], r[2]) for r in result}
    if sql.history is not None and stamps:
        history = [(event_id, stamp[0]) for event_id, stamp in stamps.items()]
        conn.exec_driver_sql(sql.history, history[0] if len(history) == 1 else history)  # one row: no executemany
    _after_publish(tx, conn, notified=notify and bool(stamps))

    # One statement stamps every event with the same time: convert each distinct value once.
    converted: dict[Any, Any] = {}

    def to_utc(value: Any, dialect: Dialect) -> Any:
        if value not in converted:
            converted[value] = _UTC.process_result_value(value, dialect)
        return converted[value]

    stored: list[Mapping[str, Any]] = []
    missing: list[dict[str, Any]] = []
    for row in rows:
        stamp = stamps.get(row["id"])
        if stamp is None:
            missing.append(row)
            continue
        row.update(
            created_at=to_utc(stamp[0], dialect),
            available_at=to_utc(stamp[1], dialect),
            error_message=None,
            processed_at=None,
            locked_by=None,
            locked_until=None,
        )
    existing: dict[tuple[str, str], Mapping[str, Any]] = {}
    if missing:
        # Lost the race for an idempotency key (or repeated it): return the stored event.
        events_t = tables.events
        pairs = sorted({(row["org_id"], row["idempotency_key"]) for row in missing})
        found = tx.execute(select(events_t).where(tuple_(events_t.c.org_id, events_t.c.idempotency_key).in_(pairs)))
        existing = {(r.org_id, r.idempotency_key): dict(r._mapping) for r in found}
    for row in rows:
        stored.append(row if row["id"] in stamps else existing[(row["org_id"], row["idempotency_key"])])
    if tables is DEFAULT_TABLES:
        return [_detached_event(r) for r in stored]
    return [OutboxEvent(**dict(r)) for r in stored]


_UTC = UTCDateTime()
_EVENT_MANAGER = manager_of_class(OutboxEvent)
_EVENT_MAPPER = class_mapper(OutboxEvent)


def _detached_event(values: Mapping[str, Any]) -> OutboxEvent:
    """An ``OutboxEvent`` for a stored row, detached (it belongs to no session), made cheaply.

    ``OutboxEvent(**values)`` followed by ``make_transient_to_detached`` costs ~15x more:
    it records every attribute as a change and then discards the history. This fills
    the instance as the ORM does when it loads a row: values as loaded, plus the
    identity key.
    """
    event: OutboxEvent = _EVENT_MANAGER.new_instance()
    event.__dict__.update(values)
    instance_state(event).key = _EVENT_MAPPER.identity_key_from_primary_key((values["id"],))
    return event


# --- wake-up after commit -------------------------------------------------------------
#
# A pending wake-up is kept per transaction (in ``Session.info``, or per ``Connection``)
# as (database key, innermost transaction, pg_notify sent, signal). The commit and
# rollback listeners are registered once (on the ``Session`` class, and per engine),
# not per transaction: ``event.listen`` costs more than a whole small publish.

_PENDING_WAKE = "outbox_admin.pending_wake"
_hook_lock = threading.Lock()
_sessions_hooked = False
_hooked_engines: weakref.WeakSet[Engine] = weakref.WeakSet()
_connection_state_map: weakref.WeakKeyDictionary[Connection, dict[str, Any]] = weakref.WeakKeyDictionary()


def _engine_key(conn: Connection) -> str:
    return conn.engine.url.render_as_string(hide_password=True)


def _innermost(tx: Session | Connection) -> object:
    return tx.get_nested_transaction() or tx.get_transaction()


def _connection_state(conn: Connection) -> dict[str, Any]:
    return _connection_state_map.setdefault(conn, {})


def _needs_notify(tx: Session | Connection, conn: Connection) -> bool:
    """PostgreSQL: whether this (sub)transaction still has to send its ``pg_notify``."""
    if conn.dialect.name != "postgresql":
        return False
    holder: Any = tx.info if isinstance(tx, Session) else _connection_state_map.get(conn, {})
    pending = holder.get(_PENDING_WAKE)
    return pending is None or pending[1] is not _innermost(tx) or not pending[2]


def _after_publish(
    tx: Session | Connection, conn: Connection, *, notified: bool, signal: WakeSignal = wake_signal
) -> None:
    """Remember, per (sub)transaction, to wake this process's dispatchers after the commit."""
    holder: Any = tx.info if isinstance(tx, Session) else _connection_state(conn)
    current = _innermost(tx)
    pending = holder.get(_PENDING_WAKE)
    if pending is not None and pending[1] is current:
        if notified and not pending[2]:
            holder[_PENDING_WAKE] = (pending[0], current, True, pending[3])
        return
    holder[_PENDING_WAKE] = (_engine_key(conn), current, notified, signal)
    if isinstance(tx, Session):
        _hook_sessions()
    else:
        _hook_engine(conn.engine)


def _hook_sessions() -> None:
    global _sessions_hooked
    if _sessions_hooked:
        return
    with _hook_lock:
        if not _sessions_hooked:
            event.listen(Session, "after_commit", _session_committed)
            event.listen(Session, "after_rollback", _session_rolled_back)
            _sessions_hooked = True


def _session_committed(session: Session) -> None:
    pending = session.info.pop(_PENDING_WAKE, None)
    if pending is not None:
        pending[3].notify(pending[0])


def _session_rolled_back(session: Session) -> None:
    session.info.pop(_PENDING_WAKE, None)


def _hook_engine(engine: Engine) -> None:
    if engine in _hooked_engines:
        return
    with _hook_lock:
        if engine not in _hooked_engines:
            event.listen(engine, "commit", _connection_committed)
            event.listen(engine, "rollback", _connection_rolled_back)
            _hooked_engines.add(engine)


def _connection_committed(conn: Connection) -> None:
    # ConnectionEvents.commit fires just before the DBAPI commit; the service re-checks
    # shortly after a wake-up that found nothing, which covers that gap.
    state = _connection_state_map.get(conn)
    pending = state.pop(_PENDING_WAKE, None) if state else None
    if pending is not None:
        pending[3].notify(pending[0])


def _connection_rolled_back(conn: Connection) -> None:
    state = _connection_state_map.get(conn)
    if state:
        state.pop(_PENDING_WAKE, None)

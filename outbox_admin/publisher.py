"""``publish_outbox_event``: write an event with the caller's transaction.

The event row and its first history row (``None -> PENDING``) are written on
the caller's connection, so they commit or roll back with the business change.
The publisher never commits, never opens a session, and never runs a handler.

**Write-through by default.** ``publish_outbox_event`` and ``publish_outbox_events``
write their rows in the caller's transaction before they return (one statement on
PostgreSQL, two on SQLite), so whatever commits that transaction, SQLAlchemy or
the raw DBAPI connection, commits the events with it, and a rollback (or a
rolled-back savepoint) drops them. The returned event's ``created_at`` and
``available_at`` hold the database's clock at the write.

**Batches, opted into.** Inside ``with outbox_batch(tx):`` calls only check the
event and keep it in a buffer of the transaction's connection; the buffer is
written in one statement per 2,000 events (two on SQLite) before the next
statement that connection runs, before ``Session.commit`` flushes, at the commit,
and at the latest when the block exits. So ten thousand calls cost a handful of
round trips instead of ten thousand. Inside the block, buffered events have no
``created_at`` yet, and the raw DBAPI connection must not be committed (that
bypasses SQLAlchemy and would commit the change without the buffered events).
``flush_outbox(tx)`` writes the buffer at once. An event with an
``idempotency_key``, or any event on an ``AUTOCOMMIT`` connection, is written at
once even in a batch (the buffer first, keeping publish order).

A failed write raises and its events stay buffered: the next statement and the
commit try them again and fail again, so the transaction can only be rolled back
(or the savepoint around the publish); it can never commit without the events it
published. After the commit the publisher wakes this process's dispatchers; on
PostgreSQL each write also issues ``pg_notify``, which reaches listeners in other
processes only if the transaction commits.

**Trace context.** An event published inside an active OpenTelemetry span stores that
span's W3C context (``trace_context``), taken at the call, so a buffered event keeps
the span it was published in; outside a span, or without opentelemetry, NULL
(``outbox_admin.tracing``). A write with no traced event leaves the column out: the
statement it always was, which also runs on a database not yet at migration 0008.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import threading
import weakref
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, event, select, tuple_
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session, class_mapper, scoped_session
from sqlalchemy.orm.attributes import instance_state, manager_of_class

from .coltypes import UTCDateTime
from .errors import InvalidEventError, NotInTransactionError, UnknownEventTypeError
from .event_types import EventTypeRegistry, default_registry
from .ids import new_event_id
from .models import DEFAULT_TABLES, EventStatus, OutboxEvent, OutboxTables
from .payload import DEFAULT_MAX_PAYLOAD_BYTES, INT64_MAX, INT64_MIN, encode_payload, text_fault
from .sql import PUBLISHER_ACTOR as PUBLISHER_ACTOR  # the history's actor for publishes; kept importable here
from .sql import PublishSql, publish_sql
from .tracing import capture as capture_trace
from .wakeup import WakeSignal, wake_key, wake_signal

PENDING = EventStatus.PENDING.value
MAX_FIELD_LENGTH = 255
#: Events per write statement; in an ``outbox_batch`` also the buffer's size before it is written anyway.
BUFFER_LIMIT = 2000

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
    """Publish one event inside ``tx``'s active transaction and return it.

    ``tx`` is a ``Session`` or ``Connection`` with a transaction begun. The event is
    written in that transaction before the call returns (buffered inside
    ``outbox_batch``) and exists only if the transaction commits. With
    ``idempotency_key``, publishing the same key again for the same org returns the
    stored event instead of a new one.

    ``payload`` is a JSON object or array (``None`` means ``{}``), normalised as
    ``outbox_admin.payload`` describes; ids are text, or ints in the signed 64-bit
    range. A refusal is an ``InvalidEventError``, ``UnknownEventTypeError`` or
    ``PayloadError``, raised in bounded time whatever the values, before anything
    is written.
    """
    conn = _connection_of(tx)
    row = _event_row(
        org_id,
        event_type,
        entity_type,
        entity_id,
        payload,
        idempotency_key,
        registry or default_registry,
        max_payload_bytes,
        capture_trace(),
    )
    return _accept(tx, conn, [row], tables)[0]


def publish_outbox_events(
    tx: Session | Connection,
    events: Iterable[EventSpec | Mapping[str, Any]],
    *,
    registry: EventTypeRegistry | None = None,
    tables: OutboxTables = DEFAULT_TABLES,
    max_payload_bytes: int | None = DEFAULT_MAX_PAYLOAD_BYTES,
) -> list[OutboxEvent]:
    """Publish many events in ``tx``'s transaction; rules as ``publish_outbox_event``.

    Every event is checked before any is accepted, so one bad event publishes none.
    """
    conn = _connection_of(tx)
    registry = registry or default_registry
    trace = capture_trace()  # once: the active span cannot change during the call
    rows = []
    for item in events:
        spec = _as_spec(item)
        rows.append(
            _event_row(
                spec.org_id,
                spec.event_type,
                spec.entity_type,
                spec.entity_id,
                spec.payload,
                spec.idempotency_key,
                registry,
                max_payload_bytes,
                trace,
            )
        )
    return _accept(tx, conn, rows, tables) if rows else []


def _accept(tx: Session | Connection, conn: Connection, rows: list[_Row], tables: OutboxTables) -> list[OutboxEvent]:
    """Write checked events now, or buffer them inside an ``outbox_batch`` scope."""
    if any(row.key is not None for row in rows):
        return _write_keyed(tx, conn, rows, tables)
    state = _connection_state_map.get(conn)
    if state is not None and _BATCH in state and not _autocommit(conn):
        return _buffer(tx, conn, rows, tables)
    return _write_through(tx, conn, rows, tables)


@contextmanager
def outbox_batch(tx: Session | Connection) -> Iterator[None]:
    """Buffer the events published on ``tx``'s transaction inside the block; write them in batches.

    ``with outbox_batch(session): for item in items: publish_outbox_event(session, ...)``
    costs one statement per 2,000 events instead of one per call. The buffer is
    written before the connection's next statement (so a query sees the events),
    before ``Session.commit`` flushes, at the commit, and at the latest when the
    block exits, also when it exits with an exception (a failure then is noted on
    that exception, and the events stay buffered, so the commit fails). Until then
    buffered events have no ``created_at`` (``flush_outbox(tx)`` writes them now).

    Inside the block, do not commit the raw DBAPI connection
    (``conn.connection.dbapi_connection.commit()``): it bypasses SQLAlchemy, and
    would commit your change without the buffered events. Scopes nest; events with
    an ``idempotency_key`` and ``AUTOCOMMIT`` connections are written at once anyway.
    """
    conn = _connection_of(tx)
    state = _connection_state(conn)
    state[_BATCH] = state.get(_BATCH, 0) + 1
    try:
        yield
    except GeneratorExit:  # the scope was abandoned, never exited: leave the buffer to the commit or rollback
        _end_batch(state)
        raise
    except BaseException as exc:
        _end_batch(state)
        try:
            _flush(conn)
        except Exception as flush_exc:  # noqa: BLE001 - the block's own error is the one to raise
            first_line = (str(flush_exc).splitlines() or [""])[0]
            exc.add_note(
                f"outbox_admin: writing the batch's events on the way out failed too: "
                f"{type(flush_exc).__name__}: {first_line}"
            )
        raise
    _end_batch(state)
    _flush(conn)


def _end_batch(state: dict[str, Any]) -> None:
    depth = state.pop(_BATCH, 1) - 1
    if depth:
        state[_BATCH] = depth


def flush_outbox(tx: Session | Connection) -> None:
    """Write the events buffered in ``tx``'s transaction by an ``outbox_batch`` scope.

    Rarely needed: the next statement on the connection, ``Session.commit``, the
    commit and the end of the scope all do it. Useful to learn the events'
    ``created_at`` early. Outside a batch scope there is nothing to write.
    """
    _flush(_connection_of(tx))


def _autocommit(conn: Connection) -> bool:
    """Whether each statement on ``conn`` commits by itself (``isolation_level="AUTOCOMMIT"``).

    Such a connection's change is already committed when the call returns, so its
    events are written at once: a buffer could be dropped by a close with no commit.
    """
    check = getattr(conn, "_is_autocommit_isolation", None)  # SQLAlchemy 2's own test
    return bool(check()) if check is not None else False


def _as_spec(item: EventSpec | Mapping[str, Any]) -> EventSpec:
    if isinstance(item, EventSpec):
        return item
    try:
        return EventSpec(**item)
    except TypeError as exc:
        raise InvalidEventError("event", str(exc)) from None


def _text_field(name: str, value: object, *, allow_int: bool = True) -> str:
    """``value`` as the text stored in column ``name``, or ``InvalidEventError``.

    Text of 1 to ``MAX_FIELD_LENGTH`` characters, not only blanks, with no NUL (PostgreSQL
    text cannot hold it) and valid UTF-8 (no lone surrogates, which no driver can send).
    Where ``allow_int``, an int in the signed 64-bit range is its decimal text; the range
    is checked before ``str()``, which is quadratic in the digits. Every check is O(1) or
    O(length) on at most ``MAX_FIELD_LENGTH`` characters.
    """
    if value.__class__ is str:  # the usual case, checked in the fewest steps
        text: str = value  # type: ignore[assignment]
    elif isinstance(value, bool) or not isinstance(value, (str, int) if allow_int else str):
        raise InvalidEventError(name, f"must be text, not {type(value).__name__}")
    elif isinstance(value, str):
        text = str(value)
    elif INT64_MIN <= value <= INT64_MAX:
        text = str(int(value))
    else:
        raise InvalidEventError(
            name, "is an integer outside the signed 64-bit range (-2**63 .. 2**63-1); pass it as text"
        )
    if len(text) > MAX_FIELD_LENGTH:
        raise InvalidEventError(name, f"is {len(text)} characters, over the limit of {MAX_FIELD_LENGTH}")
    if not text.strip():
        raise InvalidEventError(name, "must not be empty")
    fault = text_fault(text)
    if fault is not None:
        raise InvalidEventError(name, fault)
    return text


@dataclass(slots=True)
class _Row:
    """One checked event: what the statement writes, and the event object returned to the caller."""

    id: str
    org_id: str
    event_type: str
    entity_type: str
    entity_id: str
    payload: Any  # the normalised payload, as the returned event holds it
    payload_json: str  # the same, encoded once: what is written
    key: str | None
    trace: str | None  # the W3C context of the span active at the call (outbox_admin.tracing), if any

    def wire(self, traced: bool = False) -> tuple[Any, ...]:
        """The row as one element of the statement's JSON array (payload as JSON text), in the order of
        ``PUBLISHED_COLUMNS``, or ``TRACED_COLUMNS`` when ``traced``."""
        fields = (self.id, self.org_id, self.event_type, self.entity_type, self.entity_id, self.payload_json, self.key)
        return (*fields, self.trace) if traced else fields

    def values(self, created_at: Any, available_at: Any) -> dict[str, Any]:
        return {
            "id": self.id,
            "org_id": self.org_id,
            "event_type": self.event_type,
            "entity_type": self.entity_type,
            "entity_id": self.entity_id,
            "payload": self.payload,
            "status": PENDING,
            "retry_count": 0,
            "idempotency_key": self.key,
            "trace_context": self.trace,
            "created_at": created_at,
            "available_at": available_at,
            "error_message": None,
            "processed_at": None,
            "locked_by": None,
            "locked_until": None,
        }


def _event_row(
    org_id: object,
    event_type: object,
    entity_type: object,
    entity_id: object,
    payload: Any,
    idempotency_key: object,
    registry: EventTypeRegistry,
    max_payload_bytes: int | None,
    trace: str | None,
) -> _Row:
    """Check one event's fields and encode its payload; every refusal is an ``OutboxError``, in bounded time."""
    if event_type.__class__ is str and len(event_type) <= MAX_FIELD_LENGTH:
        checked_type = registry.require(event_type)
    else:
        checked_type = _unusual_event_type(event_type, registry)
    data, encoded = encode_payload(payload if payload is not None else {}, max_bytes=max_payload_bytes)
    return _Row(
        new_event_id(),
        _text_field("org_id", org_id),
        checked_type,
        _text_field("entity_type", entity_type, allow_int=False),
        _text_field("entity_id", entity_id),
        data,
        encoded,
        None if idempotency_key is None else _text_field("idempotency_key", idempotency_key),
        trace,  # taken at the call, not at the write: a batch's buffered events keep their own span
    )


def _unusual_event_type(value: object, registry: EventTypeRegistry) -> str:
    """``registry.require`` for what is not plain text of a plausible length, in bounded time.

    ``require`` names close matches (difflib: memory and time grow with the text) and
    reprs what is not text (``repr`` of a huge int raises ``ValueError``); neither
    is needed to refuse a value that cannot be a registered type.
    """
    if isinstance(value, str) and len(value) <= MAX_FIELD_LENGTH:
        return registry.require(str(value))
    if isinstance(value, str):
        raise UnknownEventTypeError(value[:64] + "…")
    if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
        raise UnknownEventTypeError(f"<an int of {value.bit_length()} bits>")
    if value is None or isinstance(value, (bool, int, float)):
        return registry.require(value)  # raises, with the value's short repr
    raise UnknownEventTypeError(f"<a {type(value).__name__}>")


def _connection_of(tx: object) -> Connection:
    """The connection of ``tx``'s transaction, or ``NotInTransactionError``."""
    if isinstance(tx, Session):
        transaction = tx.get_nested_transaction() or tx.get_transaction()
        if transaction is None:
            raise NotInTransactionError(f"the session has no transaction begun; {_USAGE}")
        # Session.connection() resolves the bind each time: ask once per (sub)transaction. Once,
        # not never: in a new savepoint it is what emits the SAVEPOINT.
        cached = tx.info.get(_SESSION_CONNECTION)
        if cached is not None and cached[0] is transaction:
            return cached[1]  # type: ignore[no-any-return]
        conn = tx.connection()
        tx.info[_SESSION_CONNECTION] = (transaction, conn)
        return conn
    if isinstance(tx, Connection):
        if not tx.in_transaction():
            raise NotInTransactionError(f"the connection has no transaction begun; {_USAGE}")
        return tx
    if isinstance(tx, scoped_session):
        return _connection_of(tx())
    if isinstance(tx, Engine):
        raise NotInTransactionError(f"got an Engine, which has no transaction; {_USAGE}")
    raise NotInTransactionError(f"got {type(tx).__name__}, not a Session or Connection; {_USAGE}")


# --- the statements -------------------------------------------------------------------
#
# Plain SQL text built once per table set (so the driver can keep it prepared) and run
# with ``exec_driver_sql``: SQLAlchemy's events, logging and error wrapping still apply,
# but nothing is compiled per call. Every event of a write travels in one JSON array
# parameter, so the text is the same for one event or thousands.


@functools.lru_cache(maxsize=64)
def _publish_sql(tables: OutboxTables, dialect: Dialect, traced: bool) -> PublishSql:
    return publish_sql(dialect, tables, traced=traced)


def _statements(conn: Connection, rows: list[_Row], tables: OutboxTables) -> PublishSql:
    """The statements for ``rows``: with ``trace_context`` only when one of them has a trace, so an
    untraced write is the statement it always was (and runs on a database not yet at migration 0008)."""
    traced = False
    for row in rows:
        if row.trace is not None:
            traced = True
            break
    return _publish_sql(tables, conn.dialect, traced)


_UTC = UTCDateTime()
_EVENT_MANAGER = manager_of_class(OutboxEvent)
_IDENTITY_CLASS = class_mapper(OutboxEvent)._identity_class


def _sqlite_stamp() -> tuple[str, dt.datetime]:
    """Now, as SQLite's clock expression gives it (milliseconds), in storage text and as a datetime."""
    now = dt.datetime.now(dt.UTC)
    now = now.replace(microsecond=now.microsecond // 1000 * 1000)
    return now.strftime("%Y-%m-%d %H:%M:%S.%f"), now


def _write_rows(conn: Connection, rows: list[_Row], tables: OutboxTables) -> dt.datetime:
    """Write ``rows`` (no idempotency keys) and return the time they were stamped with."""
    sql = _statements(conn, rows, tables)
    traced = sql.traced
    if sql.history is None:
        wire = json.dumps([row.wire(traced) for row in rows], ensure_ascii=False)
        count, stamp = conn.exec_driver_sql(sql.insert, sql.args("insert", {"events": wire})).one()[:2]
        if count != len(rows):  # pragma: no cover - an INSERT ... SELECT writes every row or fails
            raise RuntimeError(f"wrote {count} of {len(rows)} events")
        return _UTC.process_result_value(stamp, conn.dialect)  # type: ignore[return-value]
    text, stamp = _sqlite_stamp()
    if len(rows) == 1 and sql.insert_one and sql.history_one:
        single = dict(zip(sql.columns, rows[0].wire(traced), strict=True), at=text)
        conn.exec_driver_sql(sql.insert_one, single)
        conn.exec_driver_sql(sql.history_one, single)
    else:
        wire = json.dumps([row.wire(traced) for row in rows], ensure_ascii=False)
        conn.exec_driver_sql(sql.insert, {"events": wire, "at": text})
        conn.exec_driver_sql(sql.history, {"ids": json.dumps([row.id for row in rows]), "at": text})
    return stamp


def _write_group(conn: Connection, group: _Buffered) -> None:
    """Write ``group`` in statements of at most ``BUFFER_LIMIT`` events and fill in its events' times.

    On failure the group keeps only what is still unwritten, and the error propagates.
    """
    rows, events = group.rows, group.events
    for start in range(0, len(rows), BUFFER_LIMIT):
        end = start + BUFFER_LIMIT
        try:
            if group.keyed:
                _insert_keyed(conn, rows[start:end], group.tables)  # a retry: nobody holds these objects
                continue
            stamp = _write_rows(conn, rows[start:end], group.tables)
        except BaseException:
            del rows[:start], events[:start]
            raise
        for obj in events[start:end]:
            obj.__dict__["created_at"] = stamp
            obj.__dict__["available_at"] = stamp


def _write_through(
    tx: Session | Connection, conn: Connection, rows: list[_Row], tables: OutboxTables
) -> list[OutboxEvent]:
    """Write ``rows`` (no idempotency keys) in the caller's transaction before returning."""
    made = [_new_event(row.values(None, None), tables) for row in rows]
    group = _Buffered(tables, rows, made)
    _flush(conn)  # keep publish order: what a batch left buffered goes first
    try:
        _write_group(conn, group)
    except Exception as exc:
        _keep(tx, conn, group, exc)
        raise
    _after_publish(tx, conn)
    return made


def _insert_keyed(conn: Connection, rows: list[_Row], tables: OutboxTables) -> dict[str, tuple[Any, Any]]:
    """Insert ``rows``, skipping taken idempotency keys; ``{id: (created_at, available_at)}`` of those written."""
    sql = _statements(conn, rows, tables)
    wire = json.dumps([row.wire(sql.traced) for row in rows], ensure_ascii=False)
    if sql.history is None:
        return {
            event_id: (created, available)
            for event_id, created, available, _ in conn.exec_driver_sql(
                sql.insert_keyed, sql.args("insert_keyed", {"events": wire})
            )
        }
    text, stamp = _sqlite_stamp()
    written = [r[0] for r in conn.exec_driver_sql(sql.insert_keyed, {"events": wire, "at": text})]
    if written:
        conn.exec_driver_sql(sql.history, {"ids": json.dumps(written), "at": text})
    return {event_id: (stamp, stamp) for event_id in written}


def _write_keyed(
    tx: Session | Connection, conn: Connection, rows: list[_Row], tables: OutboxTables
) -> list[OutboxEvent]:
    """Write ``rows`` at once (some carry idempotency keys); a taken key returns the stored event."""
    _flush(conn)  # keep publish order: what was buffered goes first
    try:
        stamps = _insert_keyed(conn, rows, tables)
    except Exception as exc:
        _keep(tx, conn, _Buffered(tables, rows, [], keyed=True), exc)
        raise
    _after_publish(tx, conn)
    missing = sorted({(row.org_id, row.key) for row in rows if row.id not in stamps})
    existing: dict[tuple[str, str], Mapping[str, Any]] = {}
    if missing:
        # Lost the race for an idempotency key (or repeated it): return the stored event.
        events_t = tables.events
        found = conn.execute(select(events_t).where(tuple_(events_t.c.org_id, events_t.c.idempotency_key).in_(missing)))
        existing = {(r.org_id, r.idempotency_key): dict(r._mapping) for r in found}
    result = []
    for row in rows:
        stored_at = stamps.get(row.id)
        if stored_at is None:
            result.append(_new_event(existing[(row.org_id, row.key)], tables))  # type: ignore[index]
        else:
            created = _UTC.process_result_value(stored_at[0], conn.dialect)
            available = _UTC.process_result_value(stored_at[1], conn.dialect)
            result.append(_new_event(row.values(created, available), tables))
    return result


def _new_event(values: Mapping[str, Any], tables: OutboxTables) -> OutboxEvent:
    if tables is DEFAULT_TABLES:
        return _detached_event(values)
    return OutboxEvent(**dict(values))


def _detached_event(values: Mapping[str, Any]) -> OutboxEvent:
    """An ``OutboxEvent`` for a stored row, detached (it belongs to no session), made cheaply.

    ``OutboxEvent(**values)`` followed by ``make_transient_to_detached`` costs ~15x more:
    it records every attribute as a change and then discards the history. This fills
    the instance as the ORM does when it loads a row: values as loaded, plus the
    identity key.
    """
    obj: OutboxEvent = _EVENT_MANAGER.new_instance()
    obj.__dict__.update(values)
    instance_state(obj).key = (_IDENTITY_CLASS, (values["id"],), None)  # as Mapper.identity_key_from_primary_key
    return obj


# --- the buffer -----------------------------------------------------------------------
#
# Per connection: the rows not yet written (inside an ``outbox_batch`` scope, or kept after a
# failed write), their event objects and table set, in publish order. Written before the
# connection's next statement (before_cursor_execute), by Session.before_commit, by the
# connection's commit event and when the scope exits; dropped on rollback, and on a rollback
# to a savepoint: the SAVEPOINT statement itself wrote what came before it, so all the buffer
# holds then was published inside the savepoint.

_BUFFER = "outbox_admin.buffer"
_BATCH = "outbox_admin.batch"  # the depth of open outbox_batch scopes on the connection
_BUFFERED_CONNECTIONS = "outbox_admin.buffered_connections"
_SESSION_CONNECTION = "outbox_admin.connection"


@dataclass(slots=True)
class _Buffered:
    tables: OutboxTables
    rows: list[_Row]
    events: list[OutboxEvent]
    keyed: bool = False  # rows with idempotency keys, kept after a failed write


def _buffered_groups(tx: Session | Connection, conn: Connection) -> list[_Buffered]:
    state = _connection_state(conn)
    buffered: list[_Buffered] | None = state.get(_BUFFER)
    if buffered is None:  # the first event since the transaction began (or since the last write)
        buffered = state[_BUFFER] = []
        _hook_engine(conn.engine)
        if isinstance(tx, Session):
            tx.info.setdefault(_BUFFERED_CONNECTIONS, set()).add(conn)
        _after_publish(tx, conn)
    return buffered


def _buffer(tx: Session | Connection, conn: Connection, rows: list[_Row], tables: OutboxTables) -> list[OutboxEvent]:
    buffered = _buffered_groups(tx, conn)
    if not buffered or buffered[-1].tables is not tables or buffered[-1].keyed:
        buffered.append(_Buffered(tables, [], []))
    group = buffered[-1]
    made = [_new_event(row.values(None, None), tables) for row in rows]
    group.rows.extend(rows)
    group.events.extend(made)
    if len(group.rows) >= BUFFER_LIMIT:  # a group is one statement: keep it bounded
        _flush(conn)
    return made


def _keep(tx: Session | Connection, conn: Connection, group: _Buffered, exc: Exception) -> None:
    """After a failed write: keep what is unwritten buffered, so the commit cannot succeed without it."""
    _buffered_groups(tx, conn).append(group)
    _note_failure(exc, _connection_state(conn)[_BUFFER])


def _note_failure(exc: BaseException, buffered: list[_Buffered]) -> None:
    exc.add_note(
        f"outbox_admin: writing {sum(len(g.rows) for g in buffered)} published event(s) failed; "
        "they stay unwritten and this transaction cannot commit (roll it back)"
    )


def _flush(conn: Connection) -> None:
    """Write the connection's buffered events; on failure they stay buffered, so the commit fails too."""
    state = _connection_state_map.get(conn)
    buffered: list[_Buffered] | None = state.pop(_BUFFER, None) if state else None
    while buffered:
        try:
            _write_group(conn, buffered[0])
        except Exception as exc:
            state[_BUFFER] = buffered  # type: ignore[index]
            _note_failure(exc, buffered)
            raise
        del buffered[0]


# --- wake-up after commit -------------------------------------------------------------
#
# A pending wake-up is kept per transaction (in ``Session.info``, or per ``Connection``)
# as (database key, signal). A rolled-back savepoint leaves it in place: at worst one
# wake-up finds nothing to do. The commit and
# rollback listeners are registered once (on the ``Session`` class, and per engine),
# not per transaction: ``event.listen`` costs more than a whole small publish.

_PENDING_WAKE = "outbox_admin.pending_wake"
_hook_lock = threading.Lock()
_sessions_hooked = False
_hooked_engines: weakref.WeakSet[Engine] = weakref.WeakSet()
_connection_state_map: weakref.WeakKeyDictionary[Connection, dict[str, Any]] = weakref.WeakKeyDictionary()


def _engine_key(conn: Connection) -> str:
    return wake_key(conn.engine.url)  # the same for every driver, so an async publish wakes a sync service


def _connection_state(conn: Connection) -> dict[str, Any]:
    state = _connection_state_map.get(conn)  # not setdefault: that builds a dict on every call
    if state is None:
        state = _connection_state_map[conn] = {}
    return state


def _after_publish(tx: Session | Connection, conn: Connection, *, signal: WakeSignal = wake_signal) -> None:
    """Remember to wake this process's dispatchers after the transaction commits (once per transaction)."""
    holder: Any = tx.info if isinstance(tx, Session) else _connection_state(conn)
    if _PENDING_WAKE in holder:
        return
    holder[_PENDING_WAKE] = (_engine_key(conn), signal)
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
            event.listen(Session, "before_commit", _session_committing)
            event.listen(Session, "after_commit", _session_committed)
            event.listen(Session, "after_rollback", _session_rolled_back)
            _sessions_hooked = True


def _session_committing(session: Session) -> None:
    # Before the session's own flush and commit: a failed write leaves the session's
    # transaction open for the caller to roll back.
    for conn in session.info.pop(_BUFFERED_CONNECTIONS, ()):
        _flush(conn)


def _session_committed(session: Session) -> None:
    session.info.pop(_SESSION_CONNECTION, None)
    pending = session.info.pop(_PENDING_WAKE, None)
    if pending is not None:
        pending[1].notify(pending[0])


def _session_rolled_back(session: Session) -> None:
    session.info.pop(_SESSION_CONNECTION, None)
    session.info.pop(_PENDING_WAKE, None)
    session.info.pop(_BUFFERED_CONNECTIONS, None)


def _hook_engine(engine: Engine) -> None:
    if engine in _hooked_engines:
        return
    with _hook_lock:
        if engine not in _hooked_engines:
            event.listen(engine, "before_cursor_execute", _before_statement)
            event.listen(engine, "commit", _connection_committed)
            event.listen(engine, "rollback", _connection_rolled_back)
            event.listen(engine, "rollback_savepoint", _savepoint_rolled_back)
            _hooked_engines.add(engine)


def _before_statement(conn: Connection, *_: Any) -> None:
    # Any statement on a connection with buffered events writes them first, so it sees them (and
    # a SAVEPOINT or RELEASE covers them). The write's own statement finds the buffer empty.
    state = _connection_state_map.get(conn)
    if state and _BUFFER in state:
        _flush(conn)


def _connection_committed(conn: Connection) -> None:
    # ConnectionEvents.commit fires just before the DBAPI commit: the buffer is written in the
    # transaction, and an error here stops the commit. The wake-up goes out before the commit
    # lands; the service re-checks shortly after a wake-up that found nothing, which covers that gap.
    state = _connection_state_map.get(conn)
    if not state:
        return
    if _BUFFER in state:
        _flush(conn)
    pending = state.pop(_PENDING_WAKE, None)
    if pending is not None:
        pending[1].notify(pending[0])


def _connection_rolled_back(conn: Connection) -> None:
    state = _connection_state_map.get(conn)
    if state:
        state.pop(_PENDING_WAKE, None)
        state.pop(_BUFFER, None)


def _savepoint_rolled_back(conn: Connection, *_: Any) -> None:
    # Fires before the ROLLBACK TO statement: what is buffered now was published inside the
    # savepoint (its SAVEPOINT statement wrote the rest), so it goes with the savepoint's changes.
    state = _connection_state_map.get(conn)
    if state:
        state.pop(_BUFFER, None)

"""``publish_outbox_event``: write an event with the caller's transaction.

The event row and its first history row (``None -> PENDING``) are written on
the caller's connection, so they commit or roll back with the business change.
The publisher never commits, never opens a session, and never runs a handler.

Events are buffered per connection, as the ORM buffers ``Session.add``: they are
written in one statement (two on SQLite) before the next statement
that connection runs, before ``Session.commit`` flushes, and at the latest just
before the commit. So a query later in the same transaction sees them, a
rollback (or a rolled-back savepoint) drops them with the change, and ten
thousand ``publish_outbox_event`` calls cost a few round trips instead of ten
thousand. ``flush_outbox(tx)`` writes them at once. Two things follow:

- ``created_at`` and ``available_at`` of a returned event are ``None`` until it
  is written, then filled in: the database's clock at the write.
- An event with an ``idempotency_key`` is written at once (the buffer first), so
  the call can return the stored event when the key was already used; so is every
  event on an ``AUTOCOMMIT`` connection, whose changes commit statement by statement.

A failed write keeps the events buffered and raises; the commit will raise again,
so a transaction can never commit without the events it published. After the
commit the publisher wakes this process's dispatchers; on PostgreSQL each write
also issues ``pg_notify``, which reaches listeners in other processes only if the
transaction commits.
"""

from __future__ import annotations

import datetime as dt
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
from .errors import InvalidEventError, NotInTransactionError, UnknownEventTypeError
from .event_types import EventTypeRegistry, default_registry
from .ids import new_event_id
from .models import DEFAULT_TABLES, EventStatus, OutboxEvent, OutboxTables
from .payload import DEFAULT_MAX_PAYLOAD_BYTES, INT64_MAX, INT64_MIN, encode_payload
from .wakeup import NOTIFY_CHANNEL, WakeSignal, wake_signal

PUBLISHER_ACTOR = "publisher"
PENDING = EventStatus.PENDING.value
MAX_FIELD_LENGTH = 255
#: Events buffered on one connection (for one table set) before they are written anyway: bounds a statement.
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

    ``tx`` is a ``Session`` or ``Connection`` with a transaction begun. The event
    exists only if that transaction commits. With ``idempotency_key``, publishing
    the same key again for the same org returns the stored event instead of a new one.

    ``payload`` is a JSON object or array (``None`` means ``{}``), normalised as
    ``outbox_admin.payload`` describes; ids are text, or ints in the signed 64-bit
    range. A refusal is an ``InvalidEventError``, ``UnknownEventTypeError`` or
    ``PayloadError``, raised in bounded time whatever the values, before anything
    is buffered.
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
            )
        )
    return _accept(tx, conn, rows, tables) if rows else []


def _accept(tx: Session | Connection, conn: Connection, rows: list[_Row], tables: OutboxTables) -> list[OutboxEvent]:
    """Buffer checked events, or write them at once when they carry idempotency keys or autocommit."""
    if _autocommit(conn) or any(row.key is not None for row in rows):
        return _write_now(tx, conn, rows, tables)
    return _buffer(tx, conn, rows, tables)


def flush_outbox(tx: Session | Connection) -> None:
    """Write the events ``tx``'s transaction has published and not yet written.

    Rarely needed: the next statement on the connection, ``Session.commit`` and the
    commit itself all do it. Useful to learn the events' ``created_at`` early.
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
    if "\x00" in text:
        raise InvalidEventError(name, "contains a NUL character")
    if not text.isascii():  # O(1) for ASCII text, which cannot hold a surrogate
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidEventError(name, "contains a lone surrogate and is not valid UTF-8 text") from None
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

    def wire(self) -> tuple[Any, ...]:
        """The row as one element of the statement's JSON array (payload as JSON text)."""
        return (self.id, self.org_id, self.event_type, self.entity_type, self.entity_id, self.payload_json, self.key)

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

_COLUMNS = ("id", "org_id", "event_type", "entity_type", "entity_id", "payload", "idempotency_key")


@dataclass(frozen=True)
class _PublishSql:
    """The statements of one table set on one dialect."""

    insert: str  # PostgreSQL: events + history + pg_notify, returning (count, stamp); SQLite: the events
    insert_keyed: str  # the same, skipping taken idempotency keys, returning (id, created_at, available_at)
    history: str | None  # SQLite: the first history rows, from a JSON array of ids
    # SQLite, one event (the usual transaction): plain parameters, cheaper there than parsing a
    # JSON array (measured: 0.13 ms less per transaction). PostgreSQL showed no gain.
    insert_one: str | None
    history_one: str | None


@functools.lru_cache(maxsize=64)
def _publish_sql(tables: OutboxTables, dialect: Dialect) -> _PublishSql:
    quote = dialect.identifier_preparer
    events, transitions = quote.format_table(tables.events), quote.format_table(tables.transitions)
    columns = ", ".join(quote.quote(c) for c in _COLUMNS)
    conflict_target = f"({quote.quote('org_id')}, {quote.quote('idempotency_key')})"
    if dialect.name == "postgresql":  # the partial unique index of migration 0003
        conflict_target += " WHERE idempotency_key IS NOT NULL"
    conflict = f" ON CONFLICT {conflict_target} DO NOTHING"
    history_columns = "event_id, from_status, to_status, at, actor, attempt"
    if dialect.name == "postgresql":
        # One statement: the events, their history rows (a data-modifying CTE) and the NOTIFY that
        # wakes other processes after the commit.
        now = str(db_now().compile(dialect=dialect))
        source = ", ".join(
            f"CAST(value ->> {i} AS jsonb)" if c == "payload" else f"value ->> {i}" for i, c in enumerate(_COLUMNS)
        )
        template = (
            f"WITH new AS (INSERT INTO {events} ({columns}, status, retry_count, created_at, available_at) "
            f"SELECT {source}, '{PENDING}', 0, {now}, {now} "
            "FROM json_array_elements(CAST(%(events)s AS json)){conflict} RETURNING id, created_at, available_at), "
            f"history AS (INSERT INTO {transitions} ({history_columns}) "
            f"SELECT id, NULL, '{PENDING}', created_at, '{PUBLISHER_ACTOR}', 0 FROM new) "
            "SELECT {result}, (SELECT pg_notify('" + NOTIFY_CHANNEL + "', '')) FROM new"
        )
        return _PublishSql(
            insert=template.format(conflict="", result="count(*), min(created_at)"),
            insert_keyed=template.format(conflict=conflict, result="id, created_at, available_at"),
            history=None,
            insert_one=None,
            history_one=None,
        )
    # SQLite: the stamp is a parameter (the database's clock is this machine's clock), so the
    # events and their history rows take two statements and nothing is read back.
    source = ", ".join(f"json_extract(value, '$[{i}]')" for i in range(len(_COLUMNS)))
    insert = (
        f"INSERT INTO {events} ({columns}, status, retry_count, created_at, available_at) "
        f"SELECT {source}, '{PENDING}', 0, :at, :at FROM json_each(:events) WHERE true"
    )
    one = ", ".join(f":{c}" for c in _COLUMNS)
    return _PublishSql(
        insert=insert,
        insert_keyed=f"{insert}{conflict} RETURNING id",
        history=(
            f"INSERT INTO {transitions} ({history_columns}) "
            f"SELECT value, NULL, '{PENDING}', :at, '{PUBLISHER_ACTOR}', 0 FROM json_each(:ids)"
        ),
        insert_one=(
            f"INSERT INTO {events} ({columns}, status, retry_count, created_at, available_at) "
            f"VALUES ({one}, '{PENDING}', 0, :at, :at)"
        ),
        history_one=(
            f"INSERT INTO {transitions} ({history_columns}) "
            f"VALUES (:id, NULL, '{PENDING}', :at, '{PUBLISHER_ACTOR}', 0)"
        ),
    )


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
    sql = _publish_sql(tables, conn.dialect)
    if sql.history is None:
        wire = json.dumps([row.wire() for row in rows], ensure_ascii=False)
        count, stamp = conn.exec_driver_sql(sql.insert, {"events": wire}).one()[:2]
        if count != len(rows):  # pragma: no cover - an INSERT ... SELECT writes every row or fails
            raise RuntimeError(f"wrote {count} of {len(rows)} events")
        return _UTC.process_result_value(stamp, conn.dialect)  # type: ignore[return-value]
    text, stamp = _sqlite_stamp()
    if len(rows) == 1 and sql.insert_one and sql.history_one:
        single = dict(zip(_COLUMNS, rows[0].wire(), strict=True), at=text)
        conn.exec_driver_sql(sql.insert_one, single)
        conn.exec_driver_sql(sql.history_one, single)
    else:
        wire = json.dumps([row.wire() for row in rows], ensure_ascii=False)
        conn.exec_driver_sql(sql.insert, {"events": wire, "at": text})
        conn.exec_driver_sql(sql.history, {"ids": json.dumps([row.id for row in rows]), "at": text})
    return stamp


def _write_now(tx: Session | Connection, conn: Connection, rows: list[_Row], tables: OutboxTables) -> list[OutboxEvent]:
    """Write ``rows`` at once (some carry idempotency keys); a taken key returns the stored event."""
    _flush(conn)  # keep publish order: what was buffered goes first
    sql = _publish_sql(tables, conn.dialect)
    wire = json.dumps([row.wire() for row in rows], ensure_ascii=False)
    stamps: dict[str, tuple[Any, Any]] = {}
    if sql.history is None:
        for event_id, created, available, _ in conn.exec_driver_sql(sql.insert_keyed, {"events": wire}):
            stamps[event_id] = (created, available)
    else:
        text, stamp = _sqlite_stamp()
        written = [r[0] for r in conn.exec_driver_sql(sql.insert_keyed, {"events": wire, "at": text})]
        if written:
            conn.exec_driver_sql(sql.history, {"ids": json.dumps(written), "at": text})
        stamps = {event_id: (stamp, stamp) for event_id in written}
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
# Per connection: the rows not yet written, their event objects and table set, in
# publish order. Written before the connection's next statement (before_cursor_execute),
# by Session.before_commit, and by the connection's commit event; dropped on rollback.

_BUFFER = "outbox_admin.buffer"
_BUFFERED_CONNECTIONS = "outbox_admin.buffered_connections"
_SESSION_CONNECTION = "outbox_admin.connection"


@dataclass(slots=True)
class _Buffered:
    tables: OutboxTables
    rows: list[_Row]
    events: list[OutboxEvent]


def _buffer(tx: Session | Connection, conn: Connection, rows: list[_Row], tables: OutboxTables) -> list[OutboxEvent]:
    state = _connection_state(conn)
    buffered: list[_Buffered] | None = state.get(_BUFFER)
    if buffered is None:  # the first event since the transaction began (or since the last write)
        buffered = state[_BUFFER] = []
        _hook_engine(conn.engine)
        if isinstance(tx, Session):
            tx.info.setdefault(_BUFFERED_CONNECTIONS, set()).add(conn)
        _after_publish(tx, conn)
    if not buffered or buffered[-1].tables is not tables:
        buffered.append(_Buffered(tables, [], []))
    group = buffered[-1]
    made = [_new_event(row.values(None, None), tables) for row in rows]
    group.rows.extend(rows)
    group.events.extend(made)
    if len(group.rows) >= BUFFER_LIMIT:  # a group is one statement: keep it bounded
        _flush(conn)
    return made


def _flush(conn: Connection) -> None:
    """Write the connection's buffered events; on failure they stay buffered, so the commit fails too."""
    state = _connection_state_map.get(conn)
    buffered: list[_Buffered] | None = state.pop(_BUFFER, None) if state else None
    while buffered:
        group = buffered[0]
        try:
            stamp = _write_rows(conn, group.rows, group.tables)
        except Exception as exc:
            state[_BUFFER] = buffered  # type: ignore[index]
            exc.add_note(
                f"outbox_admin: writing {sum(len(g.rows) for g in buffered)} published event(s) failed; "
                "they stay unwritten and this transaction cannot commit"
            )
            raise
        for obj in group.events:
            obj.__dict__["created_at"] = stamp
            obj.__dict__["available_at"] = stamp
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
    return conn.engine.url.render_as_string(hide_password=True)


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
            _hooked_engines.add(engine)


def _before_statement(conn: Connection, *_: Any) -> None:
    # Any statement on a connection with buffered events writes them first, so it sees them
    # (and a ROLLBACK TO SAVEPOINT undoes them). The write's own statement finds the buffer empty.
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

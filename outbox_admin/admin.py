"""Writes a person triggers: requeue, discard, retry now, recover expired leases, replay to chosen
handlers, purge, and pausing event types (pause, resume).

Each action covers one id, a list of ids, or a filter (``EventFilter``), runs in
one transaction, and writes a history row per event naming who did it (actor
``admin:<name>``). Actions are guarded by status in the same statement that
changes the row (``... WHERE id IN (...) AND status = 'FAILED'``), so an event a
dispatcher moved in the meantime is left alone, and they are safe while
dispatchers run. ``plan_action`` is the dry run: how many events an action
would touch and a sample of their ids.

Discarding moves an event to ``DISCARDED`` rather than deleting it, so the audit
trail stays; ``purge`` deletes old finished events in small batches.

Each action also corrects the rollup (``outbox_admin.stats``) in its transaction: an
event leaving COMPLETED, FAILED or DISCARDED is taken out of its count, one entering
DISCARDED (or FAILED, by a recovery) counted in, a purged one taken out.

``replay`` sends finished events again to the named handlers only (the delivery
ledger, ``models.OutboxEventDelivery``, records what each handler still owes).

Requeue, retry now, recover, replay and resume make events due at once, so after their
commit they wake the dispatchers: the ``DispatcherService`` of this process through
``outbox_admin.wakeup``, and on PostgreSQL every dispatcher that listens, through
a ``NOTIFY`` sent in the action's transaction (delivered only if it commits). On
SQLite a dispatcher in another process sees them at its next tick.

``pause(engine, "PROJECT.*", reason=...)`` stops every dispatcher on the database
from claiming events whose type matches the pattern, from its next batch on, until
``resume``; the pauses table keeps every pause and resume as their audit trail.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Connection, Engine, delete, desc, func, insert, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite

from . import stats
from .config import DEFAULT_MAX_ATTEMPTS
from .db import db_now, db_now_plus, read_connection, write_transaction
from .errors import AdminActionError, FilterError
from .filters import EventFilter, as_filter, check_text, prepare_connection
from .models import ALL_HANDLERS, DEFAULT_TABLES, MANUAL_ACTOR_PREFIX, MAX_HANDLER_NAME, EventStatus, OutboxTables
from .patterns import check_pattern
from .sql import admin_sql
from .wakeup import WakeSignal, wake_key, wake_signal

PENDING, PROCESSING, COMPLETED, FAILED, DISCARDED = (s.value for s in EventStatus)
REQUEUEABLE = (FAILED, PENDING, DISCARDED)
REPLAYABLE = (COMPLETED, FAILED, DISCARDED)
DISCARDABLE = (FAILED, PENDING)
NEVER_PURGED = (PENDING, PROCESSING)
CHUNK = 1000
DEFAULT_ACTOR = "admin"

RETRY_NOW_NOTE = "retry now: due at once instead of after its backoff"

Action = Literal["requeue", "discard", "retry_now", "recover", "replay"]
ACTIONS = ("requeue", "discard", "retry_now", "recover", "replay")
#: The actions that apply to one kind of event only, with the status and the filter flag that select it.
_OWN_EVENTS: dict[str, tuple[str, dict[str, bool]]] = {
    "retry_now": (PENDING, {"scheduled": True}),
    "recover": (PROCESSING, {"lease_expired": True}),
}


def actor_name(actor: str) -> str:
    """The actor recorded in history: ``admin:<name>`` (so the Live page can show manual actions only)."""
    actor = (actor or DEFAULT_ACTOR).strip() or DEFAULT_ACTOR
    return actor if actor.startswith(MANUAL_ACTOR_PREFIX) else f"{MANUAL_ACTOR_PREFIX}{actor}"[:255]


@dataclass(frozen=True)
class ActionPlan:
    """A dry run: the action, the conditions it will run on, how many events match, a sample of ids."""

    action: str
    filters: EventFilter
    statuses: tuple[str, ...]
    count: int
    sample_ids: list[str]


@dataclass(frozen=True)
class PurgeResult:
    events: int
    transitions: int
    batches: int


_BY_IDS_OR_FAILED: Any = object()  # the default status of requeue and plan_action: see requeue


def _statuses_for(action: Action, status: str | Iterable[str] | None, force: bool) -> tuple[str, ...]:
    allowed = {"requeue": REQUEUEABLE, "replay": REPLAYABLE}.get(action, DISCARDABLE)
    if status is None:
        return allowed + ((PROCESSING, COMPLETED) if force and action == "requeue" else ())
    wanted = EventFilter.build(status=status).status or ()
    refused = [s for s in wanted if s not in allowed]
    if refused and not (force and action == "requeue" and set(refused) <= {PROCESSING, COMPLETED}):
        hint = (
            " (pass force=True to redeliver them)"
            if action == "requeue" and set(refused) <= {PROCESSING, COMPLETED}
            else ""
        )
        raise AdminActionError(
            f"cannot {action} events that are {', '.join(refused)}; {action} applies to {', '.join(allowed)}{hint}"
        )
    return wanted


def _scope(event_ids: str | Sequence[str] | None, filters: EventFilter | None, loose: dict[str, Any]) -> EventFilter:
    flt = as_filter(filters, **loose)
    if event_ids is not None:
        ids = (event_ids,) if isinstance(event_ids, str) else tuple(event_ids)
        if not ids:
            raise AdminActionError("no event ids given")
        flt = flt.with_(event_ids=ids)
    return flt


def plan_action(
    engine: Engine,
    action: Action,
    event_ids: str | Sequence[str] | None = None,
    *,
    status: str | Iterable[str] | None = _BY_IDS_OR_FAILED,
    force: bool = False,
    filters: EventFilter | None = None,
    sample: int = 20,
    tables: OutboxTables = DEFAULT_TABLES,
    **loose: Any,
) -> ActionPlan:
    """The dry run of ``requeue``/``discard``/``retry_now``/``recover_expired`` with the same arguments:
    count and sample ids.

    For ``retry_now`` and ``recover`` the events are those the action would move now: PENDING
    events waiting on a backoff, PROCESSING events whose lease expired (``status`` may only name
    that status). The action checks again when it runs, so an event that changed meanwhile is
    left alone (and the count it returns says so).
    """
    if action not in ACTIONS:
        raise AdminActionError(f"unknown action {action!r}; use {', '.join(ACTIONS)}")
    if action in _OWN_EVENTS:
        flt = _own_events(action, _scope(event_ids, filters, loose), status)
        statuses = flt.status or ()
        return _plan(engine, action, flt, statuses, sample, tables)
    if status is _BY_IDS_OR_FAILED:
        status = FAILED if action == "requeue" and event_ids is None else None
    loose.pop("handlers", None)  # replay's handlers do not change which events it moves
    statuses = _statuses_for(action, status, force)
    flt = _scope(event_ids, filters, loose).with_(status=statuses)
    return _plan(engine, action, flt, statuses, sample, tables)


def _own_events(action: str, flt: EventFilter, status: Any = None) -> EventFilter:
    """``flt`` narrowed to the events ``action`` applies to; refused when the filter excludes them."""
    own, flags = _OWN_EVENTS[action]
    if status is not _BY_IDS_OR_FAILED and status is not None:
        wanted = EventFilter.build(status=status).status or ()
        if tuple(wanted) != (own,):
            raise AdminActionError(f"{action} applies to {own} events only, not {', '.join(wanted)}")
    if not flt.allows_status(own):
        raise AdminActionError(f"{action} applies to {own} events, and the filter leaves none of them")
    return flt.with_(status=(own,), **flags)


def _plan(
    engine: Engine, action: str, flt: EventFilter, statuses: Sequence[str], sample: int, tables: OutboxTables
) -> ActionPlan:
    ev = tables.events
    with read_connection(engine) as conn:  # a dry run only reads: never the write lock
        prepare_connection(conn)
        where = flt.clause(tables)
        count = conn.execute(select(func.count()).select_from(ev).where(where)).scalar_one()
        ids = (
            conn.execute(select(ev.c.id).where(where).order_by(desc(ev.c.created_at), desc(ev.c.id)).limit(sample))
            .scalars()
            .all()
        )
    return ActionPlan(action, flt, tuple(statuses), int(count), list(ids))


def _refuse_explicit_ids(
    conn: Connection, flt: EventFilter, allowed: Sequence[str], action: str, tables: OutboxTables, force_hint: bool
) -> None:
    """With explicit ids and no status given, refuse the whole action if some are in a wrong status."""
    ev = tables.events
    assert flt.event_ids is not None
    found: dict[str, str] = {}
    for start in range(0, len(flt.event_ids), CHUNK):
        chunk = flt.event_ids[start : start + CHUNK]
        found.update(conn.execute(select(ev.c.id, ev.c.status).where(ev.c.id.in_(chunk))).all())
    missing = [i for i in flt.event_ids if i not in found]
    if missing:
        raise AdminActionError(f"no such event: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    wrong = sorted({(s, i) for i, s in found.items() if s not in allowed})
    if wrong:
        listed = ", ".join(f"{i} is {s}" for s, i in wrong[:5])
        hint = "; pass force=True to redeliver them" if force_hint else ""
        raise AdminActionError(f"cannot {action}: {listed}{' ...' if len(wrong) > 5 else ''}{hint}")


def _move(
    engine: Engine,
    action: Action,
    flt: EventFilter,
    statuses: Sequence[str],
    to_status: str,
    values: dict[str, Any],
    actor: str,
    note: str | None,
    tables: OutboxTables,
    check_ids: bool,
    force: bool,
    reset_attempts: bool = False,
    wake: bool = False,
    on_moved: Callable[[Connection, list[str], str], None] | None = None,
) -> int:
    ev, tr = tables.events, tables.transitions
    who = actor_name(actor)
    moved = 0
    with write_transaction(engine) as conn:
        prepare_connection(conn)
        if check_ids and flt.event_ids is not None:
            _refuse_explicit_ids(conn, flt, statuses, action, tables, force_hint=action == "requeue" and not force)
        # Rows already in the target status go first, so a row moved by a later step is never moved twice.
        for old in sorted(statuses, key=lambda status: status != to_status):
            scoped = flt.with_(status=(old,))
            ids = list(
                conn.execute(update(ev).where(scoped.clause(tables)).values(**values).returning(ev.c.id)).scalars()
            )
            for start in range(0, len(ids), CHUNK):
                chunk = ids[start : start + CHUNK]
                # The rollup counts the rows as they were (retry count included), hence before the reset.
                if old != to_status and old in stats.COUNTED:
                    stats.record(conn, chunk, sign=-1, status=old, writer=stats.ADMIN_WRITER, tables=tables)
                if old != to_status and to_status in stats.COUNTED:
                    stats.record(conn, chunk, sign=1, status=to_status, writer=stats.ADMIN_WRITER, tables=tables)
                if reset_attempts:
                    conn.execute(update(ev).where(ev.c.id.in_(chunk)).values(retry_count=0))
                if on_moved is not None:
                    on_moved(conn, chunk, who)
                source = select(
                    ev.c.id, literal(old), literal(to_status), db_now(), literal(who), ev.c.retry_count, literal(note)
                ).where(ev.c.id.in_(chunk))
                conn.execute(
                    insert(tr).from_select(
                        [
                            tr.c.event_id,
                            tr.c.from_status,
                            tr.c.to_status,
                            tr.c.at,
                            tr.c.actor,
                            tr.c.attempt,
                            tr.c.error_message,
                        ],
                        source,
                    )
                )
            moved += len(ids)
        if wake and moved:
            _announce(conn, tables)
    if wake and moved:
        _wake(engine)
    return moved


def _announce(conn: Connection, tables: OutboxTables) -> None:
    """PostgreSQL: NOTIFY the dispatchers of every process; delivered when this transaction commits."""
    notify = admin_sql(conn.dialect, tables).notify
    if notify is not None:
        conn.exec_driver_sql(notify)


def _wake(engine: Engine, signal: WakeSignal = wake_signal) -> None:
    """After the commit: wake this process's dispatchers of ``engine``'s database (as the publisher does)."""
    signal.notify(wake_key(engine.url))


def requeue(
    engine: Engine,
    event_ids: str | Sequence[str] | None = None,
    *,
    status: str | Iterable[str] | None = _BY_IDS_OR_FAILED,
    event_type: str | Iterable[str] | None = None,
    org_id: str | Iterable[str] | None = None,
    error_group: str | None = None,
    filters: EventFilter | None = None,
    reset_attempts: bool = False,
    force: bool = False,
    actor: str = DEFAULT_ACTOR,
    tables: OutboxTables = DEFAULT_TABLES,
    **loose: Any,
) -> int:
    """Move matching events back to PENDING, due now; returns how many moved.

    Without ids, FAILED events matching the filters move. With explicit ids, every
    requeueable one moves (FAILED, PENDING, DISCARDED), and an id that is
    PROCESSING or COMPLETED makes the whole call fail with ``AdminActionError``
    (nothing written) unless ``force=True``, which delivers it again. Passing
    ``status`` explicitly makes it a guard instead: only events in that status
    move and the others are left alone (the dashboard's "exactly these
    conditions"). ``reset_attempts`` sets ``retry_count`` back to 0 so the event
    gets its full number of attempts. Wakes the dispatchers (see the module's docstring).
    """
    if status is _BY_IDS_OR_FAILED:
        status = None if event_ids is not None else FAILED
    statuses = _statuses_for("requeue", status, force)
    flt = _scope(event_ids, filters, {**loose, "event_type": event_type, "org_id": org_id, "error_group": error_group})
    values: dict[str, Any] = {"status": PENDING, "available_at": db_now(), "locked_by": None, "locked_until": None}
    return _move(
        engine,
        "requeue",
        flt,
        statuses,
        PENDING,
        values,
        actor,
        None,
        tables,
        check_ids=status is None,
        force=force,
        reset_attempts=reset_attempts,
        wake=True,
    )


def check_handler_names(handlers: str | Iterable[str]) -> tuple[str, ...]:
    """The handler names a replay names, checked: at least one, each text of a handler's length
    that is not the ledger's ``*``; duplicates dropped, order kept."""
    names = (handlers,) if isinstance(handlers, str) else tuple(handlers)
    if not names:
        raise AdminActionError("replay needs the name of at least one handler")
    for name in names:
        check_text("handler", name, limit=MAX_HANDLER_NAME)
        if not name.strip() or name == ALL_HANDLERS:
            raise AdminActionError(f"{name!r} is not a handler's name")
    return tuple(dict.fromkeys(names))


def replay(
    engine: Engine,
    event_ids: str | Sequence[str] | None = None,
    *,
    handlers: str | Iterable[str],
    status: str | Iterable[str] | None = None,
    filters: EventFilter | None = None,
    actor: str = DEFAULT_ACTOR,
    tables: OutboxTables = DEFAULT_TABLES,
    **loose: Any,
) -> int:
    """Send finished events (COMPLETED, FAILED or DISCARDED) again to the named ``handlers`` only; returns
    how many events will be.

    Each event keeps its id (consumers de-duplicate on it), goes back to PENDING, due now, with
    its attempts reset (the replay is a new delivery with the full number of attempts), and owes
    the named handlers a delivery in the ledger (``requested_at``, ``requested_by``): while it does,
    a dispatcher runs those handlers only, and the event is COMPLETED once they have it, unless
    another handler is still failing for it (a FAILED event replayed to a handler other than the
    one that failed goes back to FAILED: ``requeue`` runs exactly the missing ones). A name this
    dispatcher does not have fails the attempt with a message saying so: check names against
    the configured handlers first (``outbox-admin replay`` does). With explicit ids, an event that
    is PENDING or PROCESSING refuses the whole call (nothing written); ``status`` narrows to the
    statuses given. History rows name the actor and the handlers. Wakes the dispatchers.
    """
    names = check_handler_names(handlers)
    statuses = _statuses_for("replay", status, False)
    flt = _scope(event_ids, filters, loose)
    note = _clip_note("replay to " + ", ".join(names))
    values: dict[str, Any] = {"status": PENDING, "available_at": db_now(), "locked_by": None, "locked_until": None}

    def owe(conn: Connection, chunk: list[str], who: str) -> None:
        _owe_deliveries(conn, chunk, names, who, tables)

    return _move(
        engine,
        "replay",
        flt,
        statuses,
        PENDING,
        values,
        actor,
        note,
        tables,
        check_ids=status is None,
        force=False,
        reset_attempts=True,
        wake=True,
        on_moved=owe,
    )


def _clip_note(text: str) -> str:
    return text if len(text) <= 2000 else text[:1999] + "…"


def _owe_deliveries(conn: Connection, ids: list[str], names: Sequence[str], who: str, tables: OutboxTables) -> None:
    """Ledger rows saying the events of ``ids`` owe ``names`` a delivery: new rows, or existing ones reset."""
    ledger = tables.deliveries
    rows = [{"event_id": i, "handler": n, "attempt": 0, "requested_by": who} for i in ids for n in names]
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(ledger).values(requested_at=db_now())
    reset = {
        "attempt": 0,
        "delivered_at": None,
        "duration_ms": None,
        "last_error": None,
        "requested_at": db_now(),
        "requested_by": statement.excluded.requested_by,
    }
    for start in range(0, len(rows), CHUNK):
        conn.execute(
            statement.on_conflict_do_update(index_elements=[ledger.c.event_id, ledger.c.handler], set_=reset),
            rows[start : start + CHUNK],
        )


def discard(
    engine: Engine,
    event_ids: str | Sequence[str] | None = None,
    *,
    status: str | Iterable[str] | None = None,
    event_type: str | Iterable[str] | None = None,
    org_id: str | Iterable[str] | None = None,
    error_group: str | None = None,
    filters: EventFilter | None = None,
    reason: str | None = None,
    actor: str = DEFAULT_ACTOR,
    tables: OutboxTables = DEFAULT_TABLES,
    **loose: Any,
) -> int:
    """Move matching FAILED or PENDING events to DISCARDED (kept, never delivered); returns how many moved.

    Explicit ids that are PROCESSING, COMPLETED or already DISCARDED are refused
    with an ``AdminActionError`` and nothing is written. ``reason`` is kept in the
    history row.
    """
    statuses = _statuses_for("discard", status, False)
    flt = _scope(event_ids, filters, {**loose, "event_type": event_type, "org_id": org_id, "error_group": error_group})
    note = f"discarded: {reason}"[:2000] if reason else "discarded"
    values = {"status": DISCARDED, "locked_by": None, "locked_until": None}
    return _move(
        engine, "discard", flt, statuses, DISCARDED, values, actor, note, tables, check_ids=status is None, force=False
    )


def retry_now(
    engine: Engine,
    event_ids: str | Sequence[str] | None = None,
    *,
    filters: EventFilter | None = None,
    actor: str = DEFAULT_ACTOR,
    tables: OutboxTables = DEFAULT_TABLES,
    **loose: Any,
) -> int:
    """PENDING events waiting on a backoff (``available_at`` in the future) become due now; returns how many.

    By ids, by filter (``EventFilter`` or its keywords), or every waiting event when neither is
    given. The attempts are kept (unlike ``requeue(reset_attempts=True)``). The statement moves only
    events still waiting when it runs, so ids that are due already, claimed or finished meanwhile
    are left alone; the count says how many moved. A history row (PENDING -> PENDING) records the
    actor. Wakes the dispatchers (see the module's docstring).
    """
    flt = _own_events("retry_now", _scope(event_ids, filters, loose))
    values = {"available_at": db_now()}
    return _move(
        engine,
        "retry_now",
        flt,
        (PENDING,),
        PENDING,
        values,
        actor,
        RETRY_NOW_NOTE,
        tables,
        check_ids=False,
        force=False,
        wake=True,
    )


def recover_expired(
    engine: Engine,
    event_ids: str | Sequence[str] | None = None,
    *,
    filters: EventFilter | None = None,
    max_attempts: int | None = DEFAULT_MAX_ATTEMPTS,
    actor: str = DEFAULT_ACTOR,
    tables: OutboxTables = DEFAULT_TABLES,
    **loose: Any,
) -> int:
    """PROCESSING events whose lease expired go back to PENDING, due now, or to FAILED when that was
    their last attempt: what a dispatcher's recovery does, now; returns how many moved.

    It runs the dispatcher's own recovery statement (``outbox_admin.sql``) on the matching events
    (ids, a filter, or every expired lease), so the rules are the same: a failed attempt each,
    the lease-expired error message, ``max_attempts`` as the dispatchers are configured (``None``:
    never FAILED). The lease is tested again on the locked row in that statement: an event whose
    lease is valid, also one renewed or claimed again since a dry run, is never touched. History
    rows name the actor. Wakes the dispatchers (see the module's docstring).
    """
    if max_attempts is not None and max_attempts < 1:
        raise AdminActionError("max_attempts must be at least 1, or None")
    flt = _own_events("recover", _scope(event_ids, filters, loose))
    sql = admin_sql(engine.dialect, tables)
    ev = tables.events
    who = actor_name(actor)
    moved = 0
    with write_transaction(engine) as conn:
        prepare_connection(conn)
        ids = list(conn.execute(select(ev.c.id).where(flt.clause(tables)).order_by(ev.c.id)).scalars())
        for start in range(0, len(ids), CHUNK):
            params = {"ids": json.dumps(ids[start : start + CHUNK]), "name": who, "max_attempts": max_attempts}
            rows = conn.exec_driver_sql(sql.recover, params).all()
            if rows and sql.history is not None:
                history = [(r[0], PROCESSING, r[1], r[2], r[3]) for r in rows]
                conn.exec_driver_sql(sql.history, {"rows": json.dumps(history), "name": who})
            if rows and sql.count is not None:  # the dead letters it made, as the dispatcher counts them
                counted = stats.summed(((r[4], r[5], r[1], r[2], r[6]) for r in rows), who)
                if counted:
                    conn.exec_driver_sql(sql.count, counted)
            moved += len(rows)
        if moved:
            _announce(conn, tables)
    if moved:
        _wake(engine)
    return moved


def purge(
    engine: Engine,
    older_than: dt.timedelta | dt.datetime,
    statuses: Iterable[str] = (COMPLETED, DISCARDED),
    *,
    batch_size: int = 5000,
    progress: Callable[[int], None] | None = None,
    tables: OutboxTables = DEFAULT_TABLES,
) -> PurgeResult:
    """Delete events created before ``older_than`` ago (or before a datetime) in the given statuses,
    with their history and their delivery ledger rows, ``batch_size`` events per transaction so the
    table is never locked for long.

    PENDING and PROCESSING events are never purged. ``progress(n)`` is called with
    the number of events deleted after each batch.
    """
    wanted = tuple(EventFilter.build(status=tuple(statuses)).status or ())
    refused = [s for s in wanted if s in NEVER_PURGED]
    if refused or not wanted:
        raise AdminActionError(
            f"purge never deletes undelivered events ({', '.join(NEVER_PURGED)})"
            if refused
            else "purge needs at least one status"
        )
    if batch_size < 1:
        raise AdminActionError("batch_size must be at least 1")
    ev, tr = tables.events, tables.transitions
    if isinstance(older_than, dt.timedelta):
        cutoff: Any = db_now_plus(-older_than.total_seconds())
    else:
        cutoff = older_than if older_than.tzinfo else older_than.replace(tzinfo=dt.UTC)
    events = transitions = batches = 0
    while True:
        with write_transaction(engine) as conn:
            ids = list(
                conn.execute(
                    select(ev.c.id)
                    .where(ev.c.status.in_(wanted), ev.c.created_at < cutoff)
                    .order_by(ev.c.created_at)
                    .limit(batch_size)
                    .with_for_update(skip_locked=True)
                ).scalars()
            )
            if not ids:
                break
            for start in range(0, len(ids), CHUNK):
                chunk = ids[start : start + CHUNK]
                stats.record(conn, chunk, sign=-1, writer=stats.PURGE_WRITER, tables=tables)  # rows still locked
                transitions += conn.execute(delete(tr).where(tr.c.event_id.in_(chunk))).rowcount or 0
                conn.execute(delete(tables.deliveries).where(tables.deliveries.c.event_id.in_(chunk)))
                events += conn.execute(delete(ev).where(ev.c.id.in_(chunk), ev.c.status.in_(wanted))).rowcount or 0
        batches += 1
        if progress is not None:
            progress(events)
    if events:
        stats.compact(engine, tables)
    return PurgeResult(events, transitions, batches)


#: A pause's reason is required (it is what the next operator reads) and at most this long.
MAX_REASON_LENGTH = 1_000
#: Each active pause is one more condition in every claim: more than this many is refused.
MAX_ACTIVE_PAUSES = 100


@dataclass(frozen=True)
class Pause:
    """One pause of the event types matching ``pattern``; active while ``resumed_at`` is None.

    ``created`` is True on the pause ``pause()`` has just written, False when it returns
    the pause that was already active for that pattern (and on a pause ``resume()`` ended).
    """

    id: int
    pattern: str
    reason: str
    paused_by: str
    paused_at: dt.datetime
    resumed_by: str | None = None
    resumed_at: dt.datetime | None = None
    created: bool = False

    @property
    def active(self) -> bool:
        return self.resumed_at is None


def pause(
    engine: Engine, pattern: str, *, reason: str, actor: str = DEFAULT_ACTOR, tables: OutboxTables = DEFAULT_TABLES
) -> Pause:
    """Stop every dispatcher on the database claiming events whose type matches ``pattern``; returns the pause.

    ``pattern`` is a glob as handlers use (``PROJECT.*``, ``*``, ``[AB]*``), checked by
    ``patterns.check_pattern``; ``reason`` is required. Idempotent: pausing a pattern that
    is paused already changes nothing and returns that pause (``created=False``), whose
    reason, actor and time are kept, since they are what the audit trail should say; to
    change the reason, resume and pause again. Events already claimed finish; paused ones
    stay PENDING with their attempts and backoff untouched until ``resume``.
    """
    pattern = check_pattern(pattern)
    reason = check_text("reason", reason, limit=MAX_REASON_LENGTH).strip()
    if not reason:
        raise FilterError("reason", "is required: say why the events are paused (it is shown with the pause)")
    who = actor_name(actor)
    table = tables.pauses
    active = table.c.resumed_at.is_(None)
    dialect_insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
    with write_transaction(engine) as conn:
        existing = conn.execute(select(table).where(table.c.pattern == pattern, active)).one_or_none()
        if existing is not None:
            return _pause(existing)
        held = conn.execute(select(func.count()).select_from(table).where(active)).scalar_one()
        if held >= MAX_ACTIVE_PAUSES:
            raise AdminActionError(f"{held} pauses are active, the most there can be; resume some first")
        # A pause of the same pattern committed meanwhile (PostgreSQL) wins: this one is then not written.
        written = conn.execute(
            dialect_insert(table)
            .values(pattern=pattern, reason=reason, paused_by=who, paused_at=db_now())
            .on_conflict_do_nothing(index_elements=[table.c.pattern], index_where=active)
            .returning(table.c.id)
        ).scalar_one_or_none()
        row = conn.execute(select(table).where(table.c.pattern == pattern, active)).one()
    return _pause(row, created=written is not None)


def resume(engine: Engine, pattern: str, *, actor: str = DEFAULT_ACTOR, tables: OutboxTables = DEFAULT_TABLES) -> Pause:
    """End the active pause of exactly ``pattern`` (the row is kept, with who resumed it and when); returns it.

    Dispatchers claim the events again from their next batch; those of this process, and
    on PostgreSQL every listening one, are woken at once. A pattern that is not paused
    raises ``AdminActionError`` naming the active pauses: resuming ``PROJECT*`` when
    ``PROJECT.*`` is paused must not look as if the events were flowing again.
    """
    pattern = check_pattern(pattern)
    who = actor_name(actor)
    table = tables.pauses
    active = table.c.resumed_at.is_(None)
    with write_transaction(engine) as conn:
        row = conn.execute(
            update(table)
            .where(table.c.pattern == pattern, active)
            .values(resumed_by=who, resumed_at=db_now())
            .returning(*table.c)
        ).one_or_none()
        if row is None:
            others = conn.execute(select(table.c.pattern).where(active).order_by(table.c.pattern).limit(11)).scalars()
            listed = [repr(p) for p in others]
            more = " ..." if len(listed) > 10 else ""
            raise AdminActionError(
                f"{pattern!r} is not paused; "
                + (f"the active pauses are {', '.join(listed[:10])}{more}" if listed else "nothing is paused")
            )
        _announce(conn, tables)  # PostgreSQL: delivered on commit, to every listening dispatcher
    _wake(engine)
    return _pause(row)


def _pause(row: Any, *, created: bool = False) -> Pause:
    return Pause(row.id, row.pattern, row.reason, row.paused_by, row.paused_at, row.resumed_by, row.resumed_at, created)


def publish_from_form(
    engine: Engine,
    *,
    org_id: str,
    event_type: str,
    entity_type: str,
    entity_id: str,
    payload_text: str,
) -> Any:
    """Publish one event typed by a person (dashboard form, CLI): the payload is JSON text.

    Text that is not a JSON value raises ``PayloadError`` (``payload: not valid JSON ...``)
    and nothing is written; the event goes through ``publish_outbox_event`` in its own
    transaction, so every other rule (registered type, payload limits) applies.
    """
    import json

    from .errors import PayloadError
    from .publisher import publish_outbox_event

    try:
        payload = json.loads(payload_text) if payload_text.strip() else {}
    except json.JSONDecodeError as exc:
        raise PayloadError("payload", f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except ValueError:  # an integer of more than 4,300 digits, which Python will not parse
        raise PayloadError("payload", "holds an integer with too many digits; send it as text") from None
    except RecursionError:
        raise PayloadError("payload", "is nested too deeply") from None
    with engine.begin() as conn:
        return publish_outbox_event(
            conn, org_id=org_id, event_type=event_type, entity_type=entity_type, entity_id=entity_id, payload=payload
        )

"""Reads of the delivery ledger (``models.OutboxEventDelivery``): which handler has which event.

The dashboard, the notebooks and the CLI read per-handler delivery state through these
functions (also exposed from ``outbox_admin.analytics``):

- ``deliveries_frame``: delivered ledger rows with their event, newest delivery first, and the
  latency from the event's commit to the handler's acknowledgement (``latency_ms``);
- ``handler_summary``: per handler over a window, deliveries, their rate, the events it is
  failing, its failure rate and the latency p50/p95;
- ``event_deliveries``: one event's state per handler (the event detail);
- ``handler_failures``: FAILED events' failing handlers grouped by handler and error (the
  Failures page), and ``failing_event_ids`` for the events of one such group;
- ``known_handlers``: handler names the ledger has seen lately (for a replay's picker).

Every read is bounded and goes through an index: the window of deliveries through
``ix_<ledger>_delivered`` (on ``delivered_at``), one event's rows through the ledger's
primary key ``(event_id, handler)``, failures in a window through the history's
``(to_status, from_status, at)`` index. The ledger has no time of failure, so the events a
handler failed in a window are found from the history rows of their failed attempts.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pandas as pd
from sqlalchemy import Engine, and_, case, desc, func, select, true, union
from sqlalchemy.sql import Select

from .db import db_now
from .errors import FilterError
from .filters import EventFilter, as_filter, check_text, normalized_error, parse_time
from .models import ALL_HANDLERS, DEFAULT_TABLES, MAX_HANDLER_NAME, EventStatus, OutboxTables
from .reads import MAX_PAGE, page_bounds, reading, rows_frame, seconds_between, unindexed

__all__ = [
    "ALL_HANDLERS_LABEL",
    "DELIVERY_COLUMNS",
    "HandlerFailuresPage",
    "HandlerSummary",
    "deliveries_frame",
    "event_deliveries",
    "failing_event_ids",
    "handler_failures",
    "handler_label",
    "handler_summary",
    "known_handlers",
]

PENDING, PROCESSING, FAILED = EventStatus.PENDING.value, EventStatus.PROCESSING.value, EventStatus.FAILED.value

#: How the ledger's ``*`` row reads to a person.
ALL_HANDLERS_LABEL = "all handlers (delivered before the ledger existed)"

DELIVERY_COLUMNS = [
    "event_id",
    "event_type",
    "org_id",
    "entity_type",
    "entity_id",
    "handler",
    "attempt",
    "delivered_at",
    "duration_ms",
    "last_error",
    "requested_at",
    "requested_by",
    "created_at",
    "latency_ms",
]
_DELIVERY_TIMES = ("delivered_at", "requested_at", "created_at")

#: A window summary reads at most this many of the newest deliveries (and as many failed attempts of
#: each kind); a busier window is shortened to them, and the summary says from when it counts.
SUMMARY_ROWS = 50_000


def handler_label(name: str) -> str:
    """A handler's name as a person reads it: the ledger's ``*`` row spelled out."""
    return ALL_HANDLERS_LABEL if name == ALL_HANDLERS else name


def _handlers(handler: str | Iterable[str] | None) -> tuple[str, ...] | None:
    if handler is None:
        return None
    names = (handler,) if isinstance(handler, str) else tuple(handler)
    for name in names:
        check_text("handler", name, limit=MAX_HANDLER_NAME)
    if not names:
        raise FilterError("handler", "give at least one handler name, or None for every handler")
    return names


def deliveries_frame(
    engine: Engine,
    filters: EventFilter | None = None,
    *,
    since: dt.datetime | str | None = None,
    until: dt.datetime | str | None = None,
    handler: str | Iterable[str] | None = None,
    limit: int = 1000,
    tables: OutboxTables = DEFAULT_TABLES,
    **loose: Any,
) -> pd.DataFrame:
    """Delivered ledger rows joined to their event, newest delivery first, at most ``limit``:
    ``DELIVERY_COLUMNS``; ``latency_ms`` is from the event's ``created_at`` (its commit) to the
    delivery's ``delivered_at`` (the handler's acknowledgement, as the dispatcher recorded it).

    ``since``/``until`` bound ``delivered_at`` (``until`` exclusive); ``handler`` is one name or
    several (``"*"``: events delivered before the ledger existed); the event filters (an
    ``EventFilter`` or its keywords but ``since``/``until``: ``event_type=``, ``org_id=``...)
    narrow the events. Read newest first through the ``delivered_at`` index, each event by its
    primary key. Rows not delivered (failing, or owed by a replay) are in ``event_deliveries``
    and ``handler_failures``.
    """
    stmt = deliveries_statement(
        as_filter(filters, **loose),
        engine.dialect,
        since=since,
        until=until,
        handler=handler,
        limit=limit,
        tables=tables,
    )
    with reading(engine) as conn:
        rows = conn.execute(stmt).all()
    frame = rows_frame(rows, DELIVERY_COLUMNS[:-1], _DELIVERY_TIMES)
    latency = (frame["delivered_at"] - frame["created_at"]).dt.total_seconds() * 1000
    frame["latency_ms"] = latency.astype("float64")
    return frame.astype({"attempt": "int64", "duration_ms": "float64"})


def deliveries_statement(
    flt: EventFilter,
    dialect: Any,
    *,
    since: dt.datetime | str | None = None,
    until: dt.datetime | str | None = None,
    handler: str | Iterable[str] | None = None,
    limit: int = 1000,
    tables: OutboxTables = DEFAULT_TABLES,
) -> Select[Any]:
    """The query ``deliveries_frame`` runs (for its plan test): the ledger newest first through the
    ``delivered_at`` index, and for each row its event by primary key.

    On PostgreSQL the event is read in a ``LATERAL`` subquery that cannot be flattened (its ``OFFSET``),
    so the read stays a walk of the index with one probe per row: a plain join lets the planner
    hash the whole events table when it cannot tell how many rows the window holds (no statistics).
    On SQLite the join is on ``+event_id``, which no ledger index serves, so the events table cannot
    be the outer loop (with statistics saying an event filter matches every event, it would be
    scanned). Ties (a batch's deliveries share one time) come in no set order.
    """
    limit, _ = page_bounds(limit, 0)
    names = _handlers(handler)
    start, end = parse_time(since, "since"), parse_time(until, "until")
    d, ev = tables.deliveries, tables.events
    fields = [ev.c.event_type, ev.c.org_id, ev.c.entity_type, ev.c.entity_id, ev.c.created_at]
    where = [flt.clause(tables)] if not flt.is_empty() else []
    if dialect.name == "postgresql":
        event: Any = select(*fields).where(ev.c.id == d.c.event_id, *where).offset(0).lateral("event")
        source = d.join(event, true())
    else:
        event, source = ev, d.join(ev, ev.c.id == unindexed(d.c.event_id))
    stmt = (
        select(d.c.event_id, *(event.c[c.name] for c in fields[:4]), *(d.c[name] for name in _LEDGER_FIELDS))
        .add_columns(event.c.created_at)
        .select_from(source)
    )
    if dialect.name != "postgresql":
        stmt = stmt.where(*where)
    if start is not None:
        stmt = stmt.where(d.c.delivered_at >= start)
    else:
        stmt = stmt.where(d.c.delivered_at.is_not(None))
    if end is not None:
        stmt = stmt.where(d.c.delivered_at < end)
    elif start is not None and dialect.name == "postgresql":
        # Nothing is delivered after the database's clock (it stamps delivered_at). Bounded on both sides,
        # the window reads as a narrow range to a planner without statistics, which then walks the index
        # rather than reading the whole ledger to sort what one bound leaves.
        stmt = stmt.where(d.c.delivered_at <= db_now())
    if names is not None:
        stmt = stmt.where(d.c.handler.in_(names))
    # By the indexed time alone: a tie-breaker would make PostgreSQL sort the window instead of walking it.
    return stmt.order_by(desc(d.c.delivered_at)).limit(limit)


_LEDGER_FIELDS = ("handler", "attempt", "delivered_at", "duration_ms", "last_error", "requested_at", "requested_by")


# -- the Overview's per-handler numbers ---------------------------------------------------------------


SUMMARY_COLUMNS = [
    "handler",
    "deliveries",
    "per_minute",
    "failing",
    "failure_rate",
    "retried",
    "latency_p50",
    "latency_p95",
    "latency_max",
    "duration_ms_mean",
    "last_delivery",
]


@dataclass(frozen=True)
class HandlerSummary:
    """Per handler, over ``since`` to ``until``: ``SUMMARY_COLUMNS``, the busiest first.

    ``deliveries``: events it acknowledged in the window (``per_minute`` of them); ``failing``:
    events that failed an attempt in the window and that this handler has not delivered since
    (its last error kept in the ledger); ``failure_rate`` is ``failing / (deliveries + failing)``;
    ``retried``: deliveries that took this handler more than one try; latencies in seconds, from
    the event's commit to the acknowledgement (nearest rank); ``duration_ms_mean``: how long its
    successful calls took. ``capped``: the window held more deliveries than the summary reads
    (``SUMMARY_ROWS``), so it counts from ``since`` on, later than asked.
    """

    frame: pd.DataFrame
    since: dt.datetime
    until: dt.datetime
    capped: bool


def summary_statements(
    since: dt.datetime,
    until: dt.datetime | None = None,
    *,
    newest: int = SUMMARY_ROWS,
    tables: OutboxTables = DEFAULT_TABLES,
) -> dict[str, Select[Any]]:
    """The two reads of ``handler_summary`` (for their plan tests): ``delivered``, the window's
    newest deliveries ranked per handler by latency, and ``failing``, the failing handlers of the
    events whose attempts failed in the window."""
    d, ev, tr = tables.deliveries, tables.events, tables.transitions
    # The event's creation time by primary key, one probe per delivery read: a scalar subquery cannot
    # become a hash join that reads the whole events table.
    created = select(ev.c.created_at).where(ev.c.id == d.c.event_id).scalar_subquery().correlate(d)
    window = select(d.c.handler, d.c.attempt, d.c.duration_ms, d.c.delivered_at, created.label("created_at")).where(
        d.c.delivered_at >= since
    )
    if until is not None:
        window = window.where(d.c.delivered_at < until)
    rows = window.order_by(desc(d.c.delivered_at)).limit(newest).subquery("recent")
    timed = (
        select(
            rows.c.handler,
            rows.c.attempt,
            rows.c.duration_ms,
            rows.c.delivered_at,
            seconds_between(rows.c.created_at, rows.c.delivered_at).label("s"),
        )
        .where(rows.c.created_at.is_not(None))
        .subquery("timed")
    )
    ranked = select(
        *timed.c,
        func.row_number().over(partition_by=timed.c.handler, order_by=timed.c.s).label("rn"),
        func.count().over(partition_by=timed.c.handler).label("n"),
    ).subquery("ranked")

    def quantile(q: float) -> Any:
        return func.min(case((ranked.c.rn * 1.0 >= ranked.c.n * q, ranked.c.s)))

    delivered = select(
        ranked.c.handler,
        func.count(),
        func.sum(case((ranked.c.attempt > 1, 1), else_=0)),
        func.avg(ranked.c.duration_ms),
        func.min(ranked.c.delivered_at),
        func.max(ranked.c.delivered_at),
        quantile(0.5),
        quantile(0.95),
        func.max(ranked.c.s),
    ).group_by(ranked.c.handler)

    # Attempts that failed and were retried (PENDING) or were the last (FAILED), newest first, each kind
    # through the history's (to_status, from_status, at) index; their events' ledger rows by primary key.
    attempts = [_attempts(tr, status, since, until, newest) for status in (PENDING, FAILED)]
    events = union(*(select(a.c.event_id) for a in attempts)).subquery("failed_events")
    failing = (
        select(d.c.handler, func.count())
        .select_from(events.join(d, d.c.event_id == events.c.event_id))
        .where(d.c.delivered_at.is_(None), d.c.last_error.is_not(None))
        .group_by(d.c.handler)
    )
    return {"delivered": delivered, "failing": failing}


def _attempts(tr: Any, status: str, since: dt.datetime, until: dt.datetime | None, newest: int) -> Any:
    """The events of the newest ``newest`` attempts that failed into ``status`` in the window."""
    attempts = select(tr.c.event_id).where(tr.c.to_status == status, tr.c.from_status == PROCESSING, tr.c.at >= since)
    if until is not None:
        attempts = attempts.where(tr.c.at < until)
    return attempts.order_by(desc(tr.c.at)).limit(newest).subquery(f"failed_{status.lower()}")


def handler_summary(
    engine: Engine,
    window: dt.timedelta = dt.timedelta(hours=1),
    *,
    now: dt.datetime | None = None,
    newest: int = SUMMARY_ROWS,
    tables: OutboxTables = DEFAULT_TABLES,
) -> HandlerSummary:
    """Each handler's deliveries, failures and latency over the last ``window`` (see ``HandlerSummary``).

    Two small reads whatever the outbox's size: the window's newest deliveries through the
    ``delivered_at`` index (each event's creation time by primary key), and the events whose
    attempts failed in the window through the history's index, with their ledger rows by key.
    """
    if window <= dt.timedelta(0):
        raise FilterError("window", "must be longer than zero")
    if newest < 1:
        raise FilterError("newest", "must be at least 1")
    until = now or dt.datetime.now(dt.UTC)
    since = until - window
    with reading(engine) as conn:
        delivered = conn.execute(summary_statements(since, until, newest=newest, tables=tables)["delivered"]).all()
        capped = sum(int(r[1]) for r in delivered) >= newest
        # A shortened window starts where its newest deliveries reach back to; its failures are counted from there.
        start = max(since, min(r[4] for r in delivered)) if capped else since
        failing: dict[str, int] = dict(
            conn.execute(summary_statements(start, until, newest=newest, tables=tables)["failing"]).all()
        )
    by_handler: dict[str, list[Any]] = {}
    for handler, count, retried, duration, _first, last, p50, p95, worst in delivered:
        by_handler[handler] = [int(count), int(retried or 0), p50, p95, worst, duration, last]
    minutes = max((until - start).total_seconds() / 60, 1 / 60)
    records = []
    for handler in sorted(set(by_handler) | set(failing)):
        count, retried, p50, p95, worst, duration, last = by_handler.get(handler, [0, 0, None, None, None, None, None])
        failed = int(failing.get(handler, 0))
        rate = failed / (count + failed) if count + failed else 0.0
        records.append([handler, count, count / minutes, failed, rate, retried, p50, p95, worst, duration, last])
    frame = rows_frame(records, SUMMARY_COLUMNS, ("last_delivery",))
    numbers = ["per_minute", "failure_rate", "latency_p50", "latency_p95", "latency_max", "duration_ms_mean"]
    frame[numbers] = frame[numbers].astype("float64")
    frame = frame.astype({"deliveries": "int64", "failing": "int64", "retried": "int64"})
    frame = frame.sort_values(["deliveries", "failing", "handler"], ascending=[False, False, True], kind="stable")
    return HandlerSummary(frame.reset_index(drop=True), start, until, capped)


# -- one event ------------------------------------------------------------------------------------------

EVENT_DELIVERY_COLUMNS = [
    "handler",
    "state",
    "attempt",
    "delivered_at",
    "duration_ms",
    "last_error",
    "requested_at",
    "requested_by",
]


def _state(delivered_at: Any, last_error: Any, requested_at: Any) -> str:
    if delivered_at is not None:
        return "delivered (replayed)" if requested_at is not None else "delivered"
    if last_error is not None:
        return "failing"
    return "replay requested" if requested_at is not None else "not delivered"


def event_deliveries(engine: Engine, event_id: str, *, tables: OutboxTables = DEFAULT_TABLES) -> pd.DataFrame:
    """One event's state per handler: ``EVENT_DELIVERY_COLUMNS``, the ``*`` row first, then by name.

    ``state`` is ``delivered``, ``delivered (replayed)``, ``failing`` (``last_error`` holds why),
    ``replay requested`` (owed by a replay, ``requested_by`` at ``requested_at``) or ``not
    delivered``. A handler that never tried the event has no row. Read by the ledger's primary key.
    """
    check_text("event_id", event_id)
    d = tables.deliveries
    stmt = (
        select(
            d.c.handler,
            d.c.attempt,
            d.c.delivered_at,
            d.c.duration_ms,
            d.c.last_error,
            d.c.requested_at,
            d.c.requested_by,
        )
        .where(d.c.event_id == event_id)
        .order_by(d.c.handler != ALL_HANDLERS, d.c.handler)
    )
    with reading(engine) as conn:
        rows = conn.execute(stmt).all()
    records = [(r[0], _state(r[2], r[4], r[5]), *r[1:]) for r in rows]
    frame = rows_frame(records, EVENT_DELIVERY_COLUMNS, ("delivered_at", "requested_at"))
    return frame.astype({"attempt": "int64", "duration_ms": "float64"})


# -- the Failures page --------------------------------------------------------------------------------

HANDLER_FAILURE_COLUMNS = [
    "handler",
    "error_group",
    "events",
    "first_seen",
    "last_seen",
    "event_types",
    "example_event_id",
    "example_message",
]


@dataclass(frozen=True)
class HandlerFailuresPage:
    """A page of ``handler_failures`` and how many (handler, error group) pairs there are in all."""

    frame: pd.DataFrame
    total: int


def _failing_rows(flt: EventFilter, tables: OutboxTables, dialect_name: str) -> Any:
    """FAILED events (of ``flt``) joined to their ledger rows that failed and never delivered."""
    d, ev = tables.deliveries, tables.events
    # SQLite: from the undelivered rows (the NULL end of the delivered_at index) to their events by key.
    # Statistics taken while every event was COMPLETED make it think the FAILED ones are all of them,
    # and scan the events; joined on +event_id, the ledger cannot be the inner loop. PostgreSQL takes
    # either way round through those indexes.
    key = unindexed(d.c.event_id) if dialect_name == "sqlite" else d.c.event_id
    return (
        select(d.c.handler, d.c.last_error, ev.c.id, ev.c.created_at, ev.c.event_type)
        .select_from(ev.join(d, key == ev.c.id))
        .where(
            ev.c.status == FAILED,
            flt.clause(tables),
            d.c.delivered_at.is_(None),
            d.c.last_error.is_not(None),
        )
    )


def handler_failures(
    engine: Engine,
    filters: EventFilter | None = None,
    *,
    limit: int = 50,
    offset: int = 0,
    tables: OutboxTables = DEFAULT_TABLES,
    **loose: Any,
) -> HandlerFailuresPage:
    """FAILED events' failing handlers, grouped by handler and error group (the message with ids and
    numbers masked, as ``error_summary`` groups): ``HANDLER_FAILURE_COLUMNS``, most events first.

    ``events`` counts the FAILED events whose ledger row for that handler holds that error and no
    delivery; first and last seen are the events' creation times; the example is the newest id
    with its handler's own last error. The filters narrow the events (an ``EventFilter`` or its
    keywords). Reads the FAILED events through the status index, their rows by the ledger's key.
    """
    limit, offset = page_bounds(limit, offset)
    flt = as_filter(filters, **loose)
    stmt = handler_failures_statement(flt, engine.dialect, limit=limit, offset=offset, tables=tables)
    with reading(engine) as conn:
        found = conn.execute(stmt).all()
    total = int(found[0][7]) if found else None
    frame = rows_frame([(*r[:7], r[8]) for r in found], HANDLER_FAILURE_COLUMNS, ("first_seen", "last_seen"))
    frame["event_types"] = [",".join(sorted(set((v or "").split(",")))) for v in frame["event_types"]]
    frame = frame.astype({"events": "int64"})
    if total is None:
        total = 0 if offset == 0 else _count_handler_failures(engine, flt, tables)
    return HandlerFailuresPage(frame, total)


def handler_failures_statement(
    flt: EventFilter, dialect: Any, *, limit: int, offset: int, tables: OutboxTables = DEFAULT_TABLES
) -> Select[Any]:
    """The query ``handler_failures`` runs (for its plan test): a page of groups, each with its
    total (a window count) and its example's own message."""
    d = tables.deliveries
    postgres = dialect.name == "postgresql"

    def type_list(column: Any, distinct: bool) -> Any:
        values = column.distinct() if distinct else column
        return func.string_agg(values, ",") if postgres else func.group_concat(values)

    rows = _failing_rows(flt, tables, dialect.name).subquery("failing")
    # Each distinct message first, then their groups: the normalisation runs once per message.
    messages = (
        select(
            rows.c.handler,
            rows.c.last_error.label("message"),
            func.count().label("events"),
            func.min(rows.c.created_at).label("first_seen"),
            func.max(rows.c.created_at).label("last_seen"),
            type_list(rows.c.event_type, True).label("event_types"),
            func.max(rows.c.id).label("example_event_id"),
        )
        .group_by(rows.c.handler, rows.c.last_error)
        .subquery("messages")
    )
    group = normalized_error(messages.c.message).label("error_group")
    events = func.sum(messages.c.events).label("events")
    groups = (
        select(
            messages.c.handler,
            group,
            events,
            func.min(messages.c.first_seen).label("first_seen"),
            func.max(messages.c.last_seen).label("last_seen"),
            type_list(messages.c.event_types, False).label("event_types"),
            func.max(messages.c.example_event_id).label("example_event_id"),
            func.count().over().label("total"),
        )
        .group_by(messages.c.handler, group)
        .order_by(desc(events), messages.c.handler, group)
        .limit(limit)
        .offset(offset)
        .subquery("groups")
    )
    example = d.alias("example")
    stmt = (
        select(*groups.c, example.c.last_error)
        .join_from(
            groups,
            example,
            and_(example.c.event_id == groups.c.example_event_id, example.c.handler == groups.c.handler),
        )
        .order_by(desc(groups.c.events), groups.c.handler, groups.c.error_group)
    )
    return stmt


def _count_handler_failures(engine: Engine, flt: EventFilter, tables: OutboxTables) -> int:
    rows = _failing_rows(flt, tables, engine.dialect.name).subquery("failing")
    messages = select(rows.c.handler, rows.c.last_error.label("message")).group_by(rows.c.handler, rows.c.last_error)
    listed = messages.subquery("messages")
    pairs = select(listed.c.handler, normalized_error(listed.c.message)).distinct().subquery("pairs")
    with reading(engine) as conn:
        return int(conn.execute(select(func.count()).select_from(pairs)).scalar_one())


def failing_event_ids(
    engine: Engine,
    handler: str,
    error_group: str | None = None,
    *,
    limit: int = MAX_PAGE,
    tables: OutboxTables = DEFAULT_TABLES,
) -> list[str]:
    """The FAILED events ``handler`` failed and never delivered (with ``error_group``: whose error is
    in that group), newest first, at most ``limit``: the events of a ``handler_failures`` row."""
    limit, _ = page_bounds(limit, 0)
    (name,) = _handlers(handler) or ()
    flt = EventFilter()
    rows = _failing_rows(flt, tables, engine.dialect.name).where(tables.deliveries.c.handler == name)
    if error_group is not None:
        check_text("error_group", error_group)
        rows = rows.where(normalized_error(tables.deliveries.c.last_error) == error_group)
    ev = tables.events
    stmt = rows.with_only_columns(ev.c.id).order_by(desc(ev.c.created_at), desc(ev.c.id)).limit(limit)
    with reading(engine) as conn:
        return list(conn.execute(stmt).scalars())


# -- names --------------------------------------------------------------------------------------------


def known_handlers(
    engine: Engine,
    event_ids: Iterable[str] | None = None,
    *,
    newest: int = 10_000,
    tables: OutboxTables = DEFAULT_TABLES,
) -> list[str]:
    """Handler names the ledger knows, sorted, without ``*``: those of the newest ``newest``
    deliveries (through the ``delivered_at`` index), and those of ``event_ids`` (by primary key)."""
    limit, _ = page_bounds(newest, 0)
    d = tables.deliveries
    recent = (
        select(d.c.handler).where(d.c.delivered_at.is_not(None)).order_by(desc(d.c.delivered_at)).limit(limit)
    ).subquery("recent")
    names: set[str] = set()
    ids = [check_text("event_id", i) for i in event_ids or ()]
    with reading(engine) as conn:
        names.update(conn.execute(select(recent.c.handler).distinct()).scalars())
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]
            names.update(conn.execute(select(d.c.handler).where(d.c.event_id.in_(chunk)).distinct()).scalars())
    names.discard(ALL_HANDLERS)
    return sorted(names)

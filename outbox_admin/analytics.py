"""Read models as pandas DataFrames, shared by the dashboard, the notebooks and the CLI.

Every aggregate is computed in SQL (GROUP BY, COUNT, window functions) so a
table of millions of events never travels to pandas; only pages and summaries
do. Every function takes the same filters (``EventFilter`` or the keywords of
``EventFilter.build``) and returns the same columns on SQLite and PostgreSQL.

The reads of the delivery ledger (per handler: ``deliveries_frame``, ``handler_summary``,
``event_deliveries``, ``handler_failures``...) live in ``outbox_admin.deliveries`` and are
exposed here with the others.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from typing import Any, Literal

import pandas as pd
from sqlalchemy import Connection, Engine, and_, case, desc, false, func, literal, literal_column, or_, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.sql.visitors import InternalTraversal

from .db import db_now
from .deliveries import (  # noqa: F401 - the ledger's reads, exposed here with the other read models
    ALL_HANDLERS_LABEL,
    HandlerFailuresPage,
    HandlerSummary,
    deliveries_frame,
    event_deliveries,
    failing_event_ids,
    handler_failures,
    handler_label,
    handler_summary,
    known_handlers,
)
from .display import time_text
from .errors import FilterError
from .filters import EventFilter, as_filter, check_text, normalized_error
from .models import (
    DEFAULT_TABLES,
    MANUAL_ACTOR_PATTERN,
    MANUAL_ACTOR_PREFIX,
    STATS_RETRY_BUCKETS,
    EventStatus,
    OutboxTables,
)
from .reads import MAX_PAGE, seconds_between, unindexed
from .reads import page_bounds as _page
from .reads import reading as _reading
from .reads import rows_frame as _frame

EVENT_COLUMNS = [
    "id",
    "org_id",
    "event_type",
    "entity_type",
    "entity_id",
    "status",
    "retry_count",
    "error_message",
    "created_at",
    "processed_at",
    "available_at",
    "locked_by",
    "locked_until",
    "idempotency_key",
    "payload",
]
TRANSITION_COLUMNS = [
    "id",
    "event_id",
    "event_type",
    "entity_type",
    "entity_id",
    "from_status",
    "to_status",
    "at",
    "actor",
    "attempt",
    "error_message",
]


#: Filters an index serves newest first (status, org, entity, ids; time bounds): a page walks that index
#: in order and stops when it is full.
INDEXED_FILTERS = frozenset({"status", "org_id", "entity_type", "entity_id", "since", "until", "event_ids"})
#: How many of the newest events a page under any other filter is first looked for among.
FIRST_LOOK = 10_000
#: ... or this many per row up to the page's end, when more (later pages); beyond the last, the scan.
LOOK_PER_ROW = 20
MAX_FIRST_LOOK = 100_000


def _newest_rows(
    conn: Connection, flt: EventFilter, columns: list[Any], limit: int, offset: int, tables: OutboxTables
) -> tuple[list[Any], int | None]:
    """A page of matching rows, newest first, and how many rows match when the read counted them.

    Under a filter no index serves (a search, a type, an error group...), walking the time
    index newest first reads one event per step and stops when the page is full: fast when
    matches are common, but when few or none match it reads every event in index order, a
    random read each (a search matching nothing in 1,000,000 events: 2 s). So the page is
    first looked for among the newest ``FIRST_LOOK`` events (a bounded walk; exact whenever
    the page fills there), and otherwise found by one scan of the table that sorts the
    matches and counts them on the way (``count(*) OVER ()``), which the caller then need
    not count again.
    """
    ev = tables.events
    where = flt.clause(tables)
    order = (desc(ev.c.created_at), desc(ev.c.id))

    def page(*bound: Any) -> Any:
        return select(*columns).where(where, *bound).order_by(*order).limit(limit).offset(offset)

    used = {f.name for f in dataclass_fields(flt) if getattr(flt, f.name) is not None}
    if used <= INDEXED_FILTERS:
        return list(conn.execute(page()).all()), None
    look = max(FIRST_LOOK, LOOK_PER_ROW * (offset + limit))
    if look <= MAX_FIRST_LOOK:
        newest = select(ev.c.created_at).order_by(*order).limit(1).offset(look - 1)
        bound = conn.execute(newest).scalar_one_or_none()
        if bound is None:  # fewer events than that: the walk is short anyway
            return list(conn.execute(page()).all()), None
        rows = list(conn.execute(page(ev.c.created_at >= bound)).all())
        if len(rows) == limit:
            return rows, None
    scan = (
        select(*columns, func.count().over().label("matching"))
        .where(where)
        .order_by(desc(unindexed(ev.c.created_at)), desc(unindexed(ev.c.id)))
        .limit(limit)
        .offset(offset)
    )
    rows = list(conn.execute(scan).all())
    if not rows:
        return [], 0 if offset == 0 else None  # past the last match, the count is unknown
    return [tuple(r)[:-1] for r in rows], int(rows[0][-1])


def events_frame(
    engine: Engine,
    filters: EventFilter | None = None,
    *,
    limit: int = 100,
    offset: int = 0,
    tables: OutboxTables = DEFAULT_TABLES,
    **loose: Any,
) -> pd.DataFrame:
    """A page of events, newest first, with all their columns (``payload`` included)."""
    flt = as_filter(filters, **loose)
    limit, offset = _page(limit, offset)
    ev = tables.events
    with _reading(engine) as conn:
        rows, _ = _newest_rows(conn, flt, [ev.c[name] for name in EVENT_COLUMNS], limit, offset, tables)
    return _frame(rows, EVENT_COLUMNS, ("created_at", "processed_at", "available_at", "locked_until"))


@dataclass(frozen=True)
class EventsPage:
    """A page of ``events_frame`` with how many events match, and which page it is (0-based)."""

    frame: pd.DataFrame
    total: int
    page: int
    pages: int


def events_page(
    engine: Engine,
    filters: EventFilter | None = None,
    *,
    page: int = 0,
    page_size: int = 50,
    tables: OutboxTables = DEFAULT_TABLES,
    **loose: Any,
) -> EventsPage:
    """Page ``page`` of the matching events (the last page when ``page`` is past it) and their count.

    One read of the table, not two, when matches are rare (see ``_newest_rows``): the scan
    that finds the page counts them.
    """
    flt = as_filter(filters, **loose)
    size, _ = _page(page_size, 0)
    ev = tables.events
    columns = [ev.c[name] for name in EVENT_COLUMNS]
    page = max(0, page)
    with _reading(engine) as conn:
        rows, total = _newest_rows(conn, flt, columns, size, page * size, tables)
        if total is None:
            total = int(conn.execute(select(func.count()).select_from(ev).where(flt.clause(tables))).scalar_one())
        pages = max(1, -(-total // size))
        if page >= pages:
            page = pages - 1
            rows, _ = _newest_rows(conn, flt, columns, size, page * size, tables)
    frame = _frame(rows, EVENT_COLUMNS, ("created_at", "processed_at", "available_at", "locked_until"))
    return EventsPage(frame, total, page, pages)


def export_events(
    engine: Engine,
    filters: EventFilter | None = None,
    fmt: str = "csv",
    *,
    limit: int = MAX_PAGE,
    tables: OutboxTables = DEFAULT_TABLES,
    **loose: Any,
) -> bytes:
    """Matching events (newest first, at most ``limit``) as CSV or JSON records, UTF-8; times in
    both as ``iso_time`` gives them."""
    if fmt not in ("csv", "json"):
        raise FilterError("format", "must be csv or json")
    frame = events_frame(engine, filters, limit=limit, tables=tables, **loose)
    for column in ("created_at", "processed_at", "available_at", "locked_until"):
        frame[column] = frame[column].map(iso_time).astype(object)
    if fmt == "csv":
        frame = frame.assign(payload=[json.dumps(p, ensure_ascii=False) for p in frame["payload"]])
        return frame.to_csv(index=False).encode("utf-8")
    return frame.to_json(orient="records", force_ascii=False).encode("utf-8")


def iso_time(value: Any) -> str | None:
    """One time format for every export: ISO 8601, UTC, to the millisecond (``2026-12-01T22:37:36.123Z``)."""
    return time_text(value, iso=True) or None


def has_events(engine: Engine, *, tables: OutboxTables = DEFAULT_TABLES) -> bool:
    """Whether the outbox holds any event at all (cheap: reads one row)."""
    with _reading(engine) as conn:
        return conn.execute(select(tables.events.c.id).limit(1)).first() is not None


def count_events(
    engine: Engine, filters: EventFilter | None = None, *, tables: OutboxTables = DEFAULT_TABLES, **loose: Any
) -> int:
    """How many events match (for paging and for the dry run of a bulk action)."""
    flt = as_filter(filters, **loose)
    with _reading(engine) as conn:
        return int(conn.execute(select(func.count()).select_from(tables.events).where(flt.clause(tables))).scalar_one())


def event_ids(
    engine: Engine,
    filters: EventFilter | None = None,
    *,
    limit: int = MAX_PAGE,
    tables: OutboxTables = DEFAULT_TABLES,
    **loose: Any,
) -> list[str]:
    """The ids of matching events, newest first (a sample for dry runs)."""
    flt = as_filter(filters, **loose)
    limit, _ = _page(limit, 0)
    with _reading(engine) as conn:
        rows, _ = _newest_rows(conn, flt, [tables.events.c.id], limit, 0, tables)
    return [row[0] for row in rows]


def get_event(engine: Engine, event_id: str, *, tables: OutboxTables = DEFAULT_TABLES) -> dict[str, Any] | None:
    """One event's fields (payload included) as a dict, or None; an unusable id raises ``FilterError``."""
    check_text("event_id", event_id)
    ev = tables.events
    with _reading(engine) as conn:
        row = conn.execute(select(*(ev.c[n] for n in EVENT_COLUMNS)).where(ev.c.id == event_id)).one_or_none()
    return dict(row._mapping) if row is not None else None


def status_counts(
    engine: Engine, filters: EventFilter | None = None, *, tables: OutboxTables = DEFAULT_TABLES, **loose: Any
) -> pd.DataFrame:
    """``status, count`` for every status (zero included), in lifecycle order."""
    flt = as_filter(filters, **loose)
    ev = tables.events
    stmt = select(ev.c.status, func.count()).where(flt.clause(tables)).group_by(ev.c.status)
    with _reading(engine) as conn:
        found: dict[str, int] = {status: count for status, count in conn.execute(stmt).all()}
    order = [s.value for s in EventStatus]
    statuses = order + sorted(set(found) - set(order))
    return pd.DataFrame({"status": statuses, "count": [int(found.get(s, 0)) for s in statuses]})


def transitions_frame(
    engine: Engine,
    event_id: str | None = None,
    *,
    since: dt.datetime | str | None = None,
    limit: int = 200,
    manual_only: bool = False,
    actor: str | None = None,
    oldest_first: bool | None = None,
    tables: OutboxTables = DEFAULT_TABLES,
) -> pd.DataFrame:
    """Status changes with their event's type and entity: the live feed (newest first) or one
    event's timeline (``event_id``; oldest first). ``manual_only`` keeps the actions people took."""
    from .filters import parse_time

    limit, _ = _page(limit, 0)
    ev, tr = tables.events, tables.transitions
    stmt = select(
        tr.c.id,
        tr.c.event_id,
        ev.c.event_type,
        ev.c.entity_type,
        ev.c.entity_id,
        tr.c.from_status,
        tr.c.to_status,
        tr.c.at,
        tr.c.actor,
        tr.c.attempt,
        tr.c.error_message,
    ).join(ev, ev.c.id == tr.c.event_id)
    if event_id is not None:
        stmt = stmt.where(tr.c.event_id == check_text("event_id", event_id))
    since_at = parse_time(since, "since")
    if since_at is not None:
        stmt = stmt.where(tr.c.at >= since_at)
    if actor is not None:
        stmt = stmt.where(tr.c.actor == actor)
    if manual_only:
        # The same literal text as the partial index on manual actions, so the database can use it.
        # SQLite's LIKE ignores case ("ADMIN:x" would pass there, not on PostgreSQL): the substr
        # makes the prefix exact, while the LIKE still lets the partial index be used.
        stmt = stmt.where(
            tr.c.actor.like(literal_column(MANUAL_ACTOR_PATTERN)),
            func.substr(tr.c.actor, 1, len(MANUAL_ACTOR_PREFIX)) == MANUAL_ACTOR_PREFIX,
        )
    ascending = event_id is not None if oldest_first is None else oldest_first
    # In time order: ids need not follow time across processes (each dispatcher writes its
    # batch's history when the batch ends). The feed reads the (at) index, one event's
    # timeline its (event_id) index. Manual actions are found through their partial index,
    # which is in id order: the newest by id, then sorted by time here.
    by_id = manual_only and event_id is None and since_at is None
    if by_id:
        order: tuple[Any, ...] = (tr.c.id,) if ascending else (desc(tr.c.id),)
    else:
        order = (tr.c.at, tr.c.id) if ascending else (desc(tr.c.at), desc(tr.c.id))
    stmt = stmt.order_by(*order).limit(limit)
    with _reading(engine) as conn:
        rows = conn.execute(stmt).all()
    frame = _frame(rows, TRANSITION_COLUMNS, ("at",))
    if by_id:
        frame = frame.sort_values(["at", "id"], ascending=ascending, kind="stable", ignore_index=True)
    return frame


def retry_histogram(
    engine: Engine,
    filters: EventFilter | None = None,
    *,
    totals: pd.DataFrame | None = None,
    tables: OutboxTables = DEFAULT_TABLES,
    **loose: Any,
) -> pd.DataFrame:
    """``retry_count, status, count``: how many events needed how many retries.

    Events that were retried come from a small partial index; the zero bucket is
    each status's total less those, so the table itself is never scanned. Pass the
    ``status_counts`` of the same filters as ``totals`` when you have them already.
    """
    flt = as_filter(filters, **loose)
    ev = tables.events
    retried = (
        select(ev.c.retry_count, ev.c.status, func.count())
        .where(ev.c.retry_count > 0, flt.clause(tables))
        .group_by(ev.c.retry_count, ev.c.status)
    )
    with _reading(engine) as conn:
        rows = [tuple(r) for r in conn.execute(retried).all()]
    if totals is None:
        totals = status_counts(engine, flt, tables=tables)
    for status, total in zip(totals["status"], totals["count"], strict=True):
        first_try = int(total) - sum(int(c) for _, s, c in rows if s == status)
        if first_try > 0:
            rows.append((0, status, first_try))
    frame = _frame(sorted(rows), ["retry_count", "status", "count"])
    return frame.astype({"retry_count": "int64", "count": "int64"})


def error_summary(
    engine: Engine,
    filters: EventFilter | None = None,
    *,
    limit: int = 50,
    offset: int = 0,
    order: Literal["events", "failed"] = "events",
    tables: OutboxTables = DEFAULT_TABLES,
    **loose: Any,
) -> pd.DataFrame:
    """Error groups, most events first: ``error_group, events, failed, first_seen, last_seen, event_types,
    example_event_id, example_message``.

    Groups events by the normalised form of their current ``error_message``;
    ``failed`` counts those now FAILED (dead letters); first and last seen are the
    events' creation times. ``order="failed"`` puts the most dead letters first (then the most
    events); ``limit``/``offset`` page through the groups (``count_error_groups`` says how many,
    ``error_groups_page`` gives both in one read).
    """
    return _error_groups(engine, as_filter(filters, **loose), limit, offset, order, tables)[0]


@dataclass(frozen=True)
class ErrorGroupsPage:
    """A page of ``error_summary`` and how many groups there are in all."""

    frame: pd.DataFrame
    total: int


def error_groups_page(
    engine: Engine,
    filters: EventFilter | None = None,
    *,
    limit: int = 50,
    offset: int = 0,
    order: Literal["events", "failed"] = "events",
    tables: OutboxTables = DEFAULT_TABLES,
    **loose: Any,
) -> ErrorGroupsPage:
    """``error_summary`` and ``count_error_groups`` in one read of the events with an error."""
    flt = as_filter(filters, **loose)
    frame, total = _error_groups(engine, flt, limit, offset, order, tables)
    if total is None:  # past the last group: counted apart
        total = count_error_groups(engine, flt, tables=tables)
    return ErrorGroupsPage(frame, total)


def _error_groups(
    engine: Engine,
    flt: EventFilter,
    limit: int,
    offset: int,
    order: str,
    tables: OutboxTables,
) -> tuple[pd.DataFrame, int | None]:
    """The page of groups and, when the page is not empty, how many groups there are (a window count)."""
    limit, offset = _page(limit, offset)
    if order not in ("events", "failed"):
        raise FilterError("order", "must be 'events' or 'failed'")
    ev = tables.events
    postgres = engine.dialect.name == "postgresql"

    def type_list(column: Any, distinct: bool) -> Any:
        values = column.distinct() if distinct else column
        return func.string_agg(values, literal_column("','")) if postgres else func.group_concat(values)

    # Each distinct message first (cheap: no regular expression), then their groups: messages repeat, so
    # the normalisation (four regular expressions) runs once per message, not once per event.
    messages = (
        select(
            ev.c.error_message.label("message"),
            func.count().label("events"),
            func.sum(case((ev.c.status == EventStatus.FAILED.value, 1), else_=0)).label("failed"),
            func.min(ev.c.created_at).label("first_seen"),
            func.max(ev.c.created_at).label("last_seen"),
            type_list(ev.c.event_type, True).label("event_types"),
            func.max(ev.c.id).label("example_event_id"),
        )
        .where(and_(ev.c.error_message.is_not(None), flt.clause(tables)))
        .group_by(ev.c.error_message)
        .subquery("messages")
    )
    group = normalized_error(messages.c.message).label("error_group")
    events = func.sum(messages.c.events).label("events")
    failed = func.sum(messages.c.failed).label("failed")
    ranking = (desc(failed), desc(events)) if order == "failed" else (desc(events),)
    groups = (
        select(
            group,
            events,
            failed,
            func.min(messages.c.first_seen).label("first_seen"),
            func.max(messages.c.last_seen).label("last_seen"),
            type_list(messages.c.event_types, False).label("event_types"),
            func.max(messages.c.example_event_id).label("example_event_id"),
            func.count().over().label("total_groups"),
        )
        .group_by(group)
        .order_by(*ranking, group)
        .limit(limit)
        .offset(offset)
        .subquery("groups")
    )
    # The example's message comes from the example event itself (max() of the messages would
    # pair one event's id with another event's message).
    example = ev.alias("example")
    stmt = (
        select(*groups.c, example.c.error_message)
        .join_from(groups, example, example.c.id == groups.c.example_event_id)
        .order_by(
            *((desc(groups.c.failed), desc(groups.c.events)) if order == "failed" else (desc(groups.c.events),)),
            groups.c.error_group,
        )
    )
    with _reading(engine) as conn:
        rows = conn.execute(stmt).all()
    columns = [
        "error_group",
        "events",
        "failed",
        "first_seen",
        "last_seen",
        "event_types",
        "example_event_id",
        "example_message",
    ]
    total = int(rows[0][7]) if rows else None
    frame = _frame([(*r[:7], r[8]) for r in rows], columns, ("first_seen", "last_seen"))
    frame["event_types"] = [",".join(sorted(set((v or "").split(",")))) for v in frame["event_types"]]
    return frame.astype({"events": "int64", "failed": "int64"}), total


#: How many of the newest events with an error ``closest_error_groups`` reads: a bounded, indexed read
#: (the partial index of the events with an error, newest first), whatever the table's size.
CLOSEST_GROUPS_SCAN = 500


@dataclass(frozen=True)
class GroupCheck:
    """Whether an error group names any stored error, and if not the closest stored groups."""

    group: str
    exists: bool
    closest: tuple[str, ...]
    scanned: int  # how many of the newest errors the closest groups were looked for in


def newest_errors_select(scan: int, tables: OutboxTables = DEFAULT_TABLES) -> Any:
    """The messages of the newest ``scan`` events with an error: read backwards through the partial
    index of the events with an error (``ix_<events>_errors``), its plan tested. (A PostgreSQL table never
    analysed is read whole instead: the planner's default guess is that nearly every row has an error.)"""
    ev = tables.events
    return (
        select(ev.c.error_message.label("message"))
        .where(ev.c.error_message.is_not(None))
        .order_by(desc(ev.c.created_at))
        .limit(max(1, scan))
    )


def check_error_group(
    engine: Engine,
    group: str,
    *,
    limit: int = 5,
    scan: int = CLOSEST_GROUPS_SCAN,
    tables: OutboxTables = DEFAULT_TABLES,
) -> GroupCheck:
    """Does any stored error belong to ``group`` (any status, any other filter)? When none does, the
    ``limit`` closest groups (``difflib.get_close_matches``) among those of the newest ``scan`` errors.

    For a filter that matched nothing: a mistyped group (or one copied from an older normalisation)
    is told apart from a group that exists but not among the filtered events. Groups are normalised
    by the database (``normalized_error``), as the filter compares them, so a suggestion always matches.
    """
    import difflib

    flt = as_filter(None, error_group=group)
    ev = tables.events
    exists = select(literal(1)).select_from(ev).where(flt.clause(tables)).limit(1)
    newest = newest_errors_select(scan, tables).subquery("newest")
    counted = select(func.count()).select_from(newest)
    groups = select(normalized_error(newest.c.message)).distinct()
    with _reading(engine) as conn:
        if conn.execute(exists).first() is not None:
            return GroupCheck(group, True, (), 0)
        scanned = int(conn.execute(counted).scalar_one())
        names = [row[0] for row in conn.execute(groups)]
    closest = difflib.get_close_matches(group, names, n=limit, cutoff=0.4)
    return GroupCheck(group, False, tuple(closest), scanned)


def count_error_groups(
    engine: Engine, filters: EventFilter | None = None, *, tables: OutboxTables = DEFAULT_TABLES, **loose: Any
) -> int:
    """How many error groups ``error_summary`` has for these filters (for paging through them); the
    distinct messages first, as there."""
    flt = as_filter(filters, **loose)
    ev = tables.events
    messages = (
        select(ev.c.error_message.label("message"))
        .where(and_(ev.c.error_message.is_not(None), flt.clause(tables)))
        .group_by(ev.c.error_message)
        .subquery("messages")
    )
    stmt = select(func.count(normalized_error(messages.c.message).distinct()))
    with _reading(engine) as conn:
        return int(conn.execute(stmt).scalar_one())


@dataclass(frozen=True)
class ExpiredLeases:
    """PROCESSING events whose lease ran out: their dispatcher stopped renewing it (it died, hung or
    lost the database), and they wait for a recovery (a dispatcher's tick, or ``admin.recover_expired``).

    ``by_dispatcher`` has ``dispatcher, events, oldest_expiry, newest_expiry`` (the one that held the most
    first; ``dispatcher`` is the ``locked_by`` they still carry). ``checked_at`` is the database's clock
    when they were counted, so ``oldest_seconds`` agrees with the dispatchers whatever this host's clock says.
    """

    count: int
    oldest_expiry: dt.datetime | None
    checked_at: dt.datetime
    by_dispatcher: pd.DataFrame

    @property
    def oldest_seconds(self) -> float | None:
        """Seconds since the oldest of these leases expired (None when there is none)."""
        if self.oldest_expiry is None:
            return None
        return max(0.0, (self.checked_at - self.oldest_expiry).total_seconds())


def _expired_leases_select(flt: EventFilter, tables: OutboxTables) -> Any:
    """Per holder: count, oldest and newest expiry of the expired leases matching ``flt`` (its plan is tested)."""
    ev = tables.events
    if not flt.allows_status(EventStatus.PROCESSING.value):
        where: Any = false()
    else:
        where = flt.with_(lease_expired=True).clause(tables)
    events = func.count()
    return (
        select(ev.c.locked_by, events, func.min(ev.c.locked_until), func.max(ev.c.locked_until))
        .where(where)
        .group_by(ev.c.locked_by)
        .order_by(desc(events), ev.c.locked_by)
    )


def expired_leases(
    engine: Engine,
    filters: EventFilter | None = None,
    *,
    limit: int = 100,
    tables: OutboxTables = DEFAULT_TABLES,
    **loose: Any,
) -> ExpiredLeases:
    """The PROCESSING events whose lease expired, summed up: how many, the oldest expiry, per dispatcher
    (at most ``limit`` dispatchers; the count covers them all). Read through the partial index of leases."""
    limit, _ = _page(limit, 0)
    stmt = _expired_leases_select(as_filter(filters, **loose), tables)
    with _reading(engine) as conn:
        checked_at = conn.execute(select(db_now())).scalar_one()
        rows = conn.execute(stmt).all()
    count = sum(int(r[1]) for r in rows)
    oldest = min((r[2] for r in rows if r[2] is not None), default=None)
    columns = ["dispatcher", "events", "oldest_expiry", "newest_expiry"]
    frame = _frame(rows[:limit], columns, ("oldest_expiry", "newest_expiry")).astype({"events": "int64"})
    return ExpiredLeases(count, oldest, checked_at, frame)


_TIME_UNITS = (("day", 86400, 10), ("hour", 3600, 13), ("minute", 60, 16), ("second", 1, 19))


class truncated_time(FunctionElement[Any]):
    """A timestamp truncated to a unit (day, hour, minute, second): ``date_bin`` on PostgreSQL;
    on SQLite a prefix of the stored ``YYYY-MM-DD HH:MM:SS`` text, which needs no date parsing."""

    inherit_cache = True
    # The unit changes the SQL, so it must be part of the cache key: without it a statement compiled
    # for minutes is reused for seconds.
    _traverse_internals = FunctionElement._traverse_internals + [("unit", InternalTraversal.dp_string)]

    def __init__(self, column: Any, unit: str) -> None:
        self.unit = unit
        super().__init__(column)


@compiles(truncated_time, "postgresql")
def _trunc_pg(element: truncated_time, compiler: Any, **kw: Any) -> str:
    (column,) = list(element.clauses)
    # date_bin (PostgreSQL 14+) needs no time zone lookup per row: about twice as fast as date_trunc.
    return f"date_bin('1 {element.unit}', {compiler.process(column, **kw)}, TIMESTAMPTZ '2000-01-01 00:00:00+00')"


@compiles(truncated_time, "sqlite")
def _trunc_sqlite(element: truncated_time, compiler: Any, **kw: Any) -> str:
    (column,) = list(element.clauses)
    length = next(n for unit, _, n in _TIME_UNITS if unit == element.unit)
    return f"substr({compiler.process(column, **kw)}, 1, {length})"


#: (series, from_status, to_status): the history rows ``throughput`` counts.
THROUGHPUT_SERIES = (
    ("published", None, "PENDING"),
    ("completed", "PROCESSING", "COMPLETED"),
    ("failed", "PROCESSING", "FAILED"),
)


def throughput(
    engine: Engine,
    bucket: str = "1min",
    filters: EventFilter | None = None,
    *,
    tables: OutboxTables = DEFAULT_TABLES,
    **loose: Any,
) -> pd.DataFrame:
    """``bucket, published, completed, failed`` per time bucket (``"1min"``, ``"5min"``, ``"1h"``...).

    Counted from the history: publications (``None -> PENDING``), completions and
    moves to FAILED, by the time they happened; ``since``/``until`` bound that
    time. The database groups by minute (by second for buckets that are not whole
    minutes) through an index on ``(to_status, from_status, at)``; pandas then sums
    those groups into buckets. Events adopted from a table without history are
    not counted.
    """
    try:
        seconds = int(pd.Timedelta(bucket).total_seconds())
    except ValueError:
        raise FilterError("bucket", f"{bucket!r} is not a duration such as '1min', '5min' or '1h'") from None
    if seconds < 1:
        raise FilterError("bucket", "must be at least one second")
    unit = "minute" if seconds % 60 == 0 else "second"
    flt = as_filter(filters, **loose)
    ev, tr = tables.events, tables.transitions
    event_filter = flt.with_(since=None, until=None)
    step: Any = truncated_time(tr.c.at, unit)
    conditions: list[Any] = []
    sqlite_minutes = engine.dialect.name == "sqlite" and unit == "minute"
    for bound, op in ((flt.since, "ge"), (flt.until, "lt")):
        if bound is None:
            continue
        if sqlite_minutes:
            # Minute prefixes keep the expression index in use; the exact time is only read for
            # rows in the bound's own minute, so a window that starts or ends mid-minute is exact.
            prefix = bound.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M")
            if op == "ge":
                conditions.append(and_(step >= prefix, or_(step > prefix, tr.c.at >= bound)))
            else:
                conditions.append(and_(step <= prefix, or_(step < prefix, tr.c.at < bound)))
        else:
            conditions.append(tr.c.at >= bound if op == "ge" else tr.c.at < bound)
    step = step.label("step")
    frames = []
    with _reading(engine) as conn:
        for series, from_status, to_status in THROUGHPUT_SERIES:
            stmt = select(step, func.count()).where(tr.c.to_status == to_status, *conditions)
            stmt = stmt.where(tr.c.from_status.is_(None) if from_status is None else tr.c.from_status == from_status)
            if not event_filter.is_empty():
                stmt = stmt.select_from(tr.join(ev, ev.c.id == tr.c.event_id)).where(event_filter.clause(tables))
            rows = conn.execute(stmt.group_by(step)).all()
            frames.append(pd.DataFrame(rows, columns=["step", "count"]).assign(series=series))
    data = pd.concat(frames, ignore_index=True)
    if data.empty:
        return pd.DataFrame(
            {"bucket": pd.Series([], dtype="datetime64[us, UTC]"), "published": [], "completed": [], "failed": []}
        ).astype({"published": "int64", "completed": "int64", "failed": "int64"})
    data["bucket"] = pd.to_datetime(data["step"], utc=True, format="ISO8601").dt.floor(f"{seconds}s")
    table = data.pivot_table(index="bucket", columns="series", values="count", aggfunc="sum", fill_value=0)
    table = table.reindex(columns=["published", "completed", "failed"], fill_value=0).reset_index()
    table.columns.name = None
    return table.astype({"published": "int64", "completed": "int64", "failed": "int64"})


LATENCY_QUANTILES = (0.5, 0.9, 0.95, 0.99)


def latency_stats(
    engine: Engine,
    filters: EventFilter | None = None,
    *,
    by_type: bool = True,
    tables: OutboxTables = DEFAULT_TABLES,
    **loose: Any,
) -> pd.DataFrame:
    """Seconds from ``created_at`` to ``processed_at`` of COMPLETED events: ``event_type, events, mean,
    p50, p90, p95, p99, max``; the first row (``event_type == "*"``) is all types together.

    Percentiles use the nearest-rank method with window functions, so both
    databases give the same numbers. ``by_type=False`` gives only the first row
    (half the work).
    """
    flt = as_filter(filters, **loose)
    ev = tables.events
    latency = seconds_between(ev.c.created_at, ev.c.processed_at)
    base = (
        select(ev.c.event_type.label("event_type"), latency.label("s"))
        .where(ev.c.status == EventStatus.COMPLETED.value, ev.c.processed_at.is_not(None), flt.clause(tables))
        .subquery("lat")
    )

    def ranked(partition: Any) -> Any:
        return select(
            partition.label("event_type"),
            base.c.s,
            func.row_number().over(partition_by=partition, order_by=base.c.s).label("rn"),
            func.count().over(partition_by=partition).label("n"),
        ).subquery("ranked")

    def summary(partition: Any) -> Any:
        r = ranked(partition)
        quantiles = [
            func.min(case((r.c.rn * 1.0 >= r.c.n * q, r.c.s))).label(f"p{round(q * 100)}") for q in LATENCY_QUANTILES
        ]
        return (
            select(r.c.event_type, func.count(), func.avg(r.c.s), *quantiles, func.max(r.c.s))
            .group_by(r.c.event_type)
            .order_by(r.c.event_type)
        )

    with _reading(engine) as conn:
        overall = conn.execute(summary(literal("*"))).all()
        per_type = conn.execute(summary(base.c.event_type)).all() if by_type else []
    columns = ["event_type", "events", "mean", *[f"p{round(q * 100)}" for q in LATENCY_QUANTILES], "max"]
    frame = _frame([*overall, *per_type], columns)
    if frame.empty:
        frame = pd.DataFrame([["*", 0] + [None] * (len(columns) - 2)], columns=columns)
    numeric = columns[2:]
    frame[numeric] = frame[numeric].astype("float64")
    return frame.astype({"events": "int64"})


def distinct_values(
    engine: Engine, column: str, *, limit: int = 500, tables: OutboxTables = DEFAULT_TABLES
) -> list[str]:
    """Distinct values of ``event_type``, ``org_id`` or ``entity_type`` (for filter pickers).

    ``org_id`` and ``entity_type`` lead an index: they are read by skipping from one value to
    the next (a recursive query, one index probe per value), not by reading every event.
    """
    stmt = distinct_values_statement(column, limit=limit, tables=tables)
    with _reading(engine) as conn:
        return list(conn.execute(stmt).scalars())


def distinct_values_statement(column: str, *, limit: int = 500, tables: OutboxTables = DEFAULT_TABLES) -> Any:
    """The query ``distinct_values`` runs (for its plan test)."""
    if column not in ("event_type", "org_id", "entity_type"):
        raise FilterError("column", "must be event_type, org_id or entity_type")
    limit, _ = _page(limit, 0)
    col = tables.events.c[column]
    if column == "event_type":  # no index starts with it
        return select(col).distinct().order_by(col).limit(limit)
    values = select(func.min(col).label("value")).cte("distinct_values", recursive=True)
    following = select(select(func.min(col)).where(col > values.c.value).scalar_subquery())
    values = values.union_all(following.where(values.c.value.is_not(None)))
    return select(values.c.value).where(values.c.value.is_not(None)).limit(limit)


def active_dispatchers(
    engine: Engine, within: dt.timedelta = dt.timedelta(minutes=5), *, tables: OutboxTables = DEFAULT_TABLES
) -> pd.DataFrame:
    """Dispatchers that claimed events recently: ``dispatcher, claims, last_claim`` (busiest first).

    Read from the history (claims are ``PENDING -> PROCESSING`` rows), so it sees
    dispatchers in any process on any machine.
    """
    from .db import db_now_plus

    tr = tables.transitions
    last = func.max(tr.c.at)
    stmt = (
        select(tr.c.actor, func.count(), last)
        .where(
            tr.c.to_status == EventStatus.PROCESSING.value,
            tr.c.from_status == EventStatus.PENDING.value,
            tr.c.at >= db_now_plus(-within.total_seconds()),
        )
        .group_by(tr.c.actor)
        .order_by(desc(func.count()))
    )
    with _reading(engine) as conn:
        rows = conn.execute(stmt).all()
    return _frame(rows, ["dispatcher", "claims", "last_claim"], ("last_claim",))


#: What ``failure_breakdown`` can group by.
BREAKDOWN_COLUMNS = ("event_type", "org_id", "entity_type")


def failure_breakdown(
    engine: Engine,
    by: str = "event_type",
    filters: EventFilter | None = None,
    *,
    tables: OutboxTables = DEFAULT_TABLES,
    **loose: Any,
) -> pd.DataFrame:
    """Which event types (``by="event_type"``), orgs (``"org_id"``) or entity types fail:
    ``<by>, events, retried, failed, failed_share``, most FAILED first.

    ``retried`` counts events that failed at least one delivery (``retry_count > 0``),
    ``failed`` those now FAILED (dead letters); ``failed_share`` is ``failed / events``.
    """
    if by not in BREAKDOWN_COLUMNS:
        raise FilterError("by", f"must be one of {', '.join(BREAKDOWN_COLUMNS)}")
    flt = as_filter(filters, **loose)
    ev = tables.events
    key = ev.c[by]
    failed = func.sum(case((ev.c.status == EventStatus.FAILED.value, 1), else_=0))
    stmt = (
        select(key, func.count(), func.sum(case((ev.c.retry_count > 0, 1), else_=0)), failed)
        .where(flt.clause(tables))
        .group_by(key)
        .order_by(desc(failed), desc(func.count()), key)
    )
    with _reading(engine) as conn:
        rows = conn.execute(stmt).all()
    frame = pd.DataFrame([tuple(r) for r in rows], columns=[by, "events", "retried", "failed"])
    frame = frame.astype({"events": "int64", "retried": "int64", "failed": "int64"})
    frame["failed_share"] = (frame["failed"] / frame["events"]).astype("float64")
    return frame


# -- from the rollup (outbox_admin.stats): the Overview's numbers, in time independent of the events' number --


@dataclass(frozen=True)
class RollupTotals:
    """Every event, from the rollup (COMPLETED, FAILED, DISCARDED) and live counts (PENDING, PROCESSING).

    ``counts`` has the columns of ``status_counts``, ``retries`` those of ``retry_histogram``
    (its last retry count means "that many or more": ``stats.STATS_RETRY_BUCKETS``).
    """

    counts: pd.DataFrame
    retries: pd.DataFrame


@dataclass(frozen=True)
class RollupWindow:
    """The events created since ``since`` (the window's start as the rollup counts it, see
    ``stats.aligned_since``), per chart bucket and in total. ``throughput`` has the columns of
    ``throughput``, but by creation time: of the events published in a bucket, how many
    are now COMPLETED and FAILED. Latencies come from the histogram (``stats.percentile``)."""

    since: dt.datetime
    bucket: str
    completed: int
    failed: int
    discarded: int
    latency_mean: float | None
    latency_p50: float | None
    latency_p95: float | None
    throughput: pd.DataFrame


def _driver_sql(engine: Engine, sql: str) -> str:
    from .sql import driver_style

    return driver_style(sql, pyformat=engine.dialect.name == "postgresql")


def _bound_time(engine: Engine, value: dt.datetime) -> Any:
    """A time parameter for the rollup's driver-level statements (SQLite: UTCDateTime's stored text)."""
    from .coltypes import UTCDateTime

    bound = UTCDateTime().process_bind_param(value, engine.dialect)
    if engine.dialect.name == "sqlite" and bound is not None:
        return bound.isoformat(sep=" ", timespec="microseconds")
    return bound


def rollup_totals(engine: Engine, *, tables: OutboxTables = DEFAULT_TABLES) -> RollupTotals:
    """Counts per status and the retry histogram of all events, without reading every event."""
    with _reading(engine) as conn:
        return _rollup_totals_in(conn, tables)


def _rollup_totals_in(conn: Connection, tables: OutboxTables) -> RollupTotals:
    from . import stats
    from .sql import rollup

    engine = conn.engine
    sums = conn.exec_driver_sql(_driver_sql(engine, rollup.totals_sql(engine.dialect, tables))).one()
    live = conn.exec_driver_sql(_driver_sql(engine, rollup.unfinished_totals_sql(engine.dialect, tables))).all()
    found: dict[str, int] = {status: int(sums[i] or 0) for i, status in enumerate(stats.COUNTED)}
    retries: list[tuple[int, str, int]] = []
    offset = len(stats.COUNTED)
    for status in stats.COUNTED:
        for k in range(STATS_RETRY_BUCKETS):
            count = int(sums[offset] or 0)
            offset += 1
            if count:
                retries.append((k, status, count))
    for status, retry_count, count in live:
        found[status] = found.get(status, 0) + int(count)
        retries.append((int(retry_count), str(status), int(count)))
    order = [s.value for s in EventStatus]
    counts = pd.DataFrame({"status": order, "count": [found.get(s, 0) for s in order]})
    frame = _frame(sorted(retries), ["retry_count", "status", "count"])
    return RollupTotals(counts, frame.astype({"retry_count": "int64", "count": "int64"}))


def rollup_window(
    engine: Engine,
    since: dt.datetime,
    bucket: str = "1min",
    *,
    now: dt.datetime | None = None,
    tables: OutboxTables = DEFAULT_TABLES,
) -> RollupWindow:
    """The events created since ``since``: counts, latency and per-bucket throughput, from the rollup.

    The window starts at ``stats.aligned_since(since)``; ``bucket`` (``"1min"``, ``"10min"``,
    ``"1h"``, whole minutes) grows to an hour or a day when the window is aligned to one.
    """
    from . import stats
    from .sql import rollup

    now = now or dt.datetime.now(dt.UTC)
    start = stats.aligned_since(since, now)
    try:
        seconds = int(pd.Timedelta(bucket).total_seconds())
    except ValueError:
        raise FilterError("bucket", f"{bucket!r} is not a duration such as '1min', '10min' or '1h'") from None
    if seconds < 60 or seconds % 60:
        raise FilterError("bucket", "must be a whole number of minutes")
    unit = stats.alignment(since, now)
    seconds = max(seconds, unit) // unit * unit
    params = {"since": _bound_time(engine, start)}
    with _reading(engine) as conn:
        rows = conn.exec_driver_sql(_driver_sql(engine, rollup.window_sql(engine.dialect, tables, seconds)), params)
        done = [tuple(r) for r in rows]
        live = conn.exec_driver_sql(
            _driver_sql(engine, rollup.unfinished_window_sql(engine.dialect, tables, seconds)), params
        ).all()
    sums = [sum(int(r[i] or 0) for r in done) for i in (1, 2, 3)]
    latency_sum = sum(float(r[4] or 0.0) for r in done)
    histogram = [sum(int(r[5 + k] or 0) for r in done) for k in range(len(stats.LATENCY_COLUMNS))]
    published: dict[Any, int] = {}
    chart: dict[Any, list[int]] = {}
    for r in done:
        key = pd.Timestamp(r[0], tz="UTC") if not isinstance(r[0], dt.datetime) else pd.Timestamp(r[0])
        chart[key] = [int(r[1] or 0), int(r[2] or 0)]
        published[key] = published.get(key, 0) + int(r[1] or 0) + int(r[2] or 0) + int(r[3] or 0)
    for _status, at, count in live:
        key = pd.Timestamp(at, tz="UTC") if not isinstance(at, dt.datetime) else pd.Timestamp(at)
        published[key] = published.get(key, 0) + int(count)
    keys = sorted(published)
    throughput = pd.DataFrame(
        {
            "bucket": pd.to_datetime(keys, utc=True),
            "published": [published[k] for k in keys],
            "completed": [chart.get(k, [0, 0])[0] for k in keys],
            "failed": [chart.get(k, [0, 0])[1] for k in keys],
        }
    ).astype({"published": "int64", "completed": "int64", "failed": "int64"})
    completed = sums[0]
    return RollupWindow(
        since=start,
        bucket=_bucket_label(seconds),
        completed=completed,
        failed=sums[1],
        discarded=sums[2],
        latency_mean=latency_sum / completed if completed > 0 else None,
        latency_p50=stats.percentile(histogram, 0.5),
        latency_p95=stats.percentile(histogram, 0.95),
        throughput=throughput,
    )


def _bucket_label(seconds: int) -> str:
    if seconds % 86400 == 0:
        return f"{seconds // 86400}d"
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    return f"{seconds // 60}min"


def newest_errors_since(
    engine: Engine, since: dt.datetime, newest: int, *, tables: OutboxTables = DEFAULT_TABLES
) -> dt.datetime:
    """``since``, or later: the creation time of the ``newest``-th newest event with an error created
    since then, so ``error_summary(since=...)`` over it groups at most about ``newest`` events
    (read backwards through the partial index of events with an error)."""
    limit, _ = _page(newest, 0)
    ev = tables.events
    stmt = (
        select(ev.c.created_at)
        .where(ev.c.error_message.is_not(None), ev.c.created_at >= since)
        .order_by(desc(ev.c.created_at))
        .limit(1)
        .offset(limit - 1)
    )
    with _reading(engine) as conn:
        found = conn.execute(stmt).scalar_one_or_none()
    return since if found is None else max(since, found)


#: At most this many events with an error are grouped for the Overview's error chart.
OVERVIEW_ERRORS = 10_000


@dataclass(frozen=True)
class Overview:
    """Everything the Overview shows for a window, computed at ``at``."""

    at: dt.datetime
    totals: RollupTotals
    window: RollupWindow
    errors: pd.DataFrame  # error_summary's top 10 groups of the events created since errors_since
    errors_since: dt.datetime  # the window's start, or later when it holds more than OVERVIEW_ERRORS errors


def overview_bucket(window: dt.timedelta) -> str:
    """The chart bucket for a window: minutes up to an hour, 10 minutes up to a day, else hours."""
    if window <= dt.timedelta(hours=1):
        return "1min"
    return "10min" if window <= dt.timedelta(days=1) else "1h"


def overview(
    engine: Engine, window: dt.timedelta, *, now: dt.datetime | None = None, tables: OutboxTables = DEFAULT_TABLES
) -> Overview:
    """The Overview's numbers for the events created in the last ``window``: a handful of small
    reads (the rollup, the unfinished events, the newest errors), whatever the outbox's size."""
    now = now or dt.datetime.now(dt.UTC)
    numbers = rollup_window(engine, now - window, overview_bucket(window), now=now, tables=tables)
    errors_since = newest_errors_since(engine, numbers.since, OVERVIEW_ERRORS, tables=tables)
    errors = error_summary(engine, since=errors_since, limit=10, tables=tables)
    return Overview(now, rollup_totals(engine, tables=tables), numbers, errors, errors_since)


PAUSE_COLUMNS = ["id", "pattern", "reason", "paused_by", "paused_at", "resumed_by", "resumed_at", "active"]


def pauses(
    engine: Engine, *, active_only: bool = True, limit: int = 200, tables: OutboxTables = DEFAULT_TABLES
) -> pd.DataFrame:
    """The active pauses (``admin.pause``), or with ``active_only=False`` the pause history, newest first:
    ``id, pattern, reason, paused_by, paused_at, resumed_by, resumed_at, active``, at most ``limit`` rows."""
    limit, _ = _page(limit, 0)
    table = tables.pauses
    stmt = select(*(table.c[name] for name in PAUSE_COLUMNS[:-1]), table.c.resumed_at.is_(None))
    if active_only:
        stmt = stmt.where(table.c.resumed_at.is_(None))
    with _reading(engine) as conn:
        rows = conn.execute(stmt.order_by(desc(table.c.id)).limit(limit)).all()
    frame = _frame(rows, PAUSE_COLUMNS, ("paused_at", "resumed_at"))
    return frame.astype({"active": bool})


# -- the gauges a metrics scrape reads (outbox_admin.metrics): a few index-backed reads, time-limited --

#: How long the reads of one ``outbox_gauges`` may take, together (PostgreSQL: a statement timeout;
#: SQLite: the query is interrupted).
GAUGES_TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True)
class OutboxGauges:
    """The outbox's state as a monitoring system samples it, read at ``checked_at`` (the database's clock).

    ``oldest_due_seconds`` is the lag: how long the oldest PENDING event that is due has waited since it
    was published (0 when none is due; events of a paused type count, they wait too). ``last_claim_at`` is
    the newest claim any dispatcher wrote to the history (``None``: none there), which is how a dispatcher
    running anywhere is seen.
    """

    checked_at: dt.datetime
    counts: dict[str, int]  # events per status, every status (zero included), from the rollup
    oldest_due_seconds: float
    expired_leases: int
    active_pauses: int
    last_claim_at: dt.datetime | None


def _oldest_due_select(tables: OutboxTables) -> Any:
    """The creation time of the oldest due PENDING event: the PENDING events in creation order (the due
    index, or the PENDING range of the (status, created_at, id) index: its plan is tested) up to the first
    whose ``available_at`` has come, so the walk passes only events waiting on a backoff."""
    ev = tables.events
    return (
        select(ev.c.created_at)
        .where(ev.c.status == literal_column(f"'{EventStatus.PENDING.value}'"), ev.c.available_at <= db_now())
        .order_by(ev.c.created_at, ev.c.id)
        .limit(1)
    )


def _last_claim_select(tables: OutboxTables) -> Any:
    """The newest claim in the history: the end of the (to_status, from_status, at) index (its plan is tested)."""
    tr = tables.transitions
    return (
        select(tr.c.at)
        .where(
            tr.c.to_status == literal_column(f"'{EventStatus.PROCESSING.value}'"),
            tr.c.from_status == literal_column(f"'{EventStatus.PENDING.value}'"),
        )
        .order_by(desc(tr.c.at))
        .limit(1)
    )


def _active_pauses_select(tables: OutboxTables) -> Any:
    """How many pauses are active: the partial unique index of the active ones."""
    pauses_table = tables.pauses
    return select(func.count()).select_from(pauses_table).where(pauses_table.c.resumed_at.is_(None))


def outbox_gauges(
    engine: Engine, *, timeout_seconds: float = GAUGES_TIMEOUT_SECONDS, tables: OutboxTables = DEFAULT_TABLES
) -> OutboxGauges:
    """Events per status, lag, expired leases, active pauses and the last claim, in one read-only
    transaction that may take ``timeout_seconds`` at most (past it the database error is raised).

    Each read goes through an index meant for it, whatever the table's size: the rollup and the
    unfinished statuses' ranges (``rollup_totals``), the due index, the leases' partial index, the
    active pauses' partial index and the end of the history's (to_status, from_status, at) index.
    """
    from .reads import time_limited

    with _reading(engine) as conn, time_limited(conn, timeout_seconds):
        checked_at = conn.execute(select(db_now())).scalar_one()
        totals = _rollup_totals_in(conn, tables)
        oldest = conn.execute(_oldest_due_select(tables)).scalar_one_or_none()
        leases = conn.execute(_expired_leases_select(EventFilter(), tables)).all()
        active = int(conn.execute(_active_pauses_select(tables)).scalar_one())
        last_claim = conn.execute(_last_claim_select(tables)).scalar_one_or_none()
    counts = {str(row.status): int(row.count) for row in totals.counts.itertuples()}
    lag = 0.0 if oldest is None else max(0.0, (checked_at - oldest).total_seconds())
    return OutboxGauges(checked_at, counts, lag, sum(int(r[1]) for r in leases), active, last_claim)

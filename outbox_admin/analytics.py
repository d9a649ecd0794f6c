"""Read models as pandas DataFrames, shared by the dashboard, the notebooks and the CLI.

Every aggregate is computed in SQL (GROUP BY, COUNT, window functions) so a
table of millions of events never travels to pandas; only pages and summaries
do. Every function takes the same filters (``EventFilter`` or the keywords of
``EventFilter.build``) and returns the same columns on SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd
from sqlalchemy import Connection, Engine, and_, case, desc, false, func, literal, literal_column, or_, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.sql.visitors import InternalTraversal
from sqlalchemy.types import Float

from .db import db_now, read_connection
from .display import time_text
from .errors import FilterError
from .filters import EventFilter, as_filter, check_text, normalized_error, prepare_connection
from .models import DEFAULT_TABLES, MANUAL_ACTOR_PATTERN, MANUAL_ACTOR_PREFIX, EventStatus, OutboxTables

MAX_PAGE = 10_000
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


class seconds_between(FunctionElement[float]):
    """SQL for the seconds from the first timestamp to the second."""

    type = Float()
    inherit_cache = True


@compiles(seconds_between, "postgresql")
def _seconds_pg(element: seconds_between, compiler: Any, **kw: Any) -> str:
    start, end = (compiler.process(c, **kw) for c in element.clauses)
    return f"EXTRACT(EPOCH FROM ({end} - {start}))"


@compiles(seconds_between, "sqlite")
def _seconds_sqlite(element: seconds_between, compiler: Any, **kw: Any) -> str:
    start, end = (compiler.process(c, **kw) for c in element.clauses)
    # Whole seconds from the 'YYYY-MM-DD HH:MM:SS' part, the fraction from the '.ffffff' text after it:
    # julianday() and strftime() round to milliseconds (59.9996 becomes the next second) and
    # julianday's floating point day number loses more.
    return (
        f"((CAST(strftime('%s', substr({end}, 1, 19)) AS INTEGER)"
        f" - CAST(strftime('%s', substr({start}, 1, 19)) AS INTEGER))"
        f" + (CAST(substr({end}, 20) AS REAL) - CAST(substr({start}, 20) AS REAL)))"
    )


@contextmanager
def _reading(engine: Engine) -> Iterator[Connection]:
    # Deferred on SQLite: a report never takes the write lock, and reads beside writers (WAL).
    with read_connection(engine) as conn:
        yield prepare_connection(conn)


def _page(limit: int, offset: int) -> tuple[int, int]:
    if not 1 <= limit <= MAX_PAGE:
        raise FilterError("limit", f"must be between 1 and {MAX_PAGE}")
    if offset < 0:
        raise FilterError("offset", "must not be negative")
    return limit, offset


def _frame(rows: Any, columns: list[str], times: tuple[str, ...] = ()) -> pd.DataFrame:
    frame = pd.DataFrame([tuple(r) for r in rows], columns=columns)
    for name in times:
        frame[name] = pd.to_datetime(frame[name], utc=True)
    return frame


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
    stmt = (
        select(*(ev.c[name] for name in EVENT_COLUMNS))
        .where(flt.clause(tables))
        .order_by(desc(ev.c.created_at), desc(ev.c.id))
        .limit(limit)
        .offset(offset)
    )
    with _reading(engine) as conn:
        rows = conn.execute(stmt).all()
    return _frame(rows, EVENT_COLUMNS, ("created_at", "processed_at", "available_at", "locked_until"))


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
    ev = tables.events
    stmt = select(ev.c.id).where(flt.clause(tables)).order_by(desc(ev.c.created_at), desc(ev.c.id)).limit(limit)
    with _reading(engine) as conn:
        return list(conn.execute(stmt).scalars())


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
    events); ``limit``/``offset`` page through the groups (``count_error_groups`` says how many).
    """
    flt = as_filter(filters, **loose)
    limit, offset = _page(limit, offset)
    if order not in ("events", "failed"):
        raise FilterError("order", "must be 'events' or 'failed'")
    ev = tables.events
    group = normalized_error(ev.c.error_message).label("error_group")
    if engine.dialect.name == "postgresql":
        types = func.string_agg(ev.c.event_type.distinct(), literal_column("','"))
    else:
        types = func.group_concat(ev.c.event_type.distinct())
    events = func.count().label("events")
    failed = func.sum(case((ev.c.status == EventStatus.FAILED.value, 1), else_=0)).label("failed")
    ranking = (desc(failed), desc(events)) if order == "failed" else (desc(events),)
    groups = (
        select(
            group,
            events,
            failed,
            func.min(ev.c.created_at).label("first_seen"),
            func.max(ev.c.created_at).label("last_seen"),
            types.label("event_types"),
            func.max(ev.c.id).label("example_event_id"),
        )
        .where(and_(ev.c.error_message.is_not(None), flt.clause(tables)))
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
    frame = _frame(rows, columns, ("first_seen", "last_seen"))
    frame["event_types"] = [",".join(sorted(set((v or "").split(",")))) for v in frame["event_types"]]
    return frame.astype({"events": "int64", "failed": "int64"})


def count_error_groups(
    engine: Engine, filters: EventFilter | None = None, *, tables: OutboxTables = DEFAULT_TABLES, **loose: Any
) -> int:
    """How many error groups ``error_summary`` has for these filters (for paging through them)."""
    flt = as_filter(filters, **loose)
    ev = tables.events
    groups = (
        select(normalized_error(ev.c.error_message).label("error_group"))
        .where(and_(ev.c.error_message.is_not(None), flt.clause(tables)))
        .group_by(normalized_error(ev.c.error_message))
        .subquery("groups")
    )
    with _reading(engine) as conn:
        return int(conn.execute(select(func.count()).select_from(groups)).scalar_one())


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
    """Distinct values of ``event_type``, ``org_id`` or ``entity_type`` (for filter pickers)."""
    if column not in ("event_type", "org_id", "entity_type"):
        raise FilterError("column", "must be event_type, org_id or entity_type")
    col = tables.events.c[column]
    with _reading(engine) as conn:
        return list(conn.execute(select(col).distinct().order_by(col).limit(limit)).scalars())


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

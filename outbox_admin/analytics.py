"""Read models as pandas DataFrames, shared by the dashboard, the notebooks and the CLI.

Every aggregate is computed in SQL (GROUP BY, COUNT, window functions) so a
table of millions of events never travels to pandas; only pages and summaries
do. Every function takes the same filters (``EventFilter`` or the keywords of
``EventFilter.build``) and returns the same columns on SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pandas as pd
from sqlalchemy import Connection, Engine, and_, case, desc, func, literal, literal_column, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import Float

from .errors import FilterError
from .filters import EventFilter, as_filter, normalized_error, prepare_connection
from .models import DEFAULT_TABLES, MANUAL_ACTOR_PREFIX, EventStatus, OutboxTables

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
    return f"((julianday({end}) - julianday({start})) * 86400.0)"


class epoch_bucket(FunctionElement[int]):
    """SQL for the start of a timestamp's time bucket, in Unix seconds."""

    inherit_cache = True


@compiles(epoch_bucket, "postgresql")
def _bucket_pg(element: epoch_bucket, compiler: Any, **kw: Any) -> str:
    column, seconds = (compiler.process(c, **kw) for c in element.clauses)
    return f"(floor(EXTRACT(EPOCH FROM {column}) / {seconds}) * {seconds})::bigint"


@compiles(epoch_bucket, "sqlite")
def _bucket_sqlite(element: epoch_bucket, compiler: Any, **kw: Any) -> str:
    column, seconds = (compiler.process(c, **kw) for c in element.clauses)
    return f"((CAST(strftime('%s', {column}) AS INTEGER) / {seconds}) * {seconds})"


@contextmanager
def _reading(engine: Engine) -> Iterator[Connection]:
    with engine.connect() as conn:
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
    """One event's fields (payload included) as a dict, or None."""
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
        found = dict(conn.execute(stmt).all())
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
        stmt = stmt.where(tr.c.event_id == event_id)
    since_at = parse_time(since, "since")
    if since_at is not None:
        stmt = stmt.where(tr.c.at >= since_at)
    if actor is not None:
        stmt = stmt.where(tr.c.actor == actor)
    if manual_only:
        stmt = stmt.where(tr.c.actor.like(f"{MANUAL_ACTOR_PREFIX}%"))
    ascending = event_id is not None if oldest_first is None else oldest_first
    stmt = stmt.order_by(tr.c.id if ascending else desc(tr.c.id)).limit(limit)
    with _reading(engine) as conn:
        rows = conn.execute(stmt).all()
    return _frame(rows, TRANSITION_COLUMNS, ("at",))


def retry_histogram(
    engine: Engine, filters: EventFilter | None = None, *, tables: OutboxTables = DEFAULT_TABLES, **loose: Any
) -> pd.DataFrame:
    """``retry_count, status, count``: how many events needed how many retries."""
    flt = as_filter(filters, **loose)
    ev = tables.events
    stmt = (
        select(ev.c.retry_count, ev.c.status, func.count())
        .where(flt.clause(tables))
        .group_by(ev.c.retry_count, ev.c.status)
        .order_by(ev.c.retry_count, ev.c.status)
    )
    with _reading(engine) as conn:
        rows = conn.execute(stmt).all()
    frame = _frame(rows, ["retry_count", "status", "count"])
    return frame.astype({"retry_count": "int64", "count": "int64"})


def error_summary(
    engine: Engine,
    filters: EventFilter | None = None,
    *,
    limit: int = 50,
    tables: OutboxTables = DEFAULT_TABLES,
    **loose: Any,
) -> pd.DataFrame:
    """Error groups, most events first: ``error_group, events, failed, first_seen, last_seen, event_types,
    example_event_id, example_message``.

    Groups events by the normalised form of their current ``error_message``;
    ``failed`` counts those now FAILED (dead letters); first and last seen are the
    events' creation times.
    """
    flt = as_filter(filters, **loose)
    limit, _ = _page(limit, 0)
    ev = tables.events
    group = normalized_error(ev.c.error_message).label("error_group")
    if engine.dialect.name == "postgresql":
        types = func.string_agg(ev.c.event_type.distinct(), literal_column("','"))
    else:
        types = func.group_concat(ev.c.event_type.distinct())
    events = func.count().label("events")
    stmt = (
        select(
            group,
            events,
            func.sum(case((ev.c.status == EventStatus.FAILED.value, 1), else_=0)),
            func.min(ev.c.created_at),
            func.max(ev.c.created_at),
            types,
            func.max(ev.c.id),
            func.max(ev.c.error_message),
        )
        .where(and_(ev.c.error_message.is_not(None), flt.clause(tables)))
        .group_by(group)
        .order_by(desc(events), group)
        .limit(limit)
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


def throughput(
    engine: Engine,
    bucket: str = "1min",
    filters: EventFilter | None = None,
    *,
    tables: OutboxTables = DEFAULT_TABLES,
    **loose: Any,
) -> pd.DataFrame:
    """``bucket, published, completed, failed`` per time bucket (``"1min"``, ``"5min"``, ``"1h"``...).

    Published counts events by ``created_at``; completed by ``processed_at``;
    failed counts transitions to FAILED by their time. ``since``/``until`` bound
    each of those times.
    """
    try:
        seconds = int(pd.Timedelta(bucket).total_seconds())
    except ValueError:
        raise FilterError("bucket", f"{bucket!r} is not a duration such as '1min', '5min' or '1h'") from None
    if seconds < 1:
        raise FilterError("bucket", "must be at least one second")
    flt = as_filter(filters, **loose)
    ev, tr = tables.events, tables.transitions
    window = flt.with_(since=None, until=None)

    def counted(column: Any, *extra: Any, join: bool = False) -> Any:
        b = epoch_bucket(column, literal(seconds)).label("b")
        conditions = [column.is_not(None), window.clause(tables), *extra]
        if flt.since is not None:
            conditions.append(column >= flt.since)
        if flt.until is not None:
            conditions.append(column < flt.until)
        source = tr.join(ev, ev.c.id == tr.c.event_id) if join else ev
        return select(b, func.count()).select_from(source).where(*conditions).group_by(b)

    with _reading(engine) as conn:
        published = dict(conn.execute(counted(ev.c.created_at)).all())
        completed = dict(conn.execute(counted(ev.c.processed_at)).all())
        failed = dict(conn.execute(counted(tr.c.at, tr.c.to_status == EventStatus.FAILED.value, join=True)).all())
    buckets = sorted(set(published) | set(completed) | set(failed))
    frame = pd.DataFrame(
        {
            "bucket": pd.to_datetime([int(b) for b in buckets], unit="s", utc=True),
            "published": [int(published.get(b, 0)) for b in buckets],
            "completed": [int(completed.get(b, 0)) for b in buckets],
            "failed": [int(failed.get(b, 0)) for b in buckets],
        }
    )
    return frame


LATENCY_QUANTILES = (0.5, 0.9, 0.95, 0.99)


def latency_stats(
    engine: Engine, filters: EventFilter | None = None, *, tables: OutboxTables = DEFAULT_TABLES, **loose: Any
) -> pd.DataFrame:
    """Seconds from ``created_at`` to ``processed_at`` of COMPLETED events: ``event_type, events, mean,
    p50, p90, p95, p99, max``; the first row (``event_type == "*"``) is all types together.

    Percentiles use the nearest-rank method with window functions, so both
    databases give the same numbers.
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
        per_type = conn.execute(summary(base.c.event_type)).all()
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

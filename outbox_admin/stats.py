"""The rollup the Overview sums instead of scanning the events: counts and latency histograms per minute.

Why. With 1,000,000 events over 8 days (``bench.scale``) the Overview at 7 days read
every event of the window for each refresh: the latency percentiles sorted them
(2.2 s on SQLite, 1.4 s on PostgreSQL), the throughput chart counted their history
(0.4 s / 1.0 s). A rollup makes a window's cost depend on the minutes it spans,
not on the events in it (the whole Overview: 0.13-0.18 s a render at any window).
Measured alternatives: caching the raw queries helps a refresh but not the first
render (what a user opening the page gets); indexes do not help, the queries
already read only the window through one. Written by the publisher it would have
cost every application transaction a row (and missed events other programs
insert); written by a periodic job from the history it would miss transactions
that commit late. Its price: 3-4% of dispatch throughput for a burst, up to 11%
for a backlog spread over a day (docs/benchmarks.md).

What a row says. Of the events *created* in ``period`` (a minute; after compaction
an hour or a day, ``span`` seconds) with one ``event_type``: how many are now
COMPLETED, FAILED and DISCARDED, the latency histogram (``l00``..., created to
processed) and latency sum of the COMPLETED ones, and each of the three statuses by
retry count (``c00``..., ``f00``..., ``d00``...; the last bucket is "that many or
more"). So a window is a cohort, as everywhere in ``analytics`` (``since`` bounds
``created_at``), and the rollup's numbers equal those counted from the events table
for the same window (``tests/test_stats.py`` checks it after dispatching, retries,
failures, lease recovery, requeue, discard and purge, on both databases). PENDING
and PROCESSING events are the unfinished work, usually few: they are counted live
through their indexes (``unfinished_sql``).

Who writes it, in the same statement or transaction as the status change it counts
(so it is exact at every commit, whatever runs beside it):

- the dispatcher's finish and lease recovery (``outbox_admin.sql``), and a person's
  recovery (``admin.recover_expired``, the same statement): +1 for each event that
  became COMPLETED or FAILED;
- ``admin.requeue`` and ``admin.discard``: -1 for the status an event leaves, +1
  for DISCARDED; ``admin.purge``: -1 for each event it deletes.

Any other write that moves an event into or out of COMPLETED, FAILED or DISCARDED,
or deletes one, must call ``record`` too; ``rebuild`` recounts the rollup from the
events (after a writer that did not, such as an older version of this package).

Hot rows. Rows are keyed by ``writer`` too (the dispatcher's name; ``admin``,
``purge``; ``''`` for compacted and rebuilt rows), so dispatchers running side by
side on PostgreSQL never update the same row: each upserts its own few rows per
minute (per event type), and readers sum over writers.

Compaction (``compact``; the dispatcher runs it every ``COMPACT_EVERY_SECONDS``,
``admin.purge`` after purging) folds minute rows older than 25 hours into hour rows
and rows older than 8 days into day rows, so a 7-day window sums a few thousand
rows. Windows are aligned to match (``aligned_since``): up to 24 hours to the minute,
up to 7 days to the hour, longer to the day; the Overview says so.

The histogram. Bucket ``k`` holds latencies in ``[LATENCY_BOUNDS[k-1], LATENCY_BOUNDS[k])``
(bucket 0 below 1 ms, the last from 18.6 hours): bounds at 1 ms times powers of the
square root of 2, so a percentile read from it (``percentile``) is within that
factor, and in practice a few per cent, of the exact one. Fixed columns, not a row
per bucket: a row per bucket multiplied the rows a window sums by ten.
"""

from __future__ import annotations

import bisect
import datetime as dt
import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, Engine

from .models import DEFAULT_TABLES, STATS_LATENCY_BUCKETS, STATS_RETRY_BUCKETS, EventStatus, OutboxTables

COMPLETED = EventStatus.COMPLETED.value
FAILED = EventStatus.FAILED.value
DISCARDED = EventStatus.DISCARDED.value
#: The statuses the rollup counts, with the prefix of their retry-count columns.
COUNTED = {COMPLETED: "c", FAILED: "f", DISCARDED: "d"}

MINUTE, HOUR, DAY = 60, 3600, 86400
#: Minute rows older than this become hour rows, hour rows older than ``DAY_AFTER`` day rows.
HOUR_AFTER = dt.timedelta(hours=25)
DAY_AFTER = dt.timedelta(days=8)
COMPACT_EVERY_SECONDS = 600.0

#: Lower bounds of latency buckets 1, 2, ... in whole microseconds (exact on both databases): 1 ms
#: times powers of the square root of 2; and in seconds.
LATENCY_BOUNDS_US: tuple[int, ...] = tuple(round(1000 * 2 ** (k / 2)) for k in range(STATS_LATENCY_BUCKETS - 1))
LATENCY_BOUNDS: tuple[float, ...] = tuple(b / 1_000_000 for b in LATENCY_BOUNDS_US)
LATENCY_COLUMNS = tuple(f"l{k:02d}" for k in range(STATS_LATENCY_BUCKETS))
RETRY_COLUMNS = {status: tuple(f"{p}{k:02d}" for k in range(STATS_RETRY_BUCKETS)) for status, p in COUNTED.items()}
#: Every column a write adds to: the three counts, the latency sum, the histogram, the retry counts.
COUNTER_COLUMNS: tuple[str, ...] = (
    "completed",
    "failed",
    "discarded",
    "latency_sum",
    *LATENCY_COLUMNS,
    *(c for columns in RETRY_COLUMNS.values() for c in columns),
)
KEY_COLUMNS = ("period", "span", "event_type", "writer")

PURGE_WRITER = "purge"
ADMIN_WRITER = "admin"
COMPACTED_WRITER = ""


def _run(conn: Connection, sql: str, params: dict[str, Any] | None = None) -> None:
    from .sql import driver_style

    conn.exec_driver_sql(driver_style(sql, pyformat=conn.dialect.name == "postgresql"), params or {})


def record(
    conn: Connection,
    event_ids: Sequence[str],
    *,
    sign: int,
    writer: str,
    status: str | None = None,
    tables: OutboxTables = DEFAULT_TABLES,
) -> None:
    """Add ``sign`` (+1 or -1) for each of ``event_ids`` to the rollup, counted in ``status`` (default:
    the row's own status, if counted), in the caller's transaction. Call it while the rows still hold
    the values the count is about: before a delete, after a status change but before a reset of
    ``retry_count``."""
    if not event_ids:
        return
    from .sql import rollup

    params: dict[str, Any] = {"ids": json.dumps(list(event_ids)), "sign": sign, "writer": writer}
    if status is not None:
        params["status"] = status
    _run(conn, rollup.record_sql(conn.dialect, tables, as_status=status is not None), params)


def summed(events: Iterable[tuple[str, str, str, int, str | None]], writer: str) -> list[tuple[Any, ...]]:
    """SQLite: the rollup rows of ``(created_at, event_type, status, retry_count, processed_at)`` rows
    as stored (UTCDateTime text), each counted +1: ``(period, event_type, writer, *COUNTER_COLUMNS)``.

    What ``sql.rollup.upsert_sql`` computes, computed here from the rows the finish returns
    (the same whole minutes and microseconds, so the same buckets, as ``tests/test_stats.py``
    checks); statuses not counted are skipped. About 0.5 ms per 500 events.
    """
    rows: dict[tuple[str, str], list[Any]] = {}
    parsed: dict[str, dt.datetime] = {}  # a batch's events share their processed_at
    micro = dt.timedelta(microseconds=1)
    for created, event_type, status, retry_count, processed in events:
        columns = _STATUS_COLUMNS.get(status)
        if columns is None:
            continue
        key = (created[:16] + ":00.000000", event_type)
        row = rows.get(key)
        if row is None:
            row = rows[key] = [0] * len(COUNTER_COLUMNS)
            row[_LATENCY_SUM] = 0.0
        count, retries = columns
        row[count] += 1
        row[retries[retry_count if retry_count < STATS_RETRY_BUCKETS else -1]] += 1
        if status == COMPLETED and processed is not None:
            done = parsed.get(processed) or parsed.setdefault(processed, dt.datetime.fromisoformat(processed))
            latency = done - dt.datetime.fromisoformat(created)
            row[_LATENCY[bisect.bisect_right(LATENCY_BOUNDS_US, latency // micro)]] += 1
            row[_LATENCY_SUM] += latency.total_seconds()
    return [(period, event_type, writer, *values) for (period, event_type), values in rows.items()]


_INDEX = {name: i for i, name in enumerate(COUNTER_COLUMNS)}
_LATENCY_SUM = _INDEX["latency_sum"]
_LATENCY = [_INDEX[c] for c in LATENCY_COLUMNS]
#: Per counted status: its count's column and its retry-count columns, as indexes into COUNTER_COLUMNS.
_STATUS_COLUMNS = {status: (_INDEX[status.lower()], [_INDEX[c] for c in RETRY_COLUMNS[status]]) for status in COUNTED}


# -- compaction and rebuild ------------------------------------------------------------------


def cutoffs(now: dt.datetime) -> dict[int, dt.datetime]:
    """Per span compacted into, the period before which rows are folded (whole hours and days)."""
    hour = (now - HOUR_AFTER).replace(minute=0, second=0, microsecond=0)
    day = (now - DAY_AFTER).replace(hour=0, minute=0, second=0, microsecond=0)
    return {HOUR: hour, DAY: day}


def compact_in(conn: Connection, tables: OutboxTables = DEFAULT_TABLES, *, now: dt.datetime | None = None) -> None:
    """``compact`` in the caller's (write) transaction; on PostgreSQL each statement is atomic by itself."""
    from .coltypes import UTCDateTime
    from .sql import rollup

    dialect = conn.dialect
    now = now or _database_now(conn)
    for span, cutoff in cutoffs(now).items():
        bound = UTCDateTime().process_bind_param(cutoff, dialect)
        value: Any = bound
        if dialect.name == "sqlite" and bound is not None:
            value = bound.isoformat(sep=" ", timespec="microseconds")
        for sql in rollup.compact_sql(dialect, tables, span):
            _run(conn, sql, {"cutoff": value})


def compact(engine: Engine, tables: OutboxTables = DEFAULT_TABLES, *, now: dt.datetime | None = None) -> None:
    """Fold old minute rows into hour rows and old hour rows into day rows (see the module docstring)."""
    from .db import write_transaction

    with write_transaction(engine) as conn:
        compact_in(conn, tables, now=now)


def backfill_in(conn: Connection, tables: OutboxTables = DEFAULT_TABLES) -> None:
    """Count the existing events into an empty rollup, then compact it (migration 0005, ``rebuild``, seeds)."""
    from .sql import rollup

    _run(conn, rollup.backfill_sql(conn.dialect, tables))
    compact_in(conn, tables)


def rebuild(engine: Engine, tables: OutboxTables = DEFAULT_TABLES) -> None:
    """Recount the rollup from the events table, in one transaction.

    On PostgreSQL the rollup is locked first (``EXCLUSIVE``: readers go on, writers wait),
    so a dispatcher's finish that commits during the rebuild is counted once, after it.
    """
    from .db import write_transaction
    from .sql import rollup

    _, table = rollup.names(engine.dialect, tables)
    with write_transaction(engine) as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql(f"LOCK TABLE {table} IN EXCLUSIVE MODE")
        conn.exec_driver_sql(f"DELETE FROM {table}")
        backfill_in(conn, tables)


def _database_now(conn: Connection) -> dt.datetime:
    from sqlalchemy import select

    from .db import db_now

    value = conn.execute(select(db_now())).scalar_one()
    return value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(value).replace(tzinfo=dt.UTC)


# -- reading --------------------------------------------------------------------------------


def alignment(since: dt.datetime, now: dt.datetime) -> int:
    """The unit (seconds) a window starting at ``since`` is counted in: minutes within 24 hours of
    ``now``, hours within 7 days, else days; compacted rows never straddle such a start."""
    if since >= now - dt.timedelta(hours=24):
        return MINUTE
    return HOUR if since >= now - dt.timedelta(days=7) else DAY


def aligned_since(since: dt.datetime, now: dt.datetime) -> dt.datetime:
    """The start of a window as the rollup counts it: ``since`` floored to its ``alignment``."""
    since = since.astimezone(dt.UTC)
    unit = alignment(since, now)
    floored = since.replace(second=0, microsecond=0)
    if unit >= HOUR:
        floored = floored.replace(minute=0)
    if unit >= DAY:
        floored = floored.replace(hour=0)
    return floored


def percentile(histogram: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile (0-1) of latencies counted in ``histogram`` (``LATENCY_COLUMNS`` order), or
    None when it is empty: the bucket holding the ``q * n``-th latency, interpolated geometrically
    inside it (linearly in bucket 0, below 1 ms; the last bucket, unbounded, gives its lower bound)."""
    total = sum(histogram)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for k, count in enumerate(histogram):
        if count <= 0:
            continue
        if seen + count >= rank:
            inside = min(1.0, max(0.0, (rank - seen) / count))
            if k == 0:
                return LATENCY_BOUNDS[0] * inside
            low = LATENCY_BOUNDS[k - 1]
            if k >= len(LATENCY_BOUNDS):
                return low
            return low * math.exp(math.log(LATENCY_BOUNDS[k] / low) * inside)
        seen += count
    return LATENCY_BOUNDS[-1]


def bucket_of(latency: dt.timedelta) -> int:
    """The histogram bucket of a latency, as the SQL computes it (whole microseconds), for tests and checks."""
    return bisect.bisect_right(LATENCY_BOUNDS_US, latency // dt.timedelta(microseconds=1))


def retry_bucket(retry_count: int) -> int:
    return min(retry_count, STATS_RETRY_BUCKETS - 1)

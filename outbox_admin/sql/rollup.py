"""The rollup's statements (``outbox_admin.stats``), both dialects: they differ in a few expressions.

Every statement that adds to the rollup is ``upsert_sql`` over a ``source`` query with
one row per event counted; the dispatcher's finish and recovery (``postgres.py``,
``sqlite.py``), ``admin``'s corrections, the backfill and ``rebuild`` only differ in
their source. Parameters are written ``:name`` (``driver_style`` makes them the
driver's); no literal holds a colon, which that rewriting would take for a parameter.

Plans (``tests/test_plans.py``): the dispatcher's counts and ``admin``'s corrections
reach events by primary key from the JSON list of ids, and the rollup by its primary
key (the conflict target); the reads scan the rollup's primary key from the window's
start, and reach unfinished events through the status index.
"""

from __future__ import annotations

from typing import Any

from ..models import STATS_LATENCY_BUCKETS, STATS_RETRY_BUCKETS, OutboxTables
from ..stats import (
    COMPACTED_WRITER,
    COMPLETED,
    COUNTED,
    COUNTER_COLUMNS,
    DAY,
    DISCARDED,
    FAILED,
    HOUR,
    KEY_COLUMNS,
    LATENCY_BOUNDS_US,
    LATENCY_COLUMNS,
    MINUTE,
    RETRY_COLUMNS,
)


def latency_sql(dialect: str, start: str, end: str) -> str:
    """Seconds from ``start`` to ``end`` (SQL expressions), exact to the microsecond on both databases."""
    if dialect == "postgresql":
        return f"EXTRACT(EPOCH FROM ({end} - {start}))"
    # Whole seconds from the 'YYYY-MM-DD HH:MM:SS' part, the fraction from the '.ffffff' text after it:
    # julianday() and strftime() round to milliseconds (59.9996 becomes the next second) and
    # julianday's floating point day number loses more.
    return (
        f"((CAST(strftime('%s', substr({end}, 1, 19)) AS INTEGER)"
        f" - CAST(strftime('%s', substr({start}, 1, 19)) AS INTEGER))"
        f" + (CAST(substr({end}, 20) AS REAL) - CAST(substr({start}, 20) AS REAL)))"
    )


def period_sql(dialect: str, column: str, span: int) -> str:
    """``column`` (a stored time) truncated to its minute, hour or day, as the rollup stores periods.

    PostgreSQL: ``date_bin`` from the Unix epoch (no time zone involved). SQLite: a prefix
    of UTCDateTime's ``YYYY-MM-DD HH:MM:SS.ffffff`` text, completed with zeros.
    """
    if dialect == "postgresql":
        unit = {MINUTE: "1 minute", HOUR: "1 hour", DAY: "1 day"}[span]
        return f"date_bin('{unit}', {column}, TIMESTAMPTZ 'epoch')"
    length, zeros = {MINUTE: (16, ":00.000000"), HOUR: (13, ":00:00.000000"), DAY: (10, " 00:00:00.000000")}[span]
    return f"(substr({column}, 1, {length}) || '{zeros}')"


def latency_us_sql(dialect: str, start: str, end: str) -> str:
    """Whole microseconds from ``start`` to ``end``: exact integers on both databases, so the histogram
    bucket of a latency is the same whoever computes it (``stats.bucket_of``)."""
    if dialect == "postgresql":
        return f"CAST(EXTRACT(EPOCH FROM ({end} - {start})) * 1000000 AS bigint)"
    return (
        f"((CAST(strftime('%s', substr({end}, 1, 19)) AS INTEGER)"
        f" - CAST(strftime('%s', substr({start}, 1, 19)) AS INTEGER)) * 1000000"
        f" + (CAST(substr({end}, 21) AS INTEGER) - CAST(substr({start}, 21) AS INTEGER)))"
    )


def _latency_bucket_sql(dialect: str, micros: str) -> str:
    """The histogram bucket of ``micros``: how many of ``LATENCY_BOUNDS_US`` are at most it."""
    if dialect == "postgresql":
        bounds = ", ".join(str(b) for b in LATENCY_BOUNDS_US)
        return f"width_bucket({micros}, CAST(ARRAY[{bounds}] AS bigint[]))"
    return _bisect(micros, 0, len(LATENCY_BOUNDS_US))


def _bisect(micros: str, low: int, high: int) -> str:
    """SQLite: nested CASEs that find the bucket in six comparisons, not fifty-three."""
    if low == high:
        return str(low)
    middle = (low + high) // 2  # buckets low..middle are below LATENCY_BOUNDS_US[middle]
    below, above = _bisect(micros, low, middle), _bisect(micros, middle + 1, high)
    return f"CASE WHEN {micros} < {LATENCY_BOUNDS_US[middle]} THEN {below} ELSE {above} END"


def _sum_where(condition: str) -> str:
    return f"coalesce(sum(sign) FILTER (WHERE {condition}), 0)"


def upsert_sql(dialect: str, stats: str, source: str) -> str:
    """``INSERT`` the rollup rows that ``source`` adds up to, adding to the rows already there.

    ``source`` is a SQL query with the columns ``created_at, event_type, writer, status,
    retry_count, latency, sign``: one row per event counted, ``sign`` +1 (it entered
    ``status``) or -1 (it left it, or was deleted); ``latency`` in whole microseconds
    (``latency_us_sql``; read for COMPLETED only). Rows of other statuses add nothing. The events are first grouped by
    everything a column depends on (a batch's 500 events make a few dozen groups), then
    each group lands in its columns; grouped per minute, type and writer, so the
    ``ON CONFLICT`` target is hit at most once per row inserted.
    """
    pg = dialect == "postgresql"
    least = "least" if pg else "min"
    last_retry = STATS_RETRY_BUCKETS - 1
    # A fence: a subquery the planner must not merge into its parent, where each use of the
    # latency (and its bucket) would evaluate the expression again.
    fence = "OFFSET 0" if pg else "LIMIT -1 OFFSET 0"
    each = (
        f"SELECT {period_sql(dialect, 'src.created_at', MINUTE)} AS period, src.event_type, src.writer, src.status, "
        f"CAST(src.sign AS integer) AS sign, "
        f"CASE WHEN src.status = '{COMPLETED}' THEN src.latency / 1000000.0 END AS latency, "
        f"CASE WHEN src.status = '{COMPLETED}' THEN {_latency_bucket_sql(dialect, 'src.latency')} END AS lb, "
        f"{least}(src.retry_count, {last_retry}) AS rb "
        f"FROM (SELECT * FROM ({source}) AS raw {fence}) AS src "
        f"WHERE src.status IN ('{COMPLETED}', '{FAILED}', '{DISCARDED}')"
    )
    groups = (
        f"SELECT period, event_type, writer, status, lb, rb, sum(sign) AS n, sum(sign * latency) AS seconds "
        f"FROM ({each} {fence}) AS one GROUP BY period, event_type, writer, status, lb, rb"
    )

    def count(condition: str) -> str:
        return f"coalesce(sum(n) FILTER (WHERE {condition}), 0)"

    sums = [
        count(f"status = '{COMPLETED}'"),
        count(f"status = '{FAILED}'"),
        count(f"status = '{DISCARDED}'"),
        f"coalesce(sum(seconds) FILTER (WHERE status = '{COMPLETED}'), 0)",
        *(count(f"lb = {k}") for k in range(STATS_LATENCY_BUCKETS)),
        *(count(f"status = '{status}' AND rb = {k}") for status in COUNTED for k in range(STATS_RETRY_BUCKETS)),
    ]
    columns = ", ".join((*KEY_COLUMNS, *COUNTER_COLUMNS))
    updates = ", ".join(f"{c} = cur.{c} + excluded.{c}" for c in COUNTER_COLUMNS)
    return (
        f"INSERT INTO {stats} AS cur ({columns}) "
        f"SELECT period, {MINUTE}, event_type, writer, {', '.join(sums)} "
        f"FROM ({groups} {fence}) AS counted GROUP BY period, event_type, writer "
        f"ON CONFLICT ({', '.join(KEY_COLUMNS)}) DO UPDATE SET {updates}"
    )


def add_rows_sql(stats: str) -> str:
    """SQLite: add one row of sums (``stats.summed``: period, event type, writer, then
    ``COUNTER_COLUMNS``) to the rollup; run once per row (``executemany``), with plain
    parameters: cheaper than reading them out of a JSON document, column by column."""
    columns = ", ".join((*KEY_COLUMNS, *COUNTER_COLUMNS))
    marks = ", ".join("?" for _ in COUNTER_COLUMNS)
    updates = ", ".join(f"{c} = cur.{c} + excluded.{c}" for c in COUNTER_COLUMNS)
    return (
        f"INSERT INTO {stats} AS cur ({columns}) VALUES (?, {MINUTE}, ?, ?, {marks}) "
        f"ON CONFLICT ({', '.join(KEY_COLUMNS)}) DO UPDATE SET {updates}"
    )


def events_source(dialect: str, events: str, *, ids: str | None, status: str | None, sign: str, writer: str) -> str:
    """A ``source`` for ``upsert_sql`` read from the events table: the events whose ids are in the
    JSON array parameter ``ids`` (every counted event when None), each counted as ``status`` (a
    SQL expression; the row's own status when None), with ``sign`` and ``writer`` (SQL expressions).

    With ids, the rows are reached by primary key only: no status test here (``upsert_sql``
    leaves out the statuses it does not count), which stale statistics could turn into a walk
    of the status index.
    """
    if ids is None:
        where = f" WHERE e.status IN ('{COMPLETED}', '{FAILED}', '{DISCARDED}')"
    elif dialect == "postgresql":
        where = f" WHERE e.id = ANY(ARRAY(SELECT json_array_elements_text(CAST({ids} AS json))))"
    else:
        where = f" WHERE e.id IN (SELECT value FROM json_each({ids}))"
    counted_as = "e.status" if status is None else status
    return (
        f"SELECT e.created_at, e.event_type, {writer} AS writer, {counted_as} AS status, e.retry_count, "
        f"{latency_us_sql(dialect, 'e.created_at', 'e.processed_at')} AS latency, {sign} AS sign "
        f"FROM {events} AS e{where}"
    )


def names(dialect: Any, tables: OutboxTables) -> tuple[str, str]:
    quote = dialect.identifier_preparer.format_table
    return quote(tables.events), quote(tables.stats)


def _text_param(dialect: str, name: str) -> str:
    return f"CAST(:{name} AS varchar)" if dialect == "postgresql" else f":{name}"


def record_sql(dialect: Any, tables: OutboxTables, *, as_status: bool) -> str:
    """The statement ``record`` runs, with ``:ids`` (JSON), ``:sign``, ``:writer`` and, with
    ``as_status``, ``:status``; in ``:name`` style (``sql.driver_style`` makes it the driver's)."""
    events, stats = names(dialect, tables)
    name = dialect.name
    status = _text_param(name, "status") if as_status else None
    sign = "CAST(:sign AS integer)" if name == "postgresql" else ":sign"
    source = events_source(name, events, ids=":ids", status=status, sign=sign, writer=_text_param(name, "writer"))
    return upsert_sql(name, stats, source)


def compact_sql(dialect: Any, tables: OutboxTables, span: int) -> list[str]:
    """Statements that fold the rows of spans below ``span`` older than ``:cutoff`` into ``span`` rows.

    PostgreSQL: one statement, ``DELETE ... RETURNING`` feeding the ``INSERT``, so a row a
    dispatcher updates meanwhile is either folded with its update or left for the next
    time, never counted twice. SQLite: insert the sums, then delete, in one write transaction.
    """
    _, stats = names(dialect, tables)
    columns = ", ".join((*KEY_COLUMNS, *COUNTER_COLUMNS))
    sums = ", ".join(f"sum({c})" for c in COUNTER_COLUMNS)
    updates = ", ".join(f"{c} = cur.{c} + excluded.{c}" for c in COUNTER_COLUMNS)
    conflict = f"ON CONFLICT ({', '.join(KEY_COLUMNS)}) DO UPDATE SET {updates}"
    old = f"span < {span} AND period < :cutoff"
    folded = f"SELECT {period_sql(dialect.name, 'period', span)}, {span}, event_type, '{COMPACTED_WRITER}', {sums}"
    if dialect.name == "postgresql":
        return [
            f"WITH gone AS (DELETE FROM {stats} WHERE {old} RETURNING *) "
            f"INSERT INTO {stats} AS cur ({columns}) {folded} FROM gone GROUP BY 1, event_type {conflict}"
        ]
    return [
        f"INSERT INTO {stats} AS cur ({columns}) {folded} FROM {stats} WHERE {old} GROUP BY 1, event_type {conflict}",
        f"DELETE FROM {stats} WHERE {old}",
    ]


def backfill_sql(dialect: Any, tables: OutboxTables) -> str:
    """Count every COMPLETED, FAILED and DISCARDED event into the rollup (writer ``''``)."""
    events, stats = names(dialect, tables)
    source = events_source(dialect.name, events, ids=None, status=None, sign="1", writer=f"'{COMPACTED_WRITER}'")
    return upsert_sql(dialect.name, stats, source)


# -- reads ------------------------------------------------------------------------------------


def _bucket_sql(dialect: str, column: str, seconds: int) -> str:
    """``column`` floored to ``seconds`` from the Unix epoch (whole minutes, hours: UTC clock times)."""
    if dialect == "postgresql":
        return f"date_bin(INTERVAL '{seconds} seconds', {column}, TIMESTAMPTZ 'epoch')"
    floored = f"(CAST(strftime('%s', {column}) AS INTEGER) / {seconds}) * {seconds}"
    return f"strftime('%Y-%m-%d %H:%M:%S', {floored}, 'unixepoch')"


def window_sql(dialect: Any, tables: OutboxTables, bucket_seconds: int) -> str:
    """Per chart bucket since ``:since``: the three counts, the latency sum and the histogram."""
    _, stats = names(dialect, tables)
    sums = ", ".join(f"sum({c})" for c in ("completed", "failed", "discarded", "latency_sum", *LATENCY_COLUMNS))
    bucket = _bucket_sql(dialect.name, "period", bucket_seconds)
    return f"SELECT {bucket} AS bucket, {sums} FROM {stats} WHERE period >= :since GROUP BY 1 ORDER BY 1"


def totals_sql(dialect: Any, tables: OutboxTables) -> str:
    """Over the whole rollup: the three counts, then each status's retry counts."""
    _, stats = names(dialect, tables)
    columns = ("completed", "failed", "discarded", *(c for cs in RETRY_COLUMNS.values() for c in cs))
    return f"SELECT {', '.join(f'sum({c})' for c in columns)} FROM {stats}"


#: The statuses the rollup leaves to live counts: the unfinished work.
UNFINISHED = ("PENDING", "PROCESSING")


def _by_status(dialect: Any, tables: OutboxTables) -> str:
    """The events table read through its (status, created_at, id) index: one equality per status
    (a literal, not a parameter) reads that status's range. SQLite is told the index (``INDEXED
    BY``): statistics taken before a burst say every status is as common as COMPLETED, and it
    would scan the table."""
    events, _ = names(dialect, tables)
    if dialect.name == "postgresql":
        return events
    return f"{events} INDEXED BY {dialect.identifier_preparer.quote(f'ix_{tables.events.name}_status_time')}"


def unfinished_window_sql(dialect: Any, tables: OutboxTables, bucket_seconds: int) -> str:
    """Unfinished events created since ``:since`` per chart bucket: ``status, bucket, count``."""
    bucket = _bucket_sql(dialect.name, "created_at", bucket_seconds)
    return " UNION ALL ".join(
        f"SELECT '{status}', {bucket}, count(*) FROM {_by_status(dialect, tables)} "
        f"WHERE status = '{status}' AND created_at >= :since GROUP BY 2"
        for status in UNFINISHED
    )


def unfinished_totals_sql(dialect: Any, tables: OutboxTables) -> str:
    """Every unfinished event, by status and retry count: ``status, retry_count, count``."""
    return " UNION ALL ".join(
        f"SELECT '{status}', retry_count, count(*) FROM {_by_status(dialect, tables)} "
        f"WHERE status = '{status}' GROUP BY retry_count"
        for status in UNFINISHED
    )

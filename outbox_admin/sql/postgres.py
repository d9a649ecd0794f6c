"""The dispatcher's statements on PostgreSQL.

Each is one autocommit statement: a data-modifying CTE changes the events and
another inserts their history rows, so a claim, a finish or a recovery is one
round trip with no BEGIN/COMMIT. A batch travels as one JSON parameter
(``json_array_elements``), so the text is the same for 1 or 1,000 events.

Plans (``tests/test_plans.py`` checks them with no, stale and fresh statistics):

- The claim reads the partial index of due PENDING events in its own order
  (``created_at, id, available_at``) under a LIMIT, the cheapest plan whatever the
  statistics say; the CTE is MATERIALIZED so SKIP LOCKED runs once (as a subquery
  PostgreSQL may rescan it, handing out a fresh batch per rescan). The UPDATE
  then reaches the locked rows by ``id = ANY(ARRAY(...))`` on the primary key and
  re-checks nothing indexable: the rows are locked by this statement, so they are
  still PENDING.
- The finish and the recovery also count the events that became COMPLETED or
  FAILED into the rollup (``outbox_admin.stats``), from their own RETURNING rows: an
  upsert of this dispatcher's own rows (keyed by its name), so dispatchers side by
  side never wait for each other there.
- The finish also writes the delivery ledger: one row per handler that succeeded or
  failed, for the events the finish changed (so a dispatcher that lost its claim
  records nothing). Rows the claim's ledger read found are upserted on the ledger's
  primary key (``recorded_deliveries``); the others, a batch's first tries and
  nearly every row, are inserted plainly: the upsert's conflict check cost about
  3 ms of a 500-event finish. An event's first new row rides in its outcome and is
  inserted from ``changed`` itself (``first_deliveries``); only further handlers'
  rows come as a second document (``inserted_deliveries``, matched to ``changed``).
  The read of a batch's ledger rows (``delivered``) runs only for the claimed events that may have some (the
  claim's last column, ``may_have_deliveries``: none in a batch of first tries); it
  probes that key once per event (a LATERAL subquery that
  ``OFFSET 0`` keeps from being flattened into a join), and is planned per run, as
  the finish is. Written ``event_id = ANY(ARRAY(...))`` it was read with a
  sequential scan testing each row against the whole batch whenever the
  planner took the ledger for small (never analysed, or analysed while empty: a burst
  into a new outbox), and psycopg's prepared plan kept that scan while the ledger grew:
  66 ms per 500-event batch on average over a 20,000-event drain, which took 4.7 s instead
  of 1.8 s (``bench.fanout``).
- The read of the active pauses (``active_pauses``) reads the partial unique
  index of the active rows in its order, so a long pause history costs nothing.
- The finish returns the ids it did *not* write (a claim lost to an expired lease): none,
  nearly always, so a batch's 500 ids do not travel back to be read one row at a time.
- The finish, the renewal and the recovery's UPDATE reach rows only through the
  primary key. Their guards (``locked_by = :name``, the attempt) have no index,
  and the status is not tested at all: ``locked_by`` is set on PROCESSING rows
  only (every write that leaves PROCESSING clears it), so it implies the status.
  A ``status = 'PROCESSING'`` test would let stale statistics ("nothing is
  PROCESSING") pick the PROCESSING index and walk every held event once per
  element of the batch.
"""

from __future__ import annotations

from typing import Any

from ..db import db_now
from ..wakeup import NOTIFY_CHANNEL
from . import (
    CLAIMED_COLUMNS,
    HISTORY_COLUMNS,
    LEDGER_COLUMNS,
    PUBLISHER_ACTOR,
    AdminSql,
    DispatcherSql,
    PublishSql,
    _Names,
    dialect_style,
    driver_style,
    may_have_deliveries,
    quoted_columns,
    render,
)
from .rollup import latency_us_sql, upsert_sql
from .shared import (
    COMPLETED,
    FAILED,
    PENDING,
    PROCESSING,
    clock,
    expire_set,
    finish_set,
    older_unfinished,
    out_of_attempts,
)

#: Events routed to a handler whose breaker is open, or of a paused type, stay unclaimed: ``:blocked`` is
#: a JSON array of [regular expression, org or null] (``outbox_admin.patterns.glob_for_postgres``).
#: The list is decoded once, in a MATERIALIZED CTE: a pause can hold back a large backlog that each claim
#: walks past, and taking the fields out of the JSON per walked row cost three times as much.
BLOCKED = """blocked AS MATERIALIZED (
                SELECT value ->> 0 AS pattern, value ->> 1 AS org_id FROM json_array_elements(CAST(:blocked AS json))
            ), """
NOT_BLOCKED = """
              AND NOT EXISTS (
                  SELECT 1 FROM blocked AS b
                  WHERE candidate.event_type ~ b.pattern AND (b.org_id IS NULL OR candidate.org_id = b.org_id))"""

#: The batch's ids as an array, for ``id = ANY(...)`` on the primary key.
IDS = "ARRAY(SELECT json_array_elements_text(CAST(:ids AS json)))"

#: One outcome per element: [event id, attempt, outcome, failed, message, step, delay, due], then
#: optionally the event's first new ledger row: [handler, duration ms, error] (``first_deliveries``).
OUTCOMES = """
                SELECT value ->> 0 AS event_id, CAST(value ->> 1 AS integer) AS attempt,
                       value ->> 2 AS outcome, CAST(value ->> 3 AS integer) AS failed,
                       value ->> 4 AS message, CAST(value ->> 5 AS integer) AS step,
                       CAST(value ->> 6 AS double precision) AS delay, CAST(value ->> 7 AS timestamptz) AS due,
                       value ->> 8 AS handler, CAST(value ->> 9 AS double precision) AS duration_ms,
                       value ->> 10 AS handler_error
                FROM json_array_elements(CAST(:outcomes AS json))"""


def _counted(names: _Names, status: str) -> str:
    """A CTE body counting the rows of ``changed`` whose ``status`` became COMPLETED or FAILED."""
    source = (
        f"SELECT created_at, event_type, CAST(:name AS varchar) AS writer, {status} AS status, retry_count, "
        f"{latency_us_sql('postgresql', 'created_at', 'processed_at')} AS latency, 1 AS sign "
        f"FROM changed WHERE {status} IN ('{COMPLETED}', '{FAILED}')"
    )
    return upsert_sql("postgresql", names.stats, source)


def _recorded_deliveries(names: _Names, now: str, source: str, *, upsert: bool) -> str:
    """A CTE body writing the ledger rows of ``source`` ([event id, handler, duration ms, error]) of the
    events in ``changed``: a success sets ``delivered_at``, a failure ``last_error``; each counts a try.

    ``upsert``: the rows exist (an earlier try, a replay), so they are updated on the ledger's primary
    key; without it they are new and inserted plainly (no conflict check: the cheaper statement)."""
    conflict = (
        """
                ON CONFLICT (event_id, handler) DO UPDATE SET
                    attempt = d.attempt + 1, delivered_at = EXCLUDED.delivered_at,
                    duration_ms = coalesce(EXCLUDED.duration_ms, d.duration_ms),
                    last_error = coalesce(EXCLUDED.last_error, d.last_error)"""
        if upsert
        else ""
    )
    return f"""
                INSERT INTO {names.deliveries} AS d ({LEDGER_COLUMNS})
                SELECT value ->> 0, value ->> 1, 1, CASE WHEN value ->> 3 IS NULL THEN {now} END,
                       CAST(value ->> 2 AS double precision), value ->> 3
                FROM json_array_elements(CAST({source} AS json))
                WHERE value ->> 0 IN (SELECT id FROM changed){conflict}"""


def dispatcher_sql(names: _Names, dialect: Any, *, ordering: str | None, clocked: bool) -> DispatcherSql:
    ev, tr = names.events, names.transitions
    now, lease_until, due = clock(dialect, clocked=clocked, time_param="CAST({} AS timestamptz)")
    order = older_unfinished(ev) if ordering == "entity" else ""
    columns = ", ".join(CLAIMED_COLUMNS)
    returning = ", ".join(f"e.{c}" for c in CLAIMED_COLUMNS) + f", {may_have_deliveries('e.')} AS ledgered"

    def claim(extra: str, blocked: str = "") -> str:
        return f"""
            WITH {blocked}due AS MATERIALIZED (
                SELECT candidate.id FROM {ev} AS candidate
                WHERE candidate.status = '{PENDING}' AND candidate.available_at <= {now}{order}{extra}
                ORDER BY candidate.created_at, candidate.id, candidate.available_at
                LIMIT :limit
                FOR UPDATE OF candidate SKIP LOCKED
            ), claimed AS (
                UPDATE {ev} AS e SET status = '{PROCESSING}', locked_by = :name, locked_until = {lease_until}
                WHERE e.id = ANY(ARRAY(SELECT id FROM due))
                RETURNING {returning}
            ), recorded AS (
                INSERT INTO {tr} ({HISTORY_COLUMNS})
                SELECT id, '{PENDING}', '{PROCESSING}', {now}, :name, retry_count + 1, NULL FROM claimed
            )
            SELECT {columns}, ledgered FROM claimed"""

    renew = f"""
            UPDATE {ev} AS e SET locked_until = {lease_until}
            WHERE e.id = ANY({IDS}) AND e.locked_by = :name
            RETURNING e.id"""
    finish = f"""
            WITH c AS MATERIALIZED ({OUTCOMES}
            ), changed AS (
                {finish_set(ev, now=now, due=due)}
                FROM c
                WHERE e.id = ANY(ARRAY(SELECT event_id FROM c)) AND e.id = c.event_id
                  AND e.retry_count = c.attempt AND e.locked_by = :name
                RETURNING e.id, c.outcome, c.step, c.message, e.event_type, e.created_at, e.processed_at,
                          e.retry_count, c.handler, c.duration_ms, c.handler_error
            ), recorded AS (
                INSERT INTO {tr} ({HISTORY_COLUMNS})
                SELECT id, '{PROCESSING}', outcome, {now}, :name, step, message FROM changed
            ), counted AS (
                {_counted(names, "outcome")}
            ), first_deliveries AS (
                INSERT INTO {names.deliveries} ({LEDGER_COLUMNS})
                SELECT id, handler, 1, CASE WHEN handler_error IS NULL THEN {now} END, duration_ms, handler_error
                FROM changed WHERE handler IS NOT NULL
            ), inserted_deliveries AS ({_recorded_deliveries(names, now, ":new_deliveries", upsert=False)}
            ), recorded_deliveries AS ({_recorded_deliveries(names, now, ":deliveries", upsert=True)}
            )
            SELECT event_id FROM c WHERE NOT EXISTS (SELECT 1 FROM changed WHERE changed.id = c.event_id)"""
    delivered = f"""
            SELECT d.event_id, d.handler, d.delivered_at IS NOT NULL, d.requested_at IS NOT NULL
            FROM json_array_elements_text(CAST(:ids AS json)) AS batch(id)
            CROSS JOIN LATERAL (
                SELECT event_id, handler, delivered_at, requested_at FROM {names.deliveries} AS d
                WHERE d.event_id = batch.id OFFSET 0
            ) AS d"""
    recover = _recover(names, now, "\n                LIMIT :limit")
    active_pauses = f"SELECT pattern FROM {names.pauses} WHERE resumed_at IS NULL ORDER BY pattern"
    return DispatcherSql(
        claim=driver_style(claim(""), pyformat=True),
        claim_unblocked=driver_style(claim(NOT_BLOCKED, BLOCKED), pyformat=True),
        renew=driver_style(renew, pyformat=True),
        finish=driver_style(finish, pyformat=True),
        recover=driver_style(recover, pyformat=True),
        history=None,
        active_pauses=driver_style(active_pauses, pyformat=True),
        count=None,
        delivered=driver_style(delivered, pyformat=True),
        record_deliveries=None,
    )


def _recover(names: _Names, now: str, which: str) -> str:
    """Expired leases back to PENDING (or FAILED), a failed attempt each, with their history rows.

    ``which`` narrows the candidates: ``LIMIT :limit`` (the dispatcher) or the ids of ``:ids``
    (a person's recovery, ``admin.recover_expired``). The lease is tested on the locked row
    (READ COMMITTED re-checks it after the lock), so a lease renewed meanwhile is left alone.
    The events it fails are counted into the rollup (``counted``).
    """
    ev, tr = names.events, names.transitions
    status_after_expiry = out_of_attempts("CAST(:max_attempts AS integer)")
    return f"""
            WITH expired AS MATERIALIZED (
                SELECT held.id FROM {ev} AS held
                WHERE held.status = '{PROCESSING}' AND held.locked_until < {now}{which}
                FOR UPDATE OF held SKIP LOCKED
            ), changed AS (
                {expire_set(ev, status_after_expiry, now=now)}
                WHERE e.id = ANY(ARRAY(SELECT id FROM expired))
                RETURNING e.id, e.status, e.retry_count, e.error_message, e.event_type, e.created_at, e.processed_at
            ), recorded AS (
                INSERT INTO {tr} ({HISTORY_COLUMNS})
                SELECT id, '{PROCESSING}', status, {now}, :name, retry_count, error_message FROM changed
            ), counted AS (
                {_counted(names, "status")}
            )
            SELECT id, status, retry_count, error_message FROM changed"""


def admin_sql(names: _Names, dialect: Any) -> AdminSql:
    """A person's recovery: ``_recover`` on the ids of ``:ids`` (JSON), with the database's clock; and the
    NOTIFY that wakes every dispatcher once the action's transaction commits."""
    now = str(db_now().compile(dialect=dialect))
    recover = _recover(names, now, f" AND held.id = ANY({IDS})")
    return AdminSql(
        recover=driver_style(recover, pyformat=True),
        history=None,
        count=None,
        notify=f"SELECT pg_notify('{NOTIFY_CHANNEL}', '')",
    )


def publish_sql(names: _Names, dialect: Any, columns: tuple[str, ...]) -> PublishSql:
    """One statement per write: the events, their first history rows (a data-modifying CTE) and the
    NOTIFY that wakes other processes once the transaction commits. Only the partial unique index of
    migration 0003 holds idempotency keys, hence the conflict target's WHERE."""
    now = str(db_now().compile(dialect=dialect))
    source = ", ".join(
        f"CAST(value ->> {i} AS jsonb)" if c == "payload" else f"value ->> {i}" for i, c in enumerate(columns)
    )
    published = quoted_columns(dialect, columns)
    history_columns = "event_id, from_status, to_status, at, actor, attempt"
    conflict = f" ON CONFLICT {names.idempotency_target} WHERE idempotency_key IS NOT NULL DO NOTHING"

    def insert(conflict: str, result: str) -> str:
        return (
            f"WITH new AS (INSERT INTO {names.events} ({published}, status, retry_count, created_at, "
            f"available_at) SELECT {source}, '{PENDING}', 0, {now}, {now} "
            f"FROM json_array_elements(CAST(:events AS json)){conflict} RETURNING id, created_at, available_at), "
            f"history AS (INSERT INTO {names.transitions} ({history_columns}) "
            f"SELECT id, NULL, '{PENDING}', created_at, '{PUBLISHER_ACTOR}', 0 FROM new) "
            f"SELECT {result}, (SELECT pg_notify('{NOTIFY_CHANNEL}', '')) FROM new"
        )

    style = dialect_style(dialect)  # psycopg: %(events)s; asyncpg: $1 (outbox_admin.aio)
    plain, plain_order = render(insert("", "count(*), min(created_at)"), style)
    keyed, keyed_order = render(insert(conflict, "id, created_at, available_at"), style)
    positional = (
        {} if plain_order is None or keyed_order is None else {"insert": plain_order, "insert_keyed": keyed_order}
    )
    return PublishSql(
        insert=plain,
        insert_keyed=keyed,
        history=None,
        insert_one=None,
        history_one=None,
        positional=positional,
        columns=columns,
    )


def payload_equals(payload: str, keys: list[tuple[str, str]], value: str) -> str:
    """The jsonb value at a path of ``payload`` equals ``value`` (a parameter holding JSON text).

    ``keys`` are (parameter, kind) per path segment: ``k`` is a key only, read with ``->`` on text,
    which never indexes an array (so ``-1`` or `` 1`` stay keys, as on SQLite); ``d`` (ASCII digits)
    goes through ``jsonb_extract_path``, an array index on an array and a key on an object. jsonb
    equality compares numbers as numbers (42 = 42.0) and types strictly (true <> 1, "42" <> 42).
    Used by ``outbox_admin.filters.payload_equals``.
    """
    found = payload
    for key, kind in keys:
        found = (
            f"jsonb_extract_path({found}, CAST({key} AS text))" if kind == "d" else f"({found} -> CAST({key} AS text))"
        )
    return f"{found} = CAST({value} AS jsonb)"

"""The dispatcher's statements on SQLite.

Each write is an ``UPDATE ... RETURNING`` followed by ``history`` (the transition
rows from a JSON array), both in one ``BEGIN IMMEDIATE`` transaction. A batch
travels as one JSON parameter (``json_each``).

Plans (``tests/test_plans.py`` checks them with no, stale and fresh statistics):

- The claim reads ``INDEXED BY`` the partial index of due PENDING events, in its
  order, under a LIMIT: without statistics SQLite would otherwise pick the
  (status, created_at, id) index and sort part of the order in a temporary B-tree.
- ``count`` adds the rollup rows (``outbox_admin.stats``) of the events a finish or
  a recovery made COMPLETED or FAILED, in the same transaction. The finish returns
  what they need and the dispatcher sums them (``stats.summed``): reading the events
  again and summing them in SQL cost 13% of dispatch throughput here, this 3% for a
  burst and 8% for a batch spread over 36 minutes (more rollup rows).
- ``record_deliveries`` writes the delivery ledger rows of the events the finish
  changed, in the same transaction (upserted on the ledger's primary key);
  ``delivered`` reads a batch's rows by that key.
- The read of the active pauses (``active_pauses``) reads ``INDEXED BY`` the
  partial unique index of the active rows, so a long pause history costs nothing.
- The finish, the renewal and the recovery reach rows by primary key from the
  batch. Their status guard is written ``+e.status``: the unary plus keeps SQLite
  from using an index for it, which it otherwise does when statistics are missing
  or stale, searching every PROCESSING row once per element of the outcome list
  (a cost that grew with the square of the batch).
"""

from __future__ import annotations

from typing import Any

from . import (
    CLAIMED_COLUMNS,
    HISTORY_COLUMNS,
    LEDGER_COLUMNS,
    PUBLISHER_ACTOR,
    AdminSql,
    DispatcherSql,
    PublishSql,
    _Names,
    may_have_deliveries,
    quoted_columns,
)
from .rollup import add_rows_sql
from .shared import PENDING, PROCESSING, clock, expire_set, finish_set, older_unfinished, out_of_attempts

#: Events routed to a handler whose breaker is open, or of a paused type, stay unclaimed: ``:blocked`` is
#: a JSON array of [GLOB pattern, org or null] (``outbox_admin.patterns.glob_for_sqlite``).
#: The list is decoded once, in a MATERIALIZED CTE: a pause can hold back a large backlog that each claim
#: walks past, and reading the JSON again per walked row cost four times as much.
BLOCKED = """
            WITH b AS MATERIALIZED (
                SELECT json_extract(value, '$[0]') AS pattern, json_extract(value, '$[1]') AS org_id
                FROM json_each(:blocked)
            )"""
NOT_BLOCKED = """
              AND NOT EXISTS (
                  SELECT 1 FROM b
                  WHERE candidate.event_type GLOB b.pattern AND (b.org_id IS NULL OR candidate.org_id = b.org_id))"""

#: What the finish returns: the id, then what the rollup counts (``stats.summed``).
COUNTED_RETURNING = "id, created_at, event_type, status, retry_count, processed_at"

#: One outcome per element: [event id, attempt, outcome, failed, message, step, delay, due].
OUTCOMES = """
                SELECT json_extract(value, '$[0]') AS event_id, json_extract(value, '$[1]') AS attempt,
                       json_extract(value, '$[2]') AS outcome, json_extract(value, '$[3]') AS failed,
                       json_extract(value, '$[4]') AS message, json_extract(value, '$[6]') AS delay,
                       json_extract(value, '$[7]') AS due
                FROM json_each(:outcomes)"""


def dispatcher_sql(names: _Names, dialect: Any, *, ordering: str | None, clocked: bool) -> DispatcherSql:
    ev, tr = names.events, names.transitions
    now, lease_until, due = clock(dialect, clocked=clocked)
    order = older_unfinished(ev) if ordering == "entity" else ""
    columns = ", ".join(CLAIMED_COLUMNS)

    def claim(extra: str, blocked: str = "") -> str:
        return f"""{blocked}
            UPDATE {ev} AS e SET status = '{PROCESSING}', locked_by = :name, locked_until = {lease_until}
            WHERE e.id IN (
                SELECT candidate.id FROM {ev} AS candidate INDEXED BY {names.due_index}
                WHERE candidate.status = '{PENDING}' AND candidate.available_at <= {now}{order}{extra}
                ORDER BY candidate.created_at, candidate.id, candidate.available_at
                LIMIT :limit
            ) AND +e.status = '{PENDING}'
            RETURNING {columns}, {may_have_deliveries()}"""

    renew = f"""
            UPDATE {ev} AS e SET locked_until = {lease_until}
            WHERE e.id IN (SELECT value FROM json_each(:ids)) AND +e.status = '{PROCESSING}' AND e.locked_by = :name
            RETURNING id"""
    finish = f"""
            {finish_set(ev, now=now, due=due)}
            FROM ({OUTCOMES}
            ) AS c
            WHERE e.id = c.event_id AND e.retry_count = c.attempt
              AND +e.status = '{PROCESSING}' AND e.locked_by = :name
            RETURNING {COUNTED_RETURNING}"""
    recover = f"""
            {expire_set(ev, out_of_attempts(":max_attempts"), now=now)}
            WHERE e.id IN (
                SELECT held.id FROM {ev} AS held INDEXED BY {names.leases_index}
                WHERE held.status = '{PROCESSING}' AND held.locked_until < {now}
                LIMIT :limit
            ) AND +e.status = '{PROCESSING}'
            RETURNING id, status, retry_count, error_message, created_at, event_type, processed_at"""
    history = _history(tr, now)
    active_pauses = (
        f"SELECT pattern FROM {names.pauses} INDEXED BY {names.active_pauses_index} "
        "WHERE resumed_at IS NULL ORDER BY pattern"
    )
    delivered = f"""
            SELECT event_id, handler, delivered_at IS NOT NULL, requested_at IS NOT NULL FROM {names.deliveries}
            WHERE event_id IN (SELECT value FROM json_each(:ids))"""
    # :deliveries holds [event id, handler, duration ms, error] of the events the finish changed.
    record_deliveries = f"""
            INSERT INTO {names.deliveries} ({LEDGER_COLUMNS})
            SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), 1,
                   CASE WHEN json_extract(value, '$[3]') IS NULL THEN {now} END,
                   json_extract(value, '$[2]'), json_extract(value, '$[3]')
            FROM json_each(:deliveries) WHERE true
            ON CONFLICT (event_id, handler) DO UPDATE SET
                attempt = attempt + 1, delivered_at = excluded.delivered_at,
                duration_ms = coalesce(excluded.duration_ms, duration_ms),
                last_error = coalesce(excluded.last_error, last_error)"""
    return DispatcherSql(
        claim=claim(""),
        claim_unblocked=claim(NOT_BLOCKED, BLOCKED),
        renew=renew,
        finish=finish,
        recover=recover,
        history=history,
        active_pauses=active_pauses,
        count=add_rows_sql(names.stats),
        delivered=delivered,
        record_deliveries=record_deliveries,
    )


def _history(tr: str, now: str) -> str:
    """History rows from :rows, a JSON array of [event id, from, to, attempt, message], by :name at now."""
    return f"""
            INSERT INTO {tr} ({HISTORY_COLUMNS})
            SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'),
                   {now}, :name, json_extract(value, '$[3]'), json_extract(value, '$[4]')
            FROM json_each(:rows)"""


def admin_sql(names: _Names, dialect: Any) -> AdminSql:
    """A person's recovery: the dispatcher's, on the events of ``:ids`` (JSON) only, by primary key (the
    unary plus keeps SQLite off the status and lease indexes). The lease is tested in the UPDATE itself,
    inside the write lock, so a lease renewed after a dry run is left alone."""
    ev, tr = names.events, names.transitions
    now, _, _ = clock(dialect, clocked=False)
    recover = f"""
            {expire_set(ev, out_of_attempts(":max_attempts"), now=now)}
            WHERE e.id IN (SELECT value FROM json_each(:ids))
              AND +e.status = '{PROCESSING}' AND +e.locked_until < {now}
            RETURNING id, status, retry_count, error_message, created_at, event_type, processed_at"""
    return AdminSql(recover=recover, history=_history(tr, now), notify=None, count=add_rows_sql(names.stats))


def publish_sql(names: _Names, dialect: Any, columns: tuple[str, ...]) -> PublishSql:
    """The stamp is a parameter (SQLite's clock is this machine's clock), so the events and their
    first history rows take two statements and nothing is read back."""
    source = ", ".join(f"json_extract(value, '$[{i}]')" for i in range(len(columns)))
    published = quoted_columns(dialect, columns)
    target = f"INSERT INTO {names.events} ({published}, status, retry_count, created_at, available_at)"
    insert = f"{target} SELECT {source}, '{PENDING}', 0, :at, :at FROM json_each(:events) WHERE true"
    history_columns = "event_id, from_status, to_status, at, actor, attempt"
    one = ", ".join(f":{c}" for c in columns)
    return PublishSql(
        insert=insert,
        insert_keyed=f"{insert} ON CONFLICT {names.idempotency_target} DO NOTHING RETURNING id",
        history=(
            f"INSERT INTO {names.transitions} ({history_columns}) "
            f"SELECT value, NULL, '{PENDING}', :at, '{PUBLISHER_ACTOR}', 0 FROM json_each(:ids)"
        ),
        insert_one=f"{target} VALUES ({one}, '{PENDING}', 0, :at, :at)",
        history_one=(
            f"INSERT INTO {names.transitions} ({history_columns}) "
            f"VALUES (:id, NULL, '{PENDING}', :at, '{PUBLISHER_ACTOR}', 0)"
        ),
        columns=columns,
    )


def _payload_leaf(leaf: str, kind: str, value: str) -> str:
    """The last segment's ``json_each`` row holds ``value``: JSON types first (1 is not true, "42" not 42);
    numbers compare as numbers (42 = 42.0); both sides are SQLite's reading of the same JSON text."""
    if kind in ("null", "true", "false"):
        return f"{leaf}.type = '{kind}'"
    types = "('integer', 'real')" if kind == "number" else "('text')"
    return f"{leaf}.type IN {types} AND {leaf}.atom = json_extract({value}, '$')"


def payload_equals(payload: str, keys: list[tuple[str, str]], kind: str, value: str) -> str:
    """The JSON value at a path of ``payload`` equals ``value`` (a parameter holding JSON text).

    One ``json_each`` per segment, each matching its decoded key against a parameter, so a key is
    never read as JSONPath (``$``, ``[``, ``"`` or ``.`` in a key are plain characters; a quoted
    ``$."key"`` path cannot hold a ``"`` on SQLite 3.40). ``keys`` are (parameter, kind): ``k`` matches
    object keys only (array elements have integer keys); ``d`` (ASCII digits) also an array index.
    A level descends only into objects and arrays: a text's value is not JSON (``'[1]'`` would be
    read as an array). Used by ``outbox_admin.filters.payload_equals``.
    """
    tables, tests = [], []
    for level, (key, key_kind) in enumerate(keys):
        each = f"p{level}"
        if level == 0:
            tables.append(f"json_each({payload}) AS {each}")
        else:
            up = f"p{level - 1}"
            inner = f"CASE WHEN {up}.type IN ('object', 'array') THEN {up}.value ELSE '[]' END"
            tables.append(f"json_each({inner}) AS {each}")
        match = f"{each}.key = {key}"
        if key_kind == "d":
            match = f"({match} OR (typeof({each}.key) = 'integer' AND {each}.key = CAST({key} AS INTEGER)))"
        tests.append(match)
    tests.append(_payload_leaf(f"p{len(keys) - 1}", kind, value))
    return f"EXISTS (SELECT 1 FROM {' JOIN '.join(tables)} WHERE {' AND '.join(tests)})"

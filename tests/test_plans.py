"""The plans of the dispatcher's hot statements, with no, stale and fresh statistics, on a new connection.

A plan that depends on statistics is fast in a benchmark that ran ANALYZE and slow
in production: a new outbox has no statistics, and after a burst they say nearly
every event is COMPLETED. Each test builds one of the three states on its own
database (autovacuum off for it, so the state stays what the test made), then
EXPLAINs every statement with a 500-event batch and checks the access paths:
events are reached through the partial index meant for them or by primary key
from the batch, never by a scan of the table, and a batch is never walked once
per row.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from typing import Any

import pytest
from sqlalchemy import Engine, func, insert, select

from outbox_admin import Dispatcher, admin, analytics, make_engine, publish_outbox_event
from outbox_admin.admin import discard, requeue
from outbox_admin.dispatcher import _Statements
from outbox_admin.models import DEFAULT_TABLES
from outbox_admin.patterns import glob_for_postgres, glob_for_sqlite
from outbox_admin.stats import COUNTER_COLUMNS

EV = DEFAULT_TABLES.events
STATES = ["no statistics", "stale statistics", "fresh statistics"]
STATEMENTS = ["claim", "claim_unblocked", "finish", "renew", "recover"]
BATCH = 500
HELD = [f"h{i:09d}" for i in range(BATCH)]  # the PROCESSING events held by dispatcher "d"


def _load(conn: Any, postgres: bool, status: str, count: int, first: int, prefix: str) -> None:
    held = status == "PROCESSING"
    if postgres:
        conn.exec_driver_sql(
            f"""INSERT INTO "OutboxEvent" (id, org_id, event_type, entity_type, entity_id, payload, status,
                    retry_count, created_at, available_at, locked_by, locked_until)
                SELECT '{prefix}' || lpad(g::text, 9, '0'), 'org', 'PROJECT.CREATED', 'Project', g::text, '{{}}',
                       '{status}', 0, now() - interval '1 hour' + g * interval '1 ms', now() - interval '1 hour',
                       {"'d'" if held else "NULL"}, {"now() + interval '1 hour'" if held else "NULL"}
                FROM generate_series({first}, {first + count - 1}) AS g"""
        )
        return
    conn.exec_driver_sql(
        f"""WITH RECURSIVE g(i) AS (SELECT {first} UNION ALL SELECT i + 1 FROM g WHERE i < {first + count - 1})
            INSERT INTO "OutboxEvent" (id, org_id, event_type, entity_type, entity_id, payload, status,
                retry_count, created_at, available_at, locked_by, locked_until)
            SELECT printf('{prefix}%09d', i), 'org', 'PROJECT.CREATED', 'Project', i, '{{}}', '{status}', 0,
                   printf('2026-01-01 00:00:%02d.%06d', i / 1000000, i % 1000000), '2000-01-01 00:00:00.000000',
                   {"'d'" if held else "NULL"}, {"'2999-01-01 00:00:00.000000'" if held else "NULL"}
            FROM g"""
    )


def build_state(url: str, state: str) -> None:
    """The outbox in ``state``: 5,000 due PENDING events and 500 held PROCESSING ones (plus history for stale)."""
    engine = make_engine(url)
    postgres = engine.dialect.name == "postgresql"
    analyze = 'ANALYZE "OutboxEvent"' if postgres else "ANALYZE"
    with engine.begin() as conn:
        if postgres:
            conn.exec_driver_sql('ALTER TABLE "OutboxEvent" SET (autovacuum_enabled = false)')
        if state == "stale statistics":  # steady state: everything done, and the statistics say so
            _load(conn, postgres, "COMPLETED", 30_000, 0, "c")
    if state == "stale statistics":
        with engine.begin() as conn:
            conn.exec_driver_sql(analyze)
    with engine.begin() as conn:  # then a burst arrives
        _load(conn, postgres, "PENDING", 5_000, 0, "p")
        _load(conn, postgres, "PROCESSING", BATCH, 0, "h")
    if state == "fresh statistics":
        with engine.begin() as conn:
            conn.exec_driver_sql(analyze)
    engine.dispose()


def parameters(which: str, postgres: bool) -> dict[str, Any]:
    params: dict[str, Any] = {"limit": BATCH, "name": "d", "lease_seconds": 60, "max_attempts": 5}
    if which == "finish":
        params["outcomes"] = json.dumps([[i, 0, "COMPLETED", 0, None, 1, None, None] for i in HELD])
        params["deliveries"] = json.dumps([[i, "webhook", 1.5, None] for i in HELD])  # rows that exist: upserted
        params["new_deliveries"] = json.dumps([[i, "nats", 0.5, None] for i in HELD])  # first tries: inserted
    elif which == "renew":
        params["ids"] = json.dumps(HELD)
    elif which == "claim_unblocked":  # an open breaker's types and org, and two pauses (any org)
        translate = glob_for_postgres if postgres else glob_for_sqlite
        blocked = [[translate("BUDGET.*"), "org"], [translate("PROJECT.ARCHIVED"), None], [translate("[AB]*"), None]]
        params["blocked"] = json.dumps(blocked)
    return params


def plans(url: str, *, generic: bool = False) -> dict[str, Any]:
    """Each statement's plan, on a connection of a new engine (nothing prepared before).

    ``generic``: PostgreSQL's plan for the prepared statement, made without the values
    (what psycopg's server-side prepare gets after a few runs).
    """
    engine = make_engine(url)
    statements = _Statements(engine.dialect, DEFAULT_TABLES, ordering=None, clocked=False)
    found: dict[str, Any] = {}
    with engine.connect() as conn:
        if generic:
            conn.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
        for which in STATEMENTS:
            sql = getattr(statements, which)
            params = parameters(which, statements.postgres)
            if statements.postgres and generic:
                found[which] = generic_plan(conn, which, sql, params)
            elif statements.postgres:
                found[which] = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + sql, params).scalar_one()[0]["Plan"]
            else:
                found[which] = [row[3] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, params)]
        conn.rollback()
    engine.dispose()
    return found


def generic_plan(conn: Any, which: str, sql: str, params: dict[str, Any]) -> Any:
    """The plan of ``sql`` as a named prepared statement planned without its values (PostgreSQL 15 has no
    ``EXPLAIN (GENERIC_PLAN)``): PREPARE with ``$n`` placeholders, then EXPLAIN EXECUTE."""
    names: list[str] = []

    def placeholder(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    body = re.sub(r"%\((\w+)\)s", placeholder, sql).replace("%%", "%")
    conn.exec_driver_sql(f"PREPARE plan_{which} AS {body}")
    arguments = ", ".join(literal(params[name]) for name in names)  # literals: typed by the PREPARE
    plan = conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) EXECUTE plan_{which}({arguments})").scalar_one()
    return plan[0]["Plan"]


def literal(value: Any) -> str:
    if isinstance(value, int | float):
        return str(value)
    return "'" + str(value).replace("'", "''").replace("%", "%%") + "'"


def nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    out = [plan]
    for child in plan.get("Plans", []):
        out.extend(nodes(child))
    return out


def indexes(on_events: list[dict[str, Any]], alias: str) -> set[str]:
    """The indexes through which ``alias`` is read (an index scan, or a bitmap heap scan's index scans)."""
    names: set[str] = set()
    for node in on_events:
        if node.get("Alias") == alias:
            names.update(n["Index Name"] for n in nodes(node) if "Index Name" in n)
    return names


@pytest.mark.postgres
@pytest.mark.parametrize("generic", [False, True], ids=["custom", "generic"])
@pytest.mark.parametrize("state", STATES)
def test_postgres_plans(postgres_url: str, state: str, generic: bool) -> None:
    build_state(postgres_url, state)
    for which, plan in plans(postgres_url, generic=generic).items():
        every = nodes(plan)
        on_events = [n for n in every if n.get("Relation Name") == "OutboxEvent"]
        assert on_events, which
        assert not [n for n in on_events if n["Node Type"] == "Seq Scan"], f"{which} scans the events table ({state})"
        assert indexes(on_events, "e") == {"pk_OutboxEvent"}, (which, state)
        if which.startswith("claim"):
            assert indexes(on_events, "candidate") == {"ix_OutboxEvent_due"}, (which, state)
        for loop in (n for n in every if n["Node Type"] == "Nested Loop"):
            inner = loop["Plans"][1]
            batch_inner = inner["Node Type"] in ("Function Scan", "CTE Scan") and inner.get("Alias") != "b"
            assert not batch_inner, f"{which} walks the batch once per row ({state})"


@pytest.mark.parametrize("state", STATES)
def test_sqlite_plans(sqlite_url: str, state: str) -> None:
    build_state(sqlite_url, state)
    for which, plan in plans(sqlite_url).items():
        text = "\n".join(plan)
        assert "TEMP B-TREE" not in text, (which, state, plan)
        for line in plan:
            if line.startswith("SCAN ") and not (
                line.startswith("SCAN json_each") or line.split()[:2] == ["SCAN", "b"]
            ):
                assert "USING INDEX ix_OutboxEvent_due" in line, f"{which} scans events: {line} ({state})"
        assert "SEARCH e USING INDEX sqlite_autoindex_OutboxEvent_1 (id=?)" in text, (which, state, plan)
        assert not [line for line in plan if line.startswith("SEARCH e ") and "autoindex" not in line], (which, plan)
        if which == "finish":  # the outcome list is the outer loop, read once
            assert plan[0].startswith("SCAN json_each"), plan
        if which == "recover":
            assert any(line.startswith("SEARCH held USING INDEX ix_OutboxEvent_leases") for line in plan), plan


def count(engine: Engine, condition: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).where(condition)).scalar_one())


def test_locked_by_is_set_on_processing_events_only(engine: Engine) -> None:
    """The finish and the renewal guard by ``locked_by`` alone (no status test, see outbox_admin.sql):
    every write that takes an event out of PROCESSING clears it."""
    with engine.begin() as conn:
        ids = [
            publish_outbox_event(conn, org_id="o", event_type="PROJECT.CREATED", entity_type="P", entity_id=str(i)).id
            for i in range(12)
        ]

    def flaky(event: Any) -> None:
        if event.entity_id in ("0", "1", "2"):
            raise ValueError("no")

    Dispatcher(engine, [flaky], max_attempts=1, breaker=None).dispatch_once()
    requeue(engine, ids[:2], actor="t")
    discard(engine, ids[2:3], actor="t")
    stuck = Dispatcher(engine, [], lease_seconds=0.001, name="gone")
    stuck._claim()  # claimed, then the dispatcher "dies": the lease expires
    rescuer = Dispatcher(engine, [], name="rescuer")
    deadline = time.monotonic() + 10
    while count(engine, EV.c.status == "PROCESSING"):  # the 1 ms lease runs out within a tick or two
        assert time.monotonic() < deadline, "the expired leases were never recovered"
        rescuer.recover_expired_leases()
    with engine.connect() as conn:
        wrong = conn.execute(
            select(func.count()).where(EV.c.locked_by.is_not(None), EV.c.status != "PROCESSING")
        ).scalar_one()
        held = conn.execute(select(func.count()).where(EV.c.status == "PROCESSING")).scalar_one()
    assert wrong == 0
    assert held == 0


def build_ledger_state(url: str, state: str) -> None:
    """``build_state`` plus the ledger: 30,000 rows of delivered events (stale: analyzed before the burst's
    rows), then a row per held event for each of two handlers (one delivered, one failing). A small table
    is read with a sequential scan, rightly: the state here is the one that matters, a large ledger."""
    engine = make_engine(url)
    postgres = engine.dialect.name == "postgresql"
    analyze = 'ANALYZE "OutboxEventDelivery"' if postgres else "ANALYZE"
    series = (
        "SELECT 'c' || lpad(g::text, 9, '0') AS id, g FROM generate_series(0, 29999) AS g"
        if postgres
        else "WITH RECURSIVE s(g) AS (SELECT 0 UNION ALL SELECT g + 1 FROM s WHERE g < 29999) "
        "SELECT printf('c%09d', g) AS id, g FROM s"
    )
    with engine.begin() as conn:
        if postgres:
            conn.exec_driver_sql('ALTER TABLE "OutboxEventDelivery" SET (autovacuum_enabled = false)')
        conn.exec_driver_sql(
            f'INSERT INTO "OutboxEventDelivery" (event_id, handler, attempt, delivered_at) '
            f"SELECT id, 'webhook', 1, '2026-01-01 00:00:00' FROM ({series}) AS x"
        )
    if state == "stale statistics":
        with engine.begin() as conn:
            conn.exec_driver_sql(analyze)
    with engine.begin() as conn:
        for handler, delivered in (("redis", "'2026-01-01 00:00:00'"), ("webhook", "NULL")):
            conn.exec_driver_sql(
                f'INSERT INTO "OutboxEventDelivery" (event_id, handler, attempt, delivered_at, last_error) '
                f"SELECT id, '{handler}', 1, {delivered}, 'boom' FROM \"OutboxEvent\" WHERE status = 'PROCESSING'"
            )
    if state == "fresh statistics":
        with engine.begin() as conn:
            conn.exec_driver_sql(analyze)
    engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
@pytest.mark.parametrize("state", STATES)
def test_the_ledger_is_read_and_written_by_its_primary_key(
    request: pytest.FixtureRequest, backend: str, state: str
) -> None:
    """Each claimed batch reads its ledger rows, and each finish writes them (SQLite: its own statement;
    PostgreSQL: a CTE of the finish, checked with the finish above): by the ledger's primary key."""
    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "postgres_url")
    build_state(url, state)
    build_ledger_state(url, state)
    engine = make_engine(url)
    statements = _Statements(engine.dialect, DEFAULT_TABLES, ordering=None, clocked=False)
    read = (statements.read_ledger, {"ids": json.dumps(HELD)})
    with engine.connect() as conn:
        assert len(conn.exec_driver_sql(*read).all()) == 2 * BATCH
        if backend == "postgres":
            plan = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + read[0], read[1]).scalar_one()[0]["Plan"]
            every = nodes(plan)
            assert not [n for n in every if n["Node Type"] == "Seq Scan"], (state, plan)
            assert {n["Index Name"] for n in every if "Index Name" in n} == {"pk_OutboxEventDelivery"}, (state, plan)
            finish = parameters("finish", True)
            sql = statements.finish
            plan = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + sql, finish).scalar_one()[0]["Plan"]
            on_ledger = [n for n in nodes(plan) if n.get("Relation Name") == "OutboxEventDelivery"]
            assert not [n for n in on_ledger if n["Node Type"] == "Seq Scan"], (state, plan)
        else:
            plan = [row[3] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + read[0], read[1])]
            searches = [line for line in plan if "OutboxEventDelivery" in line]
            assert searches == [
                "SEARCH OutboxEventDelivery USING INDEX sqlite_autoindex_OutboxEventDelivery_1 (event_id=?)"
            ], (state, plan)
            deliveries = {"deliveries": parameters("finish", False)["deliveries"]}
            plan = [
                row[3] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statements.record_deliveries, deliveries)
            ]
            assert not [line for line in plan if line.startswith("SCAN") and "json_each" not in line], (state, plan)
        conn.rollback()
    engine.dispose()


@pytest.mark.parametrize("analysed", [False, True], ids=["never analysed", "analysed while empty"])
def test_the_ledger_read_keeps_to_its_key_as_the_ledger_outgrows_its_statistics(
    postgres_url: str, analysed: bool
) -> None:
    """A burst into a new outbox: the ledger has no statistics, or was analysed while empty, and grows by a
    batch per tick. At 5,000 rows the planner still takes it for small; the read must probe the primary key
    all the same (written ``event_id = ANY(ARRAY(...))`` it scanned the table, testing each row against the
    whole batch: 50 ms per batch at that size), and be planned per run, never kept prepared."""
    build_state(postgres_url, "no statistics")
    engine = make_engine(postgres_url)
    with engine.execution_options(isolation_level="AUTOCOMMIT").connect() as conn:
        conn.exec_driver_sql('ALTER TABLE "OutboxEventDelivery" SET (autovacuum_enabled = false)')
        if analysed:
            conn.exec_driver_sql('ANALYZE "OutboxEventDelivery"')
        conn.exec_driver_sql(
            'INSERT INTO "OutboxEventDelivery" (event_id, handler, attempt, delivered_at) '
            "SELECT 'p' || lpad(g::text, 9, '0'), 'webhook', 1, now() FROM generate_series(0, 4999) AS g"
        )
    statements = _Statements(engine.dialect, DEFAULT_TABLES, ordering=None, clocked=False)
    batch = json.dumps([f"p{i:09d}" for i in range(0, 5000, 10)])
    with engine.connect() as conn:
        plan = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + statements.read_ledger, {"ids": batch})
        on_ledger = [n for n in nodes(plan.scalar_one()[0]["Plan"]) if n.get("Relation Name") == "OutboxEventDelivery"]
        assert on_ledger and not [n for n in on_ledger if n["Node Type"] == "Seq Scan"], on_ledger
        assert {n["Index Name"] for n in on_ledger for n in nodes(n) if "Index Name" in n} == {"pk_OutboxEventDelivery"}
    dispatcher = Dispatcher(engine, [lambda event: None], batch_size=20)
    with dispatcher._connection() as conn:
        for _ in range(12):  # psycopg prepares a statement from its sixth run
            assert dispatcher._tick(conn).completed == 20
        prepared = conn.exec_driver_sql("SELECT statement FROM pg_prepared_statements").scalars().all()
    assert prepared and not [text for text in prepared if "OutboxEventDelivery" in text], prepared
    engine.dispose()


# --- a person's recovery and the expired-leases summary (the Overview reads it every refresh) ----------


def admin_plans(url: str) -> dict[str, Any]:
    """The plans of ``admin.recover_expired``'s statement (on a 500-event batch) and of the summary."""
    from outbox_admin.analytics import _expired_leases_select
    from outbox_admin.filters import EventFilter
    from outbox_admin.sql import admin_sql

    engine = make_engine(url)
    postgres = engine.dialect.name == "postgresql"
    summary = _expired_leases_select(EventFilter(), DEFAULT_TABLES).compile(dialect=engine.dialect)
    assert not summary.params  # constants only: nothing to bind
    statements = {
        "recover": (admin_sql(engine.dialect, DEFAULT_TABLES).recover, {"ids": json.dumps(HELD), "name": "admin:t"}),
        "summary": (str(summary), {}),
    }
    statements["recover"][1]["max_attempts"] = 5
    found: dict[str, Any] = {}
    with engine.connect() as conn:
        for which, (sql, params) in statements.items():
            if postgres:
                found[which] = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + sql, params).scalar_one()[0]["Plan"]
            else:
                found[which] = [row[3] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, params)]
        conn.rollback()
    engine.dispose()
    return found


@pytest.mark.postgres
@pytest.mark.parametrize("state", STATES)
def test_postgres_admin_plans(postgres_url: str, state: str) -> None:
    build_state(postgres_url, state)
    found = admin_plans(postgres_url)
    for which, plan in found.items():
        every = nodes(plan)
        on_events = [n for n in every if n.get("Relation Name") == "OutboxEvent"]
        assert on_events and not [n for n in on_events if n["Node Type"] == "Seq Scan"], (which, state)
        for loop in (n for n in every if n["Node Type"] == "Nested Loop"):
            inner = loop["Plans"][1]
            assert inner["Node Type"] not in ("Function Scan", "CTE Scan"), f"{which} walks the batch per row ({state})"
    assert indexes([n for n in nodes(found["recover"]) if n.get("Relation Name") == "OutboxEvent"], "e") == {
        "pk_OutboxEvent"
    }
    # Only PROCESSING events are read: through their partial index, or the (status, ...) index on that status.
    reads = [n for n in nodes(found["summary"]) if "Index Name" in n]
    assert reads and all(n["Index Name"] in ("ix_OutboxEvent_leases", "ix_OutboxEvent_status_time") for n in reads)
    assert all(
        "PROCESSING" in n.get("Index Cond", "") for n in reads if n["Index Name"] == "ix_OutboxEvent_status_time"
    )


@pytest.mark.parametrize("state", STATES)
def test_sqlite_admin_plans(sqlite_url: str, state: str) -> None:
    build_state(sqlite_url, state)
    found = admin_plans(sqlite_url)
    recover = "\n".join(found["recover"])
    assert "SEARCH e USING INDEX sqlite_autoindex_OutboxEvent_1 (id=?)" in recover, (state, found["recover"])
    assert not [line for line in found["recover"] if line.startswith("SCAN ") and "json_each" not in line], recover
    # Only PROCESSING events are read: through their partial index, or the (status, ...) index on that status.
    [read] = [line for line in found["summary"] if line.startswith(("SEARCH", "SCAN"))]
    assert read in (
        "SEARCH OutboxEvent USING INDEX ix_OutboxEvent_leases (locked_until<?)",
        "SEARCH OutboxEvent USING INDEX ix_OutboxEvent_status_time (status=?)",
    ), (state, found["summary"])


def build_pause_history(url: str, state: str) -> None:
    """20,000 ended pauses and 3 active ones, with no, stale (taken before the active ones) or fresh statistics."""
    engine = make_engine(url)
    postgres = engine.dialect.name == "postgresql"
    analyze = 'ANALYZE "OutboxEventPause"' if postgres else "ANALYZE"
    ended = (
        """INSERT INTO "OutboxEventPause" (pattern, reason, paused_by, paused_at, resumed_by, resumed_at)
           SELECT 'TYPE' || g || '.*', 'r', 'admin:t', now(), 'admin:t', now() FROM generate_series(1, 20000) AS g"""
        if postgres
        else """WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < 20000)
           INSERT INTO "OutboxEventPause" (pattern, reason, paused_by, paused_at, resumed_by, resumed_at)
           SELECT 'TYPE' || i || '.*', 'r', 'admin:t', '2026-01-01 00:00:00.000000', 'admin:t',
                  '2026-01-01 00:00:01.000000' FROM g"""
    )
    with engine.begin() as conn:
        if postgres:
            conn.exec_driver_sql('ALTER TABLE "OutboxEventPause" SET (autovacuum_enabled = false)')
        conn.exec_driver_sql(ended)
    if state == "stale statistics":
        with engine.begin() as conn:
            conn.exec_driver_sql(analyze)
    for pattern in ("PROJECT.*", "BUDGET.*", "[AB]*"):
        admin.pause(engine, pattern, reason="plan test")
    if state == "fresh statistics":
        with engine.begin() as conn:
            conn.exec_driver_sql(analyze)
    engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
@pytest.mark.parametrize("state", STATES)
def test_the_read_of_active_pauses_uses_their_index(request: pytest.FixtureRequest, backend: str, state: str) -> None:
    """Every claim reads the active pauses first: through the partial index of the active rows, however
    long the pause history has grown."""
    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "postgres_url")
    build_pause_history(url, state)
    engine = make_engine(url)
    sql = _Statements(engine.dialect, DEFAULT_TABLES, ordering=None, clocked=False).active_pauses
    with engine.connect() as conn:
        assert [r[0] for r in conn.exec_driver_sql(sql)] == ["BUDGET.*", "PROJECT.*", "[AB]*"]
        if backend == "postgres":
            plan = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + sql).scalar_one()[0]["Plan"]
            every = nodes(plan)
            assert not [n for n in every if n["Node Type"] == "Seq Scan"], (state, plan)  # a Sort of the few is fine
            assert {n.get("Index Name") for n in every if "Index Name" in n} == {"uq_OutboxEventPause_active"}, plan
        else:
            plan = [row[3] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql)]
            assert len(plan) == 1 and plan[0].startswith("SCAN OutboxEventPause USING "), (state, plan)
            assert plan[0].endswith("INDEX uq_OutboxEventPause_active"), (state, plan)  # in order: no TEMP B-TREE
    engine.dispose()


# -- the rollup's statements (outbox_admin.stats, outbox_admin.sql.rollup) ------------------------

ROLLUP_ROWS = 5_000  # about four days of minute rows of one type


def build_rollup_state(url: str, state: str) -> None:
    """``build_state`` plus a rollup of ``ROLLUP_ROWS`` rows and events with errors (the Overview's reads)."""
    build_state(url, state)
    engine = make_engine(url)
    postgres = engine.dialect.name == "postgresql"
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    with engine.begin() as conn:
        conn.execute(
            insert(DEFAULT_TABLES.stats),
            [
                {"period": start + dt.timedelta(minutes=i), "span": 60, "event_type": "PROJECT.CREATED", "writer": "d"}
                | {c: 1 for c in COUNTER_COLUMNS}
                for i in range(ROLLUP_ROWS)
            ],
        )
        conn.execute(EV.update().where(EV.c.status == "COMPLETED", EV.c.id.like("c%1")).values(error_message="boom 42"))
    if state == "fresh statistics":
        with engine.begin() as conn:
            conn.exec_driver_sql('ANALYZE "OutboxEventStats"' if postgres else "ANALYZE")
    engine.dispose()


def rollup_statements(engine: Engine) -> dict[str, tuple[str, Any]]:
    """The rollup's statements with parameters, in the driver's style; the newest-errors read compiled."""
    from outbox_admin.analytics import _bound_time
    from outbox_admin.sql import driver_style, rollup

    dialect, postgres = engine.dialect, engine.dialect.name == "postgresql"
    since = _bound_time(engine, dt.datetime(2026, 1, 3, tzinfo=dt.UTC))
    ids = json.dumps([f"c{i:09d}" for i in range(BATCH)])
    found = {
        "window, minutes": (rollup.window_sql(dialect, DEFAULT_TABLES, 60), {"since": since}),
        "window, hours": (rollup.window_sql(dialect, DEFAULT_TABLES, 3600), {"since": since}),
        "totals": (rollup.totals_sql(dialect, DEFAULT_TABLES), {}),
        "unfinished window": (rollup.unfinished_window_sql(dialect, DEFAULT_TABLES, 60), {"since": since}),
        "unfinished totals": (rollup.unfinished_totals_sql(dialect, DEFAULT_TABLES), {}),
        "record": (
            rollup.record_sql(dialect, DEFAULT_TABLES, as_status=False),
            {"ids": ids, "sign": -1, "writer": "a"},
        ),
        "record as": (
            rollup.record_sql(dialect, DEFAULT_TABLES, as_status=True),
            {"ids": ids, "sign": -1, "writer": "a", "status": "FAILED"},
        ),
        "compact": (rollup.compact_sql(dialect, DEFAULT_TABLES, 3600)[0], {"cutoff": since}),
    }
    if not postgres:
        statements = _Statements(dialect, DEFAULT_TABLES, ordering=None, clocked=False)
        found["dispatcher count"] = (
            statements.count,
            ("2026-01-01 00:00:00.000000", "P", "d", *[1] * len(COUNTER_COLUMNS)),
        )
    found = {k: (driver_style(sql, pyformat=postgres), p) for k, (sql, p) in found.items()}
    newest = (
        select(EV.c.created_at)
        .where(EV.c.error_message.is_not(None), EV.c.created_at >= dt.datetime(2025, 1, 1, tzinfo=dt.UTC))
        .order_by(EV.c.created_at.desc())
        .limit(1)
        .offset(9_999)
    )
    orgs = analytics.distinct_values_statement("org_id")
    # The newest events a page is first looked for among: FIRST_LOOK of a million; here a tenth of the table.
    bound = select(EV.c.created_at).order_by(EV.c.created_at.desc(), EV.c.id.desc()).limit(1).offset(499)
    for name, stmt in (("newest errors", newest), ("distinct orgs", orgs), ("newest bound", bound)):
        compiled = str(stmt.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
        found[name] = (compiled.replace("%", "%%") if postgres else compiled, {})
    return found


def rollup_plans(url: str) -> dict[str, Any]:
    engine = make_engine(url)
    found: dict[str, Any] = {}
    with engine.connect() as conn:
        for which, (sql, params) in rollup_statements(engine).items():
            if engine.dialect.name == "postgresql":
                found[which] = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + sql, params).scalar_one()[0]["Plan"]
            else:
                found[which] = [row[3] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, params)]
        conn.rollback()
    engine.dispose()
    return found


@pytest.mark.postgres
@pytest.mark.parametrize("state", STATES)
def test_postgres_rollup_plans(postgres_url: str, state: str) -> None:
    """The Overview's reads and the rollup's writes never scan the events: unfinished events through the
    status index, counted ones by primary key, the newest errors through the partial index of errors."""
    build_rollup_state(postgres_url, state)
    for which, plan in rollup_plans(postgres_url).items():
        every = nodes(plan)
        on_events = [n for n in every if n.get("Relation Name") == "OutboxEvent"]
        # Here every event is unfinished but the 30,000 of the stale state: with statistics that say so, a
        # scan of the table is the right plan for the unfinished ones, and the planner may choose it.
        informed = state == "fresh statistics" and which.startswith("unfinished")
        scans = [n for n in on_events if n["Node Type"] == "Seq Scan"]
        # Never vacuumed nor analysed, PostgreSQL takes the new table for a few pages (it estimates 160
        # events here): reading fewer than the look whole is right, and it reads the index on a big table.
        smaller = which == "newest bound" and all(n["Plan Rows"] < 500 for n in scans)
        assert informed or smaller or not scans, f"{which} scans the events ({state})"
        assert not [n for n in every if n["Node Type"].startswith("Gather")], f"{which} runs in parallel ({state})"
        if which.startswith("record"):
            assert indexes(on_events, "e") == {"pk_OutboxEvent"}, (which, state)
        if which.startswith("unfinished"):
            assert on_events, (which, state)
        if which == "newest errors":
            assert {n["Index Name"] for n in every if "Index Name" in n} == {"ix_OutboxEvent_errors"}, (which, state)
        if which == "distinct orgs":  # one probe of the org index per value
            assert {n["Index Name"] for n in every if "Index Name" in n} == {"ix_OutboxEvent_org_time"}, (which, state)
        if which == "newest bound" and not smaller:  # where a page under a filter no index serves is looked for
            assert {n["Index Name"] for n in every if "Index Name" in n} == {"ix_OutboxEvent_time"}, (which, state)


@pytest.mark.parametrize("state", STATES)
def test_sqlite_rollup_plans(sqlite_url: str, state: str) -> None:
    build_rollup_state(sqlite_url, state)
    for which, plan in rollup_plans(sqlite_url).items():
        for line in plan:
            if line.split(" ")[:2] in (["SCAN", "OutboxEvent"], ["SCAN", "e"]):
                assert "USING" in line and "INDEX" in line, f"{which} scans the events: {line} ({state})"
        text = "\n".join(plan)
        if which.startswith("record"):
            assert "SEARCH e USING INDEX sqlite_autoindex_OutboxEvent_1 (id=?)" in text, (which, state, plan)
        if which == "dispatcher count":  # the sums of what the finish returned: no event is read again
            assert "OutboxEvent " not in text, (which, state, plan)
        if which.startswith("unfinished"):
            assert "OutboxEvent USING" in text and "INDEX" in text, (which, state, plan)
        if which == "newest errors":
            assert "ix_OutboxEvent_errors" in text, (which, state, plan)
        if which == "distinct orgs":
            assert "ix_OutboxEvent_org_time" in text, (which, state, plan)
        if which == "newest bound":
            assert "ix_OutboxEvent_time" in text and "TEMP B-TREE" not in text, (which, state, plan)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
@pytest.mark.parametrize("state", STATES)
def test_the_newest_errors_for_the_closest_groups_are_read_through_their_index(
    request: pytest.FixtureRequest, backend: str, state: str
) -> None:
    """An --error-group that matches nothing names the closest groups of the newest errors: a bounded
    read backwards through the partial index of the events with an error, whatever the table holds."""
    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "postgres_url")
    build_state(url, state)
    engine = make_engine(url)
    with engine.begin() as conn:  # errors after the statistics were taken: the index is not empty
        conn.exec_driver_sql(
            """UPDATE "OutboxEvent" SET error_message = 'timeout ' || id WHERE id IN
               (SELECT id FROM "OutboxEvent" WHERE status = 'PENDING' ORDER BY id LIMIT 50)"""
        )
    stmt = analytics.newest_errors_select(analytics.CLOSEST_GROUPS_SCAN)
    sql = str(stmt.compile(engine, compile_kwargs={"literal_binds": True}))
    with engine.connect() as conn:
        assert len(conn.exec_driver_sql(sql).all()) == 50
        if backend == "postgres":
            plan = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + sql).scalar_one()[0]["Plan"]
            every = nodes(plan)
            if state == "no statistics":
                # Never analysed, PostgreSQL's default guess is that nearly every row has an error, and it
                # reads the table (a one-off read after a filter matched nothing; the first ANALYZE ends it).
                assert plan["Node Type"] == "Limit", plan
            else:
                assert not [n for n in every if n["Node Type"] == "Seq Scan"], (state, plan)
                assert {n.get("Index Name") for n in every if "Index Name" in n} == {"ix_OutboxEvent_errors"}, plan
        else:
            plan = [row[3] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql)]
            assert plan == ["SCAN OutboxEvent USING INDEX ix_OutboxEvent_errors"], (state, plan)
    engine.dispose()

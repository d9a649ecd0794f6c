"""The plans of the reads a metrics scrape runs (``analytics.outbox_gauges``), with no, stale and fresh
statistics, as tests/test_plans.py checks the dispatcher's: every scrape runs them, so on a big outbox
each must go through the index meant for it and stop at the row it needs, never scan or sort a table.
(The rollup's reads and the expired-leases summary have their plan tests in tests/test_plans.py.)"""

from __future__ import annotations

from typing import Any

import pytest

from outbox_admin import analytics, make_engine
from outbox_admin.analytics import _active_pauses_select, _last_claim_select, _oldest_due_select
from outbox_admin.models import DEFAULT_TABLES

from .test_plans import STATES, build_pause_history, build_state, nodes

TRANSITIONS = '"OutboxEventTransition"'


def _history(conn: Any, prefix: str, steps: list[tuple[str | None, str]]) -> None:
    """History rows for the events whose id starts with ``prefix``, one per step, at their creation time."""
    for from_status, to_status in steps:
        before = "NULL" if from_status is None else f"'{from_status}'"
        conn.exec_driver_sql(
            f"INSERT INTO {TRANSITIONS} (event_id, from_status, to_status, at, actor, attempt) "
            f"SELECT id, {before}, '{to_status}', created_at, 'd', 1 FROM \"OutboxEvent\" WHERE id LIKE '{prefix}%%'"
        )


def build_history_state(url: str, state: str) -> None:
    """``build_state`` plus its history: for the stale state, 90,000 rows of finished events analysed
    before the burst; then the burst's rows (its 500 claims the newest PENDING -> PROCESSING rows)."""
    build_state(url, state)
    engine = make_engine(url)
    postgres = engine.dialect.name == "postgresql"
    analyze = f"ANALYZE {TRANSITIONS}" if postgres else "ANALYZE"
    with engine.begin() as conn:
        if postgres:
            conn.exec_driver_sql(f"ALTER TABLE {TRANSITIONS} SET (autovacuum_enabled = false)")
        if state == "stale statistics":
            _history(conn, "c", [(None, "PENDING"), ("PENDING", "PROCESSING"), ("PROCESSING", "COMPLETED")])
    if state == "stale statistics":
        with engine.begin() as conn:
            conn.exec_driver_sql(analyze)
    with engine.begin() as conn:
        _history(conn, "p", [(None, "PENDING")])
        _history(conn, "h", [(None, "PENDING"), ("PENDING", "PROCESSING")])
    if state == "fresh statistics":
        with engine.begin() as conn:
            conn.exec_driver_sql(analyze)
    engine.dispose()


def explain(url: str, statements: dict[str, Any]) -> dict[str, Any]:
    """Each statement's plan on a new connection (compiled with its constants: a scrape binds nothing else)."""
    engine = make_engine(url)
    postgres = engine.dialect.name == "postgresql"
    found: dict[str, Any] = {}
    with engine.connect() as conn:
        for which, stmt in statements.items():
            sql = str(stmt.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))
            if postgres:
                found[which] = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + sql).scalar_one()[0]["Plan"]
            else:
                found[which] = [row[3] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql)]
    engine.dispose()
    return found


def scrape_reads() -> dict[str, Any]:
    return {"oldest due": _oldest_due_select(DEFAULT_TABLES), "last claim": _last_claim_select(DEFAULT_TABLES)}


@pytest.mark.postgres
@pytest.mark.slow  # the stale state loads 30,000 events and 90,000 history rows
@pytest.mark.parametrize("state", STATES)
def test_postgres_plans_of_the_scrape_reads(postgres_url: str, state: str) -> None:
    build_history_state(postgres_url, state)
    # The due PENDING events in creation order, from either index that holds them so: the due index, or the
    # PENDING range of the (status, created_at, id) index; the last claim from the end of its index.
    expected = {
        "oldest due": [{"ix_OutboxEvent_due"}, {"ix_OutboxEvent_status_time"}],
        "last claim": [{"ix_OutboxEventTransition_kind_at"}],
    }
    for which, plan in explain(postgres_url, scrape_reads()).items():
        every = nodes(plan)
        assert plan["Node Type"] == "Limit", (which, state, plan)
        assert not [n for n in every if n["Node Type"] in ("Seq Scan", "Sort", "Incremental Sort")], (which, state)
        assert {n["Index Name"] for n in every if "Index Name" in n} in expected[which], (which, state, plan)
        for node in every:
            if node.get("Index Name") == "ix_OutboxEvent_status_time":
                assert "PENDING" in node.get("Index Cond", ""), (state, plan)
    engine = make_engine(postgres_url)
    gauges = analytics.outbox_gauges(engine)
    engine.dispose()
    assert gauges.counts["PENDING"] == 5_000 and gauges.counts["PROCESSING"] == 500
    assert gauges.oldest_due_seconds > 0 and gauges.last_claim_at is not None


@pytest.mark.parametrize("state", STATES)
def test_sqlite_plans_of_the_scrape_reads(sqlite_url: str, state: str) -> None:
    build_history_state(sqlite_url, state)
    found = explain(sqlite_url, scrape_reads())
    assert found["oldest due"] in (
        ["SCAN OutboxEvent USING INDEX ix_OutboxEvent_due"],
        ["SEARCH OutboxEvent USING INDEX ix_OutboxEvent_status_time (status=?)"],  # in order: no TEMP B-TREE
    ), (state, found)
    index = "COVERING INDEX ix_OutboxEventTransition_kind_at (to_status=? AND from_status=?)"
    assert found["last claim"] == [f"SEARCH OutboxEventTransition USING {index}"], (state, found)
    engine = make_engine(sqlite_url)
    gauges = analytics.outbox_gauges(engine)
    engine.dispose()
    assert gauges.counts["PENDING"] == 5_000 and gauges.counts["PROCESSING"] == 500
    assert gauges.oldest_due_seconds > 0 and gauges.last_claim_at is not None


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
@pytest.mark.parametrize("state", STATES)
def test_the_count_of_active_pauses_uses_their_index(request: pytest.FixtureRequest, backend: str, state: str) -> None:
    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "postgres_url")
    build_pause_history(url, state)
    [plan] = explain(url, {"pauses": _active_pauses_select(DEFAULT_TABLES)}).values()
    if backend == "postgres":
        every = nodes(plan)
        assert not [n for n in every if n["Node Type"] == "Seq Scan"], (state, plan)
        assert {n["Index Name"] for n in every if "Index Name" in n} == {"uq_OutboxEventPause_active"}, (state, plan)
    else:
        assert plan == ["SCAN OutboxEventPause USING INDEX uq_OutboxEventPause_active"], (state, plan)
    engine = make_engine(url)
    assert analytics.outbox_gauges(engine).active_pauses == 3
    engine.dispose()

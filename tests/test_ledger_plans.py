"""The plans of the ledger's reads (``outbox_admin.deliveries``) on a large ledger, with no, stale and
fresh statistics, on a new connection: the Overview's per-handler window, the deliveries frame and the
Failures page's groups by handler never scan the ledger, the events or the history.

The state: 20,000 old COMPLETED events delivered to two handlers (40,000 ledger rows and their
history), then a recent burst of 300 events, delivered by one handler and failing in the other
(their failed attempts in the history), 100 of them FAILED. Stale statistics are taken before the
burst (they say nothing is recent), fresh ones after it.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from outbox_admin import make_engine
from outbox_admin.deliveries import SUMMARY_ROWS, deliveries_statement, handler_failures_statement, summary_statements
from outbox_admin.filters import EventFilter, prepare_connection

from .test_plans import STATES, nodes

OLD, BURST = 20_000, 300
LEDGER, EVENTS, HISTORY = "OutboxEventDelivery", "OutboxEvent", "OutboxEventTransition"
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
TABLES = (EVENTS, LEDGER, HISTORY)


def _series(postgres: bool, first: int, count: int) -> str:
    if postgres:
        return f"SELECT g FROM generate_series({first}, {first + count - 1}) AS g"
    last = first + count - 1
    return f"WITH RECURSIVE s(g) AS (SELECT {first} UNION ALL SELECT g + 1 FROM s WHERE g < {last}) SELECT g FROM s"


def _stamp(postgres: bool, at: dt.datetime) -> str:
    """``at`` plus ``g`` microseconds: each row its own time, as the dispatcher's batches give them."""
    if postgres:
        return f"TIMESTAMPTZ '{at:%Y-%m-%d %H:%M:%S}+00' + g * interval '1 microsecond'"
    return f"printf('{at:%Y-%m-%d %H:%M:%S}.%06d', g)"


def _id(postgres: bool, prefix: str) -> str:
    return f"'{prefix}' || lpad(g::text, 9, '0')" if postgres else f"printf('{prefix}%09d', g)"


def _load(conn: Any, postgres: bool, prefix: str, first: int, count: int, *, status: str, at: dt.datetime) -> None:
    """``count`` events of ``status`` created at ``at``, their history, and two ledger rows each: ``redis``
    delivered, ``webhook`` delivered when COMPLETED, else failing."""
    series, ident, when = _series(postgres, first, count), _id(postgres, prefix), _stamp(postgres, at)
    later = _stamp(postgres, at + dt.timedelta(seconds=1))
    conn.exec_driver_sql(
        f"""INSERT INTO "{EVENTS}" (id, org_id, event_type, entity_type, entity_id, payload, status, retry_count,
                created_at, available_at, processed_at, error_message)
            SELECT {ident}, 'org', 'PROJECT.CREATED', 'Project', CAST(g AS TEXT), '{{}}', '{status}', 1,
                   {when}, {when}, {later if status == "COMPLETED" else "NULL"},
                   {"NULL" if status == "COMPLETED" else "'webhook: SinkError: 503'"}
            FROM ({series}) AS x"""
    )
    failed_into = "PENDING" if status != "FAILED" else "FAILED"
    for from_status, to_status in (("PENDING", "PROCESSING"), ("PROCESSING", failed_into)):
        conn.exec_driver_sql(
            f"""INSERT INTO "{HISTORY}" (event_id, from_status, to_status, at, actor, attempt)
                SELECT {ident}, '{from_status}', '{to_status}', {later}, 'd', 1 FROM ({series}) AS x"""
        )
    webhook = ("'webhook'", later, "NULL") if status == "COMPLETED" else ("'webhook'", "NULL", "'webhook: 503'")
    for handler, delivered, error in (("'redis'", later, "NULL"), webhook):
        conn.exec_driver_sql(
            f"""INSERT INTO "{LEDGER}" (event_id, handler, attempt, delivered_at, duration_ms, last_error)
                SELECT {ident}, {handler}, 1, {delivered}, 1.5, {error} FROM ({series}) AS x"""
        )


def build_ledger_window(url: str, state: str) -> None:
    engine = make_engine(url)
    postgres = engine.dialect.name == "postgresql"

    def analyze() -> None:
        with engine.begin() as conn:
            for table in TABLES if postgres else ("",):
                conn.exec_driver_sql(f'ANALYZE "{table}"' if table else "ANALYZE")

    with engine.begin() as conn:
        if postgres:
            for table in TABLES:
                conn.exec_driver_sql(f'ALTER TABLE "{table}" SET (autovacuum_enabled = false)')
        _load(conn, postgres, "c", 0, OLD, status="COMPLETED", at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    if state == "stale statistics":
        analyze()
    with engine.begin() as conn:
        recent = NOW - dt.timedelta(minutes=10)
        _load(conn, postgres, "r", 0, BURST - 100, status="PENDING", at=recent)
        _load(conn, postgres, "f", 0, 100, status="FAILED", at=recent)
    if state == "fresh statistics":
        analyze()
    engine.dispose()


def statements(dialect: Any) -> dict[str, Any]:
    since = NOW - dt.timedelta(hours=1)
    found = dict(summary_statements(since, NOW + dt.timedelta(seconds=1), newest=SUMMARY_ROWS))
    found["frame"] = deliveries_statement(EventFilter(), dialect, since=since, limit=1000)
    found["frame, one handler"] = deliveries_statement(EventFilter(), dialect, since=since, handler="webhook")
    found["frame, one type"] = deliveries_statement(EventFilter(event_type=("PROJECT.CREATED",)), dialect, limit=100)
    found["failures by handler"] = handler_failures_statement(EventFilter(), dialect, limit=50, offset=0)
    return found


def plans(url: str) -> dict[str, Any]:
    """Each read's plan on a connection of a new engine; the statements compiled with their values."""
    engine = make_engine(url)
    postgres = engine.dialect.name == "postgresql"
    found: dict[str, Any] = {}
    with engine.connect() as conn:
        prepare_connection(conn)  # the SQLite function that normalises error messages
        for which, stmt in statements(engine.dialect).items():
            sql = str(stmt.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))
            if postgres:
                sql = sql.replace("%", "%%")
                found[which] = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + sql).scalar_one()[0]["Plan"]
            else:
                found[which] = [row[3] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql)]
        conn.rollback()
    engine.dispose()
    return found


#: Per read, the indexes each table may be read through. The failing handlers' rows are found by the
#: ledger's key from the failed events, or (when the statistics say few rows are undelivered) through
#: the NULL end of the ``delivered_at`` index; the failed attempts through the history's kind or time index.
EXPECTED_PG = {
    "delivered": {LEDGER: {"ix_OutboxEventDelivery_delivered"}, EVENTS: {"pk_OutboxEvent"}},
    "failing": {
        LEDGER: {"pk_OutboxEventDelivery", "ix_OutboxEventDelivery_delivered"},
        HISTORY: {"ix_OutboxEventTransition_kind_at", "ix_OutboxEventTransition_at"},
    },
    "frame": {LEDGER: {"ix_OutboxEventDelivery_delivered"}, EVENTS: {"pk_OutboxEvent"}},
    "frame, one handler": {LEDGER: {"ix_OutboxEventDelivery_delivered"}, EVENTS: {"pk_OutboxEvent"}},
    "frame, one type": {LEDGER: {"ix_OutboxEventDelivery_delivered"}, EVENTS: {"pk_OutboxEvent"}},
    # The FAILED events through the status index and their rows by key, or the undelivered rows first.
    "failures by handler": {
        LEDGER: {"pk_OutboxEventDelivery", "ix_OutboxEventDelivery_delivered"},
        EVENTS: {"ix_OutboxEvent_status_time", "pk_OutboxEvent"},
    },
}


def read_through(node: dict[str, Any]) -> set[str]:
    """The indexes a scan of a table reads: its own, or a bitmap heap scan's bitmap index scans (not
    those of the subplans that hang under it)."""
    names = {node["Index Name"]} if "Index Name" in node else set()
    for child in node.get("Plans", []):
        if child["Node Type"].startswith("Bitmap"):
            names |= read_through(child)
    return names


@pytest.mark.postgres
@pytest.mark.parametrize("state", STATES)
def test_postgres_ledger_plans(postgres_url: str, state: str) -> None:
    build_ledger_window(postgres_url, state)
    for which, plan in plans(postgres_url).items():
        every = nodes(plan)
        for table in TABLES:
            reads = [n for n in every if n.get("Relation Name") == table]
            assert not [n for n in reads if n["Node Type"] == "Seq Scan"], f"{which} scans {table} ({state})"
        assert not [n for n in every if n["Node Type"].startswith("Gather")], f"{which} runs in parallel ({state})"
        for table, wanted in EXPECTED_PG[which].items():
            used = {name for n in every if n.get("Relation Name") == table for name in read_through(n)}
            assert used and used <= wanted, (which, table, state, used)


EXPECTED_SQLITE = {
    "delivered": [
        f"SEARCH {LEDGER} USING INDEX ix_OutboxEventDelivery_delivered (delivered_at>? AND delivered_at<?)",
        f"SEARCH {EVENTS} USING INDEX sqlite_autoindex_OutboxEvent_1 (id=?)",
    ],
    "frame": [
        f"SEARCH {LEDGER} USING INDEX ix_OutboxEventDelivery_delivered (delivered_at>?)",
        f"SEARCH {EVENTS} USING INDEX sqlite_autoindex_OutboxEvent_1 (id=?)",
    ],
    "frame, one handler": [
        f"SEARCH {LEDGER} USING INDEX ix_OutboxEventDelivery_delivered (delivered_at>?)",
        f"SEARCH {EVENTS} USING INDEX sqlite_autoindex_OutboxEvent_1 (id=?)",
    ],
    "frame, one type": [
        f"SEARCH {LEDGER} USING INDEX ix_OutboxEventDelivery_delivered (delivered_at>?)",
        f"SEARCH {EVENTS} USING INDEX sqlite_autoindex_OutboxEvent_1 (id=?)",
    ],
}
#: Reads that may go either way round: from the failed events (or attempts) to their rows by key, or from
#: the undelivered rows (the NULL end of the delivered_at index) to the events.
FAILING_SQLITE = (
    [
        f"SEARCH {HISTORY} USING INDEX ix_OutboxEventTransition_kind_at (to_status=? AND from_status=? AND at>?",
        f"SEARCH {LEDGER} USING INDEX sqlite_autoindex_OutboxEventDelivery_1 (event_id=?)",
    ],
    [
        f"SEARCH {HISTORY} USING INDEX ix_OutboxEventTransition_kind_at (to_status=? AND from_status=? AND at>?",
        f"SEARCH {LEDGER} USING INDEX ix_OutboxEventDelivery_delivered (delivered_at=?)",
    ],
)
FAILURES_SQLITE = (
    [
        f"SEARCH {EVENTS} USING INDEX ix_OutboxEvent_status_time (status=?)",
        f"SEARCH {LEDGER} USING INDEX sqlite_autoindex_OutboxEventDelivery_1 (event_id=?)",
    ],
    [
        f"SEARCH {LEDGER} USING INDEX ix_OutboxEventDelivery_delivered (delivered_at=?)",
        f"SEARCH {EVENTS} USING INDEX sqlite_autoindex_OutboxEvent_1 (id=?)",
    ],
)


@pytest.mark.parametrize("state", STATES)
def test_sqlite_ledger_plans(sqlite_url: str, state: str) -> None:
    build_ledger_window(sqlite_url, state)
    for which, plan in plans(sqlite_url).items():
        for line in plan:
            words = line.split(" ")
            if words[0] == "SCAN" and words[1] in TABLES:
                assert "USING" in line and "INDEX" in line, f"{which} scans {words[1]}: {line} ({state})"
        choices = {"failing": FAILING_SQLITE, "failures by handler": FAILURES_SQLITE}.get(which)
        choices = choices or (EXPECTED_SQLITE[which],)
        assert any(all(any(line.startswith(w) for line in plan) for w in wanted) for wanted in choices), (
            which,
            state,
            plan,
        )

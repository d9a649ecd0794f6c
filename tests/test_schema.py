from __future__ import annotations

import threading

import pytest
from sqlalchemy import inspect, text

from outbox_admin import ConfigurationError, Dispatcher, OutboxTables, init_db, make_engine, publish_outbox_event
from outbox_admin.db import normalize_url
from outbox_admin.handlers.base import RecordingHandler


def test_init_db_twice_is_harmless(db_url: str) -> None:
    engine = make_engine(db_url)
    init_db(engine)
    init_db(engine)
    names = set(inspect(engine).get_table_names())
    assert {"OutboxEvent", "OutboxEventTransition", "outbox_alembic_version"} <= names
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM outbox_alembic_version")).scalars().all() == ["0008"]
    foreign_keys = inspect(engine).get_foreign_keys("OutboxEventTransition")
    # Migration 0003: PostgreSQL no longer checks the history's foreign key (see its docstring).
    assert [fk["referred_table"] for fk in foreign_keys] == (
        [] if engine.dialect.name == "postgresql" else ["OutboxEvent"]
    )
    engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_indexes_exist(request: pytest.FixtureRequest, backend: str) -> None:
    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "postgres_url")
    engine = make_engine(url)
    indexes = {ix["name"] for ix in inspect(engine).get_indexes("OutboxEvent")}
    assert {"ix_OutboxEvent_due", "ix_OutboxEvent_org_time", "ix_OutboxEvent_entity_time"} <= indexes
    engine.dispose()


def test_due_events_query_uses_the_partial_index(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    with engine.connect() as conn:
        plan = " ".join(
            str(row[-1])
            for row in conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN SELECT id FROM OutboxEvent WHERE status = 'PENDING' "
                "AND available_at <= '2030-01-01' ORDER BY created_at, id LIMIT 50"
            )
        )
    # Either the partial due index or the status/time index serves it, with no sort step.
    assert "USING INDEX ix_OutboxEvent_" in plan and "TEMP B-TREE" not in plan
    engine.dispose()


def test_postgres_plans_use_indexes(postgres_url: str) -> None:
    engine = make_engine(postgres_url)
    queries = {
        "ix_OutboxEvent_due": "SELECT id FROM \"OutboxEvent\" WHERE status = 'PENDING' AND available_at <= now() "
        "ORDER BY created_at, id LIMIT 50",
        "ix_OutboxEvent_org_time": "SELECT id FROM \"OutboxEvent\" WHERE org_id = 'o' "
        "ORDER BY created_at DESC LIMIT 50",
        "ix_OutboxEvent_entity_time": "SELECT id FROM \"OutboxEvent\" WHERE entity_type = 'P' AND entity_id = '1' "
        "ORDER BY created_at",
    }
    with engine.connect() as conn:
        conn.exec_driver_sql("SET enable_seqscan = off")  # an empty table would otherwise be scanned
        for index, sql in queries.items():
            plan = "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + sql))
            assert index in plan, plan
    engine.dispose()


def test_concurrent_init_db_on_postgres(empty_postgres_url: str) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        engine = make_engine(empty_postgres_url)
        try:
            init_db(engine)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_custom_table_names(db_url: str) -> None:
    tables = OutboxTables.named("app_outbox", "app_outbox_history")
    engine = make_engine(db_url)
    init_db(engine, tables)
    with engine.begin() as conn:
        event = publish_outbox_event(
            conn, org_id="o", event_type="PROJECT.CREATED", entity_type="P", entity_id="1", tables=tables
        )
    with engine.connect() as conn:
        assert conn.execute(text("SELECT id FROM app_outbox")).scalar_one() == event.id
        assert conn.execute(text("SELECT to_status FROM app_outbox_history")).scalar_one() == "PENDING"
        assert conn.execute(text('SELECT count(*) FROM "OutboxEvent"')).scalar_one() == 0
    engine.dispose()


@pytest.mark.parametrize("name", ["bad name", "x;drop table y", "1abc", "a" * 64, ""])
def test_bad_table_names_are_refused(name: str) -> None:
    with pytest.raises(ConfigurationError):
        OutboxTables.named(name or "   ")


def test_bad_urls_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="not a database URL"):
        make_engine("not a url")
    with pytest.raises(ConfigurationError, match="in-memory"):
        make_engine("sqlite://")
    assert normalize_url("postgresql://u@h/db").startswith("postgresql+psycopg://")


def test_default_url_is_outbox_db_in_the_working_directory(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OUTBOX_DATABASE_URL", raising=False)
    engine = make_engine()
    assert engine.url.database == str(tmp_path / "outbox.db")
    init_db(engine)
    assert (tmp_path / "outbox.db").exists()
    engine.dispose()
    monkeypatch.setenv("OUTBOX_DATABASE_URL", f"sqlite:///{tmp_path / 'other.db'}")
    assert make_engine().url.database == str(tmp_path / "other.db")


PRISMA_DDL = [
    """CREATE TYPE "OutboxEventStatus" AS ENUM ('PENDING', 'PROCESSING', 'COMPLETED', 'FAILED')""",
    """CREATE TABLE "OutboxEvent" (
        "id" TEXT NOT NULL,
        "org_id" TEXT NOT NULL,
        "event_type" TEXT NOT NULL,
        "entity_type" TEXT NOT NULL,
        "entity_id" TEXT NOT NULL,
        "payload" JSONB NOT NULL,
        "status" "OutboxEventStatus" NOT NULL DEFAULT 'PENDING',
        "retry_count" INTEGER NOT NULL DEFAULT 0,
        "error_message" TEXT,
        "created_at" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
        "processed_at" TIMESTAMP(3),
        CONSTRAINT "OutboxEvent_pkey" PRIMARY KEY ("id"))""",
    """CREATE INDEX "OutboxEvent_status_created_at_idx" ON "OutboxEvent"("status", "created_at")""",
    """INSERT INTO "OutboxEvent" (id, org_id, event_type, entity_type, entity_id, payload, status, created_at)
       VALUES ('prisma-1', 'org', 'PROJECT.CREATED', 'Project', 'p1', '{"a": 1}', 'PENDING',
               '2026-01-01 10:00:00')""",
]


def test_adopt_a_prisma_made_table(empty_postgres_url: str) -> None:
    engine = make_engine(empty_postgres_url)
    with engine.begin() as conn:
        for ddl in PRISMA_DDL:
            conn.exec_driver_sql(ddl)
    init_db(engine)
    init_db(engine)
    columns = {c["name"]: c for c in inspect(engine).get_columns("OutboxEvent")}
    assert {"available_at", "locked_by", "locked_until", "idempotency_key"} <= columns.keys()
    assert columns["created_at"]["type"].timezone is True
    with engine.begin() as conn:
        row = conn.execute(text('SELECT status, created_at, available_at FROM "OutboxEvent"')).one()
        assert row.status == "PENDING"
        assert row.created_at.isoformat() == "2026-01-01T10:00:00+00:00"
        assert row.available_at == row.created_at
        conn.execute(text("""UPDATE "OutboxEvent" SET status = 'DISCARDED' WHERE id = 'prisma-1'"""))
        publish_outbox_event(conn, org_id="org", event_type="PROJECT.UPDATED", entity_type="Project", entity_id="p1")
        # the original's publisher, still running beside this library, writes without available_at
        conn.execute(
            text("""INSERT INTO "OutboxEvent" (id, org_id, event_type, entity_type, entity_id, payload)
                    VALUES ('prisma-2', 'org', 'PROJECT.UPDATED', 'Project', 'p1', '{"a": 2}')""")
        )
    handler = RecordingHandler()
    assert Dispatcher(engine, [handler]).drain().completed == 2
    assert "prisma-2" in handler.ids
    engine.dispose()

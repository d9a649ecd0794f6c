"""Publish cost: what ``publish_outbox_event`` adds to the caller's transaction.

    python -m bench.publish --db both [--transactions 2000] [--events 10000]

1. A transaction that creates a demo project (a ``bench_project`` row: org, name,
   budget NUMERIC, status) and commits, without and with ``publish_outbox_event``
   in it; blocks of ``--transactions`` transactions, alternated, 9 rounds by default
   (a commit's fsync time wanders; many short blocks let it cancel). Reported as
   transactions/s and the cost ratio (time with / time without). The same pair
   on the bare driver (``raw SQL``: one connection, the project row, then the event
   and its first history row written as the library writes them, and the commit)
   shows what the database itself charges for the outbox rows.
2. ``--events`` events in one transaction: one ``publish_outbox_event`` call per
   event written through (the default: one round trip each), the same calls inside
   ``outbox_batch`` (buffered: one statement per 2,000 events), and one
   ``publish_outbox_events`` call for all of them (events/s, including the commit),
   alternated in the same run.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from contextlib import nullcontext
from decimal import Decimal
from typing import Any

from sqlalchemy import Column, Engine, MetaData, Numeric, String, Table, insert
from sqlalchemy.orm import Session

from outbox_admin import EventSpec, make_engine, outbox_batch, publish_outbox_event, publish_outbox_events
from outbox_admin.ids import new_event_id

from .common import Report, Timer, alternate, backends, parser, repeats, reset_outbox, run_main, temp_database

# The demo domain's table (there is no demo module yet): a typed Table, so SQLAlchemy binds
# the Decimal budget on SQLite as well.
PROJECTS = Table(
    "bench_project",
    MetaData(),
    Column("id", String(36), primary_key=True),
    Column("org_id", String(255), nullable=False),
    Column("name", String(255), nullable=False),
    Column("budget", Numeric(14, 2), nullable=False),
    Column("status", String(16), nullable=False),
)
INSERT_PROJECT = insert(PROJECTS)
SQLITE_NOW = "strftime('%Y-%m-%d %H:%M:%f', 'now') || '000'"


def _project(i: int) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "org_id": f"org-{i % 8 + 1}",
        "name": f"Project {i}",
        "budget": Decimal(i % 100_000) / 4,
        "status": "ACTIVE",
    }


def create_projects(engine: Engine, count: int, *, with_event: bool) -> float:
    """``count`` transactions, each creating one project (and publishing its event); returns seconds."""
    rows = [_project(i) for i in range(count)]
    with Timer() as timer:
        for row in rows:
            with Session(engine) as session, session.begin():
                session.execute(INSERT_PROJECT, row)
                if with_event:
                    publish_outbox_event(
                        session,
                        org_id=row["org_id"],
                        event_type="PROJECT.CREATED",
                        entity_type="Project",
                        entity_id=row["id"],
                        payload={"name": row["name"], "budget": row["budget"], "status": row["status"]},
                    )
    return timer.seconds


def raw_projects(url: str, count: int, *, with_event: bool) -> float:
    """The same transactions on the bare driver (psycopg / sqlite3), no Python objects; returns seconds."""
    rows = [_project(i) for i in range(count)]
    payloads = [json.dumps({"name": r["name"], "budget": float(r["budget"]), "status": r["status"]}) for r in rows]
    if url.startswith("sqlite"):
        conn: Any = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA foreign_keys=ON")
        project, now = "INSERT INTO bench_project VALUES (?, ?, ?, ?, ?)", SQLITE_NOW
        event = (
            'INSERT INTO "OutboxEvent" (id, org_id, event_type, entity_type, entity_id, payload, status, '
            f"retry_count, created_at, available_at) VALUES (?, ?, 'PROJECT.CREATED', 'Project', ?, ?, 'PENDING', "
            f"0, {now}, {now}) RETURNING created_at"
        )
        history = (
            'INSERT INTO "OutboxEventTransition" (event_id, from_status, to_status, at, actor, attempt) '
            "VALUES (?, NULL, 'PENDING', ?, 'publisher', 0)"
        )
        with Timer() as timer:
            for row, payload in zip(rows, payloads, strict=True):
                conn.execute("BEGIN")
                conn.execute(project, (row["id"], row["org_id"], row["name"], str(row["budget"]), row["status"]))
                if with_event:
                    event_id = new_event_id()
                    (created,) = conn.execute(event, (event_id, row["org_id"], row["id"], payload)).fetchone()
                    conn.execute(history, (event_id, created))
                conn.execute("COMMIT")
        conn.close()
        return timer.seconds
    import psycopg

    conn = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"))
    project = "INSERT INTO bench_project VALUES (%s, %s, %s, %s, %s)"
    event = (
        'WITH new AS (INSERT INTO "OutboxEvent" (id, org_id, event_type, entity_type, entity_id, payload, status, '
        "retry_count, created_at, available_at) VALUES (%s, %s, 'PROJECT.CREATED', 'Project', %s, %s, "
        "'PENDING', 0, statement_timestamp(), statement_timestamp()) RETURNING id, created_at), "
        'history AS (INSERT INTO "OutboxEventTransition" (event_id, from_status, to_status, at, actor, attempt) '
        "SELECT id, NULL, 'PENDING', created_at, 'publisher', 0 FROM new) "
        "SELECT id, pg_notify('outbox_events', '') FROM new"
    )
    with Timer() as timer:
        for row, payload in zip(rows, payloads, strict=True):
            conn.execute(project, (row["id"], row["org_id"], row["name"], row["budget"], row["status"]))
            if with_event:
                conn.execute(event, (new_event_id(), row["org_id"], row["id"], payload)).fetchall()
            conn.commit()
    conn.close()
    return timer.seconds


def publish_many(engine: Engine, count: int, *, mode: str) -> float:
    """``count`` events in one transaction (from an empty outbox); returns seconds, commit included.

    ``mode``: ``"single"`` (one call per event, written through), ``"batch"`` (the same
    calls inside ``outbox_batch``) or ``"bulk"`` (one ``publish_outbox_events`` call).
    """
    reset_outbox(engine)
    payloads = [{"name": f"Project {i}", "budget": Decimal(i) / 4, "status": "ACTIVE"} for i in range(count)]
    with Timer() as timer, Session(engine) as session, session.begin():
        if mode == "bulk":
            publish_outbox_events(
                session,
                [EventSpec("org-1", "PROJECT.UPDATED", "Project", f"p-{i}", p) for i, p in enumerate(payloads)],
            )
        else:
            with outbox_batch(session) if mode == "batch" else nullcontext():
                for i, p in enumerate(payloads):
                    publish_outbox_event(
                        session,
                        org_id="org-1",
                        event_type="PROJECT.UPDATED",
                        entity_type="Project",
                        entity_id=f"p-{i}",
                        payload=p,
                    )
    return timer.seconds


def bench_backend(backend: str, report: Report, args: Any) -> None:
    transactions = 50 if args.smoke else args.transactions
    events = 200 if args.smoke else args.events
    with temp_database(backend, postgres_url=args.postgres_url) as url:
        engine = make_engine(url)
        try:
            PROJECTS.create(engine)
            create_projects(engine, min(transactions, 200), with_event=True)  # warm-up: pools, caches
            create_projects(engine, min(transactions, 200), with_event=False)
            raw_projects(url, min(transactions, 200), with_event=True)
            samples = alternate(
                [
                    ("without", lambda: create_projects(engine, transactions, with_event=False)),
                    ("with", lambda: create_projects(engine, transactions, with_event=True)),
                    ("raw without", lambda: raw_projects(url, transactions, with_event=False)),
                    ("raw with", lambda: raw_projects(url, transactions, with_event=True)),
                ],
                repeats(args),
            )
            without = report.add(
                backend,
                "project transaction, no event",
                [transactions / s for s in samples["without"]],
                "tx/s",
                detail=f"{transactions} transactions per sample",
            )
            with_event = report.add(
                backend,
                "project transaction + publish_outbox_event",
                [transactions / s for s in samples["with"]],
                "tx/s",
                detail=f"{transactions} transactions per sample",
            )
            cost = report.ratio(backend, "publish cost: time with event / without", without, with_event)
            raw_without = report.add(
                backend,
                "raw SQL transaction, no event",
                [transactions / s for s in samples["raw without"]],
                "tx/s",
                detail="bare driver, one connection",
            )
            raw_with = report.add(
                backend,
                "raw SQL transaction + event rows",
                [transactions / s for s in samples["raw with"]],
                "tx/s",
                detail="bare driver: the library's SQL",
            )
            report.ratio(backend, "raw SQL floor: time with event rows / without", raw_without, raw_with)

            many = alternate(
                [
                    ("single", lambda: publish_many(engine, events, mode="single")),
                    ("batch", lambda: publish_many(engine, events, mode="batch")),
                    ("bulk", lambda: publish_many(engine, events, mode="bulk")),
                ],
                repeats(args),
            )
            single = report.add(
                backend,
                f"{events:,} events in one transaction (publish_outbox_event)",
                [events / s for s in many["single"]],
                detail="one call per event, written through",
            )
            batch = report.add(
                backend,
                f"{events:,} events in one transaction (publish_outbox_event in outbox_batch)",
                [events / s for s in many["batch"]],
                detail="one call per event, buffered",
            )
            bulk = report.add(
                backend,
                f"{events:,} events in one transaction (publish_outbox_events)",
                [events / s for s in many["bulk"]],
                detail="one call",
            )
            report.ratio(backend, "single calls: in outbox_batch / written through (events/s)", batch, single)
            report.ratio(backend, "bulk / single calls in outbox_batch (events/s)", bulk, batch)
        finally:
            engine.dispose()
    limit = 1.5 if backend == "postgres" else 2.0
    report.target(backend, "publish cost (with / without)", cost, "<=", limit, "x")
    if backend == "postgres":
        report.target(
            backend, "10,000 events in one transaction, events/s (single calls, outbox_batch)", batch, ">=", 10_000
        )
        report.target(backend, "10,000 events in one transaction, events/s (bulk call)", bulk, ">=", 10_000)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--transactions", type=int, default=500, help="transactions per sample (default 500)")
    p.add_argument("--events", type=int, default=10_000, help="events in the one-transaction case (default 10000)")
    # Many short alternated samples: a commit's fsync time wanders, and short blocks let it cancel.
    p.set_defaults(repeats=9)
    args = p.parse_args(argv)
    report = Report("publish", {"transactions": args.transactions, "events": args.events, "repeats": repeats(args)})
    for backend in backends(args.db):
        bench_backend(backend, report, args)
    return report.finish(args)


if __name__ == "__main__":
    run_main(main)

"""Outbox tables: create them, or adopt an existing (e.g. Prisma-made) OutboxEvent table.

Revision ID: 0001
Revises:
Create Date: 2026-11-27

Adopting: when the events table already exists, only the missing columns and
indexes are added. On PostgreSQL a Prisma enum ``status`` column becomes text
(so new statuses need no ``ALTER TYPE``) and ``timestamp without time zone``
columns become ``timestamptz``, read as UTC, which is what Prisma writes.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

from outbox_admin.coltypes import UTCDateTime, json_type

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _event_columns() -> list[sa.Column]:
    return [
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("org_id", sa.String(255), nullable=False),
        sa.Column("event_type", sa.String(255), nullable=False),
        sa.Column("entity_type", sa.String(255), nullable=False),
        sa.Column("entity_id", sa.String(255), nullable=False),
        sa.Column("payload", json_type(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="PENDING"),
        sa.Column("retry_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("error_message", sa.Text),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("processed_at", UTCDateTime),
        sa.Column("available_at", UTCDateTime, nullable=False),
        sa.Column("locked_by", sa.String(255)),
        sa.Column("locked_until", UTCDateTime),
        sa.Column("idempotency_key", sa.String(255)),
    ]


def _transition_columns(events: str, transitions: str, schema: str | None) -> list:
    target = f"{schema}.{events}.id" if schema else f"{events}.id"
    return [
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column(
            "event_id",
            sa.String(36),
            sa.ForeignKey(target, ondelete="CASCADE", name=f"fk_{transitions}_event"),
            nullable=False,
        ),
        sa.Column("from_status", sa.String(16)),
        sa.Column("to_status", sa.String(16), nullable=False),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
        sa.Column("error_message", sa.Text),
    ]


def _adopt_events_table(bind, events: str, schema: str | None) -> None:
    inspector = sa.inspect(bind)
    existing = {col["name"]: col for col in inspector.get_columns(events, schema=schema)}
    postgres = bind.dialect.name == "postgresql"
    quoted = bind.dialect.identifier_preparer.quote
    table_sql = f"{quoted(schema)}.{quoted(events)}" if schema else quoted(events)
    for column in _event_columns():
        if column.name in existing:
            continue
        if column.name == "available_at":
            # Existing rows are due when they were created; the default makes the NOT NULL add possible.
            op.add_column(events, sa.Column("available_at", UTCDateTime, nullable=True), schema=schema)
            op.execute(sa.text(f"UPDATE {table_sql} SET available_at = created_at"))
            if postgres:
                # The original's publisher does not know the column: a default lets its inserts go on
                # (due at once, as its rows were) while both write to the table. This library always sets it.
                op.alter_column(events, "available_at", nullable=False, server_default=sa.text("now()"), schema=schema)
            continue
        column.primary_key = False
        op.add_column(events, column, schema=schema)
    if not postgres:
        return
    status = existing.get("status")
    if status is not None and (isinstance(status["type"], sa.Enum) or not isinstance(status["type"], sa.String)):
        op.execute(sa.text(f"ALTER TABLE {table_sql} ALTER COLUMN status DROP DEFAULT"))
        op.execute(sa.text(f"ALTER TABLE {table_sql} ALTER COLUMN status TYPE varchar(16) USING status::text"))
        op.execute(sa.text(f"ALTER TABLE {table_sql} ALTER COLUMN status SET DEFAULT 'PENDING'"))
    for name in ("created_at", "processed_at", "available_at", "locked_until"):
        col = existing.get(name)
        if col is not None and isinstance(col["type"], sa.DateTime) and not col["type"].timezone:
            op.execute(
                sa.text(
                    f"ALTER TABLE {table_sql} ALTER COLUMN {quoted(name)} TYPE timestamptz "
                    f"USING {quoted(name)} AT TIME ZONE 'UTC'"
                )
            )


def upgrade(tables) -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    events, transitions, schema = tables.events.name, tables.transitions.name, tables.schema
    if inspector.has_table(events, schema=schema):
        _adopt_events_table(bind, events, schema)
    else:
        op.create_table(
            events,
            *_event_columns(),
            sa.UniqueConstraint("org_id", "idempotency_key", name=f"uq_{events}_idempotency"),
            schema=schema,
        )
    if not inspector.has_table(transitions, schema=schema):
        op.create_table(transitions, *_transition_columns(events, transitions, schema), schema=schema)

    inspector = sa.inspect(bind)
    have = {ix["name"] for ix in inspector.get_indexes(events, schema=schema)}
    have |= {uq["name"] for uq in inspector.get_unique_constraints(events, schema=schema)}
    pending = sa.text("status = 'PENDING'")
    processing = sa.text("status = 'PROCESSING'")
    wanted: list[tuple[str, str, list[str], Any]] = [
        (events, f"ix_{events}_due", ["created_at", "id", "available_at"], pending),
        (events, f"ix_{events}_leases", ["locked_until"], processing),
        (events, f"ix_{events}_org_time", ["org_id", "created_at"], None),
        (events, f"ix_{events}_entity_time", ["entity_type", "entity_id", "created_at"], None),
    ]
    if f"uq_{events}_idempotency" not in have:
        wanted.append((events, f"uq_{events}_idempotency", ["org_id", "idempotency_key"], "unique"))
    have |= {ix["name"] for ix in inspector.get_indexes(transitions, schema=schema)}
    wanted += [
        (transitions, f"ix_{transitions}_event", ["event_id", "id"], None),
        (transitions, f"ix_{transitions}_at", ["at"], None),
    ]
    for table, name, columns, where in wanted:
        if name in have:
            continue
        if where == "unique":
            op.create_index(name, table, columns, unique=True, schema=schema)
        elif where is not None:
            op.create_index(name, table, columns, schema=schema, postgresql_where=where, sqlite_where=where)
        else:
            op.create_index(name, table, columns, schema=schema)


def downgrade(tables) -> None:
    op.drop_table(tables.transitions.name, schema=tables.schema)
    op.drop_table(tables.events.name, schema=tables.schema)

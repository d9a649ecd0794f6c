"""Pauses by event type: the ``OutboxEventPause`` table (``<events>Pause`` for other table names).

One row per pause (pattern, reason, who and when), ended by a resume (who and when)
rather than deleted, so the table is the audit trail of pauses. A partial unique
index holds the active rows only: at most one active pause per pattern (pausing
is idempotent), and the dispatcher's per-tick read of the active patterns reads
that small index, however long the history grows.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from outbox_admin.coltypes import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

#: The predicate of the partial unique index (the active pauses).
ACTIVE = "resumed_at IS NULL"


def upgrade(tables) -> None:
    name, schema = tables.pauses.name, tables.schema
    if sa.inspect(op.get_bind()).has_table(name, schema=schema):
        return
    op.create_table(
        name,
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("pattern", sa.String(255), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("paused_by", sa.String(255), nullable=False),
        sa.Column("paused_at", UTCDateTime, nullable=False),
        sa.Column("resumed_by", sa.String(255)),
        sa.Column("resumed_at", UTCDateTime),
        schema=schema,
    )
    where = sa.text(ACTIVE)
    op.create_index(
        f"uq_{name}_active",
        name,
        ["pattern"],
        unique=True,
        schema=schema,
        postgresql_where=where,
        sqlite_where=where,
    )


def downgrade(tables) -> None:
    op.drop_table(tables.pauses.name, schema=tables.schema)

"""The rollup the Overview reads (``outbox_admin.stats``): created, then filled from the existing events.

The backfill reads every COMPLETED, FAILED and DISCARDED event once (5 s per million
events on the benchmark machine, SQLite or PostgreSQL) inside the migration's transaction; from
then on the dispatcher, ``requeue``, ``discard`` and ``purge`` keep it up to date.
Stop the dispatchers of older versions before upgrading: they do not count their
work (``outbox_admin.stats.rebuild`` recounts it if they ran meanwhile).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from outbox_admin.coltypes import UTCDateTime
from outbox_admin.stats import COUNTER_COLUMNS, backfill_in

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade(tables) -> None:
    name = tables.stats.name
    op.create_table(
        name,
        sa.Column("period", UTCDateTime, nullable=False),
        sa.Column("span", sa.Integer, nullable=False),
        sa.Column("event_type", sa.String(255), nullable=False),
        sa.Column("writer", sa.String(255), nullable=False),
        *(
            sa.Column(c, sa.Float if c == "latency_sum" else sa.Integer, nullable=False, server_default="0")
            for c in COUNTER_COLUMNS
        ),
        sa.PrimaryKeyConstraint("period", "span", "event_type", "writer", name=f"pk_{name}"),
        schema=tables.schema,
    )
    backfill_in(op.get_bind(), tables)


def downgrade(tables) -> None:
    op.drop_table(tables.stats.name, schema=tables.schema)

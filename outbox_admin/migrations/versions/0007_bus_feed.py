"""The browser bus's feed ``OutboxEventBusFeed`` (``<events>BusFeed``; see ``outbox_admin.web``).

A new, empty table: the ``BrowserBusSink`` fills it with the events it delivers and
prunes what is older than its replay window. Nothing else changes.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from outbox_admin.coltypes import UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade(tables) -> None:
    name, schema = tables.bus_feed.name, tables.schema
    op.create_table(
        name,
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("org_id", sa.String(255), nullable=False),
        sa.Column("event_type", sa.String(255), nullable=False),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("fed_at", UTCDateTime, nullable=False),
        schema=schema,
        sqlite_autoincrement=True,
    )
    op.create_index(f"ix_{name}_event", name, ["event_id"], schema=schema)
    op.create_index(f"ix_{name}_fed", name, ["fed_at"], schema=schema)


def downgrade(tables) -> None:
    op.drop_table(tables.bus_feed.name, schema=tables.schema)

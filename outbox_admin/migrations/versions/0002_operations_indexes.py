"""Indexes for the operations layer: status listings, purge, failure history.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _wanted(tables) -> list[tuple[str, str, list[str]]]:
    events, transitions = tables.events.name, tables.transitions.name
    return [
        # Events of one status by time: the Events page with a status filter, purge, error groups.
        (events, f"ix_{events}_status_time", ["status", "created_at", "id"]),
        # Transitions into one status by time: failures per minute.
        (transitions, f"ix_{transitions}_to_status_at", ["to_status", "at"]),
    ]


def upgrade(tables) -> None:
    inspector = sa.inspect(op.get_bind())
    for table, name, columns in _wanted(tables):
        existing = {ix["name"] for ix in inspector.get_indexes(table, schema=tables.schema)}
        if name not in existing:
            op.create_index(name, table, columns, schema=tables.schema)


def downgrade(tables) -> None:
    for table, name, _columns in _wanted(tables):
        op.drop_index(name, table_name=table, schema=tables.schema)

"""Indexes for the operations layer: status listings, purge, failure history.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import warnings
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _wanted(tables) -> list[tuple[str, str, list[str], str | None]]:
    events, transitions = tables.events.name, tables.transitions.name
    return [
        # Events of one status by time: the Events page with a status filter, purge.
        (events, f"ix_{events}_status_time", ["status", "created_at", "id"], None),
        # Newest events first under any other filter: the first page stops early.
        (events, f"ix_{events}_time", ["created_at", "id"], None),
        # Partial indexes hold only the few events that ever failed: error groups, retry histogram.
        (events, f"ix_{events}_errors", ["created_at"], "error_message IS NOT NULL"),
        (events, f"ix_{events}_retried", ["retry_count", "status"], "retry_count > 0"),
        # Transitions by kind and time: published/completed/failed per minute.
        (transitions, f"ix_{transitions}_kind_at", ["to_status", "from_status", "at"], None),
        # Manual actions (actors "admin:<name>"): the Live page's filter.
        (transitions, f"ix_{transitions}_manual", ["id"], "actor LIKE 'admin:%'"),
    ]


def upgrade(tables) -> None:
    inspector = sa.inspect(op.get_bind())
    for table, name, columns, where in _wanted(tables):
        with warnings.catch_warnings():  # our own expression index cannot be reflected; that is fine
            warnings.simplefilter("ignore", sa.exc.SAWarning)
            existing = {ix["name"] for ix in inspector.get_indexes(table, schema=tables.schema)}
        if name in existing:
            continue
        partial: dict[str, Any] = {"postgresql_where": sa.text(where), "sqlite_where": sa.text(where)} if where else {}
        op.create_index(name, table, columns, schema=tables.schema, **partial)
    if op.get_bind().dialect.name == "sqlite":
        # SQLite stores times as text: an index on the minute prefix lets "events per minute"
        # read the index in group order, with no sort and no date parsing. (SQLAlchemy cannot
        # reflect expression indexes, hence IF NOT EXISTS rather than an inspection.)
        transitions = tables.transitions.name
        op.execute(
            sa.text(
                f'CREATE INDEX IF NOT EXISTS "ix_{transitions}_kind_minute" '
                f'ON "{transitions}" (to_status, from_status, substr(at, 1, 16))'
            )
        )


def downgrade(tables) -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.drop_index(f"ix_{tables.transitions.name}_kind_minute", table_name=tables.transitions.name)
    for table, name, _columns, _where in _wanted(tables):
        op.drop_index(name, table_name=table, schema=tables.schema)

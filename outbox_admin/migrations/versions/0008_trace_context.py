"""The events' ``trace_context`` column: the W3C trace context an event was published in.

A nullable text column (compact JSON ``{"traceparent": ..., "tracestate": ...}``, see
``outbox_admin.tracing``); existing events keep NULL, as do events published outside a
span. Adding a nullable column without a default rewrites nothing on either database.
Skipped when the column is there already (a table adopted with it, or this migration
run again after a test moved the version back).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

COLUMN = "trace_context"


def upgrade(tables) -> None:
    name, schema = tables.events.name, tables.schema
    existing = {col["name"] for col in sa.inspect(op.get_bind()).get_columns(name, schema=schema)}
    if COLUMN not in existing:
        op.add_column(name, sa.Column(COLUMN, sa.Text), schema=schema)


def downgrade(tables) -> None:
    op.drop_column(tables.events.name, COLUMN, schema=tables.schema)

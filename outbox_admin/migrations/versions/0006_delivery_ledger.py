"""The delivery ledger ``OutboxEventDelivery`` (``<events>Delivery``): which handler has which event.

Created, then filled for the events already COMPLETED: each gets one row for the
handler ``*`` (``models.ALL_HANDLERS``), delivered at its ``processed_at``, so the
events delivered before the ledger existed count as delivered to all their handlers
(a replay to one handler still sends them to that one). One ``INSERT ... SELECT``
inside the migration's transaction. Other events get rows as the dispatcher works:
a FAILED event requeued after this upgrade runs all its handlers, as before, since
nothing recorded which ones had it. Stop the dispatchers of older versions before
upgrading: they do not write the ledger, so their retries would run every handler.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from outbox_admin.coltypes import UTCDateTime
from outbox_admin.models import ALL_HANDLERS, MAX_HANDLER_NAME, EventStatus

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade(tables) -> None:
    name, schema = tables.deliveries.name, tables.schema
    op.create_table(
        name,
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("handler", sa.String(MAX_HANDLER_NAME), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
        sa.Column("delivered_at", UTCDateTime),
        sa.Column("duration_ms", sa.Float),
        sa.Column("last_error", sa.Text),
        sa.Column("requested_at", UTCDateTime),
        sa.Column("requested_by", sa.String(255)),
        sa.PrimaryKeyConstraint("event_id", "handler", name=f"pk_{name}"),
        schema=schema,
    )
    op.create_index(f"ix_{name}_delivered", name, ["delivered_at"], schema=schema)
    ev, ledger = tables.events, tables.deliveries
    backfill = sa.insert(ledger).from_select(
        ["event_id", "handler", "attempt", "delivered_at"],
        sa.select(ev.c.id, sa.literal(ALL_HANDLERS), ev.c.retry_count + 1, ev.c.processed_at).where(
            ev.c.status == EventStatus.COMPLETED.value
        ),
    )
    op.get_bind().execute(backfill)


def downgrade(tables) -> None:
    op.drop_table(tables.deliveries.name, schema=tables.schema)

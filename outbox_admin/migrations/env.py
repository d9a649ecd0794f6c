"""Alembic environment for the outbox tables; driven by ``outbox_admin.migrate``."""

from __future__ import annotations

from alembic import context

from outbox_admin.models import DEFAULT_TABLES

config = context.config
tables = config.attributes.get("outbox_tables", DEFAULT_TABLES)
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run the outbox migrations with outbox_admin.init_db(engine)")

context.configure(
    connection=connection,
    target_metadata=tables.events.metadata,
    version_table=tables.version_table,
    version_table_schema=tables.schema,
    transactional_ddl=True,
)
with context.begin_transaction():
    context.run_migrations(tables=tables)

"""Run the Alembic migrations shipped in ``outbox_admin/migrations``."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

from .models import DEFAULT_TABLES, OutboxTables

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
ADVISORY_LOCK_KEY = 7_141_592_653  # any constant; shared by every process migrating the outbox


def alembic_config(tables: OutboxTables = DEFAULT_TABLES) -> Config:
    """An Alembic ``Config`` for the outbox migrations (for ``command.*`` calls)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["outbox_tables"] = tables
    return config


def upgrade(engine: Engine, tables: OutboxTables = DEFAULT_TABLES, revision: str = "head") -> None:
    """Upgrade the outbox tables to ``revision`` inside one transaction."""
    from .db import write_transaction

    config = alembic_config(tables)
    with write_transaction(engine) as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({ADVISORY_LOCK_KEY})")
        config.attributes["connection"] = conn
        command.upgrade(config, revision)

"""Run the Alembic migrations shipped in ``outbox_admin/migrations``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect

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


SchemaState = Literal["absent", "missing", "outdated", "current", "newer"]


@dataclass(frozen=True)
class SchemaStatus:
    """Where a database's outbox tables stand, read without writing anything.

    ``absent``: the SQLite file does not exist; ``missing``: no outbox tables;
    ``outdated``: older than this package (``upgrade`` brings them up to date);
    ``current``; ``newer``: migrated by a newer version of the package than this one.
    """

    state: SchemaState
    revision: str | None
    head: str

    @property
    def usable(self) -> bool:
        """The pages can read these tables."""
        return self.state == "current"

    def describe(self) -> str:
        return {
            "absent": "The database file does not exist yet.",
            "missing": "This database has no outbox tables.",
            "outdated": f"The outbox tables are at revision {self.revision}; this version needs {self.head}.",
            "current": f"The outbox tables are up to date (revision {self.head}).",
            "newer": (
                f"The outbox tables are at revision {self.revision}, made by a newer outbox_admin than this "
                f"one (which knows up to {self.head}); upgrade outbox_admin to use them."
            ),
        }[self.state]


def head_revision() -> str:
    """The newest migration this package ships."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def schema_status(engine: Engine, tables: OutboxTables = DEFAULT_TABLES) -> SchemaStatus:
    """Read the outbox tables' revision; never creates a file, a table or a row.

    Give it a ``make_engine(url, read_only=True)`` engine to be sure nothing can be written.
    """
    from .db import read_connection, sqlite_file

    head = head_revision()
    path = sqlite_file(engine.url.render_as_string(hide_password=False))
    if path is not None and not path.exists():
        return SchemaStatus("absent", None, head)
    with read_connection(engine) as conn:
        names = set(inspect(conn).get_table_names(schema=tables.schema))
        if tables.events.name not in names:
            return SchemaStatus("missing", None, head)
        if tables.version_table not in names:
            return SchemaStatus("outdated", None, head)  # adopted from Prisma, never migrated
        revision = MigrationContext.configure(
            conn, opts={"version_table": tables.version_table, "version_table_schema": tables.schema}
        ).get_current_revision()
    scripts = ScriptDirectory.from_config(alembic_config(tables))
    if revision == head:
        return SchemaStatus("current", revision, head)
    known = {script.revision for script in scripts.walk_revisions()}
    return SchemaStatus("outdated" if revision is None or revision in known else "newer", revision, head)

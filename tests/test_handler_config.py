"""The application's handlers named in outbox.toml, the dashboard's database list, the CLI's
refusal to dispatch to nobody, and the schema state read without writing."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from outbox_admin import analytics, make_engine, publish_outbox_event
from outbox_admin.errors import ConfigurationError
from outbox_admin.handlers.config import dashboard_databases, load_deliveries
from outbox_admin.migrate import schema_status, upgrade

from .cli_support import run_main

MODULE = """
    delivered = []

    def record(event):
        delivered.append(event.id)

    handlers = [record]

    def factory():
        return [record]

    def broken_factory():
        raise RuntimeError("no settings")

    not_a_list = 42
"""


@pytest.fixture
def app_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = f"handlers_app_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OUTBOX_CONFIG", raising=False)
    yield name
    sys.modules.pop(name, None)


def _config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "outbox.toml"
    path.write_text(body)
    return path


@pytest.mark.parametrize("attribute", ["handlers", "factory"])
def test_handlers_come_from_a_list_or_a_factory(app_module: str, tmp_path: Path, attribute: str) -> None:
    deliveries = load_deliveries(_config(tmp_path, f'handlers = "{app_module}:{attribute}"\n'))
    assert deliveries.names == ["record"] and deliveries.handlers_spec == f"{app_module}:{attribute}"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nomodule_here_xyz:handlers", "cannot import nomodule_here_xyz: ModuleNotFoundError"),
        ("{m}:missing", "has no attribute 'missing'"),
        ("{m}:not_a_list", "expected a list of handlers or a factory returning one, got int"),
        ("{m}:broken_factory", "the factory raised RuntimeError: no settings"),
        ("{m}", 'must be a string "package.module:attribute"'),
    ],
)
def test_bad_handler_names_are_configuration_errors(app_module: str, tmp_path: Path, spec: str, message: str) -> None:
    path = _config(tmp_path, f'handlers = "{spec.format(m=app_module)}"\n')
    with pytest.raises(ConfigurationError, match="outbox.toml: handlers") as caught:
        load_deliveries(path)
    assert message in str(caught.value)


def test_the_dashboard_database_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPORTS_URL", "postgresql://reader:secret@db/reports")
    path = _config(
        tmp_path,
        '[dashboard]\ndatabases = { local = "sqlite:///a.db", reports = { url_env = "REPORTS_URL" } }\n',
    )
    assert dashboard_databases(path) == {"local": "sqlite:///a.db", "reports": "postgresql://reader:secret@db/reports"}
    path = _config(tmp_path, '[dashboard]\ndatabases = { prod = "postgresql://u:pw@db/prod" }\n')
    with pytest.raises(ConfigurationError, match="do not write a password in the file"):
        dashboard_databases(path)


def test_cli_dispatch_refuses_to_deliver_to_nobody(sqlite_url: str, monkeypatch, capsys, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OUTBOX_CONFIG", raising=False)
    engine = make_engine(sqlite_url)
    with engine.begin() as tx:
        publish_outbox_event(tx, org_id="o", event_type="PROJECT.CREATED", entity_type="P", entity_id="1", payload={})
    code, _, err = run_main(monkeypatch, capsys, "dispatch", "--once", "--database-url", sqlite_url)
    assert code == 2 and "no handlers are configured" in err and "--log-only" in err
    assert analytics.count_events(engine, status="PENDING") == 1
    engine.dispose()


def test_cli_dispatch_delivers_to_the_configured_handlers(
    app_module: str, sqlite_url: str, monkeypatch, capsys
) -> None:
    _config(Path.cwd(), f'handlers = "{app_module}:factory"\n')
    engine = make_engine(sqlite_url)
    with engine.begin() as tx:
        for n in range(3):
            publish_outbox_event(
                tx, org_id="o", event_type="PROJECT.CREATED", entity_type="P", entity_id=str(n), payload={}
            )
    code, _, err = run_main(monkeypatch, capsys, "dispatch", "--once", "--quiet", "--database-url", sqlite_url)
    assert code == 0, err
    assert len(sys.modules[app_module].delivered) == 3
    assert analytics.count_events(engine, status="COMPLETED") == 3
    engine.dispose()


def test_schema_state_on_both_databases(db_url: str, empty_postgres_url: str, tmp_path: Path) -> None:
    """absent, missing, outdated, current and newer, each read through a read-only engine."""
    if db_url.startswith("sqlite"):
        bare = f"sqlite:///{tmp_path / 'bare.db'}"
        assert schema_status(make_engine(bare, read_only=True)).state == "absent"
        create_engine(bare).connect().close()  # an empty file
    else:
        bare = empty_postgres_url
    reader = make_engine(bare, read_only=True)
    assert schema_status(reader).state == "missing"
    writer = make_engine(bare)
    upgrade(writer, revision="0002")
    assert (schema_status(reader).state, schema_status(reader).revision) == ("outdated", "0002")
    upgrade(writer)
    status = schema_status(reader)
    assert status.state == "current" and status.usable
    with writer.begin() as conn:
        conn.execute(text("UPDATE outbox_alembic_version SET version_num = '9999'"))
    assert schema_status(reader).state == "newer"
    tables = set(inspect(writer).get_table_names())
    migrated = make_engine(db_url, read_only=True)
    assert schema_status(migrated).state == "current"
    assert set(inspect(writer).get_table_names()) == tables
    migrated.dispose()
    reader.dispose()
    writer.dispose()


@pytest.mark.parametrize("command", [["stats"], ["events"], ["show", "some-id"]])
def test_cli_commands_that_look_never_write(command: list[str], tmp_path: Path, monkeypatch, capsys) -> None:
    import sqlite3

    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE app_users (id INTEGER PRIMARY KEY)")
    conn.commit()
    conn.close()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    code, _, err = run_main(monkeypatch, capsys, *command, "--database-url", f"sqlite:///{path}")
    assert code == 1 and "has no outbox tables" in err and "outbox-admin init" in err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before

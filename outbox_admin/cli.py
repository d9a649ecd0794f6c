"""The ``outbox-admin`` command."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from .db import default_database_url, init_db, make_engine
from .errors import OutboxError
from .publisher import publish_outbox_event

app = typer.Typer(
    name="outbox-admin",
    help="Operate a transactional outbox.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True, soft_wrap=True)

DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        envvar="OUTBOX_DATABASE_URL",
        help="SQLAlchemy URL; default: SQLite file outbox.db in the working directory.",
    ),
]
JsonOutput = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _fail(message: str, code: int = 1) -> None:
    err_console.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


@app.command()
def init(database_url: DatabaseUrl = None, json_output: JsonOutput = False) -> None:
    """Create or upgrade the outbox tables."""
    url = database_url or default_database_url()
    engine = make_engine(url)
    init_db(engine)
    engine.dispose()
    if json_output:
        print(json.dumps({"database": engine.url.render_as_string(hide_password=True), "ok": True}))
    else:
        console.print(f"outbox tables ready in {engine.url.render_as_string(hide_password=True)}")


@app.command()
def publish(
    event_type: Annotated[str, typer.Argument(help="A registered type, e.g. PROJECT.CREATED.")],
    org_id: Annotated[str, typer.Option("--org", help="Organisation id.")] = "demo-org",
    entity_type: Annotated[str, typer.Option("--entity-type")] = "Project",
    entity_id: Annotated[str, typer.Option("--entity-id")] = "1",
    payload: Annotated[str | None, typer.Option("--payload", help="JSON text.")] = None,
    payload_file: Annotated[Path | None, typer.Option("--payload-file", help="A JSON file.")] = None,
    idempotency_key: Annotated[str | None, typer.Option("--idempotency-key")] = None,
    database_url: DatabaseUrl = None,
    json_output: JsonOutput = False,
) -> None:
    """Publish one event in its own transaction."""
    data: Any = {}
    try:
        if payload is not None and payload_file is not None:
            _fail("give --payload or --payload-file, not both", 2)
        if payload is not None:
            data = json.loads(payload)
        elif payload_file is not None:
            data = json.loads(payload_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, OSError) as exc:
        _fail(f"payload is not valid JSON: {exc}", 2)
    engine = make_engine(database_url)
    init_db(engine)
    with engine.begin() as conn:
        event = publish_outbox_event(
            conn,
            org_id=org_id,
            event_type=event_type,
            entity_type=entity_type,
            entity_id=entity_id,
            payload=data,
            idempotency_key=idempotency_key,
        )
    engine.dispose()
    if json_output:
        print(json.dumps({"id": event.id, "event_type": event.event_type, "status": event.status}))
    else:
        console.print(f"published {event.event_type} {event.id}")


def main() -> None:
    """Entry point: outbox errors print one line and exit 1; usage errors exit 2."""
    try:
        app(standalone_mode=True)
    except OutboxError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(1)

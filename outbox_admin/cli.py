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


@app.command()
def dispatch(
    once: Annotated[bool, typer.Option("--once", help="Drain what is due now, then exit.")] = False,
    interval: Annotated[float | None, typer.Option("--interval", min=0.01, help="Seconds between ticks.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1)] = None,
    max_attempts: Annotated[int | None, typer.Option("--max-attempts", min=1)] = None,
    lease_seconds: Annotated[float | None, typer.Option("--lease-seconds", min=0.1)] = None,
    ordering: Annotated[str | None, typer.Option("--ordering", help="'entity' to keep each entity in order.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="Do not print the audit log of delivered events.")] = False,
    database_url: DatabaseUrl = None,
    json_output: JsonOutput = False,
) -> None:
    """Run the dispatcher in the foreground (Ctrl-C or SIGTERM stops it gracefully)."""
    import logging
    import signal
    import threading

    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("apscheduler").setLevel(logging.WARNING)

    from .config import Settings
    from .dispatcher import Dispatcher
    from .service import DispatcherService

    if ordering not in (None, "entity"):
        _fail("--ordering takes 'entity'", 2)
    settings = Settings.from_env()
    overrides = {
        k: v
        for k, v in {"batch_size": batch_size, "max_attempts": max_attempts, "lease_seconds": lease_seconds}.items()
        if v is not None
    }
    engine = make_engine(database_url or settings.database_url)
    init_db(engine)
    dispatcher = Dispatcher.from_settings(engine, settings, ordering=ordering, **overrides)
    if once:
        report = dispatcher.drain(max_seconds=None)
        engine.dispose()
        _print_report(report, json_output)
        return
    service = DispatcherService(dispatcher, interval_seconds=interval or settings.interval_seconds)
    stopped = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        stopped.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    service.start()
    err_console.print(
        f"dispatching from {engine.url.render_as_string(hide_password=True)} as {dispatcher.name} "
        f"every {service.interval_seconds:g} s (Ctrl-C to stop)",
        highlight=False,
    )
    while not stopped.wait(1.0):
        pass
    service.stop(wait=True)
    status = service.status()
    engine.dispose()
    _print_report(status.totals, json_output)


def _print_report(report: Any, json_output: bool) -> None:
    data = report.as_dict()
    if json_output:
        print(json.dumps(data))
        return
    from rich.table import Table

    table = Table("claimed", "completed", "retried", "failed", "recovered", "released", "ticks", "seconds")
    table.add_row(
        *(
            str(data[k]) if k != "seconds" else f"{data[k]:.2f}"
            for k in ("claimed", "completed", "retried", "failed", "recovered", "released", "ticks", "seconds")
        )
    )
    console.print(table)


def main() -> None:
    """Entry point: outbox errors print one line and exit 1; usage errors exit 2."""
    try:
        app(standalone_mode=True)
    except OutboxError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(1)

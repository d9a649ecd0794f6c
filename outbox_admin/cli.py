"""The ``outbox-admin`` command."""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from .db import default_database_url, init_db, make_engine
from .errors import ConfigurationError, OutboxError
from .publisher import publish_outbox_event

app = typer.Typer(
    name="outbox-admin",
    help="Operate a transactional outbox.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(width=None if sys.stdout.isatty() else 160)
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
    except UnicodeDecodeError as exc:  # a ValueError: before the JSON case
        _fail(f"payload file is not UTF-8 text: {exc}", 2)
    except (json.JSONDecodeError, OSError) as exc:
        _fail(f"payload is not valid JSON: {exc}", 2)
    except (ValueError, RecursionError):  # an int of over 4,300 digits, or nesting Python cannot parse
        _fail("payload is not JSON this tool can read: an integer with too many digits, or nested too deeply", 2)
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
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            envvar="OUTBOX_CONFIG",
            help="TOML file of sinks to deliver to as well (default: outbox.toml here, if it exists).",
        ),
    ] = None,
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
    for noisy in ("apscheduler", "alembic"):  # their INFO lines are about themselves, not the outbox
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from .config import Settings
    from .dispatcher import Dispatcher
    from .handlers import default_handlers, load_sinks
    from .service import DispatcherService

    if ordering not in (None, "entity"):
        _fail("--ordering takes 'entity'", 2)
    settings = Settings.from_env()
    overrides = {
        k: v
        for k, v in {"batch_size": batch_size, "max_attempts": max_attempts, "lease_seconds": lease_seconds}.items()
        if v is not None
    }
    sinks = load_sinks(config)  # a bad config fails before anything starts
    engine = make_engine(database_url or settings.database_url)
    init_db(engine)
    dispatcher = Dispatcher.from_settings(
        engine, settings, handlers=default_handlers() + sinks, ordering=ordering, **overrides
    )
    if once:
        report = dispatcher.drain(max_seconds=None)
        engine.dispose()
        dispatcher.close()
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
    if sinks:
        err_console.print(f"delivering to: {', '.join(sink.name for sink in sinks)}", highlight=False)
    while not stopped.wait(1.0):
        pass
    service.stop(wait=True)
    status = service.status()
    engine.dispose()
    dispatcher.close()
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


# --- operations: stats, events, show, requeue, discard, purge -----------------------------

Status = Annotated[list[str] | None, typer.Option("--status", help="Status (repeat or comma-separate).")]
EventTypeOpt = Annotated[list[str] | None, typer.Option("--event-type", help="Event type (repeatable).")]
OrgOpt = Annotated[list[str] | None, typer.Option("--org", help="Org id (repeatable).")]
EntityOpt = Annotated[str | None, typer.Option("--entity", help="Entity as Type or Type/id.")]
SinceOpt = Annotated[str | None, typer.Option("--since", help="Created at or after (ISO 8601).")]
UntilOpt = Annotated[str | None, typer.Option("--until", help="Created before (ISO 8601).")]
SearchOpt = Annotated[str | None, typer.Option("--search", help="Text in the id, entity id or error message.")]
ErrorGroupOpt = Annotated[str | None, typer.Option("--error-group", help="A normalised error message (see stats).")]


def _filters(
    status: Any = None,
    event_type: Any = None,
    org: Any = None,
    entity: Any = None,
    since: Any = None,
    until: Any = None,
    search: Any = None,
    error_group: Any = None,
) -> Any:
    from .filters import EventFilter

    return EventFilter.build(
        status=status,
        event_type=event_type,
        org_id=org,
        entity=entity,
        since=since,
        until=until,
        search=search,
        error_group=error_group,
    )


def _engine(database_url: str | None) -> Any:
    engine = make_engine(database_url)
    init_db(engine)
    return engine


def _json_default(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _dump(data: Any) -> None:
    print(json.dumps(data, default=_json_default, ensure_ascii=False))


def _records(frame: Any) -> list[dict[str, Any]]:
    import pandas as pd

    rows = frame.astype(object).where(pd.notna(frame), None).to_dict(orient="records")
    return [{k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in r.items()} for r in rows]


def _table(frame: Any, columns: list[str], title: str | None = None, widths: dict[str, int] | None = None) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for name in columns:
        table.add_column(name, overflow="fold", max_width=(widths or {}).get(name), no_wrap=name == "id")
    for record in _records(frame[columns]) if not frame.empty else []:
        table.add_row(*("" if record[c] is None else str(record[c]) for c in columns))
    console.print(table)


@app.command()
def stats(
    status: Status = None,
    event_type: EventTypeOpt = None,
    org: OrgOpt = None,
    entity: EntityOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    search: SearchOpt = None,
    top: Annotated[int, typer.Option("--top", min=1, max=100, help="How many error groups.")] = 10,
    database_url: DatabaseUrl = None,
    json_output: JsonOutput = False,
) -> None:
    """Counts per status, latency percentiles and the top error groups."""
    from . import analytics

    flt = _filters(status, event_type, org, entity, since, until, search)
    engine = _engine(database_url)
    counts = analytics.status_counts(engine, flt)
    latency = analytics.latency_stats(engine, flt)
    errors = analytics.error_summary(engine, flt, limit=top)
    engine.dispose()
    if json_output:
        _dump({"status_counts": _records(counts), "latency": _records(latency), "errors": _records(errors)})
        return
    _table(counts, ["status", "count"], "Events by status")
    _table(latency.round(4), ["event_type", "events", "p50", "p90", "p99", "max"], "Latency (seconds)")
    _table(
        errors, ["events", "failed", "error_group", "event_types", "last_seen"], "Top error groups", {"error_group": 60}
    )


@app.command()
def events(
    status: Status = None,
    event_type: EventTypeOpt = None,
    org: OrgOpt = None,
    entity: EntityOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    search: SearchOpt = None,
    error_group: ErrorGroupOpt = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000)] = 50,
    offset: Annotated[int, typer.Option("--offset", min=0)] = 0,
    database_url: DatabaseUrl = None,
    json_output: JsonOutput = False,
) -> None:
    """List events, newest first, with filters."""
    from . import analytics

    flt = _filters(status, event_type, org, entity, since, until, search, error_group)
    engine = _engine(database_url)
    frame = analytics.events_frame(engine, flt, limit=limit, offset=offset)
    total = analytics.count_events(engine, flt)
    engine.dispose()
    if json_output:
        _dump({"total": total, "events": _records(frame)})
        return
    frame = frame.assign(
        entity=frame["entity_type"] + "/" + frame["entity_id"],
        created=frame["created_at"].dt.strftime("%Y-%m-%d %H:%M:%S"),
        retries=frame["retry_count"],
    )
    _table(
        frame,
        ["id", "created", "event_type", "entity", "status", "retries", "error_message"],
        f"{len(frame)} of {total} events",
        {"error_message": 40},
    )


@app.command()
def show(
    event_id: Annotated[str, typer.Argument(help="The event id.")],
    database_url: DatabaseUrl = None,
    json_output: JsonOutput = False,
) -> None:
    """One event: its fields, payload and status timeline."""
    from . import analytics

    engine = _engine(database_url)
    event = analytics.get_event(engine, event_id)
    timeline = analytics.transitions_frame(engine, event_id) if event else None
    engine.dispose()
    if event is None:
        _fail(f"no event with id {event_id!r}", 1)
        return
    if json_output:
        _dump({"event": event, "timeline": _records(timeline)})
        return
    from rich.syntax import Syntax

    for key, value in event.items():
        if key != "payload":
            console.print(f"[bold]{key}[/bold]: {'' if value is None else value}", highlight=False)
    console.print(Syntax(json.dumps(event["payload"], indent=2, ensure_ascii=False), "json"))
    _table(
        timeline,
        ["at", "from_status", "to_status", "attempt", "actor", "error_message"],
        "Timeline",
        {"error_message": 60},
    )


def _run_action(
    action: str, ids: list[str] | None, dry_run: bool, json_output: bool, database_url: str | None, **kwargs: Any
) -> None:
    from . import admin

    engine = _engine(database_url)
    try:
        flt_kwargs = {k: kwargs.pop(k) for k in ("filters",) if k in kwargs}
        status = kwargs.pop("status")
        force = kwargs.get("force", False)
        plan = admin.plan_action(engine, action, ids or None, status=status, force=force, **flt_kwargs)  # type: ignore[arg-type]
        if dry_run:
            if json_output:
                _dump({"action": action, "dry_run": True, "count": plan.count, "sample_ids": plan.sample_ids})
            else:
                console.print(
                    f"{action} would move {plan.count} event(s) in {', '.join(plan.statuses)}; "
                    f"e.g. {', '.join(plan.sample_ids[:5]) or '-'}",
                    highlight=False,
                )
            return
        moved = getattr(admin, action)(engine, ids or None, status=status, **flt_kwargs, **kwargs)
    finally:
        engine.dispose()
    if json_output:
        _dump({"action": action, "moved": moved})
    else:
        console.print(f"{action}: {moved} event(s) moved")


@app.command()
def requeue(
    event_ids: Annotated[list[str] | None, typer.Argument(help="Event ids (or use filters).")] = None,
    status: Status = None,
    event_type: EventTypeOpt = None,
    org: OrgOpt = None,
    entity: EntityOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    search: SearchOpt = None,
    error_group: ErrorGroupOpt = None,
    reset_attempts: Annotated[
        bool, typer.Option("--reset-attempts", help="Give them all their attempts again.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Also redeliver PROCESSING or COMPLETED events.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say how many would move.")] = False,
    actor: Annotated[str, typer.Option("--actor", help="Who is acting (kept in the history).")] = "cli",
    database_url: DatabaseUrl = None,
    json_output: JsonOutput = False,
) -> None:
    """Move FAILED events (or the given ones) back to PENDING, due now."""
    if not event_ids and not any([status, event_type, org, entity, since, until, search, error_group]):
        status = ["FAILED"]
    flt = _filters(None, event_type, org, entity, since, until, search, error_group)
    wanted = ",".join(status) if status else (None if event_ids else "FAILED")
    _run_action(
        "requeue",
        event_ids,
        dry_run,
        json_output,
        database_url,
        filters=flt,
        status=wanted,
        reset_attempts=reset_attempts,
        force=force,
        actor=actor,
    )


@app.command()
def discard(
    event_ids: Annotated[list[str] | None, typer.Argument(help="Event ids (or use filters).")] = None,
    status: Status = None,
    event_type: EventTypeOpt = None,
    org: OrgOpt = None,
    entity: EntityOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    search: SearchOpt = None,
    error_group: ErrorGroupOpt = None,
    reason: Annotated[str | None, typer.Option("--reason", help="Why (kept in the history).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say how many would move.")] = False,
    actor: Annotated[str, typer.Option("--actor", help="Who is acting (kept in the history).")] = "cli",
    database_url: DatabaseUrl = None,
    json_output: JsonOutput = False,
) -> None:
    """Set FAILED or PENDING events aside as DISCARDED (kept for the audit trail, never delivered)."""
    if not event_ids and not any([status, event_type, org, entity, since, until, search, error_group]):
        _fail("give event ids or at least one filter (refusing to discard everything)", 2)
    flt = _filters(None, event_type, org, entity, since, until, search, error_group)
    _run_action(
        "discard",
        event_ids,
        dry_run,
        json_output,
        database_url,
        filters=flt,
        status=",".join(status) if status else None,
        reason=reason,
        actor=actor,
    )


_AGE_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]+)")
_AGE_UNITS = {
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), 3600),
    **dict.fromkeys(("d", "day", "days"), 86400),
    **dict.fromkeys(("w", "week", "weeks"), 7 * 86400),
}


def parse_age(text: str) -> dt.timedelta | None:
    """An age such as ``30d``, ``12h``, ``1h30min`` or ``7 days``; None if it is not one (a negative
    or unit-less number, NaN). Parsed here because pandas deprecates the ``d`` and ``w`` units."""
    text = text.strip().lower()
    if not re.fullmatch(rf"(?:{_AGE_PART.pattern})+", text):
        return None
    seconds = 0.0
    for number, unit in _AGE_PART.findall(text):
        if unit not in _AGE_UNITS:
            return None
        seconds += float(number) * _AGE_UNITS[unit]
    return dt.timedelta(seconds=seconds)


@app.command()
def purge(
    older_than: Annotated[str, typer.Option("--older-than", help="Age such as 7d, 12h, 30min.")],
    status: Annotated[list[str] | None, typer.Option("--status", help="Statuses to purge.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=100_000)] = 5000,
    database_url: DatabaseUrl = None,
    json_output: JsonOutput = False,
) -> None:
    """Delete old COMPLETED and DISCARDED events (and their history), in batches."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from . import admin

    age = parse_age(older_than)
    if age is None:
        _fail(f"--older-than {older_than!r} is not a duration such as 7d, 12h or 30min", 2)
        return
    statuses = [s.strip().upper() for item in (status or ["COMPLETED", "DISCARDED"]) for s in item.split(",")]
    engine = _engine(database_url)
    try:
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=err_console,
            disable=json_output,
            transient=True,
        ) as progress:
            task = progress.add_task("purging", total=None)
            result = admin.purge(
                engine,
                age,
                statuses,
                batch_size=batch_size,
                progress=lambda n: progress.update(task, description=f"purged {n} events"),
            )
    finally:
        engine.dispose()
    if json_output:
        _dump({"events": result.events, "transitions": result.transitions, "batches": result.batches})
    else:
        console.print(
            f"purged {result.events} events and {result.transitions} history rows in {result.batches} batch(es)"
        )


def main() -> None:
    """Entry point. Exit codes: 0 ok; 1 failure (refused action, database unreachable);
    2 bad usage or bad input (a wrong filter, payload or event type). Errors print one line."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        app(standalone_mode=True)
    except OutboxError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(2 if isinstance(exc, (ValueError, ConfigurationError)) else 1)
    except SQLAlchemyError as exc:
        first = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        err_console.print(f"[red]error:[/red] database: {first}", highlight=False)
        sys.exit(1)

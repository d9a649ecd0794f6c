"""The ``outbox-admin`` command.

Everything it prints is data, never markup: user and stored text goes to the terminal as
``rich.text.Text`` through ``display.visible`` (control and invisible characters shown as
escapes such as ``\\x1b`` or ``\\u202e``, newlines as ``\\n``), and ``--json`` output is JSON
with the same characters as ``\\uXXXX`` escapes. ``main()`` turns every error into one line
on stderr and an exit code (see ``main``); the traceback is logged at debug level, shown with
``outbox-admin --debug ...`` or ``OUTBOX_DEBUG=1``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import io
import json
import logging
import re
import sys
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperArgument, TyperCommand, TyperOption

from .db import default_database_url, init_db, make_engine
from .display import has_surrogates, visible, visible_json
from .errors import AdminActionError, ConfigurationError, OutboxError
from .publisher import publish_outbox_event

log = logging.getLogger("outbox_admin.cli")

#: Exit codes, as ``main`` and the README document them.
EXIT_OK = 0
EXIT_FAILURE = 1  # a refused action, a missing event, the database unreachable
EXIT_USAGE = 2  # bad usage or bad input: an unknown option, a wrong filter, payload or event type, bad text
EXIT_INTERNAL = 3  # a bug: an unexpected error inside outbox-admin or the library
EXIT_INTERRUPTED = 130  # Ctrl-C


class _DataCommand(TyperCommand):
    """A command that refuses, as a usage error, any text parameter no database can store.

    Bytes in argv (or in an ``OUTBOX_*`` variable) that are not UTF-8 reach Python as lone
    surrogates (``surrogateescape``); drivers raise ``UnicodeEncodeError`` on them deep inside.
    NUL cannot come from a real argv, but ``main(argv)`` can be given one, and PostgreSQL text
    cannot hold it. Both are refused here, naming the parameter, before the library sees them.
    File paths are exempt: a file name is bytes to the OS, not text.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _tidy_help(self.params)

    def invoke(self, ctx: Any) -> Any:  # typer's own (vendored) click Context
        for param in self.params:
            for value in _texts(ctx.params.get(param.name or "")):
                problem = (
                    "is not valid UTF-8 text (each \\udcXX stands for a byte that is not UTF-8)"
                    if has_surrogates(value)
                    else "contains a NUL character"
                    if "\x00" in value
                    else None
                )
                if problem:
                    raise typer.BadParameter(
                        f"{value!r} {problem}",
                        ctx=ctx,
                        param=param,  # type: ignore[arg-type]  # typer's parameters are its click's
                    )
        return super().invoke(ctx)


class _Argument(TyperArgument):
    """An argument whose help line is its name and help, without typer's ``<str>`` type label."""

    def display_type_rich(self, ctx: Any) -> str | None:
        return None


def _metavar(param: TyperOption) -> str:
    """The short metavar of an option that names none: what kind of value it takes."""
    annotation = param.type_descriptor.annotation
    if typing.get_origin(annotation) is list:
        (annotation,) = typing.get_args(annotation)
    if annotation is int:
        return "INTEGER"
    if annotation is float:
        return "NUMBER"
    if isinstance(annotation, type) and issubclass(annotation, Path):
        return "FILE"
    return "TEXT"


def _tidy_help(params: Sequence[Any]) -> None:
    """Help lines as click writes them: a flag shows no type, an option a short metavar (``N``,
    ``SECONDS``, ``TEXT``), an argument its name. typer labels each with its Python type instead
    (``<bool>``, ``<int range>``, ``<list[str]>``), noise that says nothing the help does not.

    typer builds the parameters and has no hook for their class, so arguments are given ours here.
    """
    for param in params:
        if type(param) is TyperArgument:
            param.__class__ = _Argument
        elif isinstance(param, TyperOption) and param.metavar is None and not param.is_flag:
            param.metavar = _metavar(param)


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple):
        return [v for v in value if isinstance(v, str)]
    return []


app = typer.Typer(
    name="outbox-admin",
    help="Operate a transactional outbox.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # Plain help, as written: typer's rich mode reads help texts as markup (it swallowed
    # "[dashboard.users]") and labels every option with its Python type ("<bool>", "<int range>").
    rich_markup_mode=None,
    context_settings={"max_content_width": 120},
)


def _command(*args: Any, **kwargs: Any) -> Any:
    return app.command(*args, cls=_DataCommand, **kwargs)


_consoles: dict[str, Console] = {}


def _out() -> Console:
    """The console for results (stdout), made on first use in each run, so it follows the
    environment of that run (``NO_COLOR``, ``FORCE_COLOR``) and the current stdout."""
    if "out" not in _consoles:
        width = None if sys.stdout.isatty() else 160
        _consoles["out"] = Console(width=width, markup=False, emoji=False, highlight=False)
    return _consoles["out"]


def _err() -> Console:
    """The console for errors and progress (stderr)."""
    if "err" not in _consoles:
        _consoles["err"] = Console(stderr=True, soft_wrap=True, markup=False, emoji=False, highlight=False)
    return _consoles["err"]


def _say(message: str, *, err: bool = False) -> None:
    """Print one line of text as data: no markup, control characters visible."""
    (_err() if err else _out()).print(Text(visible(message)))


def _error_line(message: str) -> None:
    _err().print(Text.assemble(("error:", "red"), " ", visible(message)))


def _fail(message: str, code: int = EXIT_FAILURE) -> None:
    _error_line(message)
    raise typer.Exit(code)


class _VisibleFormatter(logging.Formatter):
    """Log lines with control characters made visible (the audit log prints payloads)."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        return visible(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:  # noqa: N802 - logging's name
        return "\n".join(visible(line) for line in super().formatException(ei).splitlines())


_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _stderr_handler(log_format: str = "text") -> logging.Handler:
    from .logs import JsonLogFormatter

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter() if log_format == "json" else _VisibleFormatter(_LOG_FORMAT))
    return handler


def _configure_logging(level: int, log_format: str = "text") -> None:
    """Log to stderr, as data (a no-op when the process has configured logging already)."""
    logging.basicConfig(level=level, handlers=[_stderr_handler(log_format)])


_debug: list[tuple[logging.Logger, logging.Handler, int, bool]] = []  # what --debug changed, undone by main


def _start_debug() -> None:
    """The package's own debug messages, and the traceback of an error, on stderr for this run."""
    package = logging.getLogger("outbox_admin")
    handler = _stderr_handler()
    _debug.append((package, handler, package.level, package.propagate))
    package.addHandler(handler)
    package.setLevel(logging.DEBUG)
    package.propagate = False  # once, not again through a root handler


def _stop_debug() -> None:
    while _debug:
        package, handler, level, propagate = _debug.pop()
        package.removeHandler(handler)
        package.setLevel(level)
        package.propagate = propagate


@app.callback()
def _root(
    debug: Annotated[
        bool,
        typer.Option("--debug", envvar="OUTBOX_DEBUG", help="Log debug messages, and the traceback of an error."),
    ] = False,
) -> None:
    """Operate a transactional outbox."""
    if debug:
        _start_debug()


DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        envvar="OUTBOX_DATABASE_URL",
        metavar="URL",
        help="SQLAlchemy URL; default: SQLite file outbox.db in the working directory.",
    ),
]
JsonOutput = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
MaxAttemptsOpt = Annotated[
    str | None,
    typer.Option(
        "--max-attempts",
        metavar="N|none",
        help="Attempts before an event is FAILED, as the dispatchers are configured; 'none' retries forever "
        "(default: OUTBOX_MAX_ATTEMPTS, or 5).",
    ),
]


def _attempts(text: str) -> int | None:
    """``--max-attempts``: a positive integer, or None for 'none' (retry forever); else a usage error."""
    from .config import parse_max_attempts

    refusal = typer.BadParameter(
        f"{visible(text)!r} is not a positive integer or 'none' (retry forever)", param_hint="'--max-attempts'"
    )
    if not text.strip():  # the variable's empty value means the default; an option's is a mistake
        raise refusal
    try:
        return parse_max_attempts(text, "--max-attempts", forever=("none", "forever"))
    except ConfigurationError:
        raise refusal from None


@_command()
def init(database_url: DatabaseUrl = None, json_output: JsonOutput = False) -> None:
    """Create or upgrade the outbox tables."""
    with _engine(database_url or default_database_url()) as engine:
        pass
    if json_output:
        _dump({"database": engine.url.render_as_string(hide_password=True), "ok": True})
    else:
        _say(f"outbox tables ready in {engine.url.render_as_string(hide_password=True)}")


@_command()
def publish(
    event_type: Annotated[str, typer.Argument(help="A registered type, e.g. PROJECT.CREATED.")],
    org_id: Annotated[
        str,
        typer.Option("--org", metavar="ORG", help="The organisation the event belongs to (a demo value by default)."),
    ] = "demo-org",
    entity_type: Annotated[
        str, typer.Option("--entity-type", metavar="TYPE", help="The type of the entity the event is about.")
    ] = "Project",
    entity_id: Annotated[str, typer.Option("--entity-id", metavar="ID", help="The id of that entity.")] = "1",
    payload: Annotated[
        str | None,
        typer.Option("--payload", metavar="JSON", help="The payload as JSON text (null, or none given: {})."),
    ] = None,
    payload_file: Annotated[
        Path | None, typer.Option("--payload-file", metavar="FILE", help="The payload from a JSON file.")
    ] = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option(
            "--idempotency-key",
            metavar="KEY",
            help="Publish at most once per key and org: the same key again returns the first event.",
        ),
    ] = None,
    database_url: DatabaseUrl = None,
    json_output: JsonOutput = False,
) -> None:
    """Publish one event in its own transaction.

    Without --org, --entity-type and --entity-id the event is about entity Project/1 of
    organisation demo-org: values for trying the outbox out, not for real events.
    """
    data: Any = {}
    try:
        if payload is not None and payload_file is not None:
            _fail("give --payload or --payload-file, not both", EXIT_USAGE)
        if payload is not None:
            data = json.loads(payload)
        elif payload_file is not None:
            data = json.loads(payload_file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:  # a ValueError: before the JSON case
        _fail(f"payload file is not UTF-8 text: {exc}", EXIT_USAGE)
    except (json.JSONDecodeError, OSError) as exc:
        _fail(f"payload is not valid JSON: {exc}", EXIT_USAGE)
    except (ValueError, RecursionError):  # an int of over 4,300 digits, or nesting Python cannot parse
        _fail(
            "payload is not JSON this tool can read: an integer with too many digits, or nested too deeply", EXIT_USAGE
        )
    bad = _surrogate_path(data, "payload")
    if bad is not None:  # "\ud800" in JSON text: valid JSON, not storable text
        _fail(f"{bad}: not valid Unicode text (a lone surrogate, such as \\ud800 in JSON)", EXIT_USAGE)
    with _engine(database_url) as engine, engine.begin() as conn:
        event = publish_outbox_event(
            conn,
            org_id=org_id,
            event_type=event_type,
            entity_type=entity_type,
            entity_id=entity_id,
            payload=data,
            idempotency_key=idempotency_key,
        )
    if json_output:
        _dump({"id": event.id, "event_type": event.event_type, "status": event.status})
    else:
        _say(f"published {event.event_type} {event.id}")


def _surrogate_path(data: Any, path: str) -> str | None:
    """The path of the first key or text in parsed JSON holding a lone surrogate, or None."""
    stack = [(path, data)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, str):
            if has_surrogates(value):
                return where
        elif isinstance(value, dict):
            for key, item in value.items():
                if has_surrogates(key):
                    return f"{where} key {key!r}"
                stack.append((f"{where}.{visible(key)}", item))
        elif isinstance(value, list):
            stack.extend((f"{where}[{index}]", item) for index, item in enumerate(value))
    return None


@_command()
def dispatch(
    once: Annotated[bool, typer.Option("--once", help="Drain what is due now, then exit.")] = False,
    interval: Annotated[
        float | None,
        typer.Option(
            "--interval",
            min=0.01,
            metavar="SECONDS",
            help="Seconds between ticks (default: OUTBOX_INTERVAL_SECONDS, or 30).",
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size",
            min=1,
            metavar="N",
            help="Events claimed per batch (default: OUTBOX_BATCH_SIZE, or 50).",
        ),
    ] = None,
    max_attempts: MaxAttemptsOpt = None,
    lease_seconds: Annotated[
        float | None,
        typer.Option(
            "--lease-seconds",
            min=0.1,
            metavar="SECONDS",
            help="How long a claim holds an event before another dispatcher may recover it; renewed while "
            "handlers run (default: OUTBOX_LEASE_SECONDS, or 60).",
        ),
    ] = None,
    ordering: Annotated[
        str | None, typer.Option("--ordering", metavar="entity", help="'entity' to keep each entity in order.")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="Do not print the audit log of delivered events.")] = False,
    log_format: Annotated[
        str,
        typer.Option(
            "--log-format",
            metavar="text|json",
            help="'text' (default), or 'json': one JSON object per line on stderr, with a record per delivery "
            "(event_id, event_type, handler, outcome, duration_ms, error).",
        ),
    ] = "text",
    log_only: Annotated[
        bool,
        typer.Option(
            "--log-only",
            help="With no handlers or sinks configured, deliver to the audit log only, as the original does "
            "(events are marked COMPLETED once logged).",
        ),
    ] = False,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            envvar="OUTBOX_CONFIG",
            metavar="FILE",
            help='TOML file naming the handlers (handlers = "module:attr") and the sinks to deliver to '
            "(default: outbox.toml here, if it exists).",
        ),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            min=0,
            max=65535,
            metavar="PORT",
            help="Serve Prometheus metrics on this port (http://HOST:PORT/metrics) while dispatching; "
            "needs the metrics extra.",
        ),
    ] = None,
    metrics_host: Annotated[
        str,
        typer.Option(
            "--metrics-host", metavar="HOST", help="The address the metrics are served on (0.0.0.0: every interface)."
        ),
    ] = "127.0.0.1",
    trace: Annotated[
        bool,
        typer.Option(
            "--trace",
            help="Trace each delivery with OpenTelemetry, on the global tracer provider: set one up with "
            "opentelemetry-instrument or in the handlers' module (needs outbox_admin[tracing]).",
        ),
    ] = False,
    database_url: DatabaseUrl = None,
    json_output: JsonOutput = False,
) -> None:
    """Run the dispatcher in the foreground (Ctrl-C or SIGTERM stops it gracefully).

    It delivers to the handlers and sinks of the config file, after the audit log and the
    in-process bus. With none configured it refuses to start (it would mark events
    COMPLETED that nobody received) unless --log-only says the log is the receiver.
    --trace adds a DeliveryTracer on the global provider, looked up after the handlers'
    module was imported, so that module may configure the SDK.
    """
    import signal
    import threading

    if log_format not in ("text", "json"):
        _fail(f"--log-format takes 'text' or 'json', not {visible(log_format)!r}", EXIT_USAGE)
    _configure_logging(logging.WARNING if quiet else logging.INFO, log_format)
    for noisy in ("apscheduler", "alembic"):  # their INFO lines are about themselves, not the outbox
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from .config import Settings
    from .dispatcher import Dispatcher
    from .handlers import default_handlers, load_deliveries
    from .service import DispatcherService

    if ordering not in (None, "entity"):
        _fail("--ordering takes 'entity'", EXIT_USAGE)
    settings = Settings.from_env()
    overrides: dict[str, Any] = {
        k: v for k, v in {"batch_size": batch_size, "lease_seconds": lease_seconds}.items() if v is not None
    }
    if max_attempts is not None:  # "none" is None once parsed: retry forever
        overrides["max_attempts"] = _attempts(max_attempts)
    deliveries = load_deliveries(config)  # a bad config fails before anything starts
    if not deliveries.targets and not log_only:
        _fail(
            "no handlers are configured, so nothing would receive the events: name them in outbox.toml "
            '(handlers = "myapp.outbox:handlers", or [[sinks]]) or pass --config FILE; '
            "--log-only delivers to the audit log alone",
            EXIT_USAGE,
        )
    tracer = None
    if trace:
        from .tracing import DeliveryTracer

        tracer = DeliveryTracer()  # no opentelemetry: a ConfigurationError, exit 2, before anything starts
    engine = make_engine(database_url or settings.database_url)
    init_db(engine)
    dispatcher = Dispatcher.from_settings(
        engine, settings, handlers=default_handlers() + deliveries.targets, ordering=ordering, **overrides
    )
    if log_format == "json":
        from .logs import DeliveryLog

        dispatcher.add_observer(DeliveryLog(dispatcher=dispatcher.name))
    if tracer is not None:
        dispatcher.add_observer(tracer)
    if once:
        if metrics_port is not None:
            _fail("--metrics-port serves a running dispatcher; --once ends before anything could scrape it", EXIT_USAGE)
        report = dispatcher.drain(max_seconds=None)
        engine.dispose()
        dispatcher.close()
        _print_report(report, json_output)
        return
    service = DispatcherService(
        dispatcher,
        interval_seconds=interval or settings.interval_seconds,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
    )
    stopped = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        stopped.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    service.start()
    started = (
        f"dispatching from {engine.url.render_as_string(hide_password=True)} as {dispatcher.name} "
        f"every {service.interval_seconds:g} s (Ctrl-C to stop)"
    )
    targets = f"delivering to: {', '.join(route.name for route in dispatcher.routes)}"
    lines = [started, targets] + ([f"metrics at {service.metrics_url}"] if service.metrics_url is not None else [])
    if log_format == "json":  # stderr stays one JSON object per line
        for line in lines:
            logging.getLogger("outbox_admin.cli").info("%s", line)
    else:
        for line in lines:
            _say(line, err=True)
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
        _dump(data)
        return
    from rich.table import Table

    columns = (
        "claimed",
        "completed",
        "retried",
        "failed",
        "recovered",
        "released",
        "waiting",
        "lost",
        "ticks",
        "seconds",
        "paused",
    )
    table = Table(*columns)
    table.add_row(*(str(data[k]) if k != "seconds" else f"{data[k]:.2f}" for k in columns))
    _out().print(table)


# --- operations: stats, events, show, requeue, discard, purge -----------------------------

Status = Annotated[
    list[str] | None, typer.Option("--status", metavar="STATUS", help="Status (repeat or comma-separate).")
]
EventTypeOpt = Annotated[
    list[str] | None, typer.Option("--event-type", metavar="TYPE", help="Event type (repeatable).")
]
OrgOpt = Annotated[list[str] | None, typer.Option("--org", metavar="ORG", help="Org id (repeatable).")]
EntityOpt = Annotated[str | None, typer.Option("--entity", metavar="TYPE[/ID]", help="Entity as Type or Type/id.")]
SinceOpt = Annotated[str | None, typer.Option("--since", metavar="TIME", help="Created at or after (ISO 8601).")]
UntilOpt = Annotated[str | None, typer.Option("--until", metavar="TIME", help="Created before (ISO 8601).")]
SearchOpt = Annotated[
    str | None, typer.Option("--search", metavar="TEXT", help="Text in the id, entity id or error message.")
]
ErrorGroupOpt = Annotated[
    str | None,
    typer.Option(
        "--error-group",
        metavar="GROUP",
        help="An error group exactly as stats lists it (ids and numbers as <id>, <n>...); one that matches "
        "no stored error is refused, naming the closest groups.",
    ),
]
PayloadOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--payload",
        metavar="PATH=VALUE",
        help="PATH=VALUE inside the payload, e.g. customer.id=42 (repeatable, all must hold); "
        "VALUE is JSON when it parses, else text: status=ACTIVE; --payload 'name=\"42\"' for the text 42.",
    ),
]
LeaseExpiredOpt = Annotated[
    bool, typer.Option("--lease-expired", help="Only PROCESSING events whose lease expired (stuck).")
]
ScheduledOpt = Annotated[bool, typer.Option("--scheduled", help="Only PENDING events waiting on a backoff.")]


def _filters(
    status: Any = None,
    event_type: Any = None,
    org: Any = None,
    entity: Any = None,
    since: Any = None,
    until: Any = None,
    search: Any = None,
    error_group: Any = None,
    *,
    payload: Any = None,
    lease_expired: bool = False,
    scheduled: bool = False,
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
        payload=payload,
        lease_expired=lease_expired or None,
        scheduled=scheduled or None,
    )


@contextlib.contextmanager
def _engine(database_url: str | None, *, read_only: bool = False) -> Iterator[Any]:
    """An engine on the outbox tables, disposed of whatever happens.

    Commands that change the outbox create or upgrade its tables first. Commands that only
    look (``stats``, ``events``, ``show``) open the database read-only and never migrate it:
    on a database without current tables they say so and exit 1.
    """
    from .migrate import schema_status

    engine = make_engine(database_url, read_only=read_only)
    try:
        if read_only:
            status = schema_status(engine)
            if not status.usable:
                _fail(f"{status.describe()} Run `outbox-admin init` to create or upgrade them.")
        else:
            init_db(engine)
        yield engine
    finally:
        engine.dispose()


def _unknown_group(engine: Any, flt: Any) -> None:
    """After a filter with ``--error-group`` matched nothing: when no stored error belongs to that group,
    say so, list the closest stored groups (exact names, one a line, to copy) and exit 1 (nothing done).

    A group that exists, but not among the events the other filters keep, is a plain "0 events".
    """
    group = getattr(flt, "error_group", None)
    if not group:
        return
    from . import analytics

    check = analytics.check_error_group(engine, group)
    if check.exists:
        return
    _error_line(f"no stored error group is {group!r} (groups are matched exactly, as stats lists them)")
    if check.closest:
        _say(f"the closest of the groups of the newest {check.scanned} errors:", err=True)
        for name in check.closest:
            _say(f"  {name}", err=True)
    elif check.scanned == 0:
        _say("no stored event has an error", err=True)
    else:
        _say(
            f"none of the groups of the newest {check.scanned} errors is close to it; "
            "`outbox-admin stats` lists the top groups",
            err=True,
        )
    raise typer.Exit(EXIT_FAILURE)


def _json_default(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _dump(data: Any) -> None:
    """Print JSON for scripts: valid JSON, with invisible characters as ``\\uXXXX`` escapes."""
    print(visible_json(data, default=_json_default))


def _records(frame: Any) -> list[dict[str, Any]]:
    import pandas as pd

    rows = frame.astype(object).where(pd.notna(frame), None).to_dict(orient="records")
    return [{k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in r.items()} for r in rows]


def _table(frame: Any, columns: list[str], title: str | None = None, widths: dict[str, int] | None = None) -> None:
    """A table of data: every cell and the title are ``Text`` (never markup), made visible."""
    from rich.table import Table

    table = Table(title=Text(visible(title)) if title else None, title_justify="left")
    for name in columns:
        table.add_column(name, overflow="fold", max_width=(widths or {}).get(name), no_wrap=name == "id")
    for record in _records(frame[columns]) if not frame.empty else []:
        table.add_row(*(Text("" if record[c] is None else visible(record[c])) for c in columns))
    _out().print(table)


@_command()
def stats(
    status: Status = None,
    event_type: EventTypeOpt = None,
    org: OrgOpt = None,
    entity: EntityOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    search: SearchOpt = None,
    payload: PayloadOpt = None,
    top: Annotated[int, typer.Option("--top", min=1, max=100, metavar="N", help="How many error groups.")] = 10,
    database_url: DatabaseUrl = None,
    json_output: JsonOutput = False,
) -> None:
    """Counts per status, latency (p50, p95, p99 and max; --json adds mean and p90) and the top error groups."""
    from . import analytics

    flt = _filters(status, event_type, org, entity, since, until, search, payload=payload)
    with _engine(database_url, read_only=True) as engine:
        counts = analytics.status_counts(engine, flt)
        latency = analytics.latency_stats(engine, flt)
        errors = analytics.error_summary(engine, flt, limit=top)
    if json_output:
        _dump({"status_counts": _records(counts), "latency": _records(latency), "errors": _records(errors)})
        return
    _table(counts, ["status", "count"], "Events by status")
    _table(latency.round(4), ["event_type", "events", "p50", "p95", "p99", "max"], "Latency (seconds)")
    _table(
        errors, ["events", "failed", "error_group", "event_types", "last_seen"], "Top error groups", {"error_group": 60}
    )


@_command()
def events(
    status: Status = None,
    event_type: EventTypeOpt = None,
    org: OrgOpt = None,
    entity: EntityOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    search: SearchOpt = None,
    error_group: ErrorGroupOpt = None,
    payload: PayloadOpt = None,
    lease_expired: LeaseExpiredOpt = False,
    scheduled: ScheduledOpt = False,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000, metavar="N", help="Events per page.")] = 50,
    offset: Annotated[
        int, typer.Option("--offset", min=0, metavar="N", help="Skip this many of the newest matching events.")
    ] = 0,
    database_url: DatabaseUrl = None,
    json_output: JsonOutput = False,
) -> None:
    """List events, newest first, with filters."""
    from . import analytics

    flt = _filters(
        status,
        event_type,
        org,
        entity,
        since,
        until,
        search,
        error_group,
        payload=payload,
        lease_expired=lease_expired,
        scheduled=scheduled,
    )
    with _engine(database_url, read_only=True) as engine:
        frame = analytics.events_frame(engine, flt, limit=limit, offset=offset)
        total = analytics.count_events(engine, flt)
        if total == 0:
            _unknown_group(engine, flt)
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


@_command()
def show(
    event_id: Annotated[str, typer.Argument(help="The event id.")],
    database_url: DatabaseUrl = None,
    json_output: JsonOutput = False,
) -> None:
    """One event: its fields, payload and status timeline."""
    from . import analytics

    with _engine(database_url, read_only=True) as engine:
        event = analytics.get_event(engine, event_id)
        timeline = analytics.transitions_frame(engine, event_id) if event else None
    if event is None:
        _fail(f"no event with id {event_id!r}", EXIT_FAILURE)
        return
    if json_output:
        _dump({"event": event, "timeline": _records(timeline)})
        return
    from rich.syntax import Syntax

    for key, value in event.items():
        if key != "payload":
            _out().print(Text.assemble((key, "bold"), ": ", visible("" if value is None else value)))
    _out().print(Syntax(visible_json(event["payload"], indent=2), "json"))
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

    with _engine(database_url) as engine:
        flt_kwargs = {k: kwargs.pop(k) for k in ("filters",) if k in kwargs}
        status = kwargs.pop("status")
        force = kwargs.get("force", False)
        plan = admin.plan_action(engine, action, ids or None, status=status, force=force, **flt_kwargs)  # type: ignore[arg-type]
        name = action.replace("_", "-")  # as the command is spelled
        if plan.count == 0:
            _unknown_group(engine, flt_kwargs.get("filters"))
        if dry_run:
            if json_output:
                _dump({"action": name, "dry_run": True, "count": plan.count, "sample_ids": plan.sample_ids})
            else:
                _say(
                    f"{name} would move {plan.count} event(s) in {', '.join(plan.statuses)}; "
                    f"e.g. {', '.join(plan.sample_ids[:5]) or '-'}"
                )
            return
        if action in ("retry_now", "recover"):  # their events are given by the action itself, not a status
            run = admin.recover_expired if action == "recover" else admin.retry_now
            moved = run(engine, ids or None, **flt_kwargs, **kwargs)
        else:
            moved = getattr(admin, action)(engine, ids or None, status=status, **flt_kwargs, **kwargs)
    if json_output:
        _dump({"action": name, "moved": moved})
    else:
        _say(f"{name}: {moved} event(s) moved")


@_command()
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
    payload: PayloadOpt = None,
    reset_attempts: Annotated[
        bool, typer.Option("--reset-attempts", help="Give them all their attempts again.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Also redeliver PROCESSING or COMPLETED events.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say how many would move.")] = False,
    actor: Annotated[str, typer.Option("--actor", metavar="NAME", help="Who is acting (kept in the history).")] = "cli",
    database_url: DatabaseUrl = None,
    json_output: JsonOutput = False,
) -> None:
    """Move FAILED events (or the given ones) back to PENDING, due now."""
    if not event_ids and not any([status, event_type, org, entity, since, until, search, error_group, payload]):
        status = ["FAILED"]
    flt = _filters(None, event_type, org, entity, since, until, search, error_group, payload=payload)
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


@_command()
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
    payload: PayloadOpt = None,
    reason: Annotated[str | None, typer.Option("--reason", metavar="TEXT", help="Why (kept in the history).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say how many would move.")] = False,
    actor: Annotated[str, typer.Option("--actor", metavar="NAME", help="Who is acting (kept in the history).")] = "cli",
    database_url: DatabaseUrl = None,
    json_output: JsonOutput = False,
) -> None:
    """Set FAILED or PENDING events aside as DISCARDED (kept for the audit trail, never delivered)."""
    if not event_ids and not any([status, event_type, org, entity, since, until, search, error_group, payload]):
        _fail("give event ids or at least one filter (refusing to discard everything)", EXIT_USAGE)
    flt = _filters(None, event_type, org, entity, since, until, search, error_group, payload=payload)
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


@_command("retry-now")
def retry_now(
    event_ids: Annotated[list[str] | None, typer.Argument(help="Event ids (or use filters).")] = None,
    event_type: EventTypeOpt = None,
    org: OrgOpt = None,
    entity: EntityOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    search: SearchOpt = None,
    error_group: ErrorGroupOpt = None,
    payload: PayloadOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say how many would move.")] = False,
    actor: Annotated[str, typer.Option("--actor", metavar="NAME", help="Who is acting (kept in the history).")] = "cli",
    database_url: DatabaseUrl = None,
    json_output: JsonOutput = False,
) -> None:
    """Make PENDING events waiting on a backoff due now (all of them, the given ones, or those matching);
    their attempts are kept."""
    flt = _filters(None, event_type, org, entity, since, until, search, error_group, payload=payload)
    _run_action("retry_now", event_ids, dry_run, json_output, database_url, filters=flt, status=None, actor=actor)


@_command()
def recover(
    event_ids: Annotated[list[str] | None, typer.Argument(help="Event ids (or use filters).")] = None,
    event_type: EventTypeOpt = None,
    org: OrgOpt = None,
    entity: EntityOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    search: SearchOpt = None,
    payload: PayloadOpt = None,
    max_attempts: MaxAttemptsOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say how many would move.")] = False,
    actor: Annotated[str, typer.Option("--actor", metavar="NAME", help="Who is acting (kept in the history).")] = "cli",
    database_url: DatabaseUrl = None,
    json_output: JsonOutput = False,
) -> None:
    """Recover PROCESSING events whose lease expired, as a dispatcher's tick would: back to PENDING as a
    failed attempt (FAILED when it was the last). Events with a live lease are never touched."""
    from .config import Settings

    flt = _filters(None, event_type, org, entity, since, until, search, payload=payload)
    _run_action(
        "recover",
        event_ids,
        dry_run,
        json_output,
        database_url,
        filters=flt,
        status=None,
        max_attempts=_attempts(max_attempts) if max_attempts is not None else Settings.from_env().max_attempts,
        actor=actor,
    )


HandlerOpt = Annotated[
    list[str],
    typer.Option(
        "--handler",
        metavar="NAME",
        help="The name of a handler to send the events to again (repeatable: --handler webhook --handler redis). "
        "Only the named handlers receive them; the others keep what they have.",
    ),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        envvar="OUTBOX_CONFIG",
        metavar="FILE",
        help="The TOML file naming the handlers and sinks, as for dispatch (default: outbox.toml here, if it "
        "exists): --handler names not among them are refused (exit 2). Without one the names are not checked.",
    ),
]


@_command()
def replay(
    event_ids: Annotated[list[str] | None, typer.Argument(help="Event ids (or use filters).")] = None,
    handler: HandlerOpt = ...,  # type: ignore[assignment]  # required: no default
    status: Annotated[
        list[str] | None,
        typer.Option(
            "--status",
            help="Only events in these statuses (COMPLETED, FAILED, DISCARDED; repeat or comma-separate); "
            "events in the others are left alone, also given ids.",
        ),
    ] = None,
    event_type: EventTypeOpt = None,
    org: OrgOpt = None,
    entity: EntityOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    search: SearchOpt = None,
    error_group: ErrorGroupOpt = None,
    payload: PayloadOpt = None,
    config: ConfigOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say how many would be sent again.")] = False,
    actor: Annotated[str, typer.Option("--actor", metavar="NAME", help="Who is acting (kept in the history).")] = "cli",
    database_url: DatabaseUrl = None,
    json_output: JsonOutput = False,
) -> None:
    """Send finished events (COMPLETED, FAILED, DISCARDED) again to the named handlers only.

    Each event keeps its id, goes back to PENDING, due now, with its attempts reset,
    and owes the named handlers a delivery: dispatchers run those handlers alone for
    it. Given ids that are PENDING, PROCESSING or missing refuse the whole replay
    (exit 1) unless --status narrows it. With no ids a filter is needed:
    --status COMPLETED replays every completed event.
    """
    from . import admin

    if not event_ids and not any([status, event_type, org, entity, since, until, search, error_group, payload]):
        _fail(
            "give event ids or at least one filter (refusing to replay everything; "
            "--status COMPLETED,FAILED,DISCARDED means all of it)",
            EXIT_USAGE,
        )
    try:
        names = admin.check_handler_names(handler)
    except AdminActionError as exc:  # "*" or a blank name: bad input
        _fail(str(exc), EXIT_USAGE)
        return
    checked = _check_configured_handlers(names, config)
    flt = _filters(None, event_type, org, entity, since, until, search, error_group, payload=payload)
    wanted = ",".join(status) if status else None
    listed = ", ".join(names)
    with _engine(database_url) as engine:
        if dry_run:
            plan = admin.plan_action(engine, "replay", event_ids or None, status=wanted, filters=flt, handlers=names)
            if plan.count == 0:
                _unknown_group(engine, flt)
            refused = _refused_ids(engine, event_ids) if wanted is None else 0
            if json_output:
                _dump(
                    {
                        "action": "replay",
                        "dry_run": True,
                        "handlers": list(names),
                        "handlers_checked": checked,
                        "count": plan.count,
                        "sample_ids": plan.sample_ids,
                        "refused_ids": refused,
                    }
                )
                return
            _say(
                f"replay would send {plan.count} event(s) in {', '.join(plan.statuses)} again to {listed}; "
                f"e.g. {', '.join(plan.sample_ids[:5]) or '-'}"
            )
            if refused:
                _say(
                    f"note: {refused} of the given ids are not COMPLETED, FAILED or DISCARDED (or do not exist): "
                    "the replay itself refuses them all and sends nothing (--status narrows to the finished ones)",
                    err=True,
                )
            return
        moved = admin.replay(engine, event_ids or None, handlers=names, status=wanted, filters=flt, actor=actor)
        if moved == 0:
            _unknown_group(engine, flt)
    if json_output:
        _dump({"action": "replay", "handlers": list(names), "handlers_checked": checked, "moved": moved})
    else:
        _say(f"replay: {moved} event(s) queued for {listed}")


def _refused_ids(engine: Any, event_ids: list[str] | None) -> int:
    """How many of the given ids make a replay refuse (missing or unfinished): the ids less those
    the dry run of the ids alone, without the other filters, counts."""
    from . import admin

    if not event_ids:
        return 0
    return len(set(event_ids)) - admin.plan_action(engine, "replay", event_ids, sample=0).count


def _check_configured_handlers(names: Sequence[str], config: Path | None) -> bool:
    """Refuse (exit 2) handler names the configuration does not have; True when they were checked.

    The configured names are those of ``handlers = "module:attr"`` and ``[[sinks]]``, what the
    dashboard's dispatcher and ``dispatch`` deliver to. Without a configuration naming any, the
    names cannot be checked: a note says so (a dispatcher lacking one fails the event's attempt,
    naming the handler).
    """
    from .handlers import load_deliveries

    deliveries = load_deliveries(config)  # a bad config is a ConfigurationError: exit 2, as for dispatch
    try:
        configured = deliveries.names
    finally:
        deliveries.close()
    if not configured:
        where = f"{deliveries.origin} names no handlers or sinks" if deliveries.origin else "no configuration"
        _say(
            f"note: {where}, so the handler names were not checked: {', '.join(map(repr, names))} "
            "(a dispatcher without such a handler fails the events, naming it)",
            err=True,
        )
        return False
    unknown = [name for name in names if name not in configured]
    if unknown:
        _fail(
            f"no configured handler is named {', '.join(map(repr, unknown))}; the handlers of "
            f"{deliveries.origin} are: {', '.join(map(repr, configured))}",
            EXIT_USAGE,
        )
    return True


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


@_command()
def purge(
    older_than: Annotated[str, typer.Option("--older-than", metavar="AGE", help="Age such as 7d, 12h, 30min.")],
    status: Annotated[
        list[str] | None,
        typer.Option(
            "--status",
            metavar="STATUS",
            help="Statuses to purge (repeat or comma-separate; default: COMPLETED,DISCARDED).",
        ),
    ] = None,
    batch_size: Annotated[
        int,
        typer.Option(
            "--batch-size",
            min=1,
            max=100_000,
            metavar="N",
            help="Events deleted per transaction, so no transaction holds many locks for long.",
        ),
    ] = 5000,
    database_url: DatabaseUrl = None,
    json_output: JsonOutput = False,
) -> None:
    """Delete old COMPLETED and DISCARDED events (and their history), in batches."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from . import admin

    age = parse_age(older_than)
    if age is None:
        _fail(f"--older-than {older_than!r} is not a duration such as 7d, 12h or 30min", EXIT_USAGE)
        return
    statuses = [s.strip().upper() for item in (status or ["COMPLETED", "DISCARDED"]) for s in item.split(",")]
    with (
        _engine(database_url) as engine,
        Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=_err(),
            disable=json_output,
            transient=True,
        ) as progress,
    ):
        task = progress.add_task("purging", total=None)
        result = admin.purge(
            engine,
            age,
            statuses,
            batch_size=batch_size,
            progress=lambda n: progress.update(task, description=f"purged {n} events"),
        )
    if json_output:
        _dump({"events": result.events, "transitions": result.transitions, "batches": result.batches})
    else:
        _say(f"purged {result.events} events and {result.transitions} history rows in {result.batches} batch(es)")


# --- pauses: pause, resume, pauses -----------------------------------------------------------

PatternArg = Annotated[
    str, typer.Argument(help="An event type, or a glob as handlers use: 'PROJECT.*', '*', '[AB]*' (quote it).")
]
ActorOpt = Annotated[str, typer.Option("--actor", metavar="NAME", help="Who is acting (kept with the pause).")]


def _pause_record(pause: Any) -> dict[str, Any]:
    return {**dataclasses.asdict(pause), "active": pause.active}


def _when(value: Any) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@_command()
def pause(
    pattern: PatternArg,
    reason: Annotated[str, typer.Option("--reason", metavar="TEXT", help="Why (required; shown with the pause).")],
    actor: ActorOpt = "cli",
    database_url: DatabaseUrl = None,
    json_output: JsonOutput = False,
) -> None:
    """Stop every dispatcher claiming events whose type matches PATTERN, until resume (kept PENDING,
    no attempt spent). Pausing a pattern that is paused already keeps that pause and its reason."""
    from . import admin

    with _engine(database_url) as engine:
        paused = admin.pause(engine, pattern, reason=reason, actor=actor)
    if json_output:
        _dump(_pause_record(paused))
    elif paused.created:
        _say(f"paused {paused.pattern}: dispatchers claim no matching event from their next batch on")
    else:
        _say(
            f"{paused.pattern} is paused already, by {paused.paused_by} since {_when(paused.paused_at)}: "
            f"{paused.reason} (that pause is kept)"
        )


@_command()
def resume(
    pattern: PatternArg,
    actor: ActorOpt = "cli",
    database_url: DatabaseUrl = None,
    json_output: JsonOutput = False,
) -> None:
    """End the pause of exactly PATTERN (as listed by 'pauses'); dispatchers claim its events again."""
    from . import admin

    with _engine(database_url) as engine:
        resumed = admin.resume(engine, pattern, actor=actor)
    if json_output:
        _dump(_pause_record(resumed))
    else:
        _say(f"resumed {resumed.pattern} (paused by {resumed.paused_by} since {_when(resumed.paused_at)})")


@_command()
def pauses(
    all_pauses: Annotated[bool, typer.Option("--all", help="The whole history, resumed pauses included.")] = False,
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=10_000, metavar="N", help="At most this many pauses.")
    ] = 200,
    database_url: DatabaseUrl = None,
    json_output: JsonOutput = False,
) -> None:
    """The active pauses (or with --all every pause and resume), newest first."""
    from . import analytics

    with _engine(database_url, read_only=True) as engine:
        frame = analytics.pauses(engine, active_only=not all_pauses, limit=limit)
    if json_output:
        _dump({"pauses": _records(frame)})
        return
    columns = ["pattern", "reason", "paused_by", "paused_at"]
    if all_pauses:
        columns += ["resumed_by", "resumed_at"]
    import pandas as pd

    shown = frame.astype(object)
    for name in ("paused_at", "resumed_at"):
        shown[name] = [None if pd.isna(v) else _when(v) for v in frame[name]]
    title = f"{len(frame)} pause(s), newest first" if all_pauses else f"{len(frame)} active pause(s)"
    _table(shown, columns, title, {"reason": 60})


@_command()
def metrics(
    timeout: Annotated[
        float,
        typer.Option("--timeout", min=0.1, metavar="SECONDS", help="Seconds the database reads may take, together."),
    ] = 10.0,
    database_url: DatabaseUrl = None,
) -> None:
    """Print the database gauges once in Prometheus' text format (for cron or a textfile collector).

    Events per status, lag, expired leases, active pauses and the last claim, read through a
    read-only connection. When the database cannot be read it prints outbox_database_up 0
    (and no other gauge), says why on stderr and exits 1.
    """
    from .metrics import database_metrics_text

    engine = make_engine(database_url or default_database_url(), read_only=True)
    try:
        text, error = database_metrics_text(engine, timeout_seconds=timeout)
    finally:
        engine.dispose()
    sys.stdout.write(text)
    sys.stdout.flush()
    if error is not None:
        _fail(f"the database could not be read: {error}")


@_command("hash-password")
def hash_password(
    stdin: Annotated[bool, typer.Option("--stdin", help="Read the password from the first line of stdin.")] = False,
) -> None:
    """Print a scrypt hash of a password, for the [dashboard.users] table of outbox.toml."""
    from .access import hash_password as make_hash

    if stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True, err=True)
    _out().print(make_hash(password), markup=False, highlight=False, soft_wrap=True)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point (``argv`` defaults to ``sys.argv[1:]``). Every error is one line on stderr,
    ``error: ...``, never a traceback (``--debug`` or ``OUTBOX_DEBUG=1`` logs it), and an exit code:

    - 0 ok;
    - 1 a failure: a refused action, a missing event, the database unreachable or failing;
    - 2 bad usage or bad input: an unknown command or option, a wrong filter, payload or event
      type, text that is not valid UTF-8;
    - 3 an internal error: a bug in outbox-admin or the library (please report it, with the
      ``--debug`` traceback);
    - 130 interrupted (Ctrl-C).
    """
    from sqlalchemy.exc import SQLAlchemyError

    _consoles.clear()  # consoles follow this run's environment and streams
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):  # a character the terminal cannot show is escaped, not fatal
            stream.reconfigure(errors="backslashreplace")
    args = list(sys.argv[1:] if argv is None else argv)
    code: Any = EXIT_OK
    try:
        if not args:  # the help, and the exit code of a usage error, as click does
            app(args=["--help"], prog_name="outbox-admin", standalone_mode=False)
            code = EXIT_USAGE
        else:
            code = app(args=args, prog_name="outbox-admin", standalone_mode=False)
    except typer.TyperException as exc:  # click's: usage errors (2), file errors (1)
        log.debug("usage error", exc_info=True)
        _error_line(exc.format_message())
        code = exc.exit_code
    except typer.Abort:
        _error_line("interrupted")
        code = EXIT_INTERRUPTED
    except OutboxError as exc:
        log.debug("refused", exc_info=True)
        _error_line(str(exc))
        code = EXIT_USAGE if isinstance(exc, ValueError | ConfigurationError) else EXIT_FAILURE
    except SQLAlchemyError as exc:
        log.debug("database error", exc_info=True)
        first = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__])[0]
        _error_line(f"database: {first}")
        code = EXIT_FAILURE
    except Exception as exc:  # noqa: BLE001 - the one place that turns a bug into a line and a code
        log.debug("internal error", exc_info=True)
        _error_line(f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)")
        code = EXIT_INTERNAL
    finally:
        _stop_debug()
    sys.exit(code if isinstance(code, int) else EXIT_OK)

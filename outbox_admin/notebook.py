"""Helpers for the Jupyter notebooks in ``notebooks/`` (and any analyst's own).

- ``open_database(url)`` / ``demo_database()``: an engine on your database, or on
  a temporary SQLite file filled with demo data, so a notebook runs with no setup;
  ``demo_activity`` publishes demo changes while a dispatcher runs.
- ``watch(engine, seconds=...)``: the status counts, refreshed in place in one
  output (one IPython display handle updated, not a page of prints).
- ``failure_breakdown`` (``analytics``) and ``failure_breakdown_figure`` (``charts``): which event types or
  orgs fail; ``throughput_bucket``: a bucket size that suits the history's span.
- ``read_events`` (every matching event, page by page) and ``export_frame``
  (CSV or Parquet).

IPython is imported only inside the functions that display something, so
``import outbox_admin`` never needs it.
"""

from __future__ import annotations

import atexit
import datetime as dt
import html
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
from sqlalchemy import Engine, func, inspect, select

from . import analytics, charts, demo
from .charts import status_color
from .db import init_db, make_engine, read_connection, read_engine
from .errors import ConfigurationError
from .filters import EventFilter, as_filter
from .models import DEFAULT_TABLES, OutboxTables

DEFAULT_DEMO_EVENTS = 120
DEFAULT_WATCH_SECONDS = 10.0
DEFAULT_WATCH_INTERVAL = 1.0
BREAKDOWN_COLUMNS = analytics.BREAKDOWN_COLUMNS
#: Bucket sizes ``throughput_bucket`` picks from, smallest first.
BUCKETS = ("1s", "5s", "10s", "30s", "1min", "5min", "15min", "1h", "6h", "1D", "7D")
EXPORT_FORMATS = (".csv", ".parquet")


# -- databases -----------------------------------------------------------------------


def _remove_later(directory: Path, engine: Engine) -> None:
    def cleanup() -> None:
        engine.dispose()
        shutil.rmtree(directory, ignore_errors=True)

    atexit.register(cleanup)


def demo_database(
    path: str | Path | None = None,
    *,
    events: int = DEFAULT_DEMO_EVENTS,
    seed: int | None = 7,
    fail_share: float = 0.25,
    always_fail_share: float = 0.08,
) -> tuple[str, Engine]:
    """A SQLite file with the outbox tables, the demo schema and ``events`` demo mutations
    dispatched (completed, retried, failed and pending events): ``(url, engine)``.

    ``path=None`` makes a file in a new temporary folder, removed when the Python
    process exits. ``events=0`` leaves the outbox empty.
    """
    if events < 0:
        raise ValueError("events must not be negative")
    if path is None:
        directory = Path(tempfile.mkdtemp(prefix="outbox-notebook-"))
        path = directory / "outbox.db"
    else:
        directory = None
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{path}"
    engine = make_engine(url)
    if directory is not None:
        _remove_later(directory, engine)
    init_db(engine)
    demo.create_demo_schema(engine)
    if events:
        demo.load_demo_data(engine, events, seed=seed, fail_share=fail_share, always_fail_share=always_fail_share)
    return url, engine


def open_database(
    url: str | None = None,
    *,
    demo_events: int = DEFAULT_DEMO_EVENTS,
    seed: int | None = 7,
    tables: OutboxTables = DEFAULT_TABLES,
) -> tuple[str, Engine]:
    """``(url, engine)`` for a notebook's ``DATABASE_URL`` parameter.

    ``None``: a temporary SQLite file with ``demo_events`` demo events (see
    ``demo_database``). A URL (``postgresql://...``, ``sqlite:///...``): an engine
    on that database as it is; nothing is written, and a database without the
    outbox table raises ``ConfigurationError`` saying how to create it.
    """
    if url is None:
        return demo_database(events=demo_events, seed=seed)
    engine = make_engine(url)
    events = tables.events
    try:
        found = inspect(read_engine(engine)).has_table(events.name, schema=events.schema)
    except Exception:
        engine.dispose()
        raise
    if not found:
        engine.dispose()
        raise ConfigurationError(
            f"{engine.url} has no {events.name} table; create it with "
            f"`outbox-admin init --database-url URL` or outbox_admin.init_db(engine)"
        )
    return str(engine.url), engine


def demo_activity(engine: Engine, count: int, **kwargs: Any) -> demo.ActivityReport:
    """``demo.generate_activity``, safe next to a running dispatcher on SQLite.

    Kept for the notebooks: ``generate_activity`` itself now begins each mutation
    with SQLite's write lock (``BEGIN IMMEDIATE``, waiting up to the busy timeout),
    as every transaction on a ``make_engine`` engine does.
    """
    return demo.generate_activity(engine, count, **kwargs)


# -- the live watch ------------------------------------------------------------------


class DisplayHandle(Protocol):
    """What ``IPython.display.display(obj, display_id=True)`` returns."""

    def update(self, obj: Any) -> None: ...


Display = Callable[[Any], DisplayHandle | None]


@dataclass(frozen=True)
class StatusBoard:
    """One refresh of ``watch``: the counts per status, and the change since the last refresh."""

    counts: dict[str, int]
    previous: dict[str, int] | None
    elapsed: float
    seconds: float
    at: dt.datetime
    state: str = "live"  # live, finished or stopped

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def delta(self, status: str) -> int:
        return 0 if self.previous is None else self.counts.get(status, 0) - self.previous.get(status, 0)

    def _heading(self) -> str:
        clock = self.at.strftime("%H:%M:%S UTC")
        if self.state == "live":
            return f"live: {self.elapsed:.1f} s of {self.seconds:g} s, {self.total} events, {clock}"
        return f"{self.state} after {self.elapsed:.1f} s, {self.total} events, {clock}"

    def __str__(self) -> str:
        parts = []
        for status, count in self.counts.items():
            change = self.delta(status)
            parts.append(f"{status} {count}" + (f" ({change:+d})" if change else ""))
        return f"[{self._heading()}] " + " | ".join(parts)

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        badges = []
        for status, count in self.counts.items():
            change = self.delta(status)
            note = f" <small>({change:+d})</small>" if change else ""
            badges.append(
                f'<span style="display:inline-block;margin:2px 6px 2px 0;padding:3px 10px;border-radius:12px;'
                f'background:{status_color(status)};color:white">{html.escape(status)} <b>{count}</b>{note}</span>'
            )
        return (
            f'<div><div style="color:#666;font-size:90%">{html.escape(self._heading())}</div>'
            f"<div>{''.join(badges)}</div></div>"
        )


class _PrintHandle:
    """Outside IPython: each refresh is one printed line."""

    def update(self, obj: Any) -> None:
        print(obj, flush=True)


def _print_display(obj: Any) -> DisplayHandle:
    handle = _PrintHandle()
    handle.update(obj)
    return handle


def default_display() -> Display:
    """IPython's ``display(obj, display_id=True)`` inside a kernel or IPython shell, else printing."""
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        return _print_display
    if get_ipython() is None:
        return _print_display
    return lambda obj: display(obj, display_id=True)


def watch(
    engine: Engine,
    seconds: float = DEFAULT_WATCH_SECONDS,
    interval: float = DEFAULT_WATCH_INTERVAL,
    *,
    step: Callable[[], object] | None = None,
    filters: EventFilter | None = None,
    display: Display | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], object] = time.sleep,
    tables: OutboxTables = DEFAULT_TABLES,
    **loose: Any,
) -> pd.DataFrame:
    """Show the events per status for ``seconds``, refreshed every ``interval`` seconds in place.

    The first refresh is displayed once (``display(board)`` must return a handle,
    as ``IPython.display.display(..., display_id=True)`` does); later ones call
    ``handle.update(board)``, so a notebook shows one live output. ``step()`` runs
    before each wait (to publish some demo activity, for instance). Interrupting
    the kernel stops the watch quietly. Returns every refresh: ``at, elapsed`` and
    one column per status.
    """
    if seconds < 0:
        raise ValueError("seconds must not be negative")
    if interval <= 0:
        raise ValueError("interval must be positive")
    flt = as_filter(filters, **loose)
    show = display or default_display()
    started = clock()
    history: list[dict[str, Any]] = []

    def refresh(previous: StatusBoard | None) -> StatusBoard:
        frame = analytics.status_counts(engine, flt, tables=tables)
        elapsed = min(clock() - started, seconds) if seconds else 0.0
        board = StatusBoard(
            counts=dict(zip(frame["status"], (int(c) for c in frame["count"]), strict=True)),
            previous=None if previous is None else previous.counts,
            elapsed=elapsed,
            seconds=seconds,
            at=dt.datetime.now(dt.UTC),
            state="finished" if elapsed >= seconds else "live",
        )
        history.append({"at": board.at, "elapsed": elapsed, **board.counts})
        return board

    board = refresh(None)
    handle = show(board) or _PrintHandle()
    try:
        while board.state == "live":
            if step is not None:
                step()
            sleep(max(0.0, min(interval, seconds - (clock() - started))))
            board = refresh(board)
            handle.update(board)
    except KeyboardInterrupt:
        handle.update(replace(board, state="stopped"))
    frame = pd.DataFrame(history)
    frame["at"] = pd.to_datetime(frame["at"], utc=True)
    return frame


# -- analysis the notebooks need -----------------------------------------------------


# Kept here under their old names: the notebooks call ``notebook.failure_breakdown(...)``.
failure_breakdown = analytics.failure_breakdown
failure_breakdown_figure = charts.failure_breakdown_figure


def throughput_bucket(engine: Engine, max_buckets: int = 60, *, tables: OutboxTables = DEFAULT_TABLES) -> str:
    """The smallest of ``BUCKETS`` that splits the whole history into at most ``max_buckets``
    buckets, for ``analytics.throughput(engine, bucket)``; ``"1min"`` for an empty history."""
    if max_buckets < 1:
        raise ValueError("max_buckets must be at least 1")
    at = tables.transitions.c.at
    with read_connection(engine) as conn:
        first, last = conn.execute(select(func.min(at), func.max(at))).one()
    if first is None or last is None:
        return "1min"
    span = (last - first).total_seconds()
    for bucket in BUCKETS:
        if span / pd.Timedelta(bucket).total_seconds() < max_buckets:
            return bucket
    return BUCKETS[-1]


def read_events(
    engine: Engine,
    filters: EventFilter | None = None,
    *,
    max_rows: int = 100_000,
    page_size: int = analytics.MAX_PAGE,
    tables: OutboxTables = DEFAULT_TABLES,
    **loose: Any,
) -> pd.DataFrame:
    """Matching events, newest first, at most ``max_rows``: ``analytics.events_frame`` page after
    page (the same columns). Events published meanwhile can shift a page; an event read twice
    is kept once."""
    if max_rows < 1:
        raise ValueError("max_rows must be at least 1")
    flt = as_filter(filters, **loose)
    pages: list[pd.DataFrame] = []
    read = 0
    while read < max_rows:
        size = min(page_size, max_rows - read)
        page = analytics.events_frame(engine, flt, limit=size, offset=read, tables=tables)
        pages.append(page)
        read += len(page)
        if len(page) < size:
            break
    pages = [p for p in pages if not p.empty] or pages[:1]
    frame = pages[0] if len(pages) == 1 else pd.concat(pages, ignore_index=True)
    return frame.drop_duplicates("id", ignore_index=True)


def _plain(frame: pd.DataFrame) -> pd.DataFrame:
    """Dicts and lists (the payload) as JSON text, so every format can store them."""
    converted = {}
    for name in frame.columns:
        column = frame[name]
        if column.dtype == object and any(isinstance(v, dict | list) for v in column):
            converted[name] = [json.dumps(v, ensure_ascii=False) if isinstance(v, dict | list) else v for v in column]
    return frame.assign(**converted) if converted else frame


def export_frame(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write ``frame`` to ``path`` as CSV (``.csv``) or Parquet (``.parquet``, needs pyarrow);
    payloads and other dicts become JSON text. Makes the folder; returns the path."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in EXPORT_FORMATS:
        raise ValueError(f"{path.name}: export to {' or '.join(EXPORT_FORMATS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    data = _plain(frame)
    if suffix == ".csv":
        data.to_csv(path, index=False)
    else:
        data.to_parquet(path, index=False)
    return path

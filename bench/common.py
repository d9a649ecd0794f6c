"""Shared parts of the benchmarks: arguments, throw-away databases, machine facts, repetitions, reports.

Every comparison is measured in the same run and the variants are alternated
(round ``r`` starts with variant ``r mod n``), so a machine that speeds up or
slows down during the run affects every variant alike; each figure is the median
of the repetitions, and ratios are computed from those medians.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from outbox_admin import init_db, make_engine

#: The server the PostgreSQL benchmarks create their throw-away databases on.
PG_ADMIN_URL = os.environ.get("OUTBOX_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS = ("sqlite", "postgres")
REPO = Path(__file__).resolve().parent.parent


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server for the benchmarks cannot be reached."""


# -- arguments ---------------------------------------------------------------------------


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark has."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both", help="database(s) to measure")
    p.add_argument("--json", metavar="PATH", help="also write the results, with the machine's facts, here")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, one repetition: checks the benchmark runs")
    p.add_argument("--repeats", type=int, default=3, help="repetitions; each figure is their median (default 3)")
    p.add_argument("--postgres-url", default=PG_ADMIN_URL, help="server for the throw-away PostgreSQL databases")
    p.add_argument("--quiet", action="store_true", help="no table on stdout")
    return p


def backends(choice: str) -> list[str]:
    return list(BACKENDS) if choice == "both" else [choice]


def repeats(args: argparse.Namespace) -> int:
    return 1 if args.smoke else max(1, args.repeats)


# -- databases ---------------------------------------------------------------------------


def _sqlalchemy_url(url: str) -> str:
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def check_postgres(admin_url: str = PG_ADMIN_URL) -> str:
    """The server's version, or ``PostgresUnavailable``."""
    engine = create_engine(_sqlalchemy_url(admin_url), poolclass=None)
    try:
        with engine.connect() as conn:
            return str(conn.execute(text("SHOW server_version")).scalar_one())
    except Exception as exc:  # noqa: BLE001 - any failure to connect means "not reachable"
        raise PostgresUnavailable(f"{admin_url}: {type(exc).__name__}: {exc}".splitlines()[0]) from exc
    finally:
        engine.dispose()


@contextmanager
def temp_database(backend: str, *, postgres_url: str = PG_ADMIN_URL, migrate: bool = True) -> Iterator[str]:
    """A throw-away database's URL, migrated; dropped (or deleted) afterwards.

    SQLite: a file in a temporary folder. PostgreSQL: ``bench_<uuid>`` created on
    the server of ``postgres_url`` and dropped with ``WITH (FORCE)``.
    """
    if backend == "sqlite":
        folder = tempfile.mkdtemp(prefix="outbox-bench-")
        url = f"sqlite:///{folder}/bench.db"
        try:
            if migrate:
                _migrate(url)
            yield url
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    admin_url = _sqlalchemy_url(postgres_url)
    name = f"bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001
        admin.dispose()
        raise PostgresUnavailable(f"{postgres_url}: {type(exc).__name__}: {exc}".splitlines()[0]) from exc
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        if migrate:
            _migrate(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


class DatabaseTemplate:
    """A migrated database that is never used itself, only copied: ``with template.clone() as url: ...``.

    Each copy is a new database (PostgreSQL ``CREATE DATABASE ... TEMPLATE``, a file copy
    on SQLite) that no connection has touched and that never saw ``ANALYZE``: what
    ``init_db`` gives a user, in a fraction of a second.
    """

    def __init__(self, backend: str, url: str, postgres_url: str) -> None:
        self.backend, self.url, self.postgres_url = backend, url, postgres_url

    @contextmanager
    def clone(self, *, file_copy: bool = False) -> Iterator[str]:
        """A copy of the database. PostgreSQL copies it through the WAL (15's default), or with
        ``file_copy=True`` as files after a checkpoint: for a large database that writes no WAL,
        so the next drain does not meet the checkpoint the copy's WAL would cause."""
        if self.backend == "sqlite":
            source = Path(make_url(self.url).database or "")
            folder = tempfile.mkdtemp(prefix="outbox-bench-")
            target = Path(folder) / "bench.db"
            shutil.copyfile(source, target)
            try:
                yield f"sqlite:///{target}"
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            return
        name = f"bench_{uuid.uuid4().hex[:12]}"
        template = make_url(self.url).database
        admin = create_engine(_sqlalchemy_url(self.postgres_url), isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                strategy = " STRATEGY FILE_COPY" if file_copy else ""
                conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"{strategy}'))
            try:
                yield make_url(self.url).set(database=name).render_as_string(hide_password=False)
            finally:
                with admin.connect() as conn:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        finally:
            admin.dispose()


@contextmanager
def database_template(
    backend: str, *, postgres_url: str = PG_ADMIN_URL, setup: Callable[[str], None] | None = None
) -> Iterator[DatabaseTemplate]:
    """A migrated template (then ``setup(url)``, if given) to clone per sample; dropped afterwards."""
    with temp_database(backend, postgres_url=postgres_url) as url:
        if setup is not None:
            setup(url)
        checkpoint_for_copy(url)
        yield DatabaseTemplate(backend, url, postgres_url)


def checkpoint_for_copy(url: str) -> None:
    """SQLite: move the WAL into the main file, which is what ``DatabaseTemplate.clone`` copies
    (what closing the last connection does anyway); PostgreSQL: nothing."""
    if not url.startswith("sqlite"):
        return
    engine = make_engine(url)
    try:
        _sqlite_maintenance(engine, "PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        engine.dispose()


def pin_statistics(engine: Any, tables: Sequence[str]) -> None:
    """No autovacuum on ``tables`` (PostgreSQL), so their statistics stay what the benchmark made them.

    Autovacuum visits a new database at some moment within a minute and would
    ``ANALYZE`` a freshly loaded table during some samples and not others; with it
    off, "never analyzed" and "analyzed before the burst" hold for the whole drain.
    (A burst smaller than a tenth of the table would not trigger one anyway.)
    SQLite has no automatic ``ANALYZE``: nothing to do.
    """
    if engine.dialect.name != "postgresql":
        return
    with engine.begin() as conn:
        for table in tables:
            conn.exec_driver_sql(
                f"ALTER TABLE {table} SET (autovacuum_enabled = false, toast.autovacuum_enabled = false)"
            )


def analyzed_tables(engine: Any, tables: Sequence[str]) -> int:
    """How many of ``tables`` have planner statistics (PostgreSQL ``pg_stats``, SQLite ``sqlite_stat1``)."""
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            names = [t.strip('"') for t in tables]
            return int(
                conn.exec_driver_sql(
                    "SELECT count(DISTINCT tablename) FROM pg_stats WHERE tablename = ANY(%(names)s)",
                    {"names": names},
                ).scalar_one()
            )
        exists = conn.exec_driver_sql("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_stat1'").first()
        if exists is None:
            return 0
        names = [t.strip('"') for t in tables]
        marks = ",".join("?" * len(names))
        return int(
            conn.exec_driver_sql(
                f"SELECT count(DISTINCT tbl) FROM sqlite_stat1 WHERE tbl IN ({marks})", tuple(names)
            ).scalar_one()
        )


def _migrate(url: str) -> None:
    engine = make_engine(url)
    try:
        init_db(engine)
    finally:
        engine.dispose()


def reset_outbox(engine: Any) -> None:
    """Empty the outbox tables (between repetitions), so every run starts from the same state."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql('TRUNCATE "OutboxEventTransition", "OutboxEvent"')
        else:
            conn.exec_driver_sql('DELETE FROM "OutboxEventTransition"')
            conn.exec_driver_sql('DELETE FROM "OutboxEvent"')
    _sqlite_maintenance(engine, "PRAGMA wal_checkpoint(TRUNCATE)")


def vacuum_analyze(engine: Any) -> None:
    """Fresh statistics after bulk loading, as autovacuum would eventually give.

    The library never runs this. ``bench.dispatch`` runs it only where a state asks
    for it (the table as autovacuum leaves it before a burst, or the old lab state);
    ``bench.memory`` and ``bench.scale`` run it because they measure memory and read
    queries on a settled table, not the dispatcher's first plans.
    """
    if engine.dialect.name == "postgresql":
        with engine.execution_options(isolation_level="AUTOCOMMIT").connect() as conn:
            for table in ('"OutboxEvent"', '"OutboxEventTransition"', '"OutboxEventDelivery"'):
                conn.exec_driver_sql(f"VACUUM ANALYZE {table}")
    else:
        _sqlite_maintenance(engine, "ANALYZE", "PRAGMA wal_checkpoint(TRUNCATE)")


def _sqlite_maintenance(engine: Any, *statements: str) -> None:
    """Statements that must run outside a transaction (the DBAPI connection is in autocommit)."""
    if engine.dialect.name != "sqlite":
        return
    raw = engine.raw_connection()
    try:
        for sql in statements:
            raw.driver_connection.execute(sql).fetchall()
    finally:
        raw.close()


# -- machine facts -----------------------------------------------------------------------


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def machine_facts(postgres_url: str | None = None) -> dict[str, Any]:
    """What the results depend on: CPUs, memory, Python, database and library versions."""
    facts: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "postgresql": None,
        "sqlalchemy": _version("SQLAlchemy"),
        "psycopg": _version("psycopg"),
        "apscheduler": _version("APScheduler"),
        "outbox_admin": _version("outbox_admin"),
        "git": _git_commit(),
    }
    try:
        import psutil

        facts["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:  # pragma: no cover - psutil is a test dependency
        pass
    if postgres_url is not None:
        with suppress(PostgresUnavailable):
            facts["postgresql"] = check_postgres(postgres_url)
    return facts


# -- measuring ---------------------------------------------------------------------------


def alternate(variants: Sequence[tuple[str, Callable[[], Any]]], rounds: int) -> dict[str, list[Any]]:
    """Run each variant once per round; round ``r`` starts at variant ``r mod n``, so drift hits all alike."""
    samples: dict[str, list[Any]] = {name: [] for name, _ in variants}
    n = len(variants)
    for r in range(rounds):
        for name, run in [*variants[r % n :], *variants[: r % n]]:
            samples[name].append(run())
    return samples


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linear between closest ranks."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    k = (len(ordered) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


class Timer:
    """``with Timer() as t: ...; t.seconds``."""

    seconds: float = 0.0

    def __enter__(self) -> Timer:
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._started


# -- reporting ---------------------------------------------------------------------------


@dataclass
class Report:
    """Rows, ratios and targets of one benchmark run; printed as a table and written as JSON."""

    benchmark: str
    params: dict[str, Any]
    results: list[dict[str, Any]] = field(default_factory=list)
    ratios: list[dict[str, Any]] = field(default_factory=list)
    targets: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    started_at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))

    def add(self, db: str, case: str, samples: Sequence[float], unit: str = "events/s", **extra: Any) -> float:
        """One row: the median of ``samples``; returns it."""
        value = median(samples)
        self.results.append(
            {"db": db, "case": case, "value": value, "unit": unit, "samples": [float(s) for s in samples], **extra}
        )
        return value

    def value(self, db: str, case: str) -> float | None:
        for row in self.results:
            if row["db"] == db and row["case"] == case:
                return float(row["value"])
        return None

    def ratio(self, db: str, name: str, numerator: float | None, denominator: float | None) -> float | None:
        """A ratio of two medians (``None`` when either is missing)."""
        if numerator is None or not denominator:
            return None
        value = numerator / denominator
        self.ratios.append({"db": db, "name": name, "value": value})
        return value

    def target(self, db: str, name: str, value: float | None, op: str, threshold: float, unit: str = "") -> None:
        """A target from the issue: ``value op threshold`` (``>=`` or ``<=``)."""
        met = None if value is None else (value >= threshold if op == ">=" else value <= threshold)
        self.targets.append(
            {"db": db, "name": name, "value": value, "op": op, "threshold": threshold, "unit": unit, "met": met}
        )

    def as_dict(self, machine: dict[str, Any]) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark,
            "started_at": self.started_at,
            "params": self.params,
            "machine": machine,
            "results": self.results,
            "ratios": self.ratios,
            "targets": self.targets,
            "notes": self.notes,
        }

    def finish(self, args: argparse.Namespace) -> dict[str, Any]:
        """Print the table (unless ``--quiet``), write ``--json``, return the results as a dict."""
        uses_postgres = "postgres" in backends(args.db)
        data = self.as_dict(machine_facts(args.postgres_url if uses_postgres else None))
        if not args.quiet:
            print_report(data)
        if args.json:
            path = Path(args.json)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(data, indent=2, default=str) + "\n")
        return data


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if unit == "events/s" or abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def print_report(data: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 150)
    table = Table(title=f"bench.{data['benchmark']}  {data['params']}", title_justify="left")
    for column in ("db", "case", "median", "unit", "min-max", "detail"):
        table.add_column(column, justify="right" if column in ("median", "min-max") else "left")
    for row in data["results"]:
        samples = row["samples"]
        spread = f"{_fmt(min(samples), row['unit'])}-{_fmt(max(samples), row['unit'])}" if len(samples) > 1 else ""
        table.add_row(
            row["db"], row["case"], _fmt(row["value"], row["unit"]), row["unit"], spread, str(row.get("detail", ""))
        )
    console.print(table)
    if data["ratios"]:
        ratios = Table(title="ratios (of medians)", title_justify="left")
        for column in ("db", "ratio", "value"):
            ratios.add_column(column, justify="right" if column == "value" else "left")
        for r in data["ratios"]:
            ratios.add_row(r["db"], r["name"], f"{r['value']:.2f}x")
        console.print(ratios)
    if data["targets"]:
        targets = Table(title="targets", title_justify="left")
        for column in ("db", "target", "measured", "met"):
            targets.add_column(column)
        for t in data["targets"]:
            met = {True: "[green]yes[/green]", False: "[red]NO[/red]", None: "-"}[t["met"]]
            targets.add_row(t["db"], f"{t['name']} {t['op']} {t['threshold']:g}{t['unit']}", _fmt(t["value"]), met)
        console.print(targets)
    for note in data.get("notes", []):
        console.print(f"note: {note}")


def run_main(main: Callable[[list[str] | None], Any]) -> None:
    """``if __name__ == "__main__"`` body: run, and exit 2 with a message when PostgreSQL is unreachable."""
    try:
        main(sys.argv[1:])
    except PostgresUnavailable as exc:
        print(f"PostgreSQL is not reachable: {exc}", file=sys.stderr)
        raise SystemExit(2) from None

"""What the delivery ledger costs the dispatcher: before it, and now with one and with three handlers.

    python -m bench.fanout --db both [--handlers 1,3] [--baseline-ref d0edfad] [--repeats 5]

Issue 15, point 5: with one handler, dispatch throughput at batch 500 stays within 15% of
the dispatcher before the ledger in every statistics state (same run); with three
handlers, report it. Measured side by side, interleaved, in one run:

- ``pre-ledger``: the library and ``bench.dispatch`` of commit ``--baseline-ref`` (default
  d0edfad, the commit before the ledger), extracted with ``git archive`` into a temporary
  folder and run from there in child processes (that folder first on their ``sys.path``),
  its own ``library`` worker: ``Dispatcher(engine, [noop], batch_size=500).drain()``;
- ``1 handler``: the same worker of this checkout (the ledger read after each claim, the
  ledger rows in each finish);
- ``3 handlers``: this checkout with three no-op handlers of distinct names (each event
  gets three ledger rows); ``--handlers`` chooses the counts.

Each sample drains ``--events`` PENDING events at batch ``--batch`` (500) with 1 process
(SQLite) or 1 and 2 (PostgreSQL), in each state of ``bench.dispatch`` (first burst,
after steady state, after ANALYZE; its ``prepare`` makes them, and says exactly what
runs: seeding, the ledger rows of the steady state's COMPLETED events, ``VACUUM
ANALYZE`` where the state has it, nothing else). Per repetition and state one database
is prepared and every variant drains its own copy of it (PostgreSQL ``CREATE DATABASE
... TEMPLATE ... STRATEGY FILE_COPY``, a file copy on SQLite after the WAL is moved into
the file), so the variants meet the very same rows and statistics; autovacuum is off on
the tables a drain writes, as in ``bench.dispatch``. The variants of a state run back to
back, in an order that rotates with the repetition, and so do the states: the ratios
pair samples taken within a minute of each other. Each variant runs through the same
path: a ``python -c`` process with its checkout first on ``sys.path`` calls that
checkout's ``bench.dispatch.run_workers``, which starts the dispatcher processes, lets
them connect, and times them from "go" to the last finish. After each drain every event
must be COMPLETED, and for this checkout the ledger must hold one row per event and
handler.

Printed: events/s per variant (median, min-max), ``1 handler / pre-ledger`` per state
and process count (target >= 0.85), ``3 handlers / 1 handler``, both also as the median
and range of the per-repetition ratios (``paired``), which shows how noisy the run was;
the machine's load average at each sample is in the notes. ``--smoke``: tiny sizes,
one repetition, one process, threads instead of dispatcher processes.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from outbox_admin import Dispatcher, make_engine
from outbox_admin.models import DEFAULT_TABLES

from . import dispatch
from .common import (
    REPO,
    DatabaseTemplate,
    Report,
    backends,
    checkpoint_for_copy,
    database_template,
    median,
    parser,
    repeats,
    run_main,
)
from .dispatch import STATES, noop, prepare, run_workers, status_counts

DEFAULT_BASELINE = "d0edfad"
LEDGER = DEFAULT_TABLES.deliveries


class Noop:
    """A no-op handler with a name of its own (a dispatcher's handlers have unique names)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, event: Any) -> None:
        """Does nothing, so the outbox's own cost is what is measured."""


def handlers(count: int) -> list[Any]:
    """``count`` no-op handlers: ``bench.dispatch.noop`` first, as the one-handler worker has it."""
    return [noop, *(Noop(f"noop-{n}") for n in range(2, count + 1))]


def library_handlers(sync: Any, url: str, arg: Sequence[int]) -> int:
    """A dispatcher worker (``bench.dispatch``'s ``library``) with ``arg = (batch, handler count)``."""
    batch, count = arg
    engine = make_engine(url)
    dispatcher = Dispatcher(engine, handlers(count), batch_size=batch)
    with engine.connect() as conn:  # connect before "go"
        conn.exec_driver_sql("SELECT 1")

    def run() -> int:
        return dispatcher.drain(max_seconds=None).completed

    return int(sync.go(run, engine))


# -- the variants and how one is run -------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One dispatcher to measure: its label, the checkout it runs from, and the worker it runs there."""

    label: str  # "pre-ledger", "1 handler", "3 handlers"
    checkout: Path
    kind: str  # bench.dispatch's "library", or "module:function" of a worker
    arg: Any
    handlers: int | None  # handlers of this checkout's dispatcher (None: the baseline, which has no ledger)

    @property
    def baseline(self) -> bool:
        return self.handlers is None


#: Run by ``python -c`` with a checkout first on ``sys.path``: its ``bench.dispatch.run_workers`` times the drain.
_RUNNER = """
import importlib, json, sys
sys.path.insert(0, sys.argv[1])
import outbox_admin
from bench import dispatch
kind, arg, processes = sys.argv[3], json.loads(sys.argv[4]), int(sys.argv[5])
if ":" in kind:
    module, name = kind.split(":")
    kind = getattr(importlib.import_module(module), name)
done, seconds = dispatch.run_workers(kind, sys.argv[2], arg, processes, threads=sys.argv[6] == "threads")
print(json.dumps({"done": done, "seconds": seconds, "library": outbox_admin.__file__}))
"""


def run_variant(variant: Variant, url: str, processes: int, *, threads: bool) -> tuple[int, float]:
    """Drain ``url`` with ``variant`` in a process of its checkout; (events completed, seconds)."""
    env = {**os.environ, "PYTHONPATH": str(variant.checkout)}
    args = [str(variant.checkout), url, variant.kind, json.dumps(variant.arg), str(processes)]
    result = subprocess.run(
        [sys.executable, "-c", _RUNNER, *args, "threads" if threads else "processes"],
        cwd=variant.checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{variant.label}: the drain failed:\n{result.stderr[-3000:]}")
    data = json.loads(result.stdout.strip().splitlines()[-1])
    library = Path(data["library"]).resolve()
    if not library.is_relative_to(variant.checkout.resolve()):
        raise RuntimeError(f"{variant.label}: ran the library of {library}, not of {variant.checkout}")
    return int(data["done"]), float(data["seconds"])


@contextlib.contextmanager
def baseline_checkout(ref: str) -> Iterator[Path]:
    """The library and benchmarks of commit ``ref`` of this repository, in a temporary folder."""
    try:
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", "--format=tar", ref, "outbox_admin", "bench"],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        stderr = getattr(exc, "stderr", b"") or b""
        why = stderr.decode(errors="replace").strip() or exc
        raise SystemExit(f"cannot read commit {ref!r} of {REPO}: {why}") from None
    with tempfile.TemporaryDirectory(prefix=f"outbox-baseline-{ref}-") as folder:
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(folder, filter="data")
        yield Path(folder)


def variants_for(baseline: Path, counts: Sequence[int], batch: int) -> list[Variant]:
    """The pre-ledger dispatcher, then this checkout's with each handler count."""
    out = [Variant("pre-ledger", baseline, "library", batch, None)]
    for count in counts:
        label = f"{count} handler{'s' if count != 1 else ''}"
        if count == 1:  # the very worker the baseline runs, from this checkout
            out.append(Variant(label, REPO, "library", batch, 1))
        else:
            out.append(Variant(label, REPO, "bench.fanout:library_handlers", [batch, count], count))
    return out


def _rotated(items: Sequence[Any], by: int) -> list[Any]:
    by %= len(items)
    return [*items[by:], *items[:by]]


def ledger_rows(url: str) -> int:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(LEDGER)).scalar_one())
    finally:
        engine.dispose()


def drain_copy(
    prepared: DatabaseTemplate, variant: Variant, processes: int, events: int, already: int, *, smoke: bool
) -> float:
    """One sample: a copy of the prepared database drained by ``variant``; events/s."""
    with prepared.clone(file_copy=True) as url:
        if smoke and not variant.baseline:  # no interpreter start per sample: this checkout is this process
            done, seconds = run_workers(
                variant.kind if variant.handlers == 1 else library_handlers, url, variant.arg, processes, threads=True
            )
        else:
            done, seconds = run_variant(variant, url, processes, threads=smoke)
        engine = make_engine(url)
        try:
            counts = status_counts(engine)
        finally:
            engine.dispose()
        ledger = ledger_rows(url)
    where = f"{variant.label} x{processes}"
    if done != events or counts.get("COMPLETED", 0) != already + events or len(counts) != 1:
        raise RuntimeError(f"{where}: completed {done} of {events} events; the database shows {counts}")
    expected = already + (0 if variant.handlers is None else events * variant.handlers)
    if ledger != expected:
        raise RuntimeError(f"{where}: {ledger} ledger rows, expected {expected}")
    return done / seconds


def bench_backend(backend: str, report: Report, args: Any, baseline: Path) -> None:
    events, completed = args.events, args.completed
    variants = variants_for(baseline, args.handler_counts, args.batch)
    processes = [1] if backend == "sqlite" or args.smoke else args.processes
    cases = [(v, p) for v in variants for p in processes]
    samples: dict[tuple[str, str, int], list[float]] = {}
    loads: list[float] = []
    with database_template(backend, postgres_url=args.postgres_url, setup=dispatch.pin_outbox) as template:
        for round_ in range(repeats(args)):
            for state in _rotated(STATES, round_):
                with template.clone() as prepared_url:
                    engine = make_engine(prepared_url)
                    try:
                        already = prepare(engine, state, events, completed)
                    finally:
                        engine.dispose()
                    checkpoint_for_copy(prepared_url)
                    prepared = DatabaseTemplate(backend, prepared_url, args.postgres_url)
                    for variant, p in _rotated(cases, round_):
                        loads.append(os.getloadavg()[0])
                        rate = drain_copy(prepared, variant, p, events, already, smoke=args.smoke)
                        samples.setdefault((state, variant.label, p), []).append(rate)
    detail = f"{events:,} events, batch {args.batch}"
    for state in STATES:
        for variant, p in cases:
            extra = f"; {completed:,} COMPLETED before" if state == dispatch.STEADY else ""
            what = f"commit {args.baseline_ref}" if variant.baseline else "this checkout"
            report.add(
                backend,
                f"{state}: {variant.label} x{p}",
                samples[(state, variant.label, p)],
                detail=f"{detail}{extra}; {what}",
                state=state,
            )
    _ratios(backend, report, samples, variants, processes)
    report.notes.append(
        f"{backend}: 1-minute load average at the samples' start {min(loads):.2f}-{max(loads):.2f} "
        f"(the machine has {os.cpu_count()} CPUs)"
    )


def _ratios(
    backend: str,
    report: Report,
    samples: dict[tuple[str, str, int], list[float]],
    variants: Sequence[Variant],
    processes: Sequence[int],
) -> None:
    """Ratios of medians with their targets, and the per-repetition (paired) ratios as rows."""
    labels = [v.label for v in variants]
    pairs = [(label, "pre-ledger") for label in labels if label == "1 handler"]
    pairs += [(label, "1 handler") for label in labels if label not in ("pre-ledger", "1 handler")]
    if "1 handler" not in labels:
        pairs += [(label, "pre-ledger") for label in labels if label != "pre-ledger"]
    for state in STATES:
        for p in processes:
            for top, bottom in pairs:
                over, under = samples[(state, top, p)], samples[(state, bottom, p)]
                name = f"{state}: {top} / {bottom} x{p}"
                value = report.ratio(backend, name, median(over), median(under))
                report.add(backend, f"{name}, paired", [a / b for a, b in zip(over, under, strict=True)], unit="x")
                if (top, bottom) == ("1 handler", "pre-ledger"):
                    report.target(backend, name, value, ">=", 0.85)


def _counts(option: str, text: str) -> list[int]:
    """``1,3`` as [1, 3]: counts of at least 1."""
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise SystemExit(f"{option} takes counts such as 1,3, not {text!r}") from None
    if not counts or any(c < 1 for c in counts):
        raise SystemExit(f"{option} takes counts of at least 1, not {text!r}")
    return sorted(set(counts))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--handlers", default="1,3", help="handler counts of this checkout's dispatcher (default 1,3)")
    p.add_argument(
        "--baseline-ref",
        default=DEFAULT_BASELINE,
        help=f"the commit of this repository to compare with (default {DEFAULT_BASELINE}, before the ledger)",
    )
    p.add_argument("--batch", type=int, default=500, help="batch size of every dispatcher (default 500)")
    p.add_argument("--events", type=int, default=20_000, help="PENDING events to drain per sample (default 20000)")
    p.add_argument(
        "--completed",
        type=int,
        default=100_000,
        help="COMPLETED events already in the table in the steady state (default 100000)",
    )
    p.add_argument(
        "--processes", default="1,2", help="dispatcher processes on PostgreSQL (default 1,2; SQLite: always 1)"
    )
    args = p.parse_args(argv)
    args.handler_counts = _counts("--handlers", args.handlers)
    args.processes = _counts("--processes", args.processes)
    if args.smoke:
        args.events, args.completed = 300, 1000
    report = Report(
        "fanout",
        {
            "events": args.events,
            "completed": args.completed,
            "batch": args.batch,
            "handlers": args.handler_counts,
            "baseline": args.baseline_ref,
            "repeats": repeats(args),
        },
    )
    with baseline_checkout(args.baseline_ref) as baseline:
        for backend in backends(args.db):
            bench_backend(backend, report, args, baseline)
    return report.finish(args)


if __name__ == "__main__":
    run_main(main)

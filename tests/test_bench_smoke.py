"""The benchmarks' smoke mode (tiny sizes, seconds), so ``bench/`` never rots; full runs are not CI."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

from .services import PG_ADMIN_URL

BENCHMARKS = ["publish", "dispatch", "fanout", "latency", "memory"]
MACHINE_KEYS = {"cpu_count", "cpu_model", "python", "sqlite", "postgresql", "sqlalchemy", "psycopg", "apscheduler"}


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
@pytest.mark.parametrize("name", BENCHMARKS)
def test_smoke_mode_runs_and_writes_its_json(name: str, backend: str, request: pytest.FixtureRequest, tmp_path: Path):
    if backend == "postgres":
        request.getfixturevalue("postgres_databases")  # skips (or fails under CI) when PostgreSQL is unreachable
    bench = importlib.import_module(f"bench.{name}")
    out = tmp_path / f"{name}.json"
    argv = ["--smoke", "--quiet", "--db", backend, "--json", str(out), "--postgres-url", PG_ADMIN_URL]
    returned = bench.main(argv)

    data = json.loads(out.read_text())
    assert data["benchmark"] == name == returned["benchmark"]
    assert set(data["machine"]) >= MACHINE_KEYS
    assert data["machine"]["cpu_count"] >= 1
    assert (data["machine"]["postgresql"] is not None) == (backend == "postgres")
    assert data["results"], "no result rows"
    for row in data["results"]:
        assert row["db"] == backend
        assert row["value"] > 0 and all(s > 0 for s in row["samples"]), row
    assert all(r["value"] > 0 for r in data["ratios"])
    assert data["targets"] and all({"name", "value", "op", "threshold", "met"} <= set(t) for t in data["targets"])


def test_peers_smoke_measures_both_libraries(postgres_databases: object, tmp_path: Path) -> None:
    """``bench.peers --smoke``: ours and pgqueuer, throughput and wake latency, on the test server."""
    for module in ("pgqueuer", "asyncpg"):
        # An optional extra (bench, in dev), not a service: skipped, also under OUTBOX_REQUIRE_SERVICES.
        pytest.importorskip(module, reason=f"{module} is not installed: pip install -e '.[bench]'")
    bench = importlib.import_module("bench.peers")
    out = tmp_path / "peers.json"
    returned = bench.main(["--smoke", "--quiet", "--json", str(out), "--postgres-url", PG_ADMIN_URL])
    data = json.loads(out.read_text())
    assert data["benchmark"] == "peers" == returned["benchmark"]
    cases = {row["case"] for row in data["results"]}
    assert {"wake latency, other process: ours", "wake latency, other process: pgqueuer"} <= cases
    assert any(c.startswith("throughput: ours") for c in cases)
    assert any(c.startswith("throughput: pgqueuer") for c in cases)
    assert all(row["value"] > 0 for row in data["results"])
    assert {t["name"] for t in data["targets"]} >= {"ours b500 x2 / pgqueuer best"}


def test_dispatch_smoke_covers_every_state(tmp_path: Path) -> None:
    """Every state of ``bench.dispatch`` is measured, each with the library and the raw loop."""
    from bench.dispatch import STATES, variants_for

    for backend in ("sqlite", "postgres"):
        for smoke in (True, False):
            cases = [case for case, *_ in variants_for(backend, 1.0, smoke=smoke)]
            assert len(cases) == len(set(cases))
            for state in STATES:
                assert f"{state}: library b500 x1" in cases
                assert f"{state}: raw SQL limit x1" in cases
    full = [case for case, *_ in variants_for("postgres", 1.0)]
    assert {f"after steady state: library b{b} x1" for b in (50, 200, 500, 1000)} <= set(full)
    assert all(f"{state}: library b500 x2" in full for state in STATES)


def test_fanout_compares_with_the_dispatcher_before_the_ledger() -> None:
    """``bench.fanout`` runs the baseline from its own commit, and pairs every variant in every state."""
    from bench.fanout import DEFAULT_BASELINE, baseline_checkout, variants_for

    with baseline_checkout(DEFAULT_BASELINE) as folder:
        assert (folder / "outbox_admin" / "dispatcher.py").is_file() and (folder / "bench" / "dispatch.py").is_file()
        assert "OutboxEventDelivery" not in (folder / "outbox_admin" / "models.py").read_text(), "before the ledger"
        variants = variants_for(folder, [1, 3], 500)
    assert [(v.label, v.handlers) for v in variants] == [("pre-ledger", None), ("1 handler", 1), ("3 handlers", 3)]
    assert variants[0].checkout == folder and variants[0].kind == variants[1].kind == "library", "the same worker"


def test_seed_writes_realistic_rows(sqlite_url: str) -> None:
    from sqlalchemy import func, select

    from bench.seed import seed
    from outbox_admin import make_engine
    from outbox_admin.models import DEFAULT_TABLES

    events, transitions = DEFAULT_TABLES.events, DEFAULT_TABLES.transitions
    engine = make_engine(sqlite_url)
    try:
        seed(engine, 2000)
        with engine.connect() as conn:
            statuses = dict(conn.execute(select(events.c.status, func.count()).group_by(events.c.status)).all())
            assert set(statuses) == {"COMPLETED", "PENDING", "FAILED", "PROCESSING"}
            assert sum(statuses.values()) == 2000
            types = set(conn.execute(select(events.c.event_type).distinct()).scalars())
            assert types == {"PROJECT.CREATED", "PROJECT.UPDATED", "PROJECT.ARCHIVED"}
            assert conn.scalar(select(func.count(events.c.org_id.distinct()))) > 3
            failed = conn.execute(select(events).where(events.c.status == "FAILED").limit(1)).one()
            assert failed.retry_count == 5 and failed.error_message
            done = conn.execute(select(events).where(events.c.status == "COMPLETED").limit(1)).one()
            assert done.processed_at > done.created_at
            # every event's history starts with its publication and ends in its current status
            first = conn.execute(
                select(func.count()).where(transitions.c.from_status.is_(None), transitions.c.to_status == "PENDING")
            ).scalar_one()
            assert first == 2000
            last_ids = select(func.max(transitions.c.id)).group_by(transitions.c.event_id).scalar_subquery()
            mismatched = conn.execute(
                select(func.count())
                .select_from(transitions.join(events, events.c.id == transitions.c.event_id))
                .where(transitions.c.id.in_(last_ids), transitions.c.to_status != events.c.status)
            ).scalar_one()
            assert mismatched == 0
        seed(engine, 100, mix={"PENDING": 1}, retry_fraction=0)  # a second run adds, with fresh ids
        with engine.connect() as conn:
            assert conn.scalar(select(func.count()).select_from(events)) == 2100
    finally:
        engine.dispose()


def test_outage_smoke_dead_letters_nothing_with_breakers(tmp_path: Path) -> None:
    """``bench.outage --smoke``: a private redis-server down for 2 s; the breaker row must be 0 FAILED."""
    from .sinks_support import private_redis

    private_redis(tmp_path)  # skips (or fails under CI) when redis-server is not installed
    bench = importlib.import_module("bench.outage")
    out = tmp_path / "outage.json"
    bench.main(["--smoke", "--quiet", "--db", "sqlite", "--json", str(out)])
    data = json.loads(out.read_text())
    failed = {row["case"]: row["value"] for row in data["results"]}
    assert failed["breakers (default): FAILED events"] == 0
    assert failed["breakers (default): attempts spent"] < failed["no breakers: attempts spent"]
    assert all(t["met"] for t in data["targets"])


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_scale_smoke_renders_every_page_in_both_states(backend: str, request: pytest.FixtureRequest, tmp_path: Path):
    """``bench.scale --smoke``: every page through AppTest, both states, and the open Overview's CPU."""
    if backend == "postgres":
        request.getfixturevalue("postgres_databases")
    main = sys.modules.get("__main__")
    bench = importlib.import_module("bench.scale")
    out = tmp_path / "scale.json"
    try:
        bench.main(["--smoke", "--quiet", "--db", backend, "--json", str(out), "--postgres-url", PG_ADMIN_URL])
    finally:
        if main is not None:
            sys.modules["__main__"] = main
    data = json.loads(out.read_text())
    cases = {row["case"] for row in data["results"]}
    for state in ("never analysed", "stale statistics after a burst"):
        for page in ("Overview, 7 days", "Events, search '503'", "Failures", "Publish"):
            assert f"{state}: {page}" in cases
        assert f"{state}: open Overview, 1 hour, share of a core" in cases
    assert all(row["value"] > 0 for row in data["results"])
    assert {t["name"] for t in data["targets"]} >= {"never analysed: Overview, 7 days, first and median"}

"""Prometheus metrics (outbox_admin.metrics): the real HTTP endpoint scraped while a service dispatches,
the database gauges against the database, the CLI's text, and a database that is down or hangs."""

from __future__ import annotations

import datetime as dt
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, update
from sqlalchemy.exc import OperationalError

from outbox_admin import ConfigurationError, Dispatcher, DispatcherService, admin, make_engine
from outbox_admin.breaker import BreakerPolicy
from outbox_admin.handlers.base import DeliveredEvent, RecordingHandler
from outbox_admin.metrics import DatabaseCollector, DispatchMetrics, MetricsServer
from outbox_admin.models import DEFAULT_TABLES
from outbox_admin.reads import time_limited

from .cli_support import clean_env, run_main
from .services import free_port
from .sinks_support import NO_WAIT, publish_demo, wait_until

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition text, by name and sorted labels."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def scrape(url: str) -> Samples:
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name`` over the samples that have ``labels`` (and any others)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


class Refuses:
    """Refuses one entity's events, always; delivers the rest."""

    name = "refuses"

    def __init__(self, entity_id: str) -> None:
        self.entity_id = entity_id

    def __call__(self, event: DeliveredEvent) -> None:
        if event.entity_id == self.entity_id:
            raise ValueError("refused")


def test_the_endpoint_counts_what_a_running_service_does(engine: Engine) -> None:
    events = publish_demo(engine, 5)
    good = RecordingHandler(name="good")
    dispatcher = Dispatcher(engine, [good, Refuses("p-3")], backoff=NO_WAIT, max_attempts=2)
    service = DispatcherService(dispatcher, interval_seconds=30, metrics_port=0)
    assert service.metrics_url is None  # not serving before start
    with service:
        url = service.metrics_url
        assert url is not None and url.startswith("http://127.0.0.1:")
        wait_until(
            lambda: (
                total(scrape(url), "outbox_events_finished_total", outcome="failed") == 1
                and total(scrape(url), "outbox_events_finished_total", outcome="completed") == 4
            ),
            30,
            "the dispatch to be counted",
        )
        samples = scrape(url)
    assert service.metrics_url is None
    with pytest.raises(httpx.TransportError):  # stopped: nothing listens any more
        httpx.get(url, timeout=2)
    finished = "outbox_events_finished_total"
    assert value(samples, "outbox_events_claimed_total") == 6  # p-3 twice
    assert value(samples, finished, event_type="PROJECT.UPDATED", outcome="retried") == 1  # p-3 is an UPDATED
    assert value(samples, finished, event_type="PROJECT.UPDATED", outcome="failed") == 1
    assert value(samples, finished, event_type="PROJECT.CREATED", outcome="completed") == 3
    assert value(samples, finished, event_type="PROJECT.UPDATED", outcome="completed") == 1
    deliveries = "outbox_deliveries_total"
    assert value(samples, deliveries, handler="good", outcome="delivered") == 5  # the retry ran only "refuses"
    assert value(samples, deliveries, handler="good", outcome="failed") == 0
    assert value(samples, deliveries, handler="refuses", outcome="delivered") == 4
    assert value(samples, deliveries, handler="refuses", outcome="failed") == 2
    assert value(samples, "outbox_handler_duration_seconds_count", handler="good") == 5
    assert value(samples, "outbox_handler_duration_seconds_count", handler="refuses") == 6
    assert value(samples, "outbox_delivery_latency_seconds_count", handler="good") == 5
    assert value(samples, "outbox_delivery_latency_seconds_count", handler="refuses") == 4
    assert (value(samples, "outbox_tick_duration_seconds_count") or 0) >= 2
    assert abs((value(samples, "outbox_dispatcher_last_tick_timestamp_seconds") or 0) - time.time()) < 60
    # the database gauges, read at the scrape
    assert value(samples, "outbox_database_up") == 1
    assert value(samples, "outbox_events", status="COMPLETED") == 4
    assert value(samples, "outbox_events", status="FAILED") == 1
    assert value(samples, "outbox_events", status="PENDING") == 0
    assert value(samples, "outbox_oldest_due_event_age_seconds") == 0
    assert value(samples, "outbox_expired_leases") == 0
    assert abs((value(samples, "outbox_last_claim_timestamp_seconds") or 0) - time.time()) < 60
    # one event failing twice is not a failing handler
    assert value(samples, "outbox_circuit_breaker_open", handler="good") == 0
    assert value(samples, "outbox_circuit_breaker_open", handler="refuses") == 0
    assert sorted(e["id"] for e in events) == sorted(set(good.ids))


def test_the_gauges_are_what_the_database_holds(engine: Engine) -> None:
    first, second, later = (e["id"] for e in publish_demo(engine, 3))
    stuck = Dispatcher(engine, [], lease_seconds=0.001, name="gone", batch_size=1)
    stuck._claim()  # the oldest event is claimed, then its dispatcher "dies": the lease runs out
    now = dt.datetime.now(dt.UTC)
    old, hour = now - dt.timedelta(hours=1), dt.timedelta(hours=1)
    with engine.begin() as conn:  # the second waits since an hour; the third is not due yet
        events = DEFAULT_TABLES.events
        conn.execute(update(events).where(events.c.id == second).values(created_at=old, available_at=old))
        conn.execute(update(events).where(events.c.id == later).values(created_at=old - hour, available_at=now + hour))
    admin.pause(engine, "BUDGET.*", reason="metrics test")
    registry = CollectorRegistry()
    collector = DatabaseCollector(engine)
    registry.register(collector)

    def once_expired() -> Samples | None:
        samples = parse_registry(registry)
        return samples if value(samples, "outbox_expired_leases") == 1 else None

    samples = wait_until(once_expired, 10, "the 1 ms lease to expire")
    assert collector.up and value(samples, "outbox_database_up") == 1
    assert value(samples, "outbox_events", status="PENDING") == 2
    assert value(samples, "outbox_events", status="PROCESSING") == 1
    assert value(samples, "outbox_events", status="COMPLETED") == 0
    lag = value(samples, "outbox_oldest_due_event_age_seconds") or 0  # the second: the third is not due
    assert 3600 <= lag < 3660, lag
    assert value(samples, "outbox_active_pauses") == 1
    last_claim = value(samples, "outbox_last_claim_timestamp_seconds") or 0
    assert abs(last_claim - time.time()) < 60  # the stuck dispatcher's claim of the first event
    assert admin_state(engine, first) == "PROCESSING"


def admin_state(engine: Engine, event_id: str) -> str:
    from outbox_admin import analytics

    found = analytics.get_event(engine, event_id)
    assert found is not None
    return str(found["status"])


def parse_registry(registry: CollectorRegistry) -> Samples:
    from prometheus_client import generate_latest

    return parse(generate_latest(registry).decode())


def test_a_failing_handler_opens_its_breaker_gauge(engine: Engine) -> None:
    publish_demo(engine, 2)

    class Down:
        name = "down"

        def __call__(self, event: DeliveredEvent) -> None:
            raise ConnectionError("sink down")

    metrics = DispatchMetrics()
    dispatcher = Dispatcher(engine, [Down(), RecordingHandler(name="fine")], breaker=BreakerPolicy(failure_threshold=1))
    metrics.watch(dispatcher)
    dispatcher.dispatch_once()
    samples = parse_registry(metrics.registry)
    assert value(samples, "outbox_circuit_breaker_open", handler="down") == 1
    assert value(samples, "outbox_circuit_breaker_open", handler="fine") == 0
    assert total(samples, "outbox_events_finished_total", outcome="waiting") == 2  # no attempt spent
    assert value(samples, "outbox_deliveries_total", handler="fine", outcome="delivered") == 2


def test_event_types_past_the_limit_are_other(engine: Engine) -> None:
    publish_demo(engine, 4)  # PROJECT.CREATED and PROJECT.UPDATED
    metrics = DispatchMetrics(max_event_types=1)
    Dispatcher(engine, [RecordingHandler()], observers=[metrics]).dispatch_once()
    samples = parse_registry(metrics.registry)
    labels = {dict(ls)["event_type"] for (n, ls), _ in samples.items() if n == "outbox_events_finished_total"}
    assert len(labels) == 2 and "other" in labels, labels
    assert total(samples, "outbox_events_finished_total", outcome="completed") == 4


def test_the_service_reuses_the_dispatchers_metrics_and_refuses_a_taken_port(engine: Engine, tmp_path: Path) -> None:
    metrics = DispatchMetrics()
    dispatcher = Dispatcher(engine, [RecordingHandler()], observers=[metrics])
    service = DispatcherService(dispatcher, metrics_port=0)
    assert service.metrics is metrics and dispatcher.observers == (metrics,)
    assert metrics.database is not None and metrics.database.engine is engine
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        blocked = DispatcherService(
            Dispatcher(engine, [RecordingHandler()]), metrics_port=taken.getsockname()[1], interval_seconds=30
        )
        with pytest.raises(ConfigurationError, match="cannot serve metrics"):
            blocked.start()
        assert not blocked.running
    other = make_engine(f"sqlite:///{tmp_path / 'other.db'}")
    try:
        with pytest.raises(ConfigurationError, match="another database"):
            metrics.watch_database(other)
        assert metrics.watch_database(engine) is metrics.database  # the same one: reused
    finally:
        other.dispose()


def test_a_database_that_is_down_still_gives_an_answer(tmp_path: Path) -> None:
    dead = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/outbox")
    service = DispatcherService(Dispatcher(dead, [RecordingHandler()]), interval_seconds=30, metrics_port=0)
    try:
        with service:
            url = service.metrics_url
            assert url is not None
            wait_until(lambda: service.status().failed_ticks >= 1, 10, "the dispatcher's tick to fail")
            samples = scrape(url)
    finally:
        dead.dispose()
    assert value(samples, "outbox_database_up") == 0
    assert value(samples, "outbox_events", status="PENDING") is None  # no stale or made-up gauges
    assert value(samples, "outbox_circuit_breaker_open", handler="recording") == 0  # the process's own still are
    assert value(samples, "outbox_tick_duration_seconds_count") == 0  # the failed tick never reached its end


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A real TCP port that accepts connections into its backlog and never answers: a database that hangs."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


def test_a_database_that_hangs_costs_the_scrape_a_bounded_time(silent_server: int) -> None:
    hanging = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{silent_server}/outbox")
    before = len(readers())
    try:
        collector = DatabaseCollector(hanging, timeout_seconds=0.3)
        for _ in range(2):
            started = time.monotonic()
            families = {family.name: family for family in collector.collect()}
            took = time.monotonic() - started
            assert took < 3, took
            assert [s.value for s in families["outbox_database_up"].samples] == [0]
            assert "outbox_events" not in families
            assert collector.last_error is not None and "no answer" in collector.last_error
        # the second scrape waited for the first read instead of starting another
        assert len(readers()) == before + 1
    finally:
        hanging.dispose()


def readers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "outbox-metrics-read" and t.is_alive()]


def test_reads_are_time_limited(engine: Engine) -> None:
    slow: Any = (
        "SELECT pg_sleep(5)"
        if engine.dialect.name == "postgresql"
        else "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    )
    with engine.connect() as conn:
        started = time.monotonic()
        with pytest.raises(OperationalError), time_limited(conn, 0.2):
            conn.exec_driver_sql(slow)
        assert time.monotonic() - started < 3
        conn.rollback()
        # the limit ends with the block: the connection goes on as before
        assert conn.exec_driver_sql("SELECT 1").scalar_one() == 1
        if engine.dialect.name == "postgresql":
            assert conn.exec_driver_sql("SHOW statement_timeout").scalar_one() == "0"


def test_the_metrics_command_prints_the_gauges_of_a_read_only_database(
    db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = make_engine(db_url)
    publish_demo(engine, 3)
    Dispatcher(engine, [RecordingHandler()], batch_size=2).dispatch_once()
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql(f'ALTER DATABASE "{engine.url.database}" SET default_transaction_read_only = on')
    engine.dispose()
    database = Path(engine.url.database or "") if engine.dialect.name == "sqlite" else None
    before = _files(database)
    code, out, err = run_main(monkeypatch, capsys, "metrics", "--database-url", db_url)
    assert code == 0, err
    samples = parse(out)
    assert value(samples, "outbox_database_up") == 1
    assert value(samples, "outbox_events", status="COMPLETED") == 2
    assert value(samples, "outbox_events", status="PENDING") == 1
    assert (value(samples, "outbox_oldest_due_event_age_seconds") or 0) > 0
    assert _files(database) == before  # nothing written, no side file left
    assert not [name for (name, _), _ in samples.items() if name.startswith("outbox_events_finished")]  # no dispatcher


def _files(database: Path | None) -> Any:
    if database is None:
        return None
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in database.parent.iterdir())


def test_the_metrics_command_says_when_the_database_cannot_be_read(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/outbox"
    code, out, err = run_main(monkeypatch, capsys, "metrics", "--database-url", url, "--timeout", "1")
    assert code == 1
    assert value(parse(out), "outbox_database_up") == 0
    assert "the database could not be read" in err


def test_a_metrics_server_stops_and_starts_again() -> None:
    metrics = DispatchMetrics()
    server = MetricsServer(metrics.registry, 0)
    for _ in range(2):
        with server:
            assert server.url is not None
            assert value(scrape(server.url), "outbox_events_claimed_total") == 0
        assert server.port is None


@pytest.mark.slow
def test_the_dispatch_command_serves_metrics(tmp_path: Path, sqlite_url: str) -> None:
    """``outbox-admin dispatch --metrics-port``, the real command in its own process, scraped while it runs."""
    engine = make_engine(sqlite_url)
    publish_demo(engine, 3)
    engine.dispose()
    port = free_port()
    env = clean_env()
    command = [sys.executable, "-m", "outbox_admin", "dispatch", "--log-only", "--quiet", "--interval", "0.5"]
    command += ["--metrics-port", str(port), "--database-url", sqlite_url]
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        url = f"http://127.0.0.1:{port}/metrics"

        def completed() -> Samples | None:
            try:
                samples = scrape(url)
            except httpx.TransportError:
                assert process.poll() is None, process.communicate()
                return None
            return samples if value(samples, "outbox_events", status="COMPLETED") == 3 else None

        samples = wait_until(completed, 30, "the command to serve metrics and deliver the events")
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert f"metrics at http://127.0.0.1:{port}/metrics" in err
    assert total(samples, "outbox_events_finished_total", outcome="completed") == 3
    assert value(samples, "outbox_deliveries_total", handler="audit-log", outcome="delivered") == 3

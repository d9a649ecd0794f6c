"""The background service: wake-ups, status, graceful stop, and the dispatch CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from outbox_admin import Dispatcher, DispatcherService, make_engine, publish_outbox_event
from outbox_admin.handlers import DeliveredEvent
from outbox_admin.models import DEFAULT_TABLES

EVENTS = DEFAULT_TABLES.events


def publish(tx, entity_id: str = "1") -> str:
    return publish_outbox_event(
        tx, org_id="o", event_type="PROJECT.CREATED", entity_type="Project", entity_id=entity_id
    ).id


class Arrivals:
    """Records when each event reached the handler; ``wait_for`` polls with a deadline."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self.changed = threading.Condition()

    def __call__(self, event: DeliveredEvent) -> None:
        with self.changed:
            self.at.setdefault(event.id, time.time())
            self.changed.notify_all()

    def wait_for(self, event_id: str, timeout: float = 5.0) -> float:
        with self.changed:
            assert self.changed.wait_for(lambda: event_id in self.at, timeout=timeout), "event not handled in time"
            return self.at[event_id]


def statuses(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(conn.execute(select(EVENTS.c.status, func.count()).group_by(EVENTS.c.status)).all())


def test_a_commit_in_this_process_is_handled_within_a_second(engine: Engine) -> None:
    arrivals = Arrivals()
    service = DispatcherService(Dispatcher(engine, [arrivals]), interval_seconds=30)
    with service:
        assert service.wait_for_tick(0, timeout=5)  # the first tick runs at start
        for publish_with in ("session", "connection"):
            if publish_with == "session":
                with Session(engine) as session, session.begin():
                    event_id = publish(session)
            else:
                with engine.begin() as conn:
                    event_id = publish(conn)
            committed = time.time()
            assert arrivals.wait_for(event_id, timeout=5) - committed < 1.0
    status = service.status()  # stopped: every tick has finished
    assert status.failed_ticks == 0 and status.totals.completed == 2 and not status.running
    assert statuses(engine) == {"COMPLETED": 2}


PUBLISH_SCRIPT = """
import sys, time
from outbox_admin import make_engine, publish_outbox_event
engine = make_engine(sys.argv[1])
with engine.begin() as conn:
    event = publish_outbox_event(conn, org_id="o", event_type="PROJECT.CREATED", entity_type="Project", entity_id="x")
print(event.id, time.time(), flush=True)
engine.dispose()
"""


def test_a_commit_in_another_process_is_handled_within_a_second_on_postgres(postgres_url: str) -> None:
    engine = make_engine(postgres_url)
    arrivals = Arrivals()
    service = DispatcherService(Dispatcher(engine, [arrivals]), interval_seconds=30)
    try:
        service.start()
        deadline = time.monotonic() + 10
        while not service.status().listening:
            assert time.monotonic() < deadline, "the LISTEN connection did not come up"
            time.sleep(0.01)
        service.wait_for_tick(0, timeout=5)
        for _ in range(3):
            out = subprocess.run(
                [sys.executable, "-c", PUBLISH_SCRIPT, postgres_url],
                check=True,
                capture_output=True,
                text=True,
                timeout=60,
            ).stdout.split()
            event_id, committed = out[0], float(out[1])
            assert arrivals.wait_for(event_id, timeout=5) - committed < 1.0
    finally:
        service.stop()
        engine.dispose()


def test_status_run_now_and_next_tick(engine: Engine) -> None:
    service = DispatcherService(Dispatcher(engine, []), interval_seconds=30)
    assert service.status().running is False
    with engine.begin() as conn:
        publish(conn)
    report = service.run_now()  # not started: runs in this thread
    assert report is not None and report.completed == 1
    with service:
        service.wait_for_tick(1, timeout=5)
        with engine.begin() as conn:
            publish(conn)
        report = service.run_now(timeout=10)
        assert report is not None
        status = service.status()
        assert status.running and status.next_tick_at is not None
        assert 25 < status.seconds_to_next_tick() <= 30
        assert status.last_tick_at is not None and status.totals.completed == 2
    assert service.status().running is False
    assert statuses(engine) == {"COMPLETED": 2}


def test_stop_finishes_the_event_in_hand_and_releases_the_rest(engine: Engine) -> None:
    with engine.begin() as conn:
        ids = [publish(conn, str(i)) for i in range(5)]
    in_hand = threading.Event()
    release = threading.Event()
    handled: list[str] = []

    def slow(event: DeliveredEvent) -> None:
        handled.append(event.id)
        in_hand.set()
        release.wait(10)

    service = DispatcherService(Dispatcher(engine, [slow]), interval_seconds=30)
    service.start()
    assert in_hand.wait(10)
    stopper = threading.Thread(target=service.stop)
    stopper.start()
    deadline = time.monotonic() + 5
    while not service.dispatcher.stopping:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    release.set()
    stopper.join(10)
    assert not stopper.is_alive()
    assert handled == ids[:1]
    assert statuses(engine) == {"COMPLETED": 1, "PENDING": 4}
    with engine.connect() as conn:
        assert conn.execute(select(func.max(EVENTS.c.retry_count))).scalar_one() == 0
    assert service.status().totals.released == 4


def test_a_failing_tick_is_recorded_and_the_service_keeps_going(sqlite_url: str, tmp_path: Path) -> None:
    engine = make_engine(sqlite_url)
    calls: list[int] = []

    class Boom(Dispatcher):
        def drain(self, max_seconds=None, **kwargs):  # the database is "away" for the first tick
            calls.append(1)
            if len(calls) == 1:
                raise ConnectionError("database went away")
            return super().drain(max_seconds, **kwargs)

    service = DispatcherService(Boom(engine, []), interval_seconds=0.05)
    try:
        service.start()
        deadline = time.monotonic() + 10
        while service.status().ticks < 3:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        status = service.status()
        assert status.failed_ticks == 1
        assert status.last_error is None, "a successful tick clears the error"
        assert [message for _, message in status.recent_errors] == ["ConnectionError: database went away"]
        assert status.last_error_at == status.recent_errors[0][0]
        assert status.last_tick_at is not None and status.last_tick_at > status.last_error_at
        assert status.running
    finally:
        service.stop()
        engine.dispose()


def test_status_moves_on_during_a_run_that_never_ends(engine: Engine) -> None:
    """Under continuous load the service's run never finds the outbox empty; status must still move."""
    service = DispatcherService(Dispatcher(engine, [], batch_size=5), interval_seconds=30, drain_seconds=0.3)
    stop = threading.Event()

    def keep_publishing() -> None:
        n = 0
        while not stop.is_set():
            with engine.begin() as conn:
                for _ in range(5):
                    n += 1
                    publish(conn, entity_id=str(n))
            stop.wait(0.002)  # pacing the load, not synchronisation

    load = threading.Thread(target=keep_publishing)
    try:
        service.start()
        load.start()
        deadline = time.monotonic() + 20
        samples = []
        while len(samples) < 3:
            assert time.monotonic() < deadline, f"status never moved: {samples}"
            status = service.status()
            moved = not samples or (
                status.last_tick_at > samples[-1][0] and status.totals.completed > samples[-1][1]  # type: ignore[operator]
            )
            if status.last_tick_at is not None and moved:
                samples.append((status.last_tick_at, status.totals.completed, status.current_run))
            time.sleep(0.05)
        assert samples[-1][1] > samples[0][1]
    finally:
        stop.set()
        load.join(10)
        service.stop()


def test_status_shows_the_progress_of_the_run_in_hand(engine: Engine) -> None:
    """Seen from inside a long run (by its own handler): the batches done so far are in status()."""
    seen: list[Any] = []
    service: DispatcherService | None = None

    def look_at_status(event: DeliveredEvent) -> None:
        handled.append(event.id)
        if len(handled) == 21 and service is not None:  # the fifth batch of five
            seen.append(service.status())

    handled: list[str] = []
    with engine.begin() as conn:
        for i in range(30):
            publish(conn, entity_id=str(i))
    service = DispatcherService(Dispatcher(engine, [look_at_status], batch_size=5), interval_seconds=30)
    try:
        service.start()
        deadline = time.monotonic() + 20
        while len(handled) < 30:
            assert time.monotonic() < deadline, "not drained"
            time.sleep(0.02)
    finally:
        service.stop()
    (status,) = seen
    assert status.current_run is not None and status.current_run.completed == 20
    assert status.last_tick_at is not None and status.totals.completed == 20


def test_an_open_breaker_is_probed_on_time_without_a_wake_up(engine: Engine) -> None:
    from outbox_admin.breaker import BreakerPolicy

    class Down:
        name = "down-sink"
        up = False

        def __call__(self, event: DeliveredEvent) -> None:
            if not self.up:
                raise ConnectionError("refused")

    sink = Down()
    dispatcher = Dispatcher(engine, [sink], breaker=BreakerPolicy(failure_threshold=3, open_seconds=0.5))
    with engine.begin() as conn:
        for i in range(10):
            publish(conn, entity_id=str(i))
    service = DispatcherService(dispatcher, interval_seconds=30)  # only the probe timer can tick in time
    try:
        service.start()
        deadline = time.monotonic() + 10
        while not service.status().open_handlers:
            assert time.monotonic() < deadline, "the breaker never opened"
            time.sleep(0.02)
        (health,) = service.status().open_handlers
        assert health.handler == "down-sink" and "refused" in (health.last_error or "")
        sink.up = True
        while statuses(engine) != {"COMPLETED": 10}:
            assert time.monotonic() < deadline, f"not probed in time: {statuses(engine)}"
            time.sleep(0.05)
        assert not service.status().open_handlers
    finally:
        service.stop()


def run_cli(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "outbox_admin", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_cli_dispatch_once(db_url: str) -> None:
    engine = make_engine(db_url)
    with engine.begin() as conn:
        for i in range(3):
            publish(conn, str(i))
    result = run_cli("dispatch", "--once", "--log-only", "--json", "--database-url", db_url)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["completed"] == 3
    assert "outbox event" in result.stderr  # the audit log
    assert "alembic" not in result.stderr  # migrations stay quiet unless something is wrong
    assert statuses(engine) == {"COMPLETED": 3}
    engine.dispose()


def test_cli_dispatch_stops_gracefully_on_sigterm(sqlite_url: str) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "outbox_admin",
            "dispatch",
            "--log-only",
            "--interval",
            "0.2",
            "--json",
            "--quiet",
            "--database-url",
            sqlite_url,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        engine = make_engine(sqlite_url)
        with engine.begin() as conn:
            publish(conn)
        deadline = time.monotonic() + 20
        while statuses(engine).get("COMPLETED") != 1:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert json.loads(out)["completed"] == 1
    engine.dispose()


@pytest.mark.parametrize("args", [["dispatch", "--batch-size", "0"], ["dispatch", "--ordering", "random"]])
def test_cli_dispatch_bad_usage(args: list[str], tmp_path: Path) -> None:
    result = run_cli(*args, "--database-url", f"sqlite:///{tmp_path / 'x.db'}")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr

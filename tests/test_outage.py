"""Database outage: the service keeps running while PostgreSQL is down and catches up afterwards.

Each test starts a PostgreSQL server of its own (``initdb`` in a temporary folder,
on a free port, with the server binaries under ``/usr/lib/postgresql/15/bin``),
stops it with ``pg_ctl -m immediate`` (as a crash would) while a
``DispatcherService`` is running, and starts it again. The service must report
the failed ticks in ``status()`` and then complete every event.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from outbox_admin import Backoff, Dispatcher, DispatcherService, init_db, make_engine, publish_outbox_event
from outbox_admin.handlers.base import DeliveredEvent
from outbox_admin.models import DEFAULT_TABLES, EventStatus

from .services import unavailable

pytestmark = pytest.mark.slow

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_PROGRAMS = ("initdb", "pg_ctl", "createdb")
PG_OS_USER = "postgres"  # PostgreSQL refuses to run as root; as root we run it as this user
DATABASE = "outbox"
COMMAND_TIMEOUT = 60.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _missing_requirements() -> str | None:
    """Why a private PostgreSQL server cannot be run here, or None when it can."""
    missing = [name for name in PG_PROGRAMS if not os.access(PG_BIN / name, os.X_OK)]
    if missing:
        return f"{', '.join(missing)} not found (or not executable) in {PG_BIN}"
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            return "running as root, and `runuser` (needed to run PostgreSQL as another user) is not installed"
        try:
            import pwd

            pwd.getpwnam(PG_OS_USER)
        except KeyError:
            return f"running as root, and there is no {PG_OS_USER!r} OS user to run PostgreSQL as"
    return None


class PrivateServer:
    """A throw-away PostgreSQL cluster in ``root``: initdb, start, crash-stop, restart, destroy."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.log = root / "server.log"
        self.port = 0
        self._as_root = os.geteuid() == 0

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{DATABASE}"

    def _run(self, program: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(PG_BIN / program), *args]
        if self._as_root:
            command = ["runuser", "-u", PG_OS_USER, "--", *command]
        result = subprocess.run(
            command,
            cwd=self.root,  # the postgres user may not be allowed into the current directory
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} exited with {result.returncode}\n"
                f"stdout: {result.stdout.strip()}\nstderr: {result.stderr.strip()}\n"
                f"server log (end): {self.log_tail()}"
            )
        return result

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def init(self) -> None:
        if self._as_root:
            shutil.chown(self.root, user=PG_OS_USER)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")

    def start_on_free_port(self, attempts: int = 3) -> None:
        """First start: pick a free port, and another one should it be taken meanwhile."""
        for attempt in range(attempts):
            self.port = free_port()
            try:
                self.start()
                return
            except RuntimeError:
                if attempt == attempts - 1:
                    raise

    def stop(self) -> None:
        """Stop at once, without a checkpoint, as a crash would (``-m immediate``)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def running(self) -> bool:
        return self.data.exists() and self._run("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    def create_database(self) -> None:
        self._run("createdb", "-h", str(self.root), "-p", str(self.port), "-U", "postgres", DATABASE)

    def destroy(self) -> None:
        try:
            if self.running():
                self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def private_postgres() -> Iterator[PrivateServer]:
    """A running PostgreSQL server owned by this test, with an empty database ``outbox``."""
    reason = _missing_requirements()
    if reason is not None:
        unavailable("PostgreSQL server binaries", reason)
    # Not pytest's tmp_path: its parents are private to root, and the server runs as `postgres`.
    server = PrivateServer(Path(tempfile.mkdtemp(prefix="outbox-pg-")))
    try:
        server.init()
        server.start_on_free_port()
        server.create_database()
        yield server
    finally:
        server.destroy()


@pytest.fixture
def outage_engine(private_postgres: PrivateServer) -> Iterator[Engine]:
    engine = make_engine(private_postgres.url)
    try:
        init_db(engine)
        yield engine
    finally:
        engine.dispose()


# -- helpers -------------------------------------------------------------------------


class Recorder:
    """A handler that records the ids it is given, from the dispatcher's thread."""

    name = "recorder"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: list[str] = []
        self.before: Callable[[DeliveredEvent], None] | None = None

    def __call__(self, event: DeliveredEvent) -> None:
        if self.before is not None:
            self.before(event)
        with self._lock:
            self._ids.append(event.id)

    @property
    def ids(self) -> list[str]:
        with self._lock:
            return list(self._ids)


def publish(engine: Engine, count: int, first: int = 0) -> list[str]:
    """Publish ``count`` events in one transaction; returns their ids."""
    with engine.begin() as conn:
        return [
            publish_outbox_event(
                conn, org_id="org-outage", event_type="PROJECT.CREATED", entity_type="Project", entity_id=str(first + i)
            ).id
            for i in range(count)
        ]


def status_counts(engine: Engine) -> dict[str, int]:
    ev = DEFAULT_TABLES.events
    with engine.connect() as conn:
        return dict(conn.execute(select(ev.c.status, func.count()).group_by(ev.c.status)).all())


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, describe: Callable[[], str]) -> None:
    """Poll ``predicate`` until it holds; fail with ``describe()`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; {describe()}", pytrace=False)
        time.sleep(0.05)


def make_service(engine: Engine, recorder: Recorder) -> DispatcherService:
    dispatcher = Dispatcher(engine, [recorder], lease_seconds=2, backoff=Backoff(base=0.1, cap=0.5, jitter=0))
    return DispatcherService(dispatcher, interval_seconds=0.3)


def describer(service: DispatcherService, recorder: Recorder, engine: Engine | None = None) -> Callable[[], str]:
    def describe() -> str:
        status = service.status()
        text = (
            f"service running={status.running} ticks={status.ticks} failed_ticks={status.failed_ticks} "
            f"last_error={status.last_error!r}; handled {len(set(recorder.ids))} distinct event(s)"
        )
        if engine is not None:
            try:
                text += f"; in the database: {status_counts(engine)}"
            except Exception as exc:  # noqa: BLE001 - only a diagnostic
                text += f"; database unreadable: {type(exc).__name__}"
        return text

    return describe


def assert_all_completed(engine: Engine, published: list[str], recorder: Recorder) -> None:
    counts = status_counts(engine)
    assert counts == {EventStatus.COMPLETED.value: len(published)}, counts
    handled = Counter(recorder.ids)
    assert all(handled[event_id] >= 1 for event_id in published), [e for e in published if not handled[e]]
    assert set(handled) == set(published)


# -- the tests -----------------------------------------------------------------------


def test_service_reports_failed_ticks_during_an_outage_then_completes_every_event(
    private_postgres: PrivateServer, outage_engine: Engine
) -> None:
    engine = outage_engine
    recorder = Recorder()
    service = make_service(engine, recorder)
    describe = describer(service, recorder, engine)
    published = publish(engine, 20)
    try:
        service.start()
        wait_until(
            lambda: status_counts(engine) == {EventStatus.COMPLETED.value: 20},
            15,
            "the first 20 events to be completed",
            describe,
        )
        assert set(recorder.ids) == set(published)
        assert service.status().failed_ticks == 0

        private_postgres.stop()
        wait_until(
            lambda: service.status().failed_ticks >= 1 and service.status().last_error is not None,
            15,
            "the service to report a failed tick while the database is down",
            describer(service, recorder),  # the database cannot be asked now
        )
        down = service.status()
        assert down.running
        assert down.last_error and down.last_error_at is not None

        # Long enough down for LISTEN's reconnect backoff to have grown past a few seconds.
        wait_until(lambda: service.status().failed_ticks >= 8, 30, "more failed ticks", describer(service, recorder))
        assert not service.status().listening
        private_postgres.start()
        wait_until(lambda: service.status().last_error is None, 30, "a good tick", describer(service, recorder))
        ticks_back = time.monotonic()
        wait_until(lambda: service.status().listening, 10, "LISTEN to come back", describer(service, recorder))
        assert time.monotonic() - ticks_back < 1.5, "LISTEN waits for the database, not for its backoff"
        published += publish(engine, 30, first=20)
        wait_until(
            lambda: status_counts(engine).get(EventStatus.COMPLETED.value) == 50,
            30,
            "all 50 events to be completed after the restart",
            describe,
        )
        assert service.status().failed_ticks >= 1
        assert_all_completed(engine, published, recorder)
    finally:
        service.stop()


def test_outage_while_a_batch_is_in_hand(private_postgres: PrivateServer, outage_engine: Engine) -> None:
    """The server dies while the handler works on a claimed batch: the outcome cannot be written and
    the tick fails; the dispatcher keeps the outcomes and writes them once the server is back, so the
    batch is recorded as delivered (once), not recovered later as "lease expired" and delivered again."""
    engine = outage_engine
    recorder = Recorder()
    in_handler = threading.Event()
    server_stopped = threading.Event()

    def stop_server_on_first_event(event: DeliveredEvent) -> None:
        if not in_handler.is_set():
            in_handler.set()
            server_stopped.wait(timeout=15)

    recorder.before = stop_server_on_first_event
    service = make_service(engine, recorder)
    describe = describer(service, recorder, engine)
    published = publish(engine, 20)
    try:
        service.start()
        wait_until(in_handler.is_set, 15, "the handler to get the first event", describe)
        try:
            private_postgres.stop()
        finally:
            server_stopped.set()
        wait_until(
            lambda: service.status().failed_ticks >= 1 and service.status().last_error is not None,
            15,
            "the service to report the tick that could not record its batch",
            describer(service, recorder),
        )
        assert set(recorder.ids) == set(published)  # all handled once, none recorded as done

        private_postgres.start()
        published += publish(engine, 10, first=20)
        wait_until(
            lambda: status_counts(engine).get(EventStatus.COMPLETED.value) == 30,
            30,
            "all 30 events to be completed after the restart",
            describe,
        )
        assert service.status().failed_ticks >= 1
        assert_all_completed(engine, published, recorder)
        handled = Counter(recorder.ids)
        assert all(handled[event_id] == 1 for event_id in published), "kept outcomes are written, not redelivered"
        tr = DEFAULT_TABLES.transitions
        with engine.connect() as conn:
            expired = conn.execute(select(func.count()).where(tr.c.error_message.like("lease expired%"))).scalar_one()
        assert expired == 0
        assert service.status().last_error is None, "the error clears with the first good tick"
        assert service.status().last_error_at is not None
    finally:
        server_stopped.set()
        service.stop()

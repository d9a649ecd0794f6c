"""Shared by the sink tests: demo events, a real local webhook receiver, broker servers of a test's own.

Nothing here imitates a server: the webhook receiver is ``http.server`` on a real
socket, and ``PrivateServer`` runs the real ``redis-server`` / ``nats-server``
binaries on a free port so a test can kill and restart them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from outbox_admin import Backoff, Dispatcher, DispatchReport, EventSpec, publish_outbox_events
from outbox_admin.models import DEFAULT_TABLES

from .services import free_port, port_open, unavailable

EVENTS = DEFAULT_TABLES.events
#: Retry at once, so a test can drain a failing event to FAILED without waiting.
NO_WAIT = Backoff(base=0, jitter=0)


# --- events -------------------------------------------------------------------------------


def demo_specs(count: int, *, org_id: str = "org-1", prefix: str = "p") -> list[EventSpec]:
    """Alternating PROJECT.CREATED / PROJECT.UPDATED events with payloads worth comparing."""
    return [
        EventSpec(
            org_id=org_id,
            event_type="PROJECT.CREATED" if i % 2 == 0 else "PROJECT.UPDATED",
            entity_type="Project",
            entity_id=f"{prefix}-{i}",
            payload={"name": f"Project {i} ñ", "budget": Decimal("1250.50") + i, "tags": ["demo"], "n": i},
        )
        for i in range(count)
    ]


def publish_demo(engine: Engine, count: int = 4, **kwargs: Any) -> list[dict[str, Any]]:
    """Publish demo events in one transaction; return what a consumer should receive, in order."""
    with engine.begin() as conn:
        events = publish_outbox_events(conn, demo_specs(count, **kwargs))
    return [expected(e) for e in events]


def expected(event: Any) -> dict[str, Any]:
    """The envelope attributes a consumer must see for a published event."""
    return {
        "id": event.id,
        "type": event.event_type,
        "orgid": event.org_id,
        "subject": f"{event.entity_type}/{event.entity_id}",
        "data": event.payload,
    }


def received(envelope: dict[str, Any]) -> dict[str, Any]:
    """The same attributes, taken from a received envelope (which must be CloudEvents 1.0)."""
    assert envelope["specversion"] == "1.0"
    assert envelope["datacontenttype"] == "application/json"
    assert envelope["source"] and envelope["time"].endswith("Z")
    return {key: envelope[key] for key in ("id", "type", "orgid", "subject", "data")}


def rows(engine: Engine) -> dict[str, Any]:
    """Every event row by id."""
    with engine.connect() as conn:
        return {row.id: row for row in conn.execute(select(EVENTS))}


def drain(engine: Engine, sinks: Sequence[Any], *, max_attempts: int | None = 3) -> DispatchReport:
    """Deliver everything due to ``sinks`` with instant retries."""
    return Dispatcher(engine, list(sinks), max_attempts=max_attempts, backoff=NO_WAIT).drain(max_seconds=30)


def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


# --- a webhook receiver -------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class WebhookReceiver:
    """A real HTTP server on 127.0.0.1 in a thread; the path picks the answer.

    ``/ok`` answers 204, ``/fail`` 500 with a body, ``/redirect`` 302 to ``/ok``,
    ``/slow`` holds the answer until ``close()`` (so a client times out),
    ``/trickle`` sends its 200 answer one byte every 0.2 s (about 8 s in all),
    ``/late`` answers 204 after ``late_seconds``, ``/flaky`` answers 503 to the first
    ``flaky_failures`` deliveries of each event (by the envelope's id), then 204.
    """

    late_seconds = 2.5
    flaky_failures = 2

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self._tries: dict[str, int] = {}
        self._lock = threading.Lock()
        self._release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                receiver._record(Request(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                if self.path == "/slow":
                    receiver._release.wait(30)
                if self.path == "/late":
                    receiver._release.wait(receiver.late_seconds)
                if self.path == "/trickle":
                    for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok":
                        if receiver._release.wait(0.2):
                            return
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                    self.close_connection = True
                    return
                if self.path == "/flaky":
                    event_id = json.loads(body)["id"]
                    with receiver._lock:
                        tries = receiver._tries[event_id] = receiver._tries.get(event_id, 0) + 1
                    if tries <= receiver.flaky_failures:
                        self.send_response(503)
                        self.send_header("content-length", "11")
                        self.end_headers()
                        self.wfile.write(b"maintenance")
                        return
                status, extra, text = {
                    "/flaky": (204, {}, b""),
                    "/ok": (204, {}, b""),
                    "/late": (204, {}, b""),
                    "/fail": (500, {}, b"boom: database is down"),
                    "/redirect": (302, {"location": receiver.url("/ok")}, b""),
                }.get(self.path, (404, {}, b"no such hook"))
                self.send_response(status)
                for key, value in extra.items():
                    self.send_header(key, value)
                self.send_header("content-length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that timed out left: writing the late answer fails, as expected

        self.server = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, name="webhook-receiver", daemon=True
        )
        self.thread.start()

    def _record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def at(self, path: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def close(self) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


# --- broker servers of a test's own ---------------------------------------------------------


class PrivateServer:
    """A real broker process on a free port that the test may kill and restart (same port, same data dir)."""

    def __init__(self, program: str, argv: Callable[[int], list[str]], *, log: Path) -> None:
        path = shutil.which(program) or next(
            (str(p) for p in (Path("/usr/sbin") / program, Path("/usr/bin") / program) if p.exists()), None
        )
        if path is None:
            unavailable(program, f"{program} is not installed, so the test cannot run a server of its own")
        self.program = str(path)
        self.port = free_port()
        self.argv = argv
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url_host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [self.program, *self.argv(self.port)], stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        process = self.process

        def listening() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"{self.program} exited with {process.returncode}: {self.log.read_text()[-2000:]}")
            return port_open("127.0.0.1", self.port, timeout=0.2) is None

        wait_until(listening, timeout, f"{self.program} to listen on port {self.port}")

    def kill(self) -> None:
        """Stop it at once, as a crash or a pulled cable would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def __enter__(self) -> PrivateServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def private_redis(tmp_path: Path) -> PrivateServer:
    """redis-server keeping nothing on disk: a restart comes back empty."""
    return PrivateServer(
        "redis-server",
        lambda port: [
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(tmp_path),
        ],
        log=tmp_path / "redis.log",
    )


def private_nats(tmp_path: Path) -> PrivateServer:
    """nats-server with JetStream storing in ``tmp_path``: a restart keeps the streams."""
    store = tmp_path / "jetstream"
    store.mkdir(exist_ok=True)
    return PrivateServer(
        "nats-server",
        lambda port: ["-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store)],
        log=tmp_path / "nats.log",
    )

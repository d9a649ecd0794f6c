"""Shared by the browser bus tests: the bus app on a real uvicorn server, and an SSE reader on a real socket.

``python -m tests.bus_support serve URL PORT`` runs a web process of its own (the
multi-process test starts two); ``... dispatch URL SECONDS`` a dispatcher process
with the ``BrowserBusSink`` only.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn
from starlette.requests import Request

from outbox_admin import Dispatcher, DispatcherService, make_engine
from outbox_admin.web import BrowserBusSink, Subscriber, message_bus_app

from .services import free_port


def authorize(request: Request) -> Subscriber | None:
    """The test's sign-in: ``?org=`` names the org (a real app reads its session); ``?only=`` limits the types."""
    org = request.query_params.get("org")
    if not org:
        return None
    only = request.query_params.get("only")
    return Subscriber(org_id=org, event_types=tuple(only.split(",")) if only else ("*",))


@dataclass
class Running:
    base: str
    server: uvicorn.Server
    app: Any


@contextmanager
def bus_server(engine: Any, **options: Any) -> Iterator[Running]:
    """The bus app of ``engine`` on uvicorn, on a free port, in a thread of this process.

    Heartbeats every 0.25 s unless told otherwise: a reader's thread wakes with each, so closing it is quick."""
    options.setdefault("heartbeat_seconds", 0.25)
    app = message_bus_app(engine, authorize=authorize, **options)
    port = free_port()
    try:
        with uvicorn_thread(app, port) as server:
            yield Running(f"http://127.0.0.1:{port}", server, app)
    finally:
        app.state.follower.close()


@contextmanager
def uvicorn_thread(app: Any, port: int) -> Iterator[uvicorn.Server]:
    """``app`` served by uvicorn on ``port`` in a thread of this process, until the block ends."""
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:  # polled: uvicorn has no started event to wait on
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield server
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@dataclass
class SseEvent:
    id: str | None
    event: str | None
    data: str

    @property
    def envelope(self) -> dict[str, Any]:
        return json.loads(self.data)  # type: ignore[no-any-return]


class SseReader:
    """Reads one SSE stream on a real socket in a thread; ``next()`` waits for an event with a deadline."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self.events: queue.Queue[SseEvent] = queue.Queue()
        self.comments: queue.Queue[str] = queue.Queue()
        self.status: int | None = None
        self.connected = threading.Event()
        self.ended = threading.Event()
        self._client = httpx.Client(timeout=httpx.Timeout(30.0, connect=5.0))
        self._stop = False
        self._thread = threading.Thread(target=self._run, args=(url, headers or {}), daemon=True)
        self._thread.start()
        if not self.connected.wait(10):
            raise RuntimeError(f"no answer from {url}")

    def _run(self, url: str, headers: dict[str, str]) -> None:
        try:
            with self._client.stream("GET", url, headers=headers) as response:
                self.status = response.status_code
                self.connected.set()
                fields: dict[str, str] = {}
                data: list[str] = []
                for line in response.iter_lines():
                    if self._stop:
                        return
                    if line == "":
                        if data or fields:
                            self.events.put(SseEvent(fields.get("id"), fields.get("event"), "\n".join(data)))
                        fields, data = {}, []
                    elif line.startswith(":"):
                        self.comments.put(line[1:].strip())
                    else:
                        name, _, value = line.partition(":")
                        value = value[1:] if value.startswith(" ") else value
                        if name == "data":
                            data.append(value)
                        else:
                            fields[name] = value
        except (httpx.HTTPError, RuntimeError):
            pass
        finally:
            self.connected.set()
            self.ended.set()

    def next(self, timeout: float = 5.0) -> SseEvent:
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no event within {timeout} s") from None

    def take(self, count: int, timeout: float = 5.0) -> list[SseEvent]:
        deadline = time.monotonic() + timeout
        return [self.next(max(0.01, deadline - time.monotonic())) for _ in range(count)]

    def nothing_more(self, within: float = 0.5) -> bool:
        try:
            extra = self.events.get(timeout=within)
        except queue.Empty:
            return True
        raise AssertionError(f"unexpected event {extra}")

    def close(self) -> None:
        self._stop = True
        self._client.close()
        self._thread.join(timeout=5)


def dispatch_feed(engine: Any) -> int:
    """Deliver every due event to the browser bus only; how many completed."""
    with Dispatcher(engine, [BrowserBusSink(engine)], breaker=None) as dispatcher:
        return dispatcher.drain(max_seconds=30).completed


def main(argv: list[str]) -> None:
    command, url = argv[0], argv[1]
    engine = make_engine(url)
    if command == "serve":
        app = message_bus_app(engine, authorize=authorize, heartbeat_seconds=0.25)
        uvicorn.run(app, host="127.0.0.1", port=int(argv[2]), log_level="warning", timeout_graceful_shutdown=1)
    elif command == "dispatch":  # until killed: the service, woken by the publisher's NOTIFY
        service = DispatcherService(Dispatcher(engine, [BrowserBusSink(engine)], breaker=None))
        service.start()
        print("ready", flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1:])

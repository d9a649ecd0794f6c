"""Wake-up signals: a commit that published events wakes the dispatchers of this process.

The publisher calls ``notify(url)`` after the caller's transaction commits; a
``DispatcherService`` registers a listener for its database's URL and ticks at
once instead of waiting for its interval. Across processes, PostgreSQL's
``NOTIFY`` on ``NOTIFY_CHANNEL`` does the same job (delivered only on commit).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import URL, make_url

NOTIFY_CHANNEL = "outbox_events"
#: The longest wait between two attempts to re-LISTEN (the service also asks for one as soon as
#: a tick succeeds, i.e. as soon as the database answers again).
LISTEN_RETRY_CAP_SECONDS = 2.0

Listener = Callable[[], None]
log = logging.getLogger(__name__)


def wake_key(url: URL | str) -> str:
    """What ``WakeSignal`` listeners of a database are keyed by: its URL without driver and password.

    ``postgresql+asyncpg://`` and ``postgresql+psycopg://`` (or ``sqlite+aiosqlite://`` and
    ``sqlite://``) name one database, so a commit through either wakes the dispatchers of both.
    """
    parsed = make_url(url)
    return parsed.set(drivername=parsed.get_backend_name()).render_as_string(hide_password=True)


class WakeSignal:
    """Listeners keyed by database URL; ``notify`` calls those of one database."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: dict[str, list[Listener]] = {}

    def listen(self, url: str, listener: Listener) -> Callable[[], None]:
        """Call ``listener()`` whenever events are committed to ``url``; returns a remover."""
        with self._lock:
            self._listeners.setdefault(url, []).append(listener)

        def remove() -> None:
            with self._lock:
                items = self._listeners.get(url, [])
                if listener in items:
                    items.remove(listener)

        return remove

    def notify(self, url: str) -> int:
        """Wake every listener of ``url``; a failing listener is logged, never raised to the publisher."""
        with self._lock:
            listeners = list(self._listeners.get(url, ()))
        for listener in listeners:
            try:
                listener()
            except Exception:  # noqa: BLE001 - the publisher's commit has happened; never fail it
                log.exception("outbox wake-up listener failed")
        return len(listeners)


#: The process-wide signal the publisher uses.
wake_signal = WakeSignal()


class PostgresListener:
    """A thread holding one connection that ``LISTEN``s on ``channel`` and calls ``on_notify()`` per ``NOTIFY``.

    Reconnects with backoff when the database goes away; every (re)connect calls
    ``on_notify()`` once, since notifications sent while disconnected are lost. The
    dispatcher service listens for the publisher's, the browser bus for its feed's.
    """

    def __init__(self, engine: Any, on_notify: Callable[[], None], channel: str = NOTIFY_CHANNEL) -> None:
        self._url = engine.url
        self._on_notify = on_notify
        self._channel = channel
        self._stop = threading.Event()
        self._retry = threading.Event()  # set to end a reconnect backoff early
        self._thread = threading.Thread(target=self._run, name="outbox-listen", daemon=True)
        self.connected = False

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._retry.set()
        self._thread.join(timeout=5)

    def retry_now(self) -> None:
        """Reconnect now instead of waiting out the backoff (the service saw the database answer)."""
        self._retry.set()

    def _connect(self) -> Any:
        import psycopg

        url = self._url
        conninfo = psycopg.conninfo.make_conninfo(
            host=url.host or "",
            port=str(url.port or ""),
            dbname=url.database or "",
            user=url.username or "",
            password=url.password or "",
            **{k: v for k, v in url.query.items() if isinstance(v, str)},
        )
        conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=5)
        conn.execute(f"LISTEN {self._channel}")  # a constant of this package, never user text
        return conn

    def _run(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            try:
                conn = self._connect()
            except Exception as exc:  # noqa: BLE001
                log.debug("outbox listener cannot connect: %s", exc)
                self._retry.wait(delay)
                self._retry.clear()
                delay = min(delay * 2, LISTEN_RETRY_CAP_SECONDS)
                continue
            delay = 0.5
            self.connected = True
            self._on_notify()
            try:
                with conn:
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=0.5):
                            self._on_notify()
            except Exception as exc:  # noqa: BLE001
                log.debug("outbox listener lost its connection: %s", exc)
            finally:
                self.connected = False

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

NOTIFY_CHANNEL = "outbox_events"

Listener = Callable[[], None]
log = logging.getLogger(__name__)


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

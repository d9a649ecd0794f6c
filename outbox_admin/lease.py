"""The lease heartbeat: a dispatcher keeps its claim alive while its handlers are still working.

A claim is a lease (``locked_until``); when it expires, another dispatcher may
recover the event and deliver it again. Without a heartbeat, any batch whose
handlers run longer than the lease (a slow receiver, a big batch) is handed to a
second dispatcher while the first is still delivering it. ``LeaseKeeper`` renews
the lease of the batch in hand every ``interval`` seconds (the dispatcher uses a
third of the lease) from one background thread per dispatcher, so a lease expires
only when its dispatcher really stopped: the process died, hung, or lost the
database for longer than the lease.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

log = logging.getLogger(__name__)

#: Renews the leases of these event ids; returns how many are still held.
Renew = Callable[[list[str]], int]


class LeaseKeeper:
    """Renews the leases of the events a dispatcher holds, while it holds them."""

    def __init__(self, renew: Renew, *, interval: float, name: str = "dispatcher") -> None:
        self._renew = renew
        self.interval = interval
        self._name = name
        self._cond = threading.Condition()
        self._held: list[str] = []
        self._due = 0.0
        self._thread: threading.Thread | None = None
        self._closed = False
        self._failing = False
        self.renewals = 0  # for tests and status: renewals written so far

    def hold(self, ids: Sequence[str]) -> None:
        """Start renewing the leases of ``ids`` (claimed just now); replaces what was held."""
        with self._cond:
            self._held = list(ids)
            self._due = time.monotonic() + self.interval
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name=f"outbox-lease {self._name}", daemon=True)
                self._thread.start()
            self._cond.notify()

    def release(self) -> None:
        """Stop renewing: the outcomes are written (or the events were given up)."""
        with self._cond:
            self._held = []
            self._cond.notify()

    @property
    def holding(self) -> int:
        with self._cond:
            return len(self._held)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._held = []
            self._cond.notify()
            thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (not self._held or time.monotonic() < self._due):
                    self._cond.wait(None if not self._held else max(0.0, self._due - time.monotonic()))
                if self._closed:
                    return
                ids = list(self._held)
                self._due = time.monotonic() + self.interval
            try:
                still_held = self._renew(ids)
            except Exception as exc:  # noqa: BLE001 - the next renewal tries again; logged once per streak
                if not self._failing:
                    log.warning("dispatcher %s could not renew the lease of %d event(s): %s", self._name, len(ids), exc)
                self._failing = True
                continue
            self._failing = False
            self.renewals += 1
            if still_held < len(ids):
                log.warning(
                    "dispatcher %s renewed %d of %d lease(s): the others expired and were recovered elsewhere",
                    self._name,
                    still_held,
                    len(ids),
                )

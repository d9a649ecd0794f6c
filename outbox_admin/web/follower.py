"""One thread per web process follows the feed and hands each new row to the streams that want it.

Each open stream is a ``Subscription``: a filter (its org and types) and a bounded
queue on the stream's event loop. The follower reads ``seq > last`` whenever it is
woken (PostgreSQL ``NOTIFY`` on ``BUS_CHANNEL``, a feed write in this process) and
at the latest every ``poll_seconds``, so one read per wake-up serves every
browser connected to the process, whatever their number. A subscription whose
queue is full (a browser that does not read) is dropped, never buffered without bound.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Engine

from ..db import read_connection
from ..models import DEFAULT_TABLES, OutboxTables
from ..wakeup import PostgresListener
from .feed import BUS_CHANNEL, READ_LIMIT, FeedRow, feed_key, feed_signal, latest_seq, read_after

log = logging.getLogger(__name__)

#: What a subscription's queue yields when it was dropped for falling behind.
DROPPED = None


@dataclass(eq=False)
class Subscription:
    """One stream's share of the feed: rows after ``start`` that ``accepts``, queued on its loop."""

    accepts: Callable[[FeedRow], bool]
    loop: asyncio.AbstractEventLoop
    limit: int
    start: int = 0  # the follower's position when it registered: earlier rows are the stream's backlog
    queue: asyncio.Queue[FeedRow | None] = field(default_factory=asyncio.Queue)
    dropped: bool = False

    def _offer(self, rows: list[FeedRow]) -> None:  # on the stream's loop
        if self.dropped:
            return
        if self.queue.qsize() + len(rows) > self.limit:
            self.dropped = True
            self.queue.put_nowait(DROPPED)
            return
        for row in rows:
            self.queue.put_nowait(row)


class FeedFollower:
    """Follows one database's feed for every stream of this process (started by the first stream)."""

    def __init__(self, engine: Engine, *, tables: OutboxTables = DEFAULT_TABLES, poll_seconds: float = 0.5) -> None:
        self.engine = engine
        self.tables = tables
        self.poll_seconds = poll_seconds
        self._lock = threading.Lock()
        self._subscriptions: list[Subscription] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listener: PostgresListener | None = None
        self._unlisten: Callable[[], None] | None = None
        self._last = 0
        self._started = threading.Event()

    @property
    def position(self) -> int:
        """The last feed position handed out."""
        return self._last

    def start(self) -> None:
        """Start following from the feed's end (idempotent); waits until the position is known."""
        with self._lock:
            if self._thread is None:
                self._unlisten = feed_signal.listen(feed_key(self.engine, self.tables), self._wake.set)
                if self.engine.dialect.name == "postgresql":
                    self._listener = PostgresListener(self.engine, self._wake.set, BUS_CHANNEL)
                    self._listener.start()
                self._thread = threading.Thread(target=self._run, name="outbox-bus-follower", daemon=True)
                self._thread.start()
        self._started.wait(timeout=30)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._unlisten is not None:
            self._unlisten()
        if self._listener is not None:
            self._listener.stop()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def subscribe(self, accepts: Callable[[FeedRow], bool], *, limit: int) -> Subscription:
        """Register a stream, on its event loop, once ``start`` returned: rows after ``subscription.start``
        will be queued for it."""
        if not self._started.is_set():
            raise RuntimeError("FeedFollower.subscribe before start()")
        subscription = Subscription(accepts, asyncio.get_running_loop(), limit)
        with self._lock:
            subscription.start = self._last
            self._subscriptions.append(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            if subscription in self._subscriptions:
                self._subscriptions.remove(subscription)

    def subscriber_count(self) -> int:
        return len(self._subscriptions)

    def _run(self) -> None:
        delay = self.poll_seconds
        while not self._stop.is_set():
            try:
                if not self._started.is_set():
                    with read_connection(self.engine) as conn:
                        self._last = latest_seq(conn, self.tables)
                    self._started.set()
                self._follow()
                delay = self.poll_seconds
            except Exception as exc:  # noqa: BLE001 - the database went away: keep trying, streams stay open
                log.warning("browser bus: cannot read the feed: %s", exc)
                delay = min(max(delay * 2, 0.5), 5.0)
            self._wake.wait(delay)
            self._wake.clear()

    def _follow(self) -> None:
        while True:
            with read_connection(self.engine) as conn:
                rows = read_after(conn, self._last, tables=self.tables)
            if not rows:
                return
            with self._lock:
                for subscription in self._subscriptions:
                    wanted = [row for row in rows if subscription.accepts(row)]
                    if wanted:
                        try:
                            subscription.loop.call_soon_threadsafe(subscription._offer, wanted)
                        except RuntimeError:  # its loop is closed: the stream is gone
                            continue
                self._last = rows[-1].seq
            if len(rows) < READ_LIMIT:
                return

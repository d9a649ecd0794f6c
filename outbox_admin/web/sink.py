"""``BrowserBusSink``: the dispatcher handler that feeds the browser bus (``outbox_admin.web``)."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping, Sequence

from sqlalchemy import Engine

from ..db import check_engine
from ..errors import ConfigurationError
from ..handlers.base import DeliveredEvent
from ..handlers.envelope import DEFAULT_SOURCE, check_source
from ..models import DEFAULT_TABLES, OutboxTables
from .feed import DEFAULT_REPLAY_WINDOW, read_window_start, write_feed

#: How often the sink deletes the rows older than its window (at most; at a write).
PRUNE_EVERY_SECONDS = 30.0


class BrowserBusSink:
    """Appends each delivered event to the feed the ``message_bus_app`` streams to browsers.

    A batch handler: one short transaction per dispatched batch, on ``engine`` (the
    outbox's database). The delivery counts once the rows are committed; browsers
    connected to any web process get them within the follower's wake-up (a NOTIFY
    on PostgreSQL, an in-process signal otherwise, a poll at the latest). Rows older
    than ``replay_window`` are pruned at most every 30 s, so the feed stays small.
    At-least-once as every sink: an event delivered again (a lost finish, a replay)
    is fed again with the same id, and the browser client drops ids it has seen.
    """

    name = "browser-bus"

    def __init__(
        self,
        engine: Engine,
        *,
        tables: OutboxTables = DEFAULT_TABLES,
        source: str = DEFAULT_SOURCE,
        replay_window: dt.timedelta = DEFAULT_REPLAY_WINDOW,
        name: str | None = None,
    ) -> None:
        check_engine(engine)
        if replay_window <= dt.timedelta(0):
            raise ConfigurationError(f"replay_window must be positive, not {replay_window}")
        self.engine = engine
        self.tables = tables
        self.source = check_source(source)
        self.replay_window = replay_window
        if name is not None:
            self.name = name
        self._next_prune = 0.0

    def handle_batch(self, events: Sequence[DeliveredEvent]) -> Mapping[str, BaseException]:
        """Feed the whole batch in one transaction; a database error fails them all (they are retried)."""
        prune_before = None
        if time.monotonic() >= self._next_prune:
            prune_before = read_window_start(self.engine, self.replay_window)
            self._next_prune = time.monotonic() + PRUNE_EVERY_SECONDS
        write_feed(self.engine, events, tables=self.tables, source=self.source, prune_before=prune_before)
        return {}

    def close(self) -> None:
        """Nothing to release: the engine is the caller's."""

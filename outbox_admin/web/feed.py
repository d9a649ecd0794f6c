"""The browser bus's feed table: written by ``BrowserBusSink``, read by the web processes.

Why a table (and not LISTEN/NOTIFY payloads or a Redis stream): a browser that
reconnects must get what it missed, each event once and in order, from any web
process; the database every part already shares can answer that, and keeps
working on SQLite in one process. NOTIFY only says "look now" (PostgreSQL), so
delivery takes milliseconds instead of a poll interval; the feed itself is the
truth.

Order: readers follow ``seq > last``. A sequence alone would not do, since two
writers can commit out of ``seq`` order, and a reader that saw 10 before 9
committed would skip 9 for good. So feed writes are serialised: on PostgreSQL
each takes a transaction advisory lock before drawing its ``seq`` values (the
lock is released only once the commit is visible), on SQLite the write lock
does the same. Writes are one short statement per dispatched batch, so the lock
costs little.
"""

from __future__ import annotations

import datetime as dt
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, delete, func, insert, select

from ..db import db_now, read_connection, write_transaction
from ..handlers.base import DeliveredEvent
from ..handlers.envelope import DEFAULT_SOURCE, encode_envelope, to_envelope
from ..models import DEFAULT_TABLES, OutboxTables
from ..wakeup import WakeSignal, wake_key

#: The NOTIFY channel of feed writes (PostgreSQL): every web process LISTENs on it.
BUS_CHANNEL = "outbox_bus"
#: How long the feed keeps an event, so a browser reconnecting within it gets what it missed.
DEFAULT_REPLAY_WINDOW = dt.timedelta(minutes=5)
#: Rows one read returns at most; a follower reads again at once when it got that many.
READ_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class FeedRow:
    """One event in the feed: its position, who may see it, and the CloudEvents JSON browsers get."""

    seq: int
    event_id: str
    org_id: str
    event_type: str
    data: str


def _lock_key(tables: OutboxTables) -> int:
    """The advisory lock of one feed table: a stable 32-bit number from its qualified name."""
    name = f"{tables.schema or ''}.{tables.bus_feed.name}"
    return zlib.crc32(f"outbox_admin.bus_feed:{name}".encode())


def write_feed(
    engine: Engine,
    events: Sequence[DeliveredEvent],
    *,
    tables: OutboxTables = DEFAULT_TABLES,
    source: str = DEFAULT_SOURCE,
    prune_before: dt.datetime | None = None,
) -> None:
    """Append ``events`` to the feed in one transaction, in commit order (see the module), and wake readers.

    ``prune_before``: also delete the rows fed before that moment (the replay window's end).
    """
    feed = tables.bus_feed
    rows = [
        {
            "event_id": e.id,
            "org_id": e.org_id,
            "event_type": e.event_type,
            "data": encode_envelope(to_envelope(e, source=source)).decode("utf-8"),
        }
        for e in events
    ]
    postgres = engine.dialect.name == "postgresql"
    with write_transaction(engine) as conn:
        if postgres:
            conn.execute(select(func.pg_advisory_xact_lock(_lock_key(tables))))
        if prune_before is not None:
            conn.execute(delete(feed).where(feed.c.fed_at < prune_before))
        if rows:
            conn.execute(insert(feed).values(fed_at=db_now()), rows)
        if postgres:
            conn.execute(select(func.pg_notify(BUS_CHANNEL, "")))
    feed_signal.notify(feed_key(engine, tables))


def latest_seq(conn: Connection, tables: OutboxTables = DEFAULT_TABLES) -> int:
    """The feed's last position (0 when empty): a follower starting now begins after it."""
    return int(conn.execute(select(func.coalesce(func.max(tables.bus_feed.c.seq), 0))).scalar_one())


def read_after(
    conn: Connection,
    after: int,
    *,
    upto: int | None = None,
    org_id: str | None = None,
    limit: int = READ_LIMIT,
    tables: OutboxTables = DEFAULT_TABLES,
) -> list[FeedRow]:
    """The rows after ``after`` (up to ``upto``), oldest first, of one org if given: a range of the primary key."""
    feed = tables.bus_feed
    query = select(feed.c.seq, feed.c.event_id, feed.c.org_id, feed.c.event_type, feed.c.data).where(feed.c.seq > after)
    if upto is not None:
        query = query.where(feed.c.seq <= upto)
    if org_id is not None:
        query = query.where(feed.c.org_id == org_id)
    return [FeedRow(*row) for row in conn.execute(query.order_by(feed.c.seq).limit(limit))]


def seq_of(conn: Connection, event_id: str, since: dt.datetime, tables: OutboxTables = DEFAULT_TABLES) -> int | None:
    """The position of ``event_id`` in the feed if it is still within the window (its latest, if fed twice)."""
    feed = tables.bus_feed
    query = select(func.max(feed.c.seq)).where(feed.c.event_id == event_id, feed.c.fed_at >= since)
    found = conn.execute(query).scalar_one_or_none()
    return None if found is None else int(found)


def read_window_start(engine: Engine, window: dt.timedelta) -> dt.datetime:
    """The start of the replay window by the database's clock (hosts' clocks may differ)."""
    with read_connection(engine) as conn:
        now = conn.execute(select(db_now())).scalar_one()
    return now - window  # type: ignore[no-any-return]


#: Feed writes committed in this process wake this process's followers at once (SQLite has no NOTIFY).
feed_signal = WakeSignal()


def feed_key(engine: Engine, tables: OutboxTables = DEFAULT_TABLES) -> str:
    """What ``feed_signal`` is keyed by: the database and the feed table."""
    return f"{wake_key(engine.url)}#{tables.schema or ''}.{tables.bus_feed.name}"

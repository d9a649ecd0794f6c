"""The outbox tables: ``OutboxEvent``, its history ``OutboxEventTransition``,
``OutboxEventPause`` (event types an operator paused, kept after resume as the audit trail),
``OutboxEventDelivery`` (the ledger: which handler has which event) and the rollup.

Table names default to those of the original Prisma schema and can be changed
with ``OutboxTables.named(...)``; every part of the package takes an
``OutboxTables`` (default ``DEFAULT_TABLES``), so nothing else hard-codes a name.
The typed ORM classes map the default tables.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped

from .coltypes import UTCDateTime, json_type
from .errors import ConfigurationError

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: History rows written by a person's action (requeue, discard) carry actors with this prefix.
MANUAL_ACTOR_PREFIX = "admin:"
#: The SQL literal that selects them (also the predicate of a partial index on the history).
MANUAL_ACTOR_PATTERN = "'admin:%'"

#: The rollup's latency histogram (``outbox_admin.stats``): buckets at 1 ms times powers of the square root of 2.
STATS_LATENCY_BUCKETS = 54
#: Its retry-count buckets per status: 0, 1, ... and the last for "that many or more".
STATS_RETRY_BUCKETS = 11

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class EventStatus(enum.StrEnum):
    """Where an event is in its lifecycle (stored as its text value)."""

    PENDING = "PENDING"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    DISCARDED = "DISCARDED"

    def __str__(self) -> str:
        return self.value


def _check_identifier(kind: str, name: str | None) -> None:
    if name is not None and not _IDENTIFIER.match(name):
        raise ConfigurationError(
            f"{kind} {name!r} is not a plain SQL identifier (letters, digits, underscore; "
            "at most 63 characters, not starting with a digit)"
        )


def _define_tables(
    metadata: MetaData, events_name: str, transitions_name: str, schema: str | None
) -> tuple[Table, Table]:
    events = Table(
        events_name,
        metadata,
        Column("id", String(36), primary_key=True),
        Column("org_id", String(255), nullable=False),
        Column("event_type", String(255), nullable=False),
        Column("entity_type", String(255), nullable=False),
        Column("entity_id", String(255), nullable=False),
        Column("payload", json_type(), nullable=False),
        Column("status", String(16), nullable=False, default=EventStatus.PENDING.value),
        Column("retry_count", Integer, nullable=False, default=0),
        Column("error_message", Text),
        Column("created_at", UTCDateTime, nullable=False),
        Column("processed_at", UTCDateTime),
        Column("available_at", UTCDateTime, nullable=False),
        Column("locked_by", String(255)),
        Column("locked_until", UTCDateTime),
        Column("idempotency_key", String(255)),
        # The W3C trace context of the span the event was published in (outbox_admin.tracing), or NULL.
        Column("trace_context", Text),
        UniqueConstraint("org_id", "idempotency_key", name=f"uq_{events_name}_idempotency"),
        schema=schema,
    )
    pending = events.c.status == EventStatus.PENDING.value
    processing = events.c.status == EventStatus.PROCESSING.value
    # Due PENDING events, oldest first: a partial index stays as small as the backlog.
    Index(
        f"ix_{events_name}_due",
        events.c.created_at,
        events.c.id,
        events.c.available_at,
        postgresql_where=pending,
        sqlite_where=pending,
    )
    Index(f"ix_{events_name}_leases", events.c.locked_until, postgresql_where=processing, sqlite_where=processing)
    Index(f"ix_{events_name}_org_time", events.c.org_id, events.c.created_at)
    Index(f"ix_{events_name}_entity_time", events.c.entity_type, events.c.entity_id, events.c.created_at)
    Index(f"ix_{events_name}_status_time", events.c.status, events.c.created_at, events.c.id)
    Index(f"ix_{events_name}_time", events.c.created_at, events.c.id)
    has_error = events.c.error_message.is_not(None)
    retried = events.c.retry_count > 0
    Index(f"ix_{events_name}_errors", events.c.created_at, postgresql_where=has_error, sqlite_where=has_error)
    Index(
        f"ix_{events_name}_retried",
        events.c.retry_count,
        events.c.status,
        postgresql_where=retried,
        sqlite_where=retried,
    )

    # The foreign key below is enforced on SQLite only: migration 0003 drops it on PostgreSQL,
    # where its per-row trigger cost 13% of dispatch throughput (see that migration). The same
    # migration makes the idempotency constraint above a partial unique index on PostgreSQL.
    transitions = Table(
        transitions_name,
        metadata,
        Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
        Column(
            "event_id",
            String(36),
            ForeignKey(events.c.id, ondelete="CASCADE", name=f"fk_{transitions_name}_event"),
            nullable=False,
        ),
        Column("from_status", String(16)),
        Column("to_status", String(16), nullable=False),
        Column("at", UTCDateTime, nullable=False),
        Column("actor", String(255), nullable=False),
        Column("attempt", Integer, nullable=False, default=0),
        Column("error_message", Text),
        schema=schema,
    )
    Index(f"ix_{transitions_name}_event", transitions.c.event_id, transitions.c.id)
    Index(f"ix_{transitions_name}_at", transitions.c.at)
    manual = transitions.c.actor.like(text(MANUAL_ACTOR_PATTERN))
    Index(f"ix_{transitions_name}_manual", transitions.c.id, postgresql_where=manual, sqlite_where=manual)
    Index(f"ix_{transitions_name}_kind_at", transitions.c.to_status, transitions.c.from_status, transitions.c.at)
    return events, transitions


def _define_stats(metadata: MetaData, name: str, schema: str | None) -> Table:
    """The rollup that the Overview sums instead of the events (``outbox_admin.stats`` says why and who writes it).

    One row per (period of ``created_at``, its span in seconds, event type, writer): how many
    of the events created then are now COMPLETED, FAILED or DISCARDED, the latency histogram
    (``l00``...) and latency sum of the COMPLETED ones, and each status by retry count
    (``c00``..., ``f00``..., ``d00``...). Fixed columns, not a row per bucket: a window's
    percentiles are one ``SUM`` per column over a few thousand rows.
    """
    counters = [
        "completed",
        "failed",
        "discarded",
        *(f"l{k:02d}" for k in range(STATS_LATENCY_BUCKETS)),
        *(f"{s}{k:02d}" for s in "cfd" for k in range(STATS_RETRY_BUCKETS)),
    ]
    return Table(
        name,
        metadata,
        Column("period", UTCDateTime, nullable=False),
        Column("span", Integer, nullable=False),
        Column("event_type", String(255), nullable=False),
        Column("writer", String(255), nullable=False),
        Column("latency_sum", Float, nullable=False, server_default="0"),
        *(Column(c, Integer, nullable=False, server_default="0") for c in counters),
        PrimaryKeyConstraint("period", "span", "event_type", "writer", name=f"pk_{name}"),
        schema=schema,
    )


def _define_pauses(metadata: MetaData, name: str, schema: str | None) -> Table:
    """Pauses by event-type pattern: a row per pause, ended (not deleted) by a resume, so the table is
    the audit trail. At most one active row per pattern (the partial unique index), which makes pausing
    idempotent and serves the dispatcher's per-tick read of the active patterns."""
    pauses = Table(
        name,
        metadata,
        Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
        Column("pattern", String(255), nullable=False),
        Column("reason", Text, nullable=False),
        Column("paused_by", String(255), nullable=False),
        Column("paused_at", UTCDateTime, nullable=False),
        Column("resumed_by", String(255)),
        Column("resumed_at", UTCDateTime),
        schema=schema,
    )
    active = pauses.c.resumed_at.is_(None)
    Index(f"uq_{name}_active", pauses.c.pattern, unique=True, postgresql_where=active, sqlite_where=active)
    return pauses


#: A ledger row with this handler name stands for every handler: events delivered before the ledger
#: existed (migration 0006) count as delivered to all their handlers.
ALL_HANDLERS = "*"
#: A handler's name is stored in the ledger: at most this long.
MAX_HANDLER_NAME = 255


def _define_deliveries(metadata: MetaData, name: str, schema: str | None) -> Table:
    """The delivery ledger: one row per (event, handler) the dispatcher tried, so a retry runs only the
    handlers that do not have the event yet, and a replay can send it again to one handler.

    ``delivered_at`` is set when the handler succeeded (``duration_ms`` is how long that call took;
    ``attempt`` how many tries it took); a row with ``delivered_at`` null records the handler's failures
    (``last_error``), or, with ``requested_at`` set, a replay that asked for the event again
    (``admin.replay``): while an event has such rows, only those handlers are run for it. No foreign
    key (as for the history on PostgreSQL): ``admin.purge`` deletes the rows with their events.
    """
    deliveries = Table(
        name,
        metadata,
        Column("event_id", String(36), nullable=False),
        Column("handler", String(MAX_HANDLER_NAME), nullable=False),
        Column("attempt", Integer, nullable=False, server_default="0"),
        Column("delivered_at", UTCDateTime),
        Column("duration_ms", Float),
        Column("last_error", Text),
        Column("requested_at", UTCDateTime),
        Column("requested_by", String(255)),
        PrimaryKeyConstraint("event_id", "handler", name=f"pk_{name}"),
        schema=schema,
    )
    # The Overview's per-handler rates read a recent window of deliveries.
    Index(f"ix_{name}_delivered", deliveries.c.delivered_at)
    return deliveries


def _define_bus_feed(metadata: MetaData, name: str, schema: str | None) -> Table:
    """The browser bus's feed (``outbox_admin.web``): one row per event the ``BrowserBusSink`` delivered,
    in commit order, kept for the replay window (5 minutes by default) and then pruned.

    ``seq`` orders the feed: the web processes read ``seq > last``. It follows commit order
    because feed writes are serialised (PostgreSQL: a transaction advisory lock, so a row's
    ``seq`` is drawn only after every earlier feed write committed; SQLite: the write lock),
    and never goes back (SQLite ``AUTOINCREMENT``: a pruned, emptied feed does not restart at 1).
    ``data`` is the CloudEvents JSON the sinks send. A browser that reconnects names the last
    event it saw (``Last-Event-ID``); ``event_id``'s index finds its ``seq``.
    """
    feed = Table(
        name,
        metadata,
        Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
        Column("event_id", String(36), nullable=False),
        Column("org_id", String(255), nullable=False),
        Column("event_type", String(255), nullable=False),
        Column("data", Text, nullable=False),
        Column("fed_at", UTCDateTime, nullable=False),
        schema=schema,
        sqlite_autoincrement=True,
    )
    Index(f"ix_{name}_event", feed.c.event_id)
    Index(f"ix_{name}_fed", feed.c.fed_at)
    return feed


@dataclass(frozen=True)
class OutboxTables:
    """The outbox tables as SQLAlchemy Core ``Table`` objects: the events, their history, the pauses,
    the rollup (``stats``, named ``<events>Stats``), the delivery ledger (``deliveries``,
    named ``<events>Delivery``) and the browser bus's feed (``bus_feed``, ``<events>BusFeed``).

    ``OutboxTables.named(events="app_outbox", transitions="app_outbox_history")``
    makes a set with other names (validated as plain identifiers) in its own
    ``MetaData``; the pauses table defaults to ``<events>Pause``. Pass it as
    ``tables=`` to ``init_db``, the publisher, the dispatcher and the analytics.
    """

    events: Table
    transitions: Table
    pauses: Table
    stats: Table
    deliveries: Table
    bus_feed: Table

    @property
    def version_table(self) -> str:
        """Alembic's version table for these tables (kept apart from an application's own)."""
        if self.events.name == "OutboxEvent":
            return "outbox_alembic_version"
        return f"{self.events.name}_alembic_version"

    @property
    def schema(self) -> str | None:
        return self.events.schema

    @classmethod
    def named(
        cls,
        events: str = "OutboxEvent",
        transitions: str | None = None,
        *,
        pauses: str | None = None,
        schema: str | None = None,
    ) -> OutboxTables:
        transitions = transitions or f"{events}Transition"
        pauses = pauses or f"{events}Pause"
        stats = f"{events}Stats"
        deliveries = f"{events}Delivery"
        bus_feed = f"{events}BusFeed"
        for kind, name in (
            ("table name", events),
            ("table name", transitions),
            ("table name", pauses),
            ("table name", stats),
            ("table name", deliveries),
            ("table name", bus_feed),
            ("schema name", schema),
        ):
            _check_identifier(kind, name)
        if len({events, transitions, pauses, stats, deliveries, bus_feed}) < 6:
            raise ConfigurationError(
                "the events, transitions, pauses, stats, delivery and bus feed tables need different names"
            )
        metadata = MetaData(naming_convention=NAMING_CONVENTION)
        return cls(
            *_define_tables(metadata, events, transitions, schema),
            _define_pauses(metadata, pauses, schema),
            _define_stats(metadata, stats, schema),
            _define_deliveries(metadata, deliveries, schema),
            _define_bus_feed(metadata, bus_feed, schema),
        )


metadata = MetaData(naming_convention=NAMING_CONVENTION)
DEFAULT_TABLES = OutboxTables(
    *_define_tables(metadata, "OutboxEvent", "OutboxEventTransition", None),
    _define_pauses(metadata, "OutboxEventPause", None),
    _define_stats(metadata, "OutboxEventStats", None),
    _define_deliveries(metadata, "OutboxEventDelivery", None),
    _define_bus_feed(metadata, "OutboxEventBusFeed", None),
)


class Base(DeclarativeBase):
    metadata = metadata


class OutboxEvent(Base):
    """One event written by ``publish_outbox_event`` in the caller's transaction."""

    __table__ = DEFAULT_TABLES.events

    id: Mapped[str]
    org_id: Mapped[str]
    event_type: Mapped[str]
    entity_type: Mapped[str]
    entity_id: Mapped[str]
    payload: Mapped[Any]
    status: Mapped[str]
    retry_count: Mapped[int]
    error_message: Mapped[str | None]
    created_at: Mapped[dt.datetime]
    processed_at: Mapped[dt.datetime | None]
    available_at: Mapped[dt.datetime]
    locked_by: Mapped[str | None]
    locked_until: Mapped[dt.datetime | None]
    idempotency_key: Mapped[str | None]
    trace_context: Mapped[str | None]

    def __repr__(self) -> str:
        return f"<OutboxEvent {self.id} {self.event_type} {self.status}>"


class OutboxEventTransition(Base):
    """One status change of one event: the history the dashboard and timelines read."""

    __table__ = DEFAULT_TABLES.transitions

    id: Mapped[int]
    event_id: Mapped[str]
    from_status: Mapped[str | None]
    to_status: Mapped[str]
    at: Mapped[dt.datetime]
    actor: Mapped[str]
    attempt: Mapped[int]
    error_message: Mapped[str | None]

    def __repr__(self) -> str:
        return f"<OutboxEventTransition {self.event_id} {self.from_status}->{self.to_status}>"


class OutboxEventPause(Base):
    """One pause of the event types matching ``pattern``; active while ``resumed_at`` is null."""

    __table__ = DEFAULT_TABLES.pauses

    id: Mapped[int]
    pattern: Mapped[str]
    reason: Mapped[str]
    paused_by: Mapped[str]
    paused_at: Mapped[dt.datetime]
    resumed_by: Mapped[str | None]
    resumed_at: Mapped[dt.datetime | None]

    def __repr__(self) -> str:
        return f"<OutboxEventPause {self.pattern} {'active' if self.resumed_at is None else 'resumed'}>"


class OutboxEventDelivery(Base):
    """One handler's state for one event: delivered (when, after how many tries, how long it took),
    still failing (its last error), or asked for again by a replay (``requested_at``)."""

    __table__ = DEFAULT_TABLES.deliveries

    event_id: Mapped[str]
    handler: Mapped[str]
    attempt: Mapped[int]
    delivered_at: Mapped[dt.datetime | None]
    duration_ms: Mapped[float | None]
    last_error: Mapped[str | None]
    requested_at: Mapped[dt.datetime | None]
    requested_by: Mapped[str | None]

    def __repr__(self) -> str:
        state = "delivered" if self.delivered_at is not None else "requested" if self.requested_at else "failing"
        return f"<OutboxEventDelivery {self.event_id} {self.handler} {state}>"

"""The library's hot SQL, one module per dialect: ``postgres`` and ``sqlite``.

Each module builds the same named statements for a table set — the dispatcher's
(``DispatcherSql``), the publisher's (``PublishSql``) and the few of a person's
actions that must follow the dispatcher's rules (``AdminSql``);
``shared`` holds the fragments both write the same way (the SET clauses of a
finish and of an expired lease). The dispatcher holds the logic and runs them; a
third dialect is one more module here. Each dialect module also writes the
filters' payload condition (``payload_equals``, compiled by ``outbox_admin.filters``).

Every hot statement is shaped so that its plan does not depend on the table's
statistics (none yet, stale after a burst, fresh): rows are reached by primary
key from the batch, or through the one partial index meant for them, and no
predicate offers the planner an index that would make it walk every PENDING or
PROCESSING row per element of a batch. ``tests/test_plans.py`` checks the plans
in all three states on a new connection.

Parameters are written ``:name``; ``driver_style`` turns them into the DBAPI's. The
publisher's statements also run on the async drivers (``outbox_admin.aio``), so they
are rendered in ``dialect_style(dialect)`` by ``render``: asyncpg takes ``$1`` and a
tuple in the text's order (``PublishSql.args`` builds it from the named values).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..models import OutboxTables

_NAMED_PARAMETER = re.compile(r":(\w+)")


#: What a published event's statement carries for each event, in this order.
PUBLISHED_COLUMNS = ("id", "org_id", "event_type", "entity_type", "entity_id", "payload", "idempotency_key")
#: ... and in a write holding at least one event published inside a span, its trace context (migration
#: 0008). A write with none leaves the column out: the same statement as before, which also runs on a
#: database not yet upgraded to 0008 (an application deployed before its ``init_db``).
TRACED_COLUMNS = (*PUBLISHED_COLUMNS, "trace_context")


@dataclass(frozen=True)
class DispatcherSql:
    """The dispatcher's statements for one table set on one dialect, in the driver's parameter style."""

    claim: str  # claim up to :limit due PENDING events, oldest first; returns CLAIMED_COLUMNS
    claim_unblocked: str  # the same, leaving out events matching :blocked (open breakers, pauses)
    renew: str  # extend the lease of :ids still held by :name; returns their ids
    finish: str  # write a batch's outcomes (:outcomes, JSON) guarded by holder and attempt; returns ids
    recover: str  # expired leases back to PENDING (or FAILED); returns (id, status, retry_count, error_message)
    history: str | None  # SQLite: history rows from :rows (JSON); PostgreSQL writes them in each statement
    active_pauses: str  # the patterns of the active pauses, read once per claim (the partial unique index)
    # SQLite: add a row of sums (stats.summed; executemany) to the rollup (outbox_admin.stats) after a
    # finish or a recovery; PostgreSQL counts in those statements themselves.
    count: str | None
    # The ledger rows of the claimed :ids (JSON), which decide the handlers to run: (event id, handler,
    # delivered, requested by a replay). One read per batch, by the ledger's primary key.
    delivered: str
    # SQLite: the finish's ledger rows from :deliveries (JSON); PostgreSQL writes them in the finish.
    record_deliveries: str | None


@dataclass(frozen=True)
class AdminSql:
    """The statements of a person's actions (``outbox_admin.admin``) that must match the dispatcher's."""

    recover: str  # the dispatcher's recovery of expired leases, on the events of :ids (JSON) only
    history: str | None  # SQLite: history rows from :rows (JSON), as the dispatcher's
    notify: str | None  # PostgreSQL: wake every dispatcher once the transaction commits
    count: str | None  # SQLite: the rollup's sums after a recovery, as the dispatcher's ``count``


@dataclass(frozen=True)
class PublishSql:
    """The publisher's statements for one table set on one dialect, in the driver's parameter style."""

    insert: str  # PostgreSQL: events + history + pg_notify from :events (JSON), returning (count, stamp)
    insert_keyed: str  # the same, skipping taken idempotency keys, returning the ids written (and stamps)
    history: str | None  # SQLite: the first history rows, from :ids (JSON) at :at
    # SQLite, one event (the usual transaction): plain parameters, cheaper there than parsing a
    # JSON array (measured: 0.13 ms less per transaction). PostgreSQL showed no gain.
    insert_one: str | None
    history_one: str | None
    # For positional parameter styles (asyncpg's ``$1``): each statement's parameter names in the
    # order its text numbers them, keyed by field name. Empty for named styles (psycopg, sqlite3).
    positional: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    columns: tuple[str, ...] = PUBLISHED_COLUMNS  # what each event's element holds, in order

    @property
    def traced(self) -> bool:
        """Whether the statements write ``trace_context`` (``TRACED_COLUMNS``)."""
        return len(self.columns) > len(PUBLISHED_COLUMNS)

    def args(self, statement: str, values: dict[str, Any]) -> dict[str, Any] | tuple[Any, ...]:
        """The parameters of the statement in field ``statement``, as its text wants them."""
        order = self.positional.get(statement)
        return values if order is None else tuple(values[name] for name in order)


PUBLISHER_ACTOR = "publisher"

#: What a claim returns per event (``dispatcher._Statements.delivered`` reads them by position), then
#: ``may_have_deliveries``. ``trace_context`` is last so the positions of the others never moved.
CLAIMED_COLUMNS = (
    "id",
    "org_id",
    "event_type",
    "entity_type",
    "entity_id",
    "payload",
    "retry_count",
    "created_at",
    "trace_context",
)
HISTORY_COLUMNS = "event_id, from_status, to_status, at, actor, attempt, error_message"
LEDGER_COLUMNS = "event_id, handler, attempt, delivered_at, duration_ms, last_error"


def may_have_deliveries(alias: str = "") -> str:
    """The claim's last column, after ``CLAIMED_COLUMNS``: whether the event may have ledger rows already.

    Only the finish of an attempt (``retry_count`` grows), a release or a wait (``available_at``
    moves to the finish's clock), a requeue or a replay (``available_at`` moves to now) write
    ledger rows or make an event due again with them. A published event has ``available_at =
    created_at`` and ``retry_count = 0``: a batch of first tries, nearly every batch, needs no
    ledger read at all.
    """
    return f"({alias}retry_count > 0 OR {alias}available_at <> {alias}created_at)"


def publish_sql(dialect: Any, tables: OutboxTables, *, traced: bool = False) -> PublishSql:
    """The publisher's statements of ``dialect`` for ``tables``; ``traced``: with ``trace_context``."""
    names = _names(dialect, tables)
    columns = TRACED_COLUMNS if traced else PUBLISHED_COLUMNS
    if dialect.name == "postgresql":
        from . import postgres

        return postgres.publish_sql(names, dialect, columns)
    from . import sqlite

    return sqlite.publish_sql(names, dialect, columns)


def quoted_columns(dialect: Any, columns: tuple[str, ...]) -> str:
    """``columns`` as a quoted, comma-separated list."""
    quote = dialect.identifier_preparer.quote
    return ", ".join(quote(c) for c in columns)


def admin_sql(dialect: Any, tables: OutboxTables) -> AdminSql:
    """The admin statements of ``dialect`` for ``tables`` (always on the database's clock)."""
    names = _names(dialect, tables)
    if dialect.name == "postgresql":
        from . import postgres

        return postgres.admin_sql(names, dialect)
    from . import sqlite

    return sqlite.admin_sql(names, dialect)


def _names(dialect: Any, tables: OutboxTables) -> _Names:
    quote = dialect.identifier_preparer
    return _Names(
        events=quote.format_table(tables.events),
        transitions=quote.format_table(tables.transitions),
        stats=quote.format_table(tables.stats),
        deliveries=quote.format_table(tables.deliveries),
        due_index=quote.quote(f"ix_{tables.events.name}_due"),
        leases_index=quote.quote(f"ix_{tables.events.name}_leases"),
        pauses=quote.format_table(tables.pauses),
        active_pauses_index=quote.quote(f"uq_{tables.pauses.name}_active"),
        idempotency_target=f"({quote.quote('org_id')}, {quote.quote('idempotency_key')})",
    )


def dispatcher_sql(dialect: Any, tables: OutboxTables, *, ordering: str | None, clocked: bool) -> DispatcherSql:
    """The statements of ``dialect`` (a SQLAlchemy dialect) for ``tables``.

    ``ordering="entity"`` adds the per-entity order condition to the claim;
    ``clocked`` takes times as parameters (``:now``, ``:lease_until``, per-outcome
    ``due``) instead of the database's clock, for tests that move time by hand.
    """
    names = _names(dialect, tables)
    if dialect.name == "postgresql":
        from . import postgres

        return postgres.dispatcher_sql(names, dialect, ordering=ordering, clocked=clocked)
    if dialect.name == "sqlite":
        from . import sqlite

        return sqlite.dispatcher_sql(names, dialect, ordering=ordering, clocked=clocked)
    from ..errors import ConfigurationError

    raise ConfigurationError(f"the dispatcher supports PostgreSQL and SQLite, not {dialect.name}")


@dataclass(frozen=True)
class _Names:
    """Quoted names the statements use."""

    events: str
    transitions: str
    stats: str
    deliveries: str
    due_index: str
    leases_index: str
    pauses: str
    active_pauses_index: str  # the partial unique index of the active pauses
    idempotency_target: str  # (org_id, idempotency_key), quoted


#: How a statement's parameters are written for a driver: ``named`` (``:name``, sqlite3 and aiosqlite),
#: ``pyformat`` (``%(name)s``, psycopg) or ``numeric_dollar`` (``$1``, asyncpg).
ParamStyle = Literal["named", "pyformat", "numeric_dollar"]


def dialect_style(dialect: Any) -> ParamStyle:
    """The parameter style the library renders for ``dialect``'s driver.

    SQLite's drivers report ``qmark`` but sqlite3 (and aiosqlite, which runs it in a thread)
    also take ``:name`` with a dict, which the library's SQLite statements use.
    """
    if dialect.name == "sqlite":
        return "named"
    style = dialect.paramstyle
    if style in ("pyformat", "numeric_dollar"):
        return style  # type: ignore[no-any-return]
    from ..errors import ConfigurationError

    raise ConfigurationError(
        f"the {dialect.name}+{dialect.driver} driver takes {style!r} parameters; "
        "use psycopg (postgresql+psycopg://) or asyncpg (postgresql+asyncpg://)"
    )


def render(sql: str, style: ParamStyle) -> tuple[str, tuple[str, ...] | None]:
    """``sql`` (``:name`` parameters) in ``style``, and for ``numeric_dollar`` the names in ``$n`` order.

    A name used twice keeps its first number (``$n`` may repeat), so each value is sent once.
    """
    if style != "numeric_dollar":
        return driver_style(sql, pyformat=style == "pyformat"), None
    order: list[str] = []

    def number(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in order:
            order.append(name)
        return f"${order.index(name) + 1}"

    return _NAMED_PARAMETER.sub(number, sql), tuple(order)


def driver_style(sql: str, *, pyformat: bool) -> str:
    """``:name`` parameters as the DBAPI wants them (psycopg: ``%(name)s``; sqlite3 takes ``:name``)."""
    if not pyformat:
        return sql
    return _NAMED_PARAMETER.sub(r"%(\1)s", sql.replace("%", "%%"))

"""Event filters shared by the read side (analytics) and the write side (admin).

One ``EventFilter`` turns what a person typed (a status, an event type, an org,
an entity, a time range, free text) into SQL conditions with bound parameters
only. Free-text search matches ids, entity ids and error messages literally and
case-insensitively: ``%``, ``_`` and ``\\`` in the text are escaped, never
wildcards.

Error messages are grouped by a normalised form (UUIDs, hex, numbers replaced by
placeholders), computed in SQL: a ``regexp_replace`` chain on PostgreSQL, and the
same regular expressions registered as a SQLite function on each connection.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from sqlalchemy import Connection, and_, func, literal_column, or_
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import Text

from .errors import FilterError
from .models import EventStatus, OutboxTables

STATUSES = tuple(s.value for s in EventStatus)
MAX_SEARCH_LENGTH = 200

# Applied in this order, identically in Python, PostgreSQL and SQLite.
ERROR_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}", "<id>"),
    (r"0[xX][0-9a-fA-F]+", "<hex>"),
    (r"[0-9a-fA-F]{16,}", "<hex>"),
    (r"[0-9]+", "<n>"),
)
_COMPILED = tuple((re.compile(p), r) for p, r in ERROR_PATTERNS)
SQLITE_NORMALIZE_FUNCTION = "outbox_normalize_error"


@functools.lru_cache(maxsize=65_536)  # error messages repeat: a cache makes grouping cheap
def normalize_error(message: str | None) -> str | None:
    """The group an error message belongs to: ids, hex and numbers replaced by placeholders."""
    if message is None:
        return None
    for pattern, placeholder in _COMPILED:
        message = pattern.sub(placeholder, message)
    return message


class normalized_error(FunctionElement[str]):
    """SQL for ``normalize_error(column)``."""

    type = Text()
    inherit_cache = True


def _sql_text(value: str) -> Any:
    """A constant string inlined in the SQL (literal_column escapes ``%`` for the driver's paramstyle)."""
    return literal_column("'" + value.replace("'", "''") + "'")


@compiles(normalized_error, "postgresql")
def _normalized_pg(element: normalized_error, compiler: Any, **kw: Any) -> str:
    # Inlined constants, not bound parameters: GROUP BY must repeat the very same expression. Only the
    # constants are escaped, never the compiled argument (a bound parameter in it stays a parameter).
    (expr,) = list(element.clauses)
    for pattern, placeholder in ERROR_PATTERNS:
        expr = func.regexp_replace(expr, _sql_text(pattern), _sql_text(placeholder), _sql_text("g"))
    return compiler.process(expr, **kw)


@compiles(normalized_error, "sqlite")
def _normalized_sqlite(element: normalized_error, compiler: Any, **kw: Any) -> str:
    (arg,) = list(element.clauses)
    return f"{SQLITE_NORMALIZE_FUNCTION}({compiler.process(arg, **kw)})"


def prepare_connection(conn: Connection) -> Connection:
    """Register the SQLite functions the filters use on this connection (once per DBAPI connection)."""
    if conn.dialect.name == "sqlite" and not conn.info.get(SQLITE_NORMALIZE_FUNCTION):
        raw = conn.connection.dbapi_connection
        raw.create_function(SQLITE_NORMALIZE_FUNCTION, 1, normalize_error, deterministic=True)  # type: ignore[union-attr]
        conn.info[SQLITE_NORMALIZE_FUNCTION] = True
    return conn


def escape_like(text: str) -> str:
    """``text`` with LIKE's wildcards escaped (escape character: backslash)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _as_tuple(value: str | Iterable[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")] if "," in value else [value.strip()]
    else:
        items = [str(v).strip() for v in value]
    items = [v for v in items if v]
    return tuple(items) or None


def parse_time(value: dt.datetime | dt.date | str | None, name: str) -> dt.datetime | None:
    """A timezone-aware UTC datetime from a datetime, a date or ISO 8601 text (naive means UTC)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise FilterError(name, f"{value!r} is not an ISO 8601 date or time (e.g. 2026-11-27T10:00)") from None
    elif isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        value = dt.datetime.combine(value, dt.time())
    if not isinstance(value, dt.datetime):
        raise FilterError(name, f"expected a datetime, got {type(value).__name__}")
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


@dataclass(frozen=True)
class EventFilter:
    """Which events an analytics query or an admin action covers; every field optional.

    ``status``, ``event_type`` and ``org_id`` take one value, a comma-separated
    text, or a list. ``entity`` is ``"Type/id"``, ``"Type"`` or ``("Type", "id")``.
    ``since``/``until`` bound ``created_at`` (``until`` exclusive). ``search``
    matches ids, entity ids and error messages. ``error_group`` is a normalised
    error message (see ``normalize_error``).
    """

    status: tuple[str, ...] | None = None
    event_type: tuple[str, ...] | None = None
    org_id: tuple[str, ...] | None = None
    entity_type: str | None = None
    entity_id: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    search: str | None = None
    error_group: str | None = None
    event_ids: tuple[str, ...] | None = None

    @classmethod
    def build(
        cls,
        *,
        status: str | Iterable[str] | None = None,
        event_type: str | Iterable[str] | None = None,
        org_id: str | Iterable[str] | None = None,
        entity: str | Sequence[str] | None = None,
        since: dt.datetime | dt.date | str | None = None,
        until: dt.datetime | dt.date | str | None = None,
        search: str | None = None,
        error_group: str | None = None,
        event_ids: Iterable[str] | None = None,
    ) -> EventFilter:
        """Validate loose input (from a form, a URL or the CLI) into a filter; raises ``FilterError``."""
        statuses = _as_tuple(status)
        if statuses is not None:
            statuses = tuple(s.upper() for s in statuses)
            unknown = [s for s in statuses if s not in STATUSES]
            if unknown:
                raise FilterError("status", f"unknown status {', '.join(unknown)}; use {', '.join(STATUSES)}")
        entity_type = entity_id = None
        if isinstance(entity, str) and entity.strip():
            entity_type, _, rest = entity.strip().partition("/")
            entity_id = rest or None
        elif entity is not None and not isinstance(entity, str):
            parts = list(entity)
            if not 1 <= len(parts) <= 2:
                raise FilterError("entity", "give (entity_type,) or (entity_type, entity_id)")
            entity_type, entity_id = parts[0], parts[1] if len(parts) == 2 else None
        since_at, until_at = parse_time(since, "since"), parse_time(until, "until")
        if since_at and until_at and since_at >= until_at:
            raise FilterError("until", "must be later than since")
        if search is not None:
            search = search.strip() or None
            if search is not None and len(search) > MAX_SEARCH_LENGTH:
                raise FilterError("search", f"at most {MAX_SEARCH_LENGTH} characters")
            if search is not None and "\x00" in search:
                raise FilterError("search", "contains a NUL character")
        ids = tuple(event_ids) if event_ids is not None else None
        # PostgreSQL text cannot hold NUL: refuse it here, with the field's name, not as a database error.
        for name, values in (
            ("event_type", _as_tuple(event_type)),
            ("org_id", _as_tuple(org_id)),
            ("entity", (entity_type, entity_id)),
            ("error_group", (error_group,)),
            ("event_ids", ids),
        ):
            if any(v is not None and "\x00" in v for v in values or ()):
                raise FilterError(name, "contains a NUL character")
        return cls(
            statuses,
            _as_tuple(event_type),
            _as_tuple(org_id),
            entity_type or None,
            entity_id,
            since_at,
            until_at,
            search,
            error_group or None,
            ids,
        )

    def with_(self, **changes: Any) -> EventFilter:
        return replace(self, **changes)

    def is_empty(self) -> bool:
        return all(getattr(self, f.name) is None for f in fields(self))

    def conditions(self, tables: OutboxTables) -> list[ColumnElement[bool]]:
        """The SQL conditions on the events table (all bound parameters)."""
        ev = tables.events
        where: list[ColumnElement[bool]] = []
        if self.event_ids is not None:
            where.append(ev.c.id.in_(self.event_ids))
        if self.status:
            where.append(ev.c.status.in_(self.status))
        if self.event_type:
            where.append(ev.c.event_type.in_(self.event_type))
        if self.org_id:
            where.append(ev.c.org_id.in_(self.org_id))
        if self.entity_type:
            where.append(ev.c.entity_type == self.entity_type)
        if self.entity_id:
            where.append(ev.c.entity_id == self.entity_id)
        if self.since:
            where.append(ev.c.created_at >= self.since)
        if self.until:
            where.append(ev.c.created_at < self.until)
        if self.search:
            pattern = f"%{escape_like(self.search)}%"
            where.append(
                or_(
                    ev.c.id.ilike(pattern, escape="\\"),
                    ev.c.entity_id.ilike(pattern, escape="\\"),
                    ev.c.error_message.ilike(pattern, escape="\\"),
                )
            )
        if self.error_group:
            where.append(normalized_error(ev.c.error_message) == self.error_group)
        return where

    def clause(self, tables: OutboxTables) -> ColumnElement[bool]:
        conditions = self.conditions(tables)
        return and_(*conditions) if conditions else and_(True)


def as_filter(filters: EventFilter | None = None, **loose: Any) -> EventFilter:
    """``filters`` if given, else ``EventFilter.build(**loose)``; refuses both at once."""
    loose = {k: v for k, v in loose.items() if v is not None}
    if filters is not None:
        if loose:
            raise FilterError("filters", "give an EventFilter or keyword filters, not both")
        return filters
    return EventFilter.build(**loose)


#: Query-string names of the filter fields (short, so a shared link stays readable).
QUERY_KEYS = {
    "status": "status",
    "event_type": "type",
    "org_id": "org",
    "entity": "entity",
    "since": "since",
    "until": "until",
    "search": "q",
    "error_group": "error",
}


def filter_to_query(flt: EventFilter) -> dict[str, str]:
    """The query-string form of a filter (lists comma-separated), for shareable dashboard links."""
    query: dict[str, str] = {}
    for field_name, key in (("status", "status"), ("event_type", "type"), ("org_id", "org")):
        values = getattr(flt, field_name)
        if values:
            query[key] = ",".join(values)
    if flt.entity_type:
        query["entity"] = flt.entity_type + (f"/{flt.entity_id}" if flt.entity_id else "")
    for field_name in ("since", "until"):
        value = getattr(flt, field_name)
        if value is not None:
            query[field_name] = value.isoformat()
    if flt.search:
        query["q"] = flt.search
    if flt.error_group:
        query["error"] = flt.error_group
    return query


def filter_from_query(query: Any) -> EventFilter:
    """The filter a query string describes; unknown keys are ignored, bad values raise ``FilterError``."""

    def get(key: str) -> str | None:
        value = query.get(key)
        if isinstance(value, list):
            value = ",".join(value)
        return value or None

    return EventFilter.build(
        status=get("status"),
        event_type=get("type"),
        org_id=get("org"),
        entity=get("entity"),
        since=get("since"),
        until=get("until"),
        search=get("q"),
        error_group=get("error"),
    )

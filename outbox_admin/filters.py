"""Event filters shared by the read side (analytics) and the write side (admin).

One ``EventFilter`` turns what a person typed (a status, an event type, an org,
an entity, a time range, free text) into SQL conditions with bound parameters
only. Free-text search matches ids, entity ids and error messages literally and
case-insensitively: ``%``, ``_`` and ``\\`` in the text are escaped, never
wildcards.

Every value is checked before it reaches SQL, in time bounded by the limits
below whatever it is handed: text is at most ``MAX_TEXT_LENGTH`` characters
(``MAX_SEARCH_LENGTH`` for a search once trimmed, ``MAX_ERROR_GROUP_LENGTH`` for
an error group), holds no NUL (PostgreSQL text cannot) and no lone surrogate (it
is not UTF-8, so no driver can send it); a list holds at most ``MAX_VALUES``
values (``MAX_EVENT_IDS`` ids); times must stay inside the years 1-9999 once
converted to UTC. Anything else raises ``FilterError`` naming the field, also when
an ``EventFilter`` is built directly or changed with ``with_``.

Error messages are grouped by a normalised form (UUIDs, hex, numbers replaced by
placeholders), computed in SQL: a ``regexp_replace`` chain on PostgreSQL, and the
same regular expressions registered as a SQLite function on each connection.

Payload conditions (``payload={"customer.id": 42}``, ``PayloadCondition``) compare JSON values
inside the payload by path, typed (42 is not "42", true is not 1); each key and value is a
bound parameter, and SQLite walks the path with ``json_each``, so no key is read as JSONPath.
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, cast

from sqlalchemy import Connection, and_, func, literal, literal_column, or_
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.sql.visitors import InternalTraversal
from sqlalchemy.types import Boolean, Text

from .db import db_now
from .display import visible_json
from .errors import FilterError, PayloadError
from .models import EventStatus, OutboxTables
from .payload import encode_payload, text_fault

STATUSES = tuple(s.value for s in EventStatus)
PENDING, PROCESSING = EventStatus.PENDING.value, EventStatus.PROCESSING.value
MAX_SEARCH_LENGTH = 200
#: Any text given to a filter, before trimming or splitting (event types, orgs and ids are at most 255 stored).
MAX_TEXT_LENGTH = 1_000
#: A group is a normalised stored error message: those are at most 2,000 characters, and normalising at most
#: doubles one ("1,2" -> "<n>,<n>").
MAX_ERROR_GROUP_LENGTH = 4_000
#: Values in one list filter (statuses, event types, orgs).
MAX_VALUES = 1_000
#: Explicit event ids in one filter (a selection in the dashboard, ids on the CLI).
MAX_EVENT_IDS = 10_000
#: Integers accepted where text is expected (org ids may be published as ints): the signed 64-bit range.
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

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


_PLACEHOLDERS = re.compile("|".join(sorted({re.escape(r) for _, r in ERROR_PATTERNS}, key=len, reverse=True)))


def group_pattern(group: str) -> str:
    """A LIKE pattern every message of ``group`` matches (its placeholders become ``%``; backslash escapes):
    normalising only replaces parts of a message, so the rest of the group is in it, in order."""
    parts = _PLACEHOLDERS.split(group)
    return "%".join(escape_like(part) for part in parts)


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


class contains_text(FunctionElement[bool]):
    """``column ILIKE pattern`` (escape character: backslash): a case-insensitive LIKE, faster.

    Written ``lower(column) LIKE lower(pattern)``: what PostgreSQL's ILIKE does for UTF-8
    text, but with the pattern lowered once per query instead of once per row (a search
    of 1,000,000 events: 0.35 s instead of 0.52 s). SQLite writes a plain LIKE, which is
    already case-insensitive for ASCII and, as SQLite's ``lower()``, only for ASCII: the
    same matches without two ``lower()`` calls per row and column (half the time).
    """

    type = Boolean()
    inherit_cache = True


@compiles(contains_text)
def _contains_default(element: contains_text, compiler: Any, **kw: Any) -> str:
    column, pattern = list(element.clauses)
    return compiler.process(func.lower(column).like(func.lower(pattern), escape="\\"), **kw)


@compiles(contains_text, "sqlite")
def _contains_sqlite(element: contains_text, compiler: Any, **kw: Any) -> str:
    column, pattern = list(element.clauses)
    return compiler.process(column.like(pattern, escape="\\"), **kw)


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


def check_text(name: str, value: object, *, limit: int = MAX_TEXT_LENGTH) -> str:
    """``value`` if it is text a filter can compare, else ``FilterError`` naming ``name``.

    At most ``limit`` characters, no NUL, no lone surrogate; O(1) for an over-long
    value, O(limit) at worst. Also for single values such as ``get_event``'s id.
    """
    if not isinstance(value, str):
        raise FilterError(name, f"must be text, not {type(value).__name__}")
    if len(value) > limit:
        raise FilterError(name, f"is {len(value):,} characters, over the limit of {limit:,}")
    fault = text_fault(value)
    if fault is not None:
        raise FilterError(name, fault)
    return str(value)


def _item_text(name: str, value: object) -> str:
    """One value of a list filter: text, or an int in the 64-bit range (range checked before ``str``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise FilterError(name, "an integer outside the signed 64-bit range matches nothing stored")
        return str(int(value))
    return check_text(name, value)


def _as_tuple(name: str, value: str | Iterable[str] | None, *, max_values: int = MAX_VALUES) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        check_text(name, value)
        items = [v.strip() for v in value.split(",")] if "," in value else [value.strip()]
    else:
        try:
            # islice: a long (or endless) iterable is refused after max_values + 1 values, not consumed.
            taken = list(itertools.islice(value, max_values + 1))
        except TypeError:
            raise FilterError(name, f"must be text or a list of text, not {type(value).__name__}") from None
        if len(taken) > max_values:
            raise FilterError(name, f"more than {max_values:,} values")
        items = [_item_text(name, v).strip() for v in taken]
    items = [v for v in items if v]
    return tuple(items) or None


def parse_time(value: dt.datetime | dt.date | str | None, name: str) -> dt.datetime | None:
    """A timezone-aware UTC datetime from a datetime, a date or ISO 8601 text (naive means UTC).

    Raises ``FilterError`` for anything else, and for a time that leaves the years
    1-9999 once converted to UTC (``9999-12-31T23:59:59-05:00``).
    """
    if value is None or value == "":
        return None
    if isinstance(value, str):
        text = check_text(name, value, limit=100)
        try:
            value = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        except ValueError:
            raise FilterError(name, f"{text!r} is not an ISO 8601 date or time (e.g. 2026-11-27T10:00)") from None
    elif isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        value = dt.datetime.combine(value, dt.time())
    if not isinstance(value, dt.datetime):
        raise FilterError(name, f"expected a datetime, got {type(value).__name__}")
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    try:
        return value.astimezone(dt.UTC)
    except (OverflowError, ValueError):  # before year 1 or after 9999 in UTC
        raise FilterError(name, f"{value.isoformat()} is outside the years 1-9999 in UTC") from None


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_flag(value: bool | str | None, name: str) -> bool | None:
    """``True``/``False`` from a bool or the text of a form, link or CLI (``true``/``false``, ``1``/``0``, ...)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = check_text(name, value, limit=10).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        if not text:
            return None
        raise FilterError(name, f"{value!r} is not true or false")
    raise FilterError(name, f"must be true or false, not {type(value).__name__}")


@dataclass(frozen=True)
class EventFilter:
    """Which events an analytics query or an admin action covers; every field optional.

    ``status``, ``event_type`` and ``org_id`` take one value, a comma-separated
    text, or a list. ``entity`` is ``"Type/id"``, ``"Type"`` or ``("Type", "id")``.
    ``since``/``until`` bound ``created_at`` (``until`` exclusive). ``search``
    matches ids, entity ids and error messages. ``error_group`` is a normalised
    error message (see ``normalize_error``). ``payload`` tests values inside the
    payload, ``{"customer.id": 42, "status": "ACTIVE"}`` (all must hold; see
    ``PayloadCondition``); given as a mapping or as ``path=value`` text, it is kept
    as a tuple of ``PayloadCondition``.

    ``lease_expired=True`` keeps the PROCESSING events whose lease ran out (their
    dispatcher stopped renewing it: stuck until a recovery), ``False`` every other
    event; ``scheduled=True`` keeps the PENDING events waiting on a backoff
    (``available_at`` in the future), ``False`` every other event. Both compare
    with the database's clock, as the dispatcher does; ``build`` also takes them
    as text (``"true"``/``"false"``, ``"1"``/``"0"``).
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
    payload: tuple[PayloadCondition, ...] | None = None
    lease_expired: bool | None = None
    scheduled: bool | None = None

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
        payload: Mapping[Any, Any] | str | Iterable[str] | None = None,
        lease_expired: bool | str | None = None,
        scheduled: bool | str | None = None,
    ) -> EventFilter:
        """Validate loose input (from a form, a URL or the CLI) into a filter; raises ``FilterError``."""
        statuses = _as_tuple("status", status)
        if statuses is not None:
            statuses = tuple(s.upper() for s in statuses)
            unknown = [s for s in statuses if s not in STATUSES]
            if unknown:
                raise FilterError("status", f"unknown status {', '.join(unknown)}; use {', '.join(STATUSES)}")
        entity_type = entity_id = None
        if isinstance(entity, str):
            entity_type, _, rest = check_text("entity", entity).strip().partition("/")
            entity_id = rest or None
        elif entity is not None:
            try:
                parts = list(itertools.islice(entity, 3))
            except TypeError:
                parts = []
            if not 1 <= len(parts) <= 2:
                raise FilterError("entity", "give (entity_type,) or (entity_type, entity_id)")
            entity_type = _item_text("entity", parts[0])
            entity_id = _item_text("entity", parts[1]) if len(parts) == 2 and parts[1] is not None else None
        since_at, until_at = parse_time(since, "since"), parse_time(until, "until")
        if since_at and until_at and since_at >= until_at:
            raise FilterError("until", "must be later than since")
        if search is not None:
            search = check_text("search", search).strip() or None
            if search is not None and len(search) > MAX_SEARCH_LENGTH:
                raise FilterError("search", f"at most {MAX_SEARCH_LENGTH} characters")
        if error_group is not None:
            check_text("error_group", error_group, limit=MAX_ERROR_GROUP_LENGTH)
        ids = None
        if event_ids is not None:
            # Given but empty means "no event": () matches nothing, where None would match every event.
            ids = (
                _as_tuple(
                    "event_ids", (event_ids,) if isinstance(event_ids, str) else event_ids, max_values=MAX_EVENT_IDS
                )
                or ()
            )
        return cls(
            statuses,
            _as_tuple("event_type", event_type),
            _as_tuple("org_id", org_id),
            entity_type or None,
            entity_id,
            since_at,
            until_at,
            search,
            error_group or None,
            ids,
            _as_payload(payload),
            lease_expired=parse_flag(lease_expired, "lease_expired"),
            scheduled=parse_flag(scheduled, "scheduled"),
        )

    def __post_init__(self) -> None:
        # Also for filters built directly or changed with with_(): nothing unchecked reaches SQL.
        if self.payload is not None:  # a mapping or text given directly becomes conditions (checked)
            object.__setattr__(self, "payload", _as_payload(self.payload))
        for name, limit, count in (
            ("status", MAX_TEXT_LENGTH, MAX_VALUES),
            ("event_type", MAX_TEXT_LENGTH, MAX_VALUES),
            ("org_id", MAX_TEXT_LENGTH, MAX_VALUES),
            ("event_ids", MAX_TEXT_LENGTH, MAX_EVENT_IDS),
        ):
            values = getattr(self, name)
            if values is None:
                continue
            if not isinstance(values, tuple):
                raise FilterError(name, f"must be a tuple of text, not {type(values).__name__}")
            if len(values) > count:
                raise FilterError(name, f"more than {count:,} values")
            for value in values:
                check_text(name, value, limit=limit)
        if self.status is not None and any(s not in STATUSES for s in self.status):
            unknown = ", ".join(s for s in self.status if s not in STATUSES)
            raise FilterError("status", f"unknown status {unknown}; use {', '.join(STATUSES)}")
        for name, limit in (
            ("entity_type", MAX_TEXT_LENGTH),
            ("entity_id", MAX_TEXT_LENGTH),
            ("search", MAX_SEARCH_LENGTH),
            ("error_group", MAX_ERROR_GROUP_LENGTH),
        ):
            value = getattr(self, name)
            if value is not None:
                check_text("entity" if name.startswith("entity") else name, value, limit=limit)
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, dt.datetime):
                raise FilterError(name, f"expected a datetime, got {type(value).__name__}")
        for name in ("lease_expired", "scheduled"):
            flag = getattr(self, name)
            if flag is not None and not isinstance(flag, bool):
                raise FilterError(name, f"must be True, False or None, not {type(flag).__name__}")

    def with_(self, **changes: Any) -> EventFilter:
        return replace(self, **changes)

    def is_empty(self) -> bool:
        return all(getattr(self, f.name) is None for f in fields(self))

    def allows_status(self, status: str) -> bool:
        """Whether events in ``status`` can match at all (an action on them is pointless when not)."""
        if self.status is not None and status not in self.status:
            return False
        if self.lease_expired and status != PROCESSING:
            return False
        return not (self.scheduled and status != PENDING)

    def conditions(self, tables: OutboxTables) -> list[ColumnElement[bool]]:
        """The SQL conditions on the events table (all bound parameters, but for fixed status names)."""
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
                    contains_text(ev.c.id, pattern),
                    contains_text(ev.c.entity_id, pattern),
                    contains_text(ev.c.error_message, pattern),
                )
            )
        if self.error_group:
            # The LIKE first: cheap, and only the messages it lets through are normalised (four
            # regular expressions each) to be compared exactly.
            where.append(ev.c.error_message.like(group_pattern(self.error_group), escape="\\"))
            where.append(normalized_error(ev.c.error_message) == self.error_group)
        for condition in self.payload or ():
            where.append(payload_equals(ev.c.payload, condition))
        # The statuses as constants, not parameters: SQLite then reads the partial indexes made for them.
        processing, pending = _sql_text(PROCESSING), _sql_text(PENDING)
        if self.lease_expired:
            where.append(and_(ev.c.status == processing, ev.c.locked_until < db_now()))
        elif self.lease_expired is False:
            where.append(or_(ev.c.status != processing, ev.c.locked_until.is_(None), ev.c.locked_until >= db_now()))
        if self.scheduled:
            where.append(and_(ev.c.status == pending, ev.c.available_at > db_now()))
        elif self.scheduled is False:
            where.append(or_(ev.c.status != pending, ev.c.available_at <= db_now()))
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
    "payload": "payload",
    "lease_expired": "lease_expired",
    "scheduled": "scheduled",
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
    if flt.payload:
        query["payload"] = format_payload_conditions(flt.payload)
    for field_name in ("lease_expired", "scheduled"):
        flag = getattr(flt, field_name)
        if flag is not None:
            query[field_name] = "true" if flag else "false"
    return query


def filter_from_query(query: Any) -> EventFilter:
    """The filter a query string describes; unknown keys are ignored, bad values raise ``FilterError``."""

    def get(key: str) -> str | None:
        value = query.get(key)
        if isinstance(value, list):
            value = ",".join(value)
        return value or None

    payload = query.get("payload")  # conditions one a line: repeated keys are more lines
    return EventFilter.build(
        status=get("status"),
        event_type=get("type"),
        org_id=get("org"),
        entity=get("entity"),
        since=get("since"),
        until=get("until"),
        search=get("q"),
        error_group=get("error"),
        payload="\n".join(payload) if isinstance(payload, list) else payload or None,
        lease_expired=get("lease_expired"),
        scheduled=get("scheduled"),
    )


# --- payload conditions ------------------------------------------------------------------------
# The rules are in PayloadCondition's docstring; the SQL of each dialect in outbox_admin.sql.

#: Conditions in one filter, keys in one path, characters in one path's keys (escapes not counted).
MAX_PAYLOAD_CONDITIONS = 16
MAX_PATH_SEGMENTS = 32
MAX_PATH_LENGTH = 500
# The text forms' limits follow from those: a path's text may escape every character of its keys and
# separate them with dots; a value's JSON text may escape each character as \uXXXX. So the text form
# of any valid condition is read back, and a text over these limits is refused before it is read.
_PATH_TEXT_LIMIT = 2 * MAX_PATH_LENGTH + MAX_PATH_SEGMENTS
_CONDITION_TEXT_LIMIT = _PATH_TEXT_LIMIT + 1 + 6 * MAX_TEXT_LENGTH + 2
#: The whole text form (the dashboard's field, a link): every condition and its line break.
MAX_PAYLOAD_TEXT = MAX_PAYLOAD_CONDITIONS * (_CONDITION_TEXT_LIMIT + 2)

_DIGITS = re.compile(r"[0-9]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class _NotJSON(ValueError):
    """``NaN``/``Infinity``: Python's json reads them, JSON has no such values."""


def _refuse_constant(name: str) -> Any:
    raise _NotJSON(name)


def _payload_error(where: str, reason: str) -> FilterError:
    return FilterError("payload", f"{where}: {reason}" if where else reason)


def _shown(path: object) -> str:
    """A short, safe rendering of a path for an error message (never the whole of a huge value)."""
    if isinstance(path, str):
        return repr(path[:80]) + ("..." if len(path) > 80 else "")
    keys = [k[:30] if isinstance(k, str) else f"<{type(k).__name__}>" for k in path]  # type: ignore[attr-defined]
    return repr(tuple(keys))[:160]


def _check_segments(segments: Sequence[object], shown: str) -> tuple[str, ...]:
    if not segments:
        raise _payload_error(shown, "a path needs at least one key")
    if len(segments) > MAX_PATH_SEGMENTS:
        raise _payload_error(shown, f"more than {MAX_PATH_SEGMENTS} keys in one path")
    total = 0
    for segment in segments:
        if not isinstance(segment, str):
            raise _payload_error(shown, f"a key must be text, not {type(segment).__name__}")
        total += len(segment)
        if total > MAX_PATH_LENGTH:
            raise _payload_error(shown, f"a path's keys are at most {MAX_PATH_LENGTH} characters")
        if not segment:
            raise _payload_error(shown, "empty key (two dots, or a dot at either end)")
        fault = text_fault(segment)
        if fault is not None:
            raise _payload_error(shown, f"a key {fault}")
        if _CONTROL.search(segment):
            raise _payload_error(shown, "a key contains a control character (a tab, a line break, ...)")
    return tuple(str(s) for s in segments)


def parse_path(path: str | Sequence[str]) -> tuple[str, ...]:
    """The keys of a payload path: ``"customer.id"`` -> ``("customer", "id")``; a tuple is taken as is.

    A backslash takes the next character literally (``a\\.b`` is one key, "a.b"). Raises
    ``FilterError`` for an empty key, a control character or a path over the limits, in time
    bounded by ``MAX_PATH_LENGTH`` whatever it is handed.
    """
    if isinstance(path, str):
        text = check_text("payload", path, limit=_PATH_TEXT_LIMIT)
        segments: list[str] = []
        current: list[str] = []
        chars = iter(text)
        for char in chars:
            if char == "\\":
                escaped = next(chars, None)
                if escaped is None:
                    raise _payload_error(_shown(text), "ends with a lone backslash (write \\\\ for one)")
                current.append(escaped)
            elif char == ".":
                segments.append("".join(current))
                current = []
            else:
                current.append(char)
        segments.append("".join(current))
        return _check_segments(segments, _shown(text))
    if isinstance(path, tuple | list):
        return _check_segments(path[: MAX_PATH_SEGMENTS + 1], _shown(path[:4]))
    raise _payload_error("", f"a path is text such as 'customer.id' or a tuple of keys, not {type(path).__name__}")


def format_path(path: Sequence[str]) -> str:
    """The text form of a path, which ``parse_path`` reads back: ``\\``, ``.`` and ``=`` escaped, and
    whitespace at either end (the ``path=value`` form trims unescaped whitespace around the path)."""
    last = len(path) - 1
    parts = []
    for index, segment in enumerate(path):
        end = len(segment) - 1
        parts.append(
            "".join(
                "\\" + c if c in "\\.=" or c.isspace() and (index, i) in ((0, 0), (last, end)) else c
                for i, c in enumerate(segment)
            )
        )
    return ".".join(parts)


def _payload_value(value: Any, where: str) -> tuple[Any, str]:
    """(the value as JSON data, its JSON text) for one condition; ``FilterError`` if it is no JSON scalar."""
    if isinstance(value, Mapping | list | tuple | set | frozenset):
        raise _payload_error(where, "compare one value (text, a number, true, false or null), not an object or array")
    if isinstance(value, str):
        check_text("payload", value)
    try:
        # The publisher's own normalisation and encoding, so the value is compared as it would be stored;
        # as a one-item array, since a payload is an object or an array. Bounded: ints by range, texts by
        # the check above, anything else (an Enum's value) by the byte limit.
        data, encoded = encode_payload([value], max_bytes=6 * MAX_TEXT_LENGTH + 8)
    except PayloadError as exc:
        raise _payload_error(where, exc.reason) from None
    normalized = cast(list[Any], data)[0]
    if isinstance(normalized, dict | list):
        raise _payload_error(where, "compare one value (text, a number, true, false or null), not an object or array")
    if isinstance(normalized, str):
        check_text("payload", normalized)
    return normalized, encoded[1:-1]


@dataclass(frozen=True)
class PayloadCondition:
    """One payload test: the JSON value at ``path`` equals ``value``. A filter's conditions must all hold.

    ``EventFilter(payload={"customer.id": 42, "status": "ACTIVE"})`` makes two; ``of("items.0.sku",
    "A-1")`` one from a path's text form, ``PayloadCondition(("a.b", "c"), 1)`` one from its keys.
    Checked when made (``FilterError``); ``json`` is the value's JSON text, what the SQL compares
    (and what keeps ``true`` and ``1`` apart when conditions are compared).

    **Paths.** Keys separated by ``.``; a backslash takes the next character literally: ``a\\.b`` is
    the key "a.b", ``\\\\`` a backslash, ``\\=`` an equals sign (for the ``path=value`` form). A
    tuple of keys addresses any key without escaping. A key of ASCII digits is an array index where
    it meets an array and a key where it meets an object (``items.0.sku``; ``{"0": ...}`` too), which
    is PostgreSQL's rule for jsonb paths, applied the same way on SQLite; any other key is only a key
    (``-1`` never indexes an array, on either database). Refused: an empty key (``a..b``; an empty
    key could not be written in a link), a control character, more than ``MAX_PATH_SEGMENTS`` keys
    or ``MAX_PATH_LENGTH`` characters of keys.

    **Values** are JSON scalars compared with their JSON type: a number matches the same number
    (42 matches 42 and 42.0; never "42" or true), ``True`` matches true (never 1), ``None`` an
    explicit null (not a missing key, not the text "null"), a text the same text exactly (case,
    accents, Unicode normalisation count). Objects and arrays are refused: test their members by
    path. A value is normalised as the publisher does (Decimal -> number, datetime -> ISO text,
    UUID -> text, Enum -> its value), so a search finds what was published.

    **Text form** (the CLI's ``--payload``, the dashboard's field, links): ``path=value``, one a line,
    whitespace around the path and the value ignored. The value is JSON when it parses as JSON
    (``42``, ``true``, ``null``, ``"42"`` for the text 42), else the text itself (``status=ACTIVE``).
    NaN and Infinity are not JSON, so they are text; a JSON number no payload holds (``1e400``,
    ``9223372036854775808``) is refused. ``as_text`` writes a condition so that it reads back equal.

    **Cost.** No index serves it (one would have to cover every path anyone might search, and would
    slow every publish): each condition reads the payload of every row the other filters leave.
    Measured once on 100,000 seeded events (``python -m bench.payload_search``) on the shared
    development machine: one condition over all of them 0.1-0.34 s on SQLite, 0.06-0.08 s on
    PostgreSQL; after a status or time filter, or for the first page of ``events_frame``, under
    0.04 s. On a big outbox narrow by time or status first.
    """

    path: tuple[str, ...]
    value: Any = field(compare=False)
    json: str = field(init=False)

    def __post_init__(self) -> None:
        path = parse_path(self.path)  # a text path too (``of`` types it)
        object.__setattr__(self, "path", path)
        value, encoded = _payload_value(self.value, format_path(path))
        object.__setattr__(self, "value", value)
        object.__setattr__(self, "json", encoded)

    @classmethod
    def of(cls, path: str | Sequence[str], value: Any) -> PayloadCondition:
        """A condition from a path's text form (``"items.0.sku"``) or a tuple of keys."""
        return cls(parse_path(path), value)

    @property
    def kind(self) -> str:
        """``null``, ``true``, ``false``, ``number`` or ``text``: the JSON type the stored value must have."""
        if self.value is None or isinstance(self.value, bool):
            return self.json
        return "text" if isinstance(self.value, str) else "number"

    @property
    def shape(self) -> str:
        """What the SQL depends on besides parameters: per key ``d`` (digits: a key or an array index)
        or ``k`` (a key only), then the value's kind: ``"kd:text"``."""
        keys = "".join("d" if _DIGITS.fullmatch(key) else "k" for key in self.path)
        return f"{keys}:{self.kind}"

    def as_text(self) -> str:
        """``path=value``, as ``parse_payload_condition`` reads it back: a text bare when that reads the
        same (``status=ACTIVE``), else JSON with invisible characters as ``\\uXXXX`` escapes."""
        return f"{format_path(self.path)}={self.value if _bare(self.value) else visible_json(self.value)}"


def _bare(value: Any) -> bool:
    """Whether ``value`` is text that reads back as itself without JSON quotes (``ACTIVE``, not ``42``)."""
    if not isinstance(value, str) or not value or not value.isprintable():
        return False
    try:
        return bool(_value_from_text(value) == value)
    except FilterError:
        return False


def _value_from_text(text: str) -> Any:
    """A value typed as text: JSON when it parses as JSON, else the trimmed text."""
    stripped = text.strip()
    try:
        return json.loads(stripped, parse_constant=_refuse_constant)
    except RecursionError:  # "[[[[..." nested too deeply to parse: not a scalar either way
        raise _payload_error(_shown(stripped), "nested too deeply (compare one value)") from None
    except ValueError:  # not JSON (a JSONDecodeError), or NaN / Infinity
        return stripped


def _separator(line: str) -> int:
    """The index of the first ``=`` not escaped by a backslash, or -1."""
    escaped = False
    for index, char in enumerate(line):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "=":
            return index
    return -1


def _trim_path(text: str) -> str:
    """``text`` without whitespace at either end, except a last character escaped by a backslash."""
    text = text.lstrip()
    while text and text[-1].isspace():
        backslashes = len(text) - 1 - len(text[:-1].rstrip("\\"))
        if backslashes % 2:
            break
        text = text[:-1]
    return text


def parse_payload_condition(line: str) -> PayloadCondition:
    """One condition from its text form, ``path=value`` (see ``PayloadCondition``)."""
    check_text("payload", line, limit=_CONDITION_TEXT_LIMIT)
    at = _separator(line)
    if at < 0:
        raise _payload_error(_shown(line), "write path=value, e.g. customer.id=42 or status=ACTIVE")
    return PayloadCondition(parse_path(_trim_path(line[:at])), _value_from_text(line[at + 1 :]))


def parse_payload_conditions(text: str | Iterable[str]) -> tuple[PayloadCondition, ...]:
    """Conditions from text, one ``path=value`` a line (blank lines ignored), or from a list of such
    texts, one condition each (the CLI's repeated ``--payload``)."""
    if isinstance(text, str):
        check_text("payload", text, limit=MAX_PAYLOAD_TEXT)
        lines = [line for line in text.split("\n") if line.strip()]
        if len(lines) > MAX_PAYLOAD_CONDITIONS:
            raise _payload_error("", f"more than {MAX_PAYLOAD_CONDITIONS} conditions")
        return tuple(parse_payload_condition(line.rstrip("\r")) for line in lines)
    return _as_payload(text) or ()


def format_payload_conditions(conditions: Iterable[PayloadCondition]) -> str:
    """The text form of conditions, one a line: what the dashboard's field and a link hold."""
    return "\n".join(condition.as_text() for condition in conditions)


def _as_payload(value: object) -> tuple[PayloadCondition, ...] | None:
    """Conditions from a mapping of paths to values, condition texts, or ``PayloadCondition``\\ s."""
    if value is None:
        return None
    if isinstance(value, str):
        found: Iterable[PayloadCondition] = parse_payload_conditions(value)
    elif isinstance(value, Mapping):
        if len(value) > MAX_PAYLOAD_CONDITIONS:
            raise _payload_error("", f"more than {MAX_PAYLOAD_CONDITIONS} conditions")
        found = [PayloadCondition.of(path, item) for path, item in value.items()]
    else:
        try:
            taken = list(itertools.islice(value, MAX_PAYLOAD_CONDITIONS + 1))  # type: ignore[call-overload]
        except TypeError:
            raise _payload_error(
                "", f"give a mapping of paths to values or path=value texts, not {type(value).__name__}"
            ) from None
        if len(taken) > MAX_PAYLOAD_CONDITIONS:
            raise _payload_error("", f"more than {MAX_PAYLOAD_CONDITIONS} conditions")
        found = []
        for item in taken:
            if isinstance(item, PayloadCondition):
                found.append(item)
            elif isinstance(item, str):
                found.append(parse_payload_condition(item))
            else:
                raise _payload_error("", f"a condition is path=value text, not {type(item).__name__}")
    return tuple(dict.fromkeys(found)) or None


class payload_equals(FunctionElement[bool]):
    """SQL for one ``PayloadCondition`` on a payload column; each dialect's text is in ``outbox_admin.sql``.

    The keys and the value are bound parameters (clauses of this element, so a cached statement
    takes each execution's values); only their ``shape`` changes the SQL, and is part of the cache key.
    """

    type = Boolean()
    inherit_cache = True
    _is_implicitly_boolean = True  # a predicate: no "= 1" after it where booleans are integers
    _traverse_internals = FunctionElement._traverse_internals + [("shape", InternalTraversal.dp_string)]

    def __init__(self, column: Any, condition: PayloadCondition) -> None:
        self.shape = condition.shape
        super().__init__(column, *(literal(key, Text()) for key in condition.path), literal(condition.json, Text()))


def _payload_parts(element: payload_equals, compiler: Any, kw: Any) -> tuple[str, list[tuple[str, str]], str, str]:
    column, *keys, value = (compiler.process(clause, **kw) for clause in element.clauses)
    kinds, value_kind = element.shape.split(":")
    return column, list(zip(keys, kinds, strict=True)), value_kind, value


@compiles(payload_equals, "postgresql")
def _payload_pg(element: payload_equals, compiler: Any, **kw: Any) -> str:
    from .sql import postgres

    column, keys, _, value = _payload_parts(element, compiler, kw)
    return postgres.payload_equals(column, keys, value)


@compiles(payload_equals, "sqlite")
def _payload_sqlite(element: payload_equals, compiler: Any, **kw: Any) -> str:
    from .sql import sqlite

    column, keys, kind, value = _payload_parts(element, compiler, kw)
    return sqlite.payload_equals(column, keys, kind, value)

"""The dispatcher: claim due events, run the handlers, record the outcome.

One tick (``dispatch_once``) is the original's 30-second cron made safe:

1. recover expired leases (a dispatcher died holding them): back to PENDING, or
   FAILED when out of attempts, counted as a failed attempt;
2. claim up to ``batch_size`` due PENDING events, oldest ``created_at`` first, in
   one statement (``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED)``
   on PostgreSQL; the same inside ``BEGIN IMMEDIATE`` on SQLite), marking them
   PROCESSING with a lease;
3. run the handlers with no transaction open;
4. in one short transaction: COMPLETED, or back to PENDING with backoff, or
   FAILED; set-based, one statement per outcome group. Every write is guarded by
   the claim (``locked_by`` and the attempt number), so a dispatcher whose lease
   expired cannot overwrite what a newer claimant wrote.

Times (due, lease expiry, processed_at) come from the database's clock, so
dispatchers on hosts with skewed clocks agree; tests may inject a clock.
Every status change also writes an ``OutboxEventTransition`` row.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import (
    Engine,
    and_,
    case,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.sql.expression import ColumnElement

from .coltypes import UTCDateTime
from .config import DEFAULT_BATCH_SIZE, DEFAULT_LEASE_SECONDS, DEFAULT_MAX_ATTEMPTS, Settings
from .db import check_engine, db_now, db_now_plus, write_transaction
from .errors import ConfigurationError
from .handlers.base import BatchHandler, DeliveredEvent, Route, default_handlers
from .models import DEFAULT_TABLES, EventStatus, OutboxTables

log = logging.getLogger(__name__)

PENDING = EventStatus.PENDING.value
PROCESSING = EventStatus.PROCESSING.value
COMPLETED = EventStatus.COMPLETED.value
FAILED = EventStatus.FAILED.value

MAX_ERROR_LENGTH = 2000
RELEASED_MESSAGE = "released: dispatcher stopped before handling it"
Clock = Callable[[], dt.datetime]


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter: ``min(cap, base * factor**(attempt-1))``, less up to ``jitter`` of it.

    ``Backoff(base=1, cap=300, jitter=0.5)``: attempt 1 waits 0.5-1 s, attempt 2
    1-2 s, ... never more than 300 s. ``jitter=0`` makes it exact (for tests).
    """

    base: float = 2.0
    factor: float = 2.0
    cap: float = 300.0
    jitter: float = 0.5
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.base < 0 or self.cap < 0 or self.factor < 1 or not 0 <= self.jitter <= 1:
            raise ConfigurationError("backoff needs base >= 0, cap >= 0, factor >= 1 and 0 <= jitter <= 1")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        raw = min(self.cap, self.base * self.factor ** max(0, min(attempt - 1, 64)))
        return raw * (1 - self.jitter * self.rng.random())


@dataclass
class DispatchReport:
    """What one tick (or a drain) did."""

    claimed: int = 0
    completed: int = 0
    retried: int = 0
    failed: int = 0
    recovered: int = 0
    released: int = 0
    lost: int = 0
    ticks: int = 0
    seconds: float = 0.0

    def __add__(self, other: DispatchReport) -> DispatchReport:
        return DispatchReport(
            **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in dataclasses.fields(self)}
        )

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def default_dispatcher_name() -> str:
    """``host:pid:short-uuid``: unique per dispatcher, readable in ``locked_by`` and history."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Dispatcher:
    """Moves events PENDING -> PROCESSING -> COMPLETED (or back to PENDING, or FAILED).

    ``Dispatcher(engine)`` logs every payload and emits it on the default message
    bus, as the original does; pass ``handlers=[...]`` for sinks of your own.
    ``max_attempts=None`` retries forever, as the original does.
    ``ordering="entity"`` never hands out an event while an older event of the
    same ``(entity_type, entity_id)`` is unfinished (PENDING or PROCESSING).
    """

    def __init__(
        self,
        engine: Engine,
        handlers: Iterable[Any] | None = None,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_attempts: int | None = DEFAULT_MAX_ATTEMPTS,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        backoff: Backoff | None = None,
        ordering: Literal["entity"] | None = None,
        name: str | None = None,
        tables: OutboxTables = DEFAULT_TABLES,
        clock: Clock | None = None,
    ) -> None:
        check_engine(engine)
        if batch_size < 1:
            raise ConfigurationError("batch_size must be at least 1")
        if max_attempts is not None and max_attempts < 1:
            raise ConfigurationError("max_attempts must be at least 1, or None to retry forever")
        if lease_seconds <= 0:
            raise ConfigurationError("lease_seconds must be positive")
        if ordering not in (None, "entity"):
            raise ConfigurationError(f"ordering must be None or 'entity', not {ordering!r}")
        self.engine = engine
        # PostgreSQL: each write is one autocommit statement (UPDATE ... RETURNING in a CTE that
        # also inserts the history rows): one round trip, no BEGIN/COMMIT.
        self._single_statement = engine.dialect.name == "postgresql"
        self._autocommit_engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self.routes = [Route.of(h) for h in (default_handlers() if handlers is None else handlers)]
        self.batch_size = batch_size
        self.max_attempts = max_attempts
        self.lease_seconds = float(lease_seconds)
        self.backoff = backoff or Backoff()
        self.ordering = ordering
        self.name = name or default_dispatcher_name()
        self.tables = tables
        self.clock = clock
        self._stop = threading.Event()
        # Expired leases are rare: within a drain, look for them at most this often.
        self.recover_every_seconds = min(5.0, self.lease_seconds / 2)
        self._next_recovery = 0.0

    @classmethod
    def from_settings(cls, engine: Engine, settings: Settings, **kwargs: Any) -> Dispatcher:
        """A dispatcher with the batch size, attempts and lease of ``settings``."""
        kwargs.setdefault("batch_size", settings.batch_size)
        kwargs.setdefault("max_attempts", settings.max_attempts)
        kwargs.setdefault("lease_seconds", settings.lease_seconds)
        return cls(engine, **kwargs)

    # -- stopping ------------------------------------------------------------------

    def request_stop(self) -> None:
        """Finish the event in hand, release the rest of the batch, and stop draining."""
        self._stop.set()

    def clear_stop(self) -> None:
        self._stop.clear()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # -- clock ---------------------------------------------------------------------

    def _now(self) -> ColumnElement[Any]:
        if self.clock is None:
            return db_now()
        return literal(self.clock(), UTCDateTime())

    def _now_plus(self, seconds: float) -> ColumnElement[Any]:
        if self.clock is None:
            return db_now_plus(seconds)
        return literal(self.clock() + dt.timedelta(seconds=seconds), UTCDateTime())

    # -- one tick ------------------------------------------------------------------

    def dispatch_once(self) -> DispatchReport:
        """Recover expired leases, claim one batch, handle it, record the outcomes."""
        started = time.perf_counter()
        report = DispatchReport(ticks=1)
        if time.monotonic() >= self._next_recovery:
            report.recovered = self.recover_expired_leases()
            self._next_recovery = time.monotonic() + self.recover_every_seconds
        events = [] if self.stopping else self._claim()
        report.claimed = len(events)
        if events:
            errors, unhandled = self._handle(events)
            self._finish(events, errors, unhandled, report)
        report.seconds = time.perf_counter() - started
        return report

    def drain(self, max_seconds: float | None = 60.0) -> DispatchReport:
        """Tick until nothing is due, the time is up, or a stop is requested."""
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        total = DispatchReport()
        while not self.stopping:
            report = self.dispatch_once()
            total = total + report
            if report.claimed == 0 and report.recovered == 0:
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
        return total

    # -- the SQL -------------------------------------------------------------------

    def recover_expired_leases(self) -> int:
        """PROCESSING events whose lease expired go back to PENDING (or FAILED), as a failed attempt."""
        ev = self.tables.events
        now = self._now()
        held = ev.alias("held")  # an alias: a subquery on the UPDATE's own table would be correlated to it
        expired = (
            select(held.c.id)
            .where(held.c.status == PROCESSING, held.c.locked_until < now)
            .limit(self.batch_size * 4)
            .with_for_update(skip_locked=True, of=held)
            .cte("expired")
            .prefix_with("MATERIALIZED", dialect="postgresql")
        )
        new_status: Any = literal(PENDING)
        if self.max_attempts is not None:
            new_status = case((ev.c.retry_count + 1 >= self.max_attempts, FAILED), else_=PENDING)
        message = (
            literal("lease expired: dispatcher ")
            + func.coalesce(ev.c.locked_by, "?")
            + literal(" stopped before finishing (crashed or too slow)")
        )
        stmt = (
            update(ev)
            .where(ev.c.id.in_(select(expired.c.id)), ev.c.status == PROCESSING)
            .values(
                status=new_status,
                retry_count=ev.c.retry_count + 1,
                error_message=message,
                available_at=now,
                locked_by=None,
                locked_until=None,
            )
        )
        rows = self._write(stmt, PROCESSING, lambda c: (c.status, c.retry_count, c.error_message))
        for row in rows:
            log.warning("recovered event %s from an expired lease; now %s", row.id, row.status)
        return len(rows)

    def _claim(self) -> list[DeliveredEvent]:
        ev = self.tables.events
        now = self._now()
        candidate = ev.alias("candidate")  # an alias: an unaliased subquery would be correlated to the UPDATE
        due = select(candidate.c.id).where(candidate.c.status == PENDING, candidate.c.available_at <= now)
        if self.ordering == "entity":
            older = ev.alias("older")
            due = due.where(
                ~exists().where(
                    older.c.entity_type == candidate.c.entity_type,
                    older.c.entity_id == candidate.c.entity_id,
                    older.c.status.in_([PENDING, PROCESSING]),
                    or_(
                        older.c.created_at < candidate.c.created_at,
                        and_(older.c.created_at == candidate.c.created_at, older.c.id < candidate.c.id),
                    ),
                )
            )
        due = (
            due.order_by(candidate.c.created_at, candidate.c.id)
            .limit(self.batch_size)
            .with_for_update(skip_locked=True, of=candidate)
            # A materialized CTE runs once: as a subquery PostgreSQL may rescan it per row, and
            # SKIP LOCKED would then hand out a fresh batch on each rescan.
            .cte("due")
            .prefix_with("MATERIALIZED", dialect="postgresql")
        )
        stmt = (
            update(ev)
            .where(ev.c.id.in_(select(due.c.id)), ev.c.status == PENDING)
            .values(status=PROCESSING, locked_by=self.name, locked_until=self._now_plus(self.lease_seconds))
        )
        rows = self._write(
            stmt,
            PENDING,
            lambda c: (literal(PROCESSING), c.retry_count + 1, literal(None)),
            extra=(ev.c.org_id, ev.c.event_type, ev.c.entity_type, ev.c.entity_id, ev.c.payload, ev.c.created_at),
        )
        events = [
            DeliveredEvent(
                r.id, r.org_id, r.event_type, r.entity_type, r.entity_id, r.payload, r.retry_count, r.created_at
            )
            for r in rows
        ]
        events.sort(key=lambda e: (e.created_at, e.id))
        return events

    def _write(
        self,
        stmt: Any,
        from_status: str,
        transition: Callable[[Any], tuple[Any, Any, Any]],
        extra: Sequence[Any] = (),
    ) -> list[Any]:
        """Run an ``UPDATE`` and write one history row per updated event, atomically.

        ``transition(columns)`` gives (to_status, attempt, error_message) from the
        updated row's columns. PostgreSQL: one autocommit statement (a data-modifying
        CTE); SQLite: ``UPDATE ... RETURNING`` then ``INSERT ... SELECT`` in one
        ``BEGIN IMMEDIATE`` transaction.
        """
        ev, tr = self.tables.events, self.tables.transitions
        stmt = stmt.returning(ev.c.id, ev.c.status, ev.c.retry_count, ev.c.error_message, *extra)
        target = [
            tr.c.event_id,
            tr.c.from_status,
            tr.c.to_status,
            tr.c.at,
            tr.c.actor,
            tr.c.attempt,
            tr.c.error_message,
        ]

        def history(columns: Any) -> Any:
            to_status, attempt, error = transition(columns)
            return select(columns.id, literal(from_status), to_status, self._now(), literal(self.name), attempt, error)

        if self._single_statement:
            changed = stmt.cte("changed")
            recorded = insert(tr).from_select(target, history(changed.c)).cte("recorded")
            with self._autocommit_engine.connect() as conn:
                return conn.execute(select(changed).add_cte(recorded)).all()
        with write_transaction(self.engine) as conn:
            rows = conn.execute(stmt).all()
            if rows:
                source = history(ev.c).where(ev.c.id.in_([r.id for r in rows]))
                conn.execute(insert(tr).from_select(target, source))
            return rows

    # -- handling ------------------------------------------------------------------

    def _handle(self, events: list[DeliveredEvent]) -> tuple[dict[str, str], list[DeliveredEvent]]:
        """Run the handlers; returns error messages by event id and the events left unhandled (stop)."""
        errors: dict[str, str] = {}
        batch_routes = [r for r in self.routes if isinstance(r.handler, BatchHandler)]
        single_routes = [r for r in self.routes if not isinstance(r.handler, BatchHandler)]
        for route in batch_routes:
            targets = [e for e in events if e.id not in errors and route.accepts(e)]
            if not targets:
                continue
            try:
                failures = route.handler.handle_batch(targets) or {}
            except Exception as exc:  # noqa: BLE001 - a handler failure is data, not a crash
                failures = {e.id: exc for e in targets}
            for event_id, exc in failures.items():
                errors.setdefault(event_id, _error_text(route.name, exc))
        unhandled: list[DeliveredEvent] = []
        for index, event in enumerate(events):
            if self.stopping:
                unhandled = [e for e in events[index:] if e.id not in errors]
                break
            if event.id in errors:
                continue
            for route in single_routes:
                if not route.accepts(event):
                    continue
                try:
                    route.handler(event)
                except Exception as exc:  # noqa: BLE001
                    errors[event.id] = _error_text(route.name, exc)
                    break
        return errors, unhandled

    def _finish(
        self,
        events: list[DeliveredEvent],
        errors: dict[str, str],
        unhandled: list[DeliveredEvent],
        report: DispatchReport,
    ) -> None:
        ev = self.tables.events
        unhandled_ids = {e.id for e in unhandled}
        done = [e for e in events if e.id not in errors and e.id not in unhandled_ids]
        failed_groups: dict[tuple[str, int, str], list[DeliveredEvent]] = defaultdict(list)
        for e in events:
            if e.id in errors:
                attempts = e.retry_count + 1
                out_of_attempts = self.max_attempts is not None and attempts >= self.max_attempts
                failed_groups[(FAILED if out_of_attempts else PENDING, attempts, errors[e.id])].append(e)
        written: set[str] = set()
        if done:
            ids = self._guarded_update(
                done,
                lambda c: (literal(COMPLETED), c.retry_count + 1, literal(None)),
                status=COMPLETED,
                processed_at=self._now(),
            )
            report.completed += len(ids)
            written.update(ids)
        for (status, attempts, message), group in failed_groups.items():
            due = self._now() if status == FAILED else self._now_plus(self.backoff.delay(attempts))
            ids = self._guarded_update(
                group,
                lambda c, s=status: (literal(s), c.retry_count, c.error_message),
                status=status,
                retry_count=ev.c.retry_count + 1,
                error_message=message,
                available_at=due,
            )
            if status == FAILED:
                report.failed += len(ids)
            else:
                report.retried += len(ids)
            written.update(ids)
        if unhandled:
            ids = self._guarded_update(
                unhandled,
                lambda c: (literal(PENDING), c.retry_count, literal(RELEASED_MESSAGE)),
                status=PENDING,
                available_at=self._now(),
            )
            report.released += len(ids)
            written.update(ids)
        lost = [e.id for e in events if e.id not in written]
        if lost:
            report.lost += len(lost)
            log.warning(
                "dispatcher %s lost its claim on %d event(s) (lease expired and reclaimed): %s",
                self.name,
                len(lost),
                ", ".join(lost[:10]),
            )

    def _guarded_update(
        self, events: Sequence[DeliveredEvent], transition: Callable[[Any], tuple[Any, Any, Any]], **values: Any
    ) -> list[str]:
        """Update events still held by this claim (same holder, same attempt); return the ids written."""
        ev = self.tables.events
        claims = [(e.id, e.retry_count) for e in events]
        stmt = (
            update(ev)
            .where(
                tuple_(ev.c.id, ev.c.retry_count).in_(claims), ev.c.status == PROCESSING, ev.c.locked_by == self.name
            )
            .values(locked_by=None, locked_until=None, **values)
        )
        return [row.id for row in self._write(stmt, PROCESSING, transition)]


def _error_text(handler: str, exc: BaseException) -> str:
    text = f"{handler}: {type(exc).__name__}: {exc}"
    if isinstance(exc, BaseExceptionGroup):
        inner = "; ".join(f"{type(e).__name__}: {e}" for e in exc.exceptions[:5])
        text = f"{text} ({inner})"
    text = text.replace("\x00", "")
    return text if len(text) <= MAX_ERROR_LENGTH else text[: MAX_ERROR_LENGTH - 1] + "…"

"""The dispatcher: claim due events, run the handlers, record the outcome.

One tick (``dispatch_once``) is the original's 30-second cron made safe:

1. recover expired leases (a dispatcher died holding them): back to PENDING, or
   FAILED when out of attempts, counted as a failed attempt;
2. claim up to ``batch_size`` due PENDING events, oldest ``created_at`` first, in
   one statement (``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED)``
   on PostgreSQL; the same inside ``BEGIN IMMEDIATE`` on SQLite), marking them
   PROCESSING with a lease. Events whose type matches an active pause
   (``admin.pause``, read with each claim, so every dispatcher obeys a pause from
   its next batch on) and events of handlers whose breaker is open stay PENDING;
3. run the handlers with no transaction open (their circuit breakers decide
   which are called; the batch's lease is renewed meanwhile);
4. in one short transaction: COMPLETED, or back to PENDING with backoff, or
   FAILED; set-based, one statement per outcome group. Every write is guarded by
   the claim (``locked_by`` and the attempt number), so a dispatcher whose lease
   expired cannot overwrite what a newer claimant wrote.

Times (due, lease expiry, processed_at) come from the database's clock, so
dispatchers on hosts with skewed clocks agree; tests may inject a clock.
Every status change also writes an ``OutboxEventTransition`` row.

The statements (claim, finish, recover, lease renewal) are SQL text from
``outbox_admin.sql`` (one module per dialect), built once per dispatcher
(``_Statements``), so a tick costs no statement building or compiling;
a batch's outcomes travel as one JSON document, so the text is the same for 1 or
500 events (the driver keeps the claim prepared; the finish is planned per run,
see ``_planned_per_execution``). A drain
keeps one connection for all its ticks (PostgreSQL: in autocommit, each statement
its own transaction; SQLite: ``BEGIN IMMEDIATE`` around each write).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError

from . import stats
from .breaker import BreakerPolicy, CircuitBreaker, HandlerHealth, is_event_fault
from .coltypes import UTCDateTime
from .config import DEFAULT_BATCH_SIZE, DEFAULT_LEASE_SECONDS, DEFAULT_MAX_ATTEMPTS, Settings
from .db import check_engine, write_connection, write_transaction
from .errors import ConfigurationError
from .handlers.base import BatchHandler, DeliveredEvent, Route, default_handlers
from .lease import LeaseKeeper
from .models import ALL_HANDLERS, DEFAULT_TABLES, MAX_HANDLER_NAME, EventStatus, OutboxTables
from .observe import DeliveryAttempt, DispatchObserver, EventResult, Observers, Outcome
from .patterns import glob_for_postgres, glob_for_sqlite, matches_everything
from .sql import CLAIMED_COLUMNS, dispatcher_sql
from .tracing import decode as decode_trace

log = logging.getLogger(__name__)

PENDING = EventStatus.PENDING.value
PROCESSING = EventStatus.PROCESSING.value
COMPLETED = EventStatus.COMPLETED.value
FAILED = EventStatus.FAILED.value

MAX_ERROR_LENGTH = 2000
#: Events a dispatcher remembers as forgiven once by a circuit breaker (see ``outbox_admin.breaker``).
MAX_FORGIVEN = 100_000
RELEASED_MESSAGE = "released: dispatcher stopped before handling it"
#: The claim's column after ``CLAIMED_COLUMNS``: whether the event may have ledger rows already.
LEDGER_HINT = len(CLAIMED_COLUMNS)
#: One handler's try of one event, the ledger row the finish writes (in its JSON as it is): (event id, handler,
#: duration ms, None) for a success, (event id, handler, None, error message) for a failure.
Delivery = tuple[str, str, float | None, str | None]
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_NOT_OBSERVED = nullcontext()
_NO_NAMES: frozenset[str] = frozenset()
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
    waiting: int = 0  # claimed, then put back unhandled: a handler's circuit breaker is open (no attempt spent)
    lost: int = 0
    ticks: int = 0
    seconds: float = 0.0
    # Active pauses the latest tick's claim honoured (``admin.pause``): a state, not a count of events. Paused
    # events are never claimed, so no tick sees them; ``analytics.pauses`` lists the patterns.
    paused: int = 0

    def __add__(self, other: DispatchReport) -> DispatchReport:
        summed = {f.name: getattr(self, f.name) + getattr(other, f.name) for f in dataclasses.fields(self)}
        summed["paused"] = other.paused if other.ticks else self.paused  # the later tick's state
        return DispatchReport(**summed)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        """Every kind of outcome in one line, zeros included, so nothing is left to guess:
        ``"50 claimed: 45 completed, 3 retried, 2 failed, 0 recovered, ..."``."""
        kinds = [f for f in dataclasses.fields(self) if f.name not in ("claimed", "ticks", "seconds")]
        labels = {
            "waiting": "waiting for a paused handler",
            "released": "released unhandled",
            "paused": "event-type pause(s) in effect",
        }
        parts = [f"{getattr(self, f.name):,} {labels.get(f.name, f.name)}" for f in kinds]
        return f"{self.claimed:,} claimed: " + ", ".join(parts)


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
    ``breaker`` (default ``BreakerPolicy()``; ``None`` turns breakers off) pauses a
    handler that keeps failing, so an outage spends no attempts (``outbox_admin.breaker``).
    While handlers run, the batch's lease is renewed every ``lease_seconds / 3``, so a
    slow batch is never handed to a second dispatcher (``outbox_admin.lease``).
    ``observers`` see each delivery and each tick (``outbox_admin.observe``): metrics, traces, logs.
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
        breaker: BreakerPolicy | None = BreakerPolicy(),  # noqa: B008 - frozen, shared safely
        observers: Iterable[DispatchObserver] = (),
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
        self._postgres = engine.dialect.name == "postgresql"
        self._autocommit_engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._statements: _Statements | None = None
        self.breaker_policy = breaker
        self._observers = Observers(list(observers))
        self._ticking = self._observers  # the observers of the tick in progress (add_observer waits for the next)
        self._monotonic = time.monotonic if clock is None else (lambda: clock().timestamp())
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
        # The rollup's old minute rows are folded into hours and days this often (outbox_admin.stats).
        self.compact_every_seconds = stats.COMPACT_EVERY_SECONDS
        self._next_compaction = 0.0
        self._lease_keeper = LeaseKeeper(self._renew_leases, interval=self.lease_seconds / 3, name=self.name)
        # Outcomes of a batch whose finish could not be written (the database went away): written first
        # at the next tick, their leases renewed meanwhile, so they are recorded as what they were.
        self._unwritten: list[_Outcome] = []
        self._results: list[EventResult] = []  # this tick's outcomes, for the observers
        # Events whose failure a breaker gave back once (insertion order: the oldest are dropped first).
        self._forgiven: OrderedDict[str, bool] = OrderedDict()

    @property
    def routes(self) -> list[Route]:
        """The handlers with their routing; setting them gives each a new circuit breaker."""
        return self._routes

    @routes.setter
    def routes(self, routes: Iterable[Route]) -> None:
        routes = list(routes)
        seen: set[str] = set()
        for route in routes:
            if route.name == ALL_HANDLERS or not route.name or len(route.name) > MAX_HANDLER_NAME:
                raise ConfigurationError(
                    f"a handler's name must be 1 to {MAX_HANDLER_NAME} characters and not {ALL_HANDLERS!r} "
                    f"(it stands for every handler in the delivery ledger): {route.name[:MAX_HANDLER_NAME]!r}"
                )
            if route.name in seen:
                raise ConfigurationError(
                    f"two handlers are named {route.name!r}: give each a unique name (its `name` attribute, "
                    "or a sink's name= option), since a handler's name is how its deliveries are recorded"
                )
            seen.add(route.name)
        self._routes = routes
        # One breaker per route (a handler listed twice with different routes is two routes).
        policy = self.breaker_policy
        self._breakers = [
            None if policy is None else CircuitBreaker(r.name, policy, monotonic=self._monotonic) for r in self._routes
        ]

    @classmethod
    def from_settings(cls, engine: Engine, settings: Settings, **kwargs: Any) -> Dispatcher:
        """A dispatcher with the batch size, attempts and lease of ``settings``."""
        kwargs.setdefault("batch_size", settings.batch_size)
        kwargs.setdefault("max_attempts", settings.max_attempts)
        kwargs.setdefault("lease_seconds", settings.lease_seconds)
        return cls(engine, **kwargs)

    # -- closing -------------------------------------------------------------------

    def close(self) -> None:
        """Close every handler that has ``close()`` (sinks release their connections), each once.

        A handler whose ``close()`` raises is logged and the others are still closed:
        closing runs at shutdown, where one broken broker must not leak the rest.
        """
        self._lease_keeper.close()
        seen: set[int] = set()
        for route in self.routes:
            handler = route.handler
            close = getattr(handler, "close", None)
            if close is None or id(handler) in seen:
                continue
            seen.add(id(handler))
            try:
                close()
            except Exception:  # noqa: BLE001 - keep closing the others
                log.exception("closing handler %s failed", route.name)

    def __enter__(self) -> Dispatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- stopping ------------------------------------------------------------------

    def request_stop(self) -> None:
        """Finish the event in hand, release the rest of the batch, and stop draining."""
        self._stop.set()

    def clear_stop(self) -> None:
        self._stop.clear()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # -- statements, clock, connection ----------------------------------------------

    def _sql(self) -> _Statements:
        if self._statements is None:
            self._statements = _Statements(
                self.engine.dialect, self.tables, ordering=self.ordering, clocked=self.clock is not None
            )
        return self._statements

    def _times(self, **extra_seconds: float) -> dict[str, Any]:
        """With an injected clock: ``now`` (and ``name = now + seconds``) as parameters."""
        if self.clock is None:
            return {}
        now = self.clock()
        times = {"now": now, **{k: now + dt.timedelta(seconds=v) for k, v in extra_seconds.items()}}
        return {k: self._sql().bind_time(v) for k, v in times.items()}

    @contextmanager
    def _connection(self, conn: Connection | None = None) -> Iterator[Connection]:
        """``conn``, or one for a tick or a drain: autocommit on PostgreSQL, ``BEGIN IMMEDIATE`` writes on SQLite."""
        if conn is not None:
            yield conn
        elif self._postgres:
            with self._autocommit_engine.connect() as new:
                yield new
        else:
            with write_connection(self.engine) as new:
                yield new

    # -- one tick ------------------------------------------------------------------

    def dispatch_once(self, *, recover: bool = False) -> DispatchReport:
        """Recover expired leases (when due, or now with ``recover=True``), claim one batch,
        handle it, record the outcomes."""
        if recover:
            self._next_recovery = 0.0
        with self._connection() as conn:
            return self._tick(conn)

    def drain(
        self, max_seconds: float | None = 60.0, *, on_tick: Callable[[DispatchReport], object] | None = None
    ) -> DispatchReport:
        """Tick until nothing is due, the time is up, or a stop is requested.

        ``on_tick(report)`` is called after every tick (batch) with that tick's report, so a
        long drain can show its progress.
        """
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        total = DispatchReport()
        with self._connection() as conn:
            while not self.stopping:
                report = self._tick(conn)
                total = total + report
                if on_tick is not None:
                    on_tick(report)
                if report.claimed == 0 and report.recovered == 0:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    break
        return total

    def _tick(self, conn: Connection) -> DispatchReport:
        started = time.perf_counter()
        self._ticking = self._observers
        report = DispatchReport(ticks=1)
        if self._unwritten:
            self._write_unwritten(conn, report)
        if time.monotonic() >= self._next_recovery:
            report.recovered = self.recover_expired_leases(conn)
            self._next_recovery = time.monotonic() + self.recover_every_seconds
        if time.monotonic() >= self._next_compaction:
            self._next_compaction = time.monotonic() + self.compact_every_seconds
            self.compact_stats(conn)
        events, undecodable, ledger = ([], {}, _Ledger()) if self.stopping else self._claim(conn, report)
        report.claimed = len(events)
        if events:
            # Renewed only while this tick runs: a dispatcher that stops ticking must let its leases
            # expire, so its events are recovered. Kept outcomes (a failed finish) are written first
            # at the next tick, before this dispatcher recovers any expired lease itself.
            self._lease_keeper.hold([e.id for e in events])
            try:
                handled = self._handle([e for e in events if e.id not in undecodable], ledger)
                self._finish(conn, events, handled, report, undecodable=undecodable)
            finally:
                self._lease_keeper.release()
        report.seconds = time.perf_counter() - started
        if self._ticking:
            self._ticking.finished(self._results, report)
            self._results = []
        return report

    # -- observers ---------------------------------------------------------------------

    @property
    def observers(self) -> tuple[DispatchObserver, ...]:
        """The observers that see each delivery and each tick (``outbox_admin.observe``)."""
        return self._observers.observers

    def add_observer(self, observer: DispatchObserver) -> None:
        """Observe this dispatcher from its next tick on (a tick in progress is not shown to it);
        an observer already added is not added twice."""
        if any(o is observer for o in self._observers.observers):
            return
        self._observers = Observers([*self._observers.observers, observer])

    # -- health ------------------------------------------------------------------------

    def handler_health(self) -> list[HandlerHealth]:
        """Each handler's circuit breaker: state, failures in a row, last error, next probe."""
        return [b.health() for b in self._breakers if b is not None]

    def seconds_to_next_probe(self) -> float | None:
        """Seconds until an open breaker may be probed (a service ticks then); ``None`` if none is open."""
        waits = [w for b in self._breakers if b is not None and (w := b.seconds_to_probe()) is not None]
        return min(waits) if waits else None

    def _forgive(self, event_id: str) -> None:
        self._forgiven[event_id] = True
        self._forgiven.move_to_end(event_id)
        while len(self._forgiven) > MAX_FORGIVEN:
            self._forgiven.popitem(last=False)

    def _blocked(self) -> list[list[str | None]] | None:
        """``[pattern, org or None]`` pairs of events not to claim now (open breakers); ``None``: claim nothing."""
        blocked: list[list[str | None]] = []
        translate = glob_for_postgres if self._postgres else glob_for_sqlite
        for route, breaker in zip(self.routes, self._breakers, strict=True):
            if breaker is None or not breaker.blocks_claims():
                continue
            if route.event_types is None and route.org_ids is None:
                return None  # the handler takes every event: nothing can be claimed
            for pattern in route.event_types or ("*",):
                for org in sorted(route.org_ids) if route.org_ids is not None else [None]:
                    blocked.append([translate(pattern), org])
        return blocked

    # -- the SQL -------------------------------------------------------------------

    def recover_expired_leases(self, conn: Connection | None = None) -> int:
        """PROCESSING events whose lease expired go back to PENDING (or FAILED), as a failed attempt."""
        sql = self._sql()
        params = {"limit": self.batch_size * 4, "name": self.name, "max_attempts": self.max_attempts, **self._times()}
        with self._connection(conn) as c:
            if self._postgres:
                rows = c.exec_driver_sql(sql.recover, params).all()
            else:
                with c.begin():
                    rows = c.exec_driver_sql(sql.recover, params).all()
                    if rows:
                        history = [(r[0], PROCESSING, r[1], r[2], r[3]) for r in rows]
                        c.exec_driver_sql(sql.history, sql.history_params(history, self.name, params))
                    counted = stats.summed(((r[4], r[5], r[1], r[2], r[6]) for r in rows), self.name)
                    if counted:
                        c.exec_driver_sql(sql.count, counted)
        for row in rows:
            log.warning("recovered event %s from an expired lease; now %s", row[0], row[1])
        return len(rows)

    def compact_stats(self, conn: Connection | None = None) -> None:
        """Fold the rollup's old rows (``outbox_admin.stats.compact``); a failure is logged, not raised:
        the rollup stays right uncompacted, only slower to read."""
        try:
            with self._connection(conn) as c:
                if self._postgres:
                    stats.compact_in(c, self.tables)
                else:
                    with c.begin():
                        stats.compact_in(c, self.tables)
        except DBAPIError as exc:
            log.warning("dispatcher %s could not compact the rollup: %s", self.name, _first_line(exc))

    def _renew_leases(self, ids: list[str]) -> int:
        """Extend the lease of ``ids`` still held by this dispatcher (the heartbeat); returns how many are."""
        sql = self._sql()
        params = {"ids": json.dumps(ids), "name": self.name, **self._times(lease_until=self.lease_seconds)}
        if self.clock is None:
            params["lease_seconds"] = self.lease_seconds
        if self._postgres:
            with self._autocommit_engine.connect() as c:
                return len(c.exec_driver_sql(sql.renew, params).all())
        with write_transaction(self.engine) as c:
            return len(c.exec_driver_sql(sql.renew, params).all())

    def _claim(
        self, conn: Connection | None = None, report: DispatchReport | None = None
    ) -> tuple[list[DeliveredEvent], dict[str, str], _Ledger]:
        """Claim up to ``batch_size`` due events (PROCESSING, under this dispatcher's lease), oldest first.

        Returns the events, by id why a claimed row could not be decoded (it is failed
        alone; the rest of the batch is handled as usual), and what the delivery ledger
        says of them (one read by primary key). Events routed to a handler whose
        breaker is open, and events whose type matches an active pause, are not claimed;
        ``report.paused`` says how many pauses there were.
        """
        sql = self._sql()
        blocked = self._blocked()
        if blocked is None:
            return [], {}, _Ledger()
        params = {"limit": self.batch_size, "name": self.name, **self._times(lease_until=self.lease_seconds)}
        if self.clock is None:
            params["lease_seconds"] = self.lease_seconds
        ledger = _Ledger()
        with self._connection(conn) as c:
            if self._postgres:
                rows = self._claim_rows(c, blocked, params, report)
            else:
                with c.begin():
                    rows = self._claim_rows(c, blocked, params, report)
                    if rows:
                        history = [(r[0], PENDING, PROCESSING, r[6] + 1, None) for r in rows]
                        c.exec_driver_sql(sql.history, sql.history_params(history, self.name, params))
                        ledger = self._read_ledger(c, rows)
            if self._postgres and rows:
                ledger = self._read_ledger(c, rows)
        events: list[DeliveredEvent] = []
        undecodable: dict[str, str] = {}
        for row in rows:
            try:
                events.append(sql.delivered(row))
            except Exception as exc:  # noqa: BLE001 - a row written by hand or by an old version: fail it alone
                undecodable[row[0]] = _error_text("dispatcher", exc, prefix="stored event cannot be decoded: ")
                events.append(sql.placeholder(row))
                log.error("event %s cannot be decoded and is failed: %s", row[0], undecodable[row[0]])
        events.sort(key=lambda e: (e.created_at, e.id))
        return events, undecodable, ledger

    def _read_ledger(self, c: Connection, rows: Sequence[Any]) -> _Ledger:
        """The ledger rows of the claimed events that may have some (``sql.may_have_deliveries``): for a
        batch of first tries, no read at all."""
        ledger = _Ledger()
        rows = [r for r in rows if r[LEDGER_HINT]]
        if not rows:
            return ledger
        with _planned_per_execution(c):  # a plan made while the ledger was small must not outlive that
            found = c.exec_driver_sql(self._sql().read_ledger, {"ids": json.dumps([r[0] for r in rows])}).all()
        for event_id, name, delivered, requested in found:
            if delivered:
                ledger.delivered.setdefault(event_id, set()).add(name)
            elif requested:
                ledger.owed.setdefault(event_id, set()).add(name)
            else:
                ledger.failing.setdefault(event_id, set()).add(name)
        return ledger

    def _claim_rows(
        self, c: Connection, blocked: list[list[str | None]], params: dict[str, Any], report: DispatchReport | None
    ) -> Sequence[Any]:
        """Read the active pauses, then claim what neither they nor an open breaker hold back.

        One small read per claim (the partial index of the active pauses), in the claim's
        transaction on SQLite: a pause committed before it is obeyed by this very claim.
        """
        sql = self._sql()
        paused = [row[0] for row in c.exec_driver_sql(sql.active_pauses)]
        if report is not None:
            report.paused = len(paused)
        if any(matches_everything(p) for p in paused):
            return []  # everything is paused: nothing to ask the database for
        translate = glob_for_postgres if self._postgres else glob_for_sqlite
        blocked = blocked + [[translate(p), None] for p in paused]
        if not blocked:
            return c.exec_driver_sql(sql.claim, params).all()
        return c.exec_driver_sql(sql.claim_unblocked, {**params, "blocked": json.dumps(blocked)}).all()

    # -- handling ------------------------------------------------------------------

    def _handle(self, events: list[DeliveredEvent], ledger: _Ledger | None = None) -> _Handled:
        """Run, for each event, the handlers that do not have it yet (``ledger``), minding their breakers.

        Handlers are independent: one failing or waiting for its breaker does not keep the
        others from an event. The result holds the errors by event and handler, the events
        put back to wait for an open breaker (with why), the events left unhandled (stop
        requested), and each success with how long the call took.
        """
        ledger = ledger or _Ledger()
        handled = _Handled()
        observers = self._ticking
        observed = bool(observers)  # once per batch: checked for every call
        deliveries = handled.deliveries
        errors, waiting = handled.errors, handled.waiting
        # Per route: the events whose failures make up its current streak. If the streak opens the
        # breaker, they were failures of the handler, not of the events: they wait, no attempt spent.
        streaks: dict[int, list[str]] = {}
        route_names = [route.name for route in self.routes]  # a property: computed once per batch, not per event
        names = set(route_names)
        for event in events:
            for name in ledger.owed.get(event.id, ()):
                if name not in names:
                    errors.setdefault(event.id, {})[name] = _clip(
                        f"{name}: a replay asked for handler {name!r}, which dispatcher {self.name} does not have"
                    )

        recorded = bool(ledger.owed or ledger.delivered)  # usually not: a batch's first attempts

        def wanted(index: int, route: Route, event: DeliveredEvent) -> bool:
            if not recorded:
                return route.accepts(event)
            owed = ledger.owed.get(event.id)
            if owed is not None:
                return route_names[index] in owed
            done = ledger.delivered.get(event.id)
            if done is not None and (route_names[index] in done or ALL_HANDLERS in done):
                return False
            return route.accepts(event)

        def failed(index: int, event_id: str, exc: BaseException, name: str) -> None:
            message = _error_text(name, exc)
            errors.setdefault(event_id, {})[name] = message
            breaker = self._breakers[index]
            if breaker is None:
                return
            if is_event_fault(exc):
                succeeded(index)  # the receiver answered: it is up, this event is what it refuses
                return
            verdict = breaker.failed(message, event_id)
            streak = streaks.setdefault(index, [])
            if verdict == "counted":
                streak.append(event_id)
                return
            # The handler's fault: give the failures back, each event once (see outbox_admin.breaker)
            # so a run of poison events still moves on. A failed probe is always given back.
            for held in [*streak, event_id] if verdict != "probe-failed" else [event_id]:
                if name not in errors.get(held, {}):
                    continue
                if verdict != "probe-failed" and self._forgiven.pop(held, False):
                    continue  # forgiven once already: this failure counts
                waiting[held] = _waiting_text(breaker, errors[held].pop(name))
                if not errors[held]:
                    del errors[held]
                self._forgive(held)
            streak.clear()

        def succeeded(index: int) -> None:
            breaker = self._breakers[index]
            if breaker is not None:
                breaker.succeeded()
                streaks.pop(index, None)

        def delivered(event_id: str, name: str, seconds: float) -> None:
            handled.deliveries.setdefault(event_id, []).append((event_id, name, round(seconds * 1000, 3), None))

        def fewest_attempts_first(targets: list[DeliveredEvent]) -> list[DeliveredEvent]:
            # A probe risks one event's attempt: take the one with the fewest, so a long outage spreads
            # its probes over the backlog instead of wearing out the oldest event.
            probe = min(targets, key=lambda e: e.retry_count)
            return [probe, *(e for e in targets if e is not probe)]

        for index, route in enumerate(self.routes):
            if not isinstance(route.handler, BatchHandler):
                continue
            targets = [e for e in events if wanted(index, route, e)]
            breaker = self._breakers[index]
            while targets:
                decision = "call" if breaker is None else breaker.allow()
                if decision == "skip":
                    for e in targets:
                        waiting[e.id] = _waiting_text(breaker)  # type: ignore[arg-type]
                    break
                if decision == "probe":
                    targets = fewest_attempts_first(targets)
                sent, targets = (targets[:1], targets[1:]) if decision == "probe" else (targets, [])
                with observers.delivering(route_names[index], sent) if observed else _NOT_OBSERVED:
                    started = time.perf_counter()
                    try:
                        failures = route.handler.handle_batch(sent) or {}
                    except Exception as exc:  # noqa: BLE001 - a handler failure is data, not a crash
                        failures = {e.id: exc for e in sent}
                    took = time.perf_counter() - started
                    if observed:
                        observers.delivered(
                            [DeliveryAttempt(e, route_names[index], took, failures.get(e.id)) for e in sent]
                        )
                for e in sent:
                    if e.id in failures:
                        failed(index, e.id, failures[e.id], route_names[index])
                    else:
                        succeeded(index)
                        delivered(e.id, route_names[index], took)
        single = [(i, r) for i, r in enumerate(self.routes) if not isinstance(r.handler, BatchHandler)]
        for index, route in single:
            breaker = self._breakers[index]
            if breaker is not None and breaker.state == "half-open":
                targets = [e for e in events if wanted(index, route, e)]
                if targets:
                    probe = fewest_attempts_first(targets)[0]
                    events = [probe, *(e for e in events if e is not probe)]
        # This loop runs once per event and handler: what it needs of each route is looked up once per
        # batch, and the call is timed, its breaker told and its ledger row appended inline.
        calls = [(i, r, r.handler, r.accepts, self._breakers[i], route_names[i]) for i, r in single]
        clock = time.perf_counter
        for position, event in enumerate(events):
            if self.stopping:
                handled.unhandled = [e for e in events[position:] if e.id not in errors and e.id not in waiting]
                break
            for index, route, handler, accepts, breaker, name in calls:
                if not (wanted(index, route, event) if recorded else accepts(event)):
                    continue
                if breaker is not None and breaker.allow() == "skip":
                    waiting[event.id] = _waiting_text(breaker)
                    continue
                if observed:
                    with observers.delivering(name, (event,)):
                        error, took = _timed_call(handler, event)
                        observers.delivered([DeliveryAttempt(event, name, took, error)])
                else:
                    error = None
                    started = clock()
                    try:
                        handler(event)
                    except Exception as exc:  # noqa: BLE001 - a handler failure is data, not a crash
                        error = exc
                    took = clock() - started
                if error is not None:
                    failed(index, event.id, error, name)
                    continue
                if breaker is not None:
                    succeeded(index)
                deliveries.setdefault(event.id, []).append((event.id, name, round(took * 1000, 3), None))
        for event_id in ledger.delivered.keys() | ledger.owed.keys() | ledger.failing.keys():
            handled.recorded[event_id] = ledger.rows_of(event_id)
        for event_id in ledger.owed.keys() & ledger.failing.keys():
            handled.still_failing[event_id] = sorted(ledger.failing[event_id] - ledger.owed[event_id])
        for event_id, by_handler in errors.items():  # the failures that stand (a breaker may have given some back)
            handled.deliveries.setdefault(event_id, []).extend(
                (event_id, name, None, message) for name, message in by_handler.items()
            )
        return handled

    def _finish(
        self,
        conn: Connection,
        events: list[DeliveredEvent],
        handled: _Handled,
        report: DispatchReport,
        *,
        undecodable: dict[str, str] | None = None,
    ) -> None:
        """Record every outcome of the batch, and its deliveries, in one statement guarded by the claim
        (holder and attempt).

        An event is COMPLETED when every handler it was owed succeeded; a failure of any makes
        it a failed attempt whose message names each handler still failing. If the database
        cannot be written (it went away), the outcomes are kept and written first at the next
        tick (guarded like any finish); the error is raised.
        """
        undecodable = undecodable or {}
        deliveries = handled.deliveries
        if (
            handled.errors
            or handled.waiting
            or handled.unhandled
            or undecodable
            or handled.still_failing
            or handled.recorded
        ):
            outcomes = self._outcomes(events, handled, undecodable)
        else:  # the usual batch: first tries, every handler succeeded
            outcomes = [
                _Outcome(e, COMPLETED, 0, None, e.retry_count + 1, None, deliveries=deliveries.get(e.id, ()))
                for e in events
            ]
        try:
            written = self._write_outcomes(conn, outcomes)
        except DBAPIError as exc:
            self._unwritten = outcomes
            log.warning(
                "dispatcher %s could not record the outcome of %d event(s), kept to write at the next tick: %s",
                self.name,
                len(outcomes),
                _first_line(exc),
            )
            exc.add_note(f"outbox_admin: {len(outcomes)} outcome(s) kept; they are written at the next tick")
            raise
        self._count(outcomes, written, report)

    def _outcomes(self, events: list[DeliveredEvent], handled: _Handled, undecodable: dict[str, str]) -> list[_Outcome]:
        """Each event's outcome from what its handlers did (``_handle``) and what the ledger had."""
        unhandled_ids = {e.id for e in handled.unhandled}
        waiting, errors = handled.waiting, handled.errors
        deliveries = handled.deliveries
        outcomes: list[_Outcome] = []
        for e in events:
            done = deliveries.get(e.id, ())
            had = handled.recorded.get(e.id)
            known = frozenset(had) if had else _NO_NAMES
            if e.id in undecodable:  # no attempt can succeed: straight to the dead letters
                outcomes.append(_Outcome(e, FAILED, 1, undecodable[e.id], e.retry_count + 1, 0.0))
            elif e.id in errors:
                message = _clip("; ".join(errors[e.id].values()))
                attempts = e.retry_count + 1
                if self.max_attempts is not None and attempts >= self.max_attempts:
                    outcomes.append(_Outcome(e, FAILED, 1, message, attempts, 0.0, deliveries=done, recorded=known))
                else:
                    delay = self.backoff.delay(attempts)
                    outcomes.append(_Outcome(e, PENDING, 1, message, attempts, delay, deliveries=done, recorded=known))
            elif e.id in waiting:
                outcomes.append(
                    _Outcome(
                        e, PENDING, 0, waiting[e.id], e.retry_count, 0.0, waiting=True, deliveries=done, recorded=known
                    )
                )
            elif e.id in unhandled_ids:
                outcomes.append(
                    _Outcome(
                        e,
                        PENDING,
                        0,
                        RELEASED_MESSAGE,
                        e.retry_count,
                        0.0,
                        released=True,
                        deliveries=done,
                        recorded=known,
                    )
                )
            elif handled.still_failing.get(e.id):  # replayed to others: the failing handlers still lack it
                note = _clip(
                    "replay delivered; still not delivered to "
                    + ", ".join(handled.still_failing[e.id])
                    + " (requeue it to retry those)"
                )
                outcomes.append(_Outcome(e, FAILED, 0, note, e.retry_count + 1, None, deliveries=done, recorded=known))
            else:
                outcomes.append(
                    _Outcome(e, COMPLETED, 0, None, e.retry_count + 1, None, deliveries=done, recorded=known)
                )
        return outcomes

    def _write_unwritten(self, conn: Connection, report: DispatchReport) -> None:
        """Write the outcomes a failed finish kept (see ``_finish``); raises again if the database is still gone."""
        outcomes = self._unwritten
        written = self._write_outcomes(conn, outcomes)
        self._unwritten = []
        log.warning("dispatcher %s recorded %d kept outcome(s) after the database came back", self.name, len(outcomes))
        self._count(outcomes, written, report)

    def _count(self, outcomes: list[_Outcome], written: set[str], report: DispatchReport) -> None:
        if self._ticking:
            self._results.extend(_result(o, written) for o in outcomes)
        for outcome in outcomes:
            if outcome.event.id not in written:
                continue
            if outcome.status == COMPLETED:
                report.completed += 1
                self._forgiven.pop(outcome.event.id, None)
            elif outcome.waiting:
                report.waiting += 1
            elif outcome.released:
                report.released += 1
            elif outcome.status == FAILED:
                report.failed += 1
            else:
                report.retried += 1
        lost = [o.event.id for o in outcomes if o.event.id not in written]
        if lost:
            report.lost += len(lost)
            log.warning(
                "dispatcher %s lost its claim on %d event(s) (lease expired and reclaimed): %s",
                self.name,
                len(lost),
                ", ".join(lost[:10]),
            )

    def _write_outcomes(self, conn: Connection, outcomes: list[_Outcome]) -> set[str]:
        """Write the outcomes of events still held by this claim; returns the ids written."""
        sql = self._sql()
        params: dict[str, Any] = {"name": self.name, **self._times()}
        clock_now = self.clock() if self.clock is not None else None
        dues = [
            None if o.delay is None or clock_now is None else sql.json_time(clock_now + dt.timedelta(seconds=o.delay))
            for o in outcomes
        ]
        # One JSON document for the whole batch: far cheaper for the driver than one array per field.
        elements = [
            [o.event.id, o.event.retry_count, o.status, o.failed, o.message, o.step, o.delay, due]
            for o, due in zip(outcomes, dues, strict=True)
        ]
        if self._postgres:
            # A row no handler wrote before is inserted plainly: the upsert's conflict check was most of
            # what the ledger added to a finish. An event's first such row rides in its outcome (the
            # usual batch, one handler: no second document at all). Only this claim's holder writes an
            # event's rows (a replay owes rows to finished events only), so none can appear meanwhile;
            # if one did anyway, the statement fails whole and runs again with every row upserted.
            new: list[Delivery] = []
            existing: list[Delivery] = []  # rows the claim's ledger read found: upserted
            for o, row in zip(outcomes, elements, strict=True):
                fresh: Sequence[Delivery] = o.deliveries
                if o.recorded:
                    fresh = [d for d in o.deliveries if d[1] not in o.recorded]
                    existing.extend(d for d in o.deliveries if d[1] in o.recorded)
                if fresh:
                    row.extend(fresh[0][1:])
                    new.extend(fresh[1:])
            params["outcomes"] = json.dumps(elements)
            params["new_deliveries"] = json.dumps(new)
            params["deliveries"] = json.dumps(existing)
            # The statement returns the ids it did not write (a claim lost meanwhile): usually none.
            with _planned_per_execution(conn):
                try:
                    lost = conn.exec_driver_sql(sql.finish, params).scalars().all()
                except IntegrityError:
                    log.warning("dispatcher %s: a ledger row appeared during its claim; upserting them all", self.name)
                    plain = json.dumps([row[:8] for row in elements])
                    every = json.dumps([d for o in outcomes for d in o.deliveries])
                    retry = {**params, "outcomes": plain, "new_deliveries": "[]", "deliveries": every}
                    lost = conn.exec_driver_sql(sql.finish, retry).scalars().all()
            written = {o.event.id for o in outcomes}
            written.difference_update(lost)
            return written
        params["outcomes"] = json.dumps(elements)
        with conn.begin():
            rows = conn.exec_driver_sql(sql.finish, params).all()
            written = {r[0] for r in rows}
            ledger = [d for o in outcomes if o.event.id in written for d in o.deliveries]
            if ledger:
                deliveries = {"deliveries": json.dumps(ledger), **({"now": params["now"]} if "now" in params else {})}
                conn.exec_driver_sql(sql.record_deliveries, deliveries)
            history = [(o.event.id, PROCESSING, o.status, o.step, o.message) for o in outcomes if o.event.id in written]
            if history:
                conn.exec_driver_sql(sql.history, sql.history_params(history, self.name, params))
            # (created_at, event_type, status, retry_count, processed_at) of each event finished
            counted = stats.summed((tuple(r[1:]) for r in rows), self.name)
            if counted:
                conn.exec_driver_sql(sql.count, counted)
        return written


def _timed_call(handler: Any, event: DeliveredEvent) -> tuple[Exception | None, float]:
    """Call a one-event handler: (its exception or None, seconds it took)."""
    started = time.perf_counter()
    try:
        handler(event)
    except Exception as exc:  # noqa: BLE001 - a handler failure is data, not a crash
        return exc, time.perf_counter() - started
    return None, time.perf_counter() - started


def _result(outcome: _Outcome, written: set[str]) -> EventResult:
    """An outcome as observers see it (``outbox_admin.observe``)."""
    if outcome.event.id not in written:
        return EventResult(outcome.event, "lost", outcome.message)
    if outcome.status == COMPLETED:
        kind: Outcome = "completed"
    elif outcome.waiting:
        kind = "waiting"
    elif outcome.released:
        kind = "released"
    elif outcome.status == FAILED:
        kind = "failed"
    else:
        kind = "retried"
    return EventResult(outcome.event, kind, outcome.message)


@contextmanager
def _planned_per_execution(conn: Connection) -> Iterator[None]:
    """Run a statement without psycopg's server-side prepare, so PostgreSQL plans it for the real batch.

    A statement prepared after its fifth run gets a generic plan, made without seeing
    how many events the batch holds; with statistics that say few events are
    PROCESSING (the usual case, and always right after a bulk load) that plan scans
    every PROCESSING event once per event of the batch, which made a 500-event
    finish 50x slower. Planning per run costs a fraction of a millisecond per batch.
    """
    driver = conn.connection.driver_connection
    saved = getattr(driver, "prepare_threshold", None)
    if driver is None or saved is None:
        yield
        return
    driver.prepare_threshold = None
    try:
        yield
    finally:
        driver.prepare_threshold = saved


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ took 2.0 µs, this one 0.5 (one per event)
class _Outcome:
    """What happens to one claimed event: its new status, and the history row that records it."""

    event: DeliveredEvent
    status: str
    failed: int  # 1: a failed attempt (retry_count + 1, error_message set)
    message: str | None  # the event's new error message (failed), or the history note (released)
    step: int  # the attempt number the history row records
    delay: float | None  # seconds until due again; None keeps available_at (completed)
    released: bool = False
    waiting: bool = False  # put back for an open breaker: no attempt spent
    # The ledger rows this outcome writes (``Delivery``): one per success and per failure of a handler.
    deliveries: Sequence[Delivery] = ()
    # The handlers among them whose row existed when the event was claimed (updated, not inserted).
    recorded: frozenset[str] = frozenset()


@dataclass
class _Ledger:
    """What the ledger says of a claimed batch: by event, the handlers that have it, the handlers that
    failed it and never delivered it, and for events a replay asked for again the handlers still owed
    it (then only those run)."""

    delivered: dict[str, set[str]] = field(default_factory=dict)
    owed: dict[str, set[str]] = field(default_factory=dict)
    failing: dict[str, set[str]] = field(default_factory=dict)

    def rows_of(self, event_id: str) -> set[str]:
        """The handlers that have a ledger row for ``event_id`` (delivered, owed or failing)."""
        return self.delivered.get(event_id, set()) | self.owed.get(event_id, set()) | self.failing.get(event_id, set())


@dataclass
class _Handled:
    """What running the handlers on a batch gave (``Dispatcher._handle``)."""

    errors: dict[str, dict[str, str]] = field(default_factory=dict)  # event id -> handler -> error text
    waiting: dict[str, str] = field(default_factory=dict)  # event id -> why it waits (an open breaker)
    unhandled: list[DeliveredEvent] = field(default_factory=list)  # a stop came first
    # The ledger rows of each event's tries (``Delivery``), by event id: a success, or a failure that stands.
    deliveries: dict[str, list[Delivery]] = field(default_factory=dict)
    # Replayed events whose owed handlers all have them, but which other handlers still fail: by event id.
    still_failing: dict[str, list[str]] = field(default_factory=dict)
    # The handlers that already had a ledger row for an event when it was claimed, by event id: only
    # their rows need the finish's upsert; the others are new rows (see ``_write_outcomes``).
    recorded: dict[str, set[str]] = field(default_factory=dict)


class _Statements:
    """The dispatcher's SQL for one table set (``outbox_admin.sql``), and the values it binds and reads.

    PostgreSQL: each statement is one autocommit statement whose data-modifying CTE
    also writes the history rows. SQLite: an ``UPDATE ... RETURNING``, then
    ``history`` writes the transition rows, both in one ``BEGIN IMMEDIATE``
    transaction. A batch's outcomes travel as one JSON array of arrays.
    """

    def __init__(self, dialect: Any, tables: OutboxTables, *, ordering: str | None, clocked: bool) -> None:
        self.dialect = dialect
        self.postgres = dialect.name == "postgresql"
        self._utc = UTCDateTime()
        self._loads = getattr(dialect, "_json_deserializer", None) or json.loads
        statements = dispatcher_sql(dialect, tables, ordering=ordering, clocked=clocked)
        self.claim = statements.claim
        self.claim_unblocked = statements.claim_unblocked
        self.renew = statements.renew
        self.finish = statements.finish
        self.recover = statements.recover
        self.history = statements.history or ""
        self.count = statements.count or ""
        self.active_pauses = statements.active_pauses
        self.read_ledger = statements.delivered
        self.record_deliveries = statements.record_deliveries or ""

    def bind_time(self, value: dt.datetime) -> Any:
        """A datetime as the driver should receive it (SQLite: UTCDateTime's text form)."""
        stored = self._utc.process_bind_param(value, self.dialect)
        if self.postgres or stored is None:
            return stored
        return stored.isoformat(sep=" ", timespec="microseconds")

    def json_time(self, value: dt.datetime) -> str:
        """A datetime inside a JSON parameter: ISO 8601 (PostgreSQL casts it), UTCDateTime's text (SQLite)."""
        bound = self.bind_time(value)
        return bound if isinstance(bound, str) else bound.isoformat()

    def history_params(self, rows: list[tuple[Any, ...]], name: str, params: dict[str, Any]) -> dict[str, Any]:
        times = {"now": params["now"]} if "now" in params else {}
        return {"rows": json.dumps(rows), "name": name, **times}

    def delivered(self, row: Any) -> DeliveredEvent:
        """A claimed row (``claimed_columns``) as handlers see it."""
        if self.postgres:
            payload = row[5]  # psycopg decodes jsonb itself
        elif isinstance(row[5], str | bytes):
            payload = self._loads(row[5])
        else:
            # SQLite's NUMERIC affinity turned a stored top-level number into a number (a big one into
            # a rounded REAL): it cannot be delivered as it was published.
            raise TypeError(f"the stored payload is a SQLite {type(row[5]).__name__}, not JSON text")
        created_at = self._utc.process_result_value(row[7], self.dialect)
        trace = decode_trace(row[8]) if row[8] is not None else None  # unreadable: ignored, never a failure
        return DeliveredEvent(row[0], row[1], row[2], row[3], row[4], payload, row[6], created_at, trace)  # type: ignore[arg-type]

    def placeholder(self, row: Any) -> DeliveredEvent:
        """A claimed row that ``delivered`` cannot decode, with what its outcome needs (id, attempts)."""
        try:
            created_at = self._utc.process_result_value(row[7], self.dialect) or _EPOCH
        except Exception:  # noqa: BLE001 - the row is being failed for being unreadable
            created_at = _EPOCH
        return DeliveredEvent(row[0], str(row[1]), str(row[2]), str(row[3]), str(row[4]), None, row[6], created_at)


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:500]


def _waiting_text(breaker: CircuitBreaker, error: str | None = None) -> str:
    why = error or breaker.health().last_error or "failing"
    return _clip(f"waiting: handler {breaker.handler} is unavailable (circuit open); last error: {why}")


def _clip(text: str) -> str:
    text = text.replace("\x00", "")
    return text if len(text) <= MAX_ERROR_LENGTH else text[: MAX_ERROR_LENGTH - 1] + "…"


def _error_text(handler: str, exc: BaseException, *, prefix: str = "") -> str:
    text = f"{handler}: {prefix}{type(exc).__name__}: {exc}"
    if isinstance(exc, BaseExceptionGroup):
        inner = "; ".join(f"{type(e).__name__}: {e}" for e in exc.exceptions[:5])
        text = f"{text} ({inner})"
    return _clip(text)

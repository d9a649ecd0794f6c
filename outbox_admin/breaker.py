"""Circuit breakers: a handler that keeps failing is paused as a whole, so an outage spends no attempts.

Without one, a sink that is down for 40 s makes the dispatcher claim fresh events
and spend their attempts one after the other until they are dead letters, although
nothing was wrong with the events. With one per handler:

- **closed** (normal): a failure of the handler adds its event to a streak, a
  success ends the streak. ``failure_threshold`` *different* events failing in a
  row open the breaker: one poison event retried again and again counts once, so
  it cannot pause the handler for every other event.
- **open**: the dispatcher stops claiming events routed to the handler and does not
  call it; the events stay PENDING with their attempts untouched. The failures of
  the streak that opened it are given back (recorded as a wait, not as attempts).
- **half-open**: after ``open_seconds`` one event is let through as a probe (the
  claimed event with the fewest attempts). A success closes the breaker; a failure
  opens it again for twice as long, at most ``max_open_seconds`` (15 s by default,
  so deliveries resume at most that long after the sink is back). A failed probe
  is the handler's failure too, and given back.
- So an outage costs no event an attempt, however long it lasts. To keep a run of
  poison events (a handler that rejects some events, five or more in a row) from
  hiding behind the breaker for ever, each event is forgiven once: when it fails
  again in a streak that opens a breaker, that failure counts as an attempt (the
  dispatcher remembers the forgiven events in memory, up to 100,000 of them). A
  handler that fails *every* event — down, or broken by a bad deploy — keeps its
  events PENDING until it is fixed; ``status()``, the dashboard and the log say so.
- A failure that is the event's own fault by the handler's account — an
  exception with ``event_fault = True``, or a ``SinkError`` with a 4xx status
  other than 408, 425 and 429 (the receiver answered and refused this event) —
  counts as an attempt but as a sign of life for the breaker: it ends the
  streak, like a success.

A breaker lives in its dispatcher's process: each dispatcher process finds out on
its own that a sink is down. Every state change is one log line (logger
``outbox_admin.breaker``), never one per event.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from .errors import ConfigurationError

log = logging.getLogger(__name__)

DEFAULT_FAILURE_THRESHOLD = 5
DEFAULT_OPEN_SECONDS = 5.0
DEFAULT_MAX_OPEN_SECONDS = 15.0

BreakerState = Literal["closed", "open", "half-open"]
FailureVerdict = Literal["counted", "opened", "open", "probe-failed"]


@dataclass(frozen=True)
class BreakerPolicy:
    """When a handler's breaker opens and how long it stays open.

    ``BreakerPolicy(failure_threshold=5, open_seconds=5, max_open_seconds=15)``: five
    different events failing in a row open it; it probes after 5 s, then 10, 15,
    15, ... s while probes keep failing.
    """

    failure_threshold: int = DEFAULT_FAILURE_THRESHOLD
    open_seconds: float = DEFAULT_OPEN_SECONDS
    max_open_seconds: float = DEFAULT_MAX_OPEN_SECONDS

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ConfigurationError("failure_threshold must be at least 1")
        if not 0 < self.open_seconds <= self.max_open_seconds:
            raise ConfigurationError("breaker needs 0 < open_seconds <= max_open_seconds")


@dataclass(frozen=True)
class HandlerHealth:
    """A snapshot of one handler's breaker, for ``status()``, the dashboard and the CLI."""

    handler: str
    state: BreakerState
    failures_in_a_row: int  # different events failed in a row since the last success
    last_error: str | None
    opened_at: dt.datetime | None
    next_probe_at: dt.datetime | None
    times_opened: int


def is_event_fault(exc: BaseException) -> bool:
    """Whether a failure says the handler works and refused this event: ``exc.event_fault is True``,
    or an HTTP 4xx answer other than 408, 425 and 429 (``SinkError.status_code``)."""
    if getattr(exc, "event_fault", False) is True:
        return True
    status = getattr(exc, "status_code", None)
    return isinstance(status, int) and 400 <= status < 500 and status not in (408, 425, 429)


class CircuitBreaker:
    """The breaker of one handler; thread-safe, driven by the dispatcher's calls and results."""

    def __init__(self, handler: str, policy: BreakerPolicy, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.handler = handler
        self.policy = policy
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._state: BreakerState = "closed"
        self._streak: set[str] = set()  # the events failed in a row (bounded by the threshold)
        self._last_error: str | None = None
        self._open_for = policy.open_seconds
        self._probe_at = 0.0  # monotonic time the next probe may start (open)
        self._opened_at: dt.datetime | None = None
        self._times_opened = 0

    @property
    def state(self) -> BreakerState:
        with self._lock:
            return self._effective_state()

    def _effective_state(self) -> BreakerState:
        if self._state == "open" and self._monotonic() >= self._probe_at:
            return "half-open"
        return self._state

    def blocks_claims(self) -> bool:
        """Whether events routed to the handler should not be claimed now (open, not yet due a probe)."""
        with self._lock:
            return self._effective_state() == "open"

    def seconds_to_probe(self) -> float | None:
        """Seconds until the next probe is due; ``None`` when the breaker is closed."""
        with self._lock:
            if self._state == "closed":
                return None
            return max(0.0, self._probe_at - self._monotonic())

    def allow(self) -> Literal["call", "probe", "skip"]:
        """Whether to call the handler now: ``call`` (closed), ``probe`` (one trial call), ``skip``.

        A ``probe`` answer moves the breaker to half-open: until that call's result is
        reported, further calls are skipped, so only one event is risked.
        """
        if self._state == "closed":  # the usual case, once per delivery: no lock (a stale read is harmless)
            return "call"
        with self._lock:
            state = self._effective_state()
            if state == "closed":
                return "call"
            if state == "half-open" and self._state == "open":
                self._state = "half-open"
                return "probe"
            return "skip"

    def succeeded(self) -> None:
        if self._state == "closed" and not self._streak:  # nothing to reset: no lock per delivery
            return
        with self._lock:
            was = self._state
            self._state, self._open_for = "closed", self.policy.open_seconds
            self._streak.clear()
        if was != "closed":
            log.warning("handler %s: delivery succeeded; circuit closed, deliveries resume", self.handler)

    def failed(self, error: str, event_id: str) -> FailureVerdict:
        """Record a failed call for ``event_id`` and say what it means for that event's attempt.

        ``counted``: an ordinary failed attempt (the streak grows); ``opened``: this
        failure opened the breaker, so it and the rest of the streak were the handler's
        fault, not the events'; ``open``: the breaker was already open (a batch call
        that failed as a whole), also the handler's fault; ``probe-failed``: the probe
        failed, the breaker opens again for longer, and the failure is the handler's.
        """
        with self._lock:
            self._last_error = error
            if self._state == "half-open":
                self._open_for = min(self._open_for * 2, self.policy.max_open_seconds)
                self._open("its probe failed", error)
                return "probe-failed"
            if self._state != "closed":
                return "open"
            self._streak.add(event_id)
            if len(self._streak) >= self.policy.failure_threshold:
                self._open_for = self.policy.open_seconds
                self._open(f"{len(self._streak)} events failed in a row", error)
                self._streak.clear()
                return "opened"
            return "counted"

    def _open(self, why: str, error: str) -> None:
        self._state = "open"
        self._probe_at = self._monotonic() + self._open_for
        self._opened_at = dt.datetime.now(dt.UTC)
        self._times_opened += 1
        log.warning(
            "handler %s: circuit open after %s (last error: %s); its events wait without spending attempts, "
            "next probe in %.3g s",
            self.handler,
            why,
            error[:300],
            self._open_for,
        )

    def health(self) -> HandlerHealth:
        with self._lock:
            state = self._effective_state()
            next_probe = None
            if self._state != "closed":
                wait = max(0.0, self._probe_at - self._monotonic())
                next_probe = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=wait)
            return HandlerHealth(
                handler=self.handler,
                state=state,
                failures_in_a_row=len(self._streak),
                last_error=self._last_error,
                opened_at=self._opened_at if self._state != "closed" else None,
                next_probe_at=next_probe,
                times_opened=self._times_opened,
            )

"""Hooks into a dispatcher's work, for metrics, traces and logs.

``Dispatcher(engine, handlers, observers=[...])`` calls each observer's hooks in
the dispatcher's own thread:

- ``delivering(handler, events)``: a context manager around each call of a
  handler (one event, or a batch for a ``BatchHandler``); a tracer opens the
  delivery spans here, so a sink sending the events sees them as current;
- ``delivered(attempts)``: inside that context, once the call returned: each
  event's try, how long it took and its error;
- ``finished(results, report)``: after every tick, with the outcome written for
  each event (``lost``: another dispatcher took it over) and the tick's report.

The library's observers are ``outbox_admin.metrics.DispatchMetrics`` (Prometheus),
``outbox_admin.tracing.DeliveryTracer`` (OpenTelemetry) and
``outbox_admin.logs.DeliveryLog`` (one log record per delivery). An observer
that raises is logged and ignored: observing never stops or fails a delivery.
With no observer the dispatcher builds none of these records.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from .handlers.base import DeliveredEvent

if TYPE_CHECKING:
    from .dispatcher import DispatchReport

log = logging.getLogger(__name__)

#: What a tick did with an event, as ``EventResult.outcome`` and the metrics' ``outcome`` label.
Outcome = Literal["completed", "retried", "failed", "waiting", "released", "lost"]
OUTCOMES: tuple[Outcome, ...] = ("completed", "retried", "failed", "waiting", "released", "lost")


@dataclass(frozen=True, slots=True)
class DeliveryAttempt:
    """One handler's try of one event: ``error`` is ``None`` when it was delivered."""

    event: DeliveredEvent
    handler: str
    seconds: float  # the handler call's duration (a batch's whole call for each of its events)
    error: BaseException | None


@dataclass(frozen=True, slots=True)
class EventResult:
    """What a tick wrote for one claimed event."""

    event: DeliveredEvent
    outcome: Outcome
    message: str | None  # the stored error message (retried, failed) or the note (waiting, released)


class DispatchObserver:
    """An observer whose hooks do nothing: subclass it and override the hooks you need."""

    def delivering(self, handler: str, events: Sequence[DeliveredEvent]) -> AbstractContextManager[object]:
        return nullcontext()

    def delivered(self, attempts: Sequence[DeliveryAttempt]) -> None:
        pass

    def finished(self, results: Sequence[EventResult], report: DispatchReport) -> None:
        pass


class Observers:
    """Several observers as one, each hook guarded so that a failing observer is only logged."""

    def __init__(self, observers: Sequence[DispatchObserver]) -> None:
        self.observers = tuple(observers)

    def __bool__(self) -> bool:
        return bool(self.observers)

    @contextmanager
    def delivering(self, handler: str, events: Sequence[DeliveredEvent]) -> Iterator[None]:
        with ExitStack() as stack:
            for observer in self.observers:
                try:
                    context = observer.delivering(handler, events)
                    context.__enter__()
                except Exception:  # noqa: BLE001 - observing must not fail a delivery
                    log.exception("observer %r failed entering a delivery of %s", observer, handler)
                    continue
                stack.callback(_leave, observer, context, handler)
            yield

    def delivered(self, attempts: Sequence[DeliveryAttempt]) -> None:
        for observer in self.observers:
            try:
                observer.delivered(attempts)
            except Exception:  # noqa: BLE001
                log.exception("observer %r failed recording %d delivery attempt(s)", observer, len(attempts))

    def finished(self, results: Sequence[EventResult], report: DispatchReport) -> None:
        for observer in self.observers:
            try:
                observer.finished(results, report)
            except Exception:  # noqa: BLE001
                log.exception("observer %r failed recording a tick", observer)


def _leave(observer: DispatchObserver, context: AbstractContextManager[object], handler: str) -> None:
    try:
        context.__exit__(None, None, None)
    except Exception:  # noqa: BLE001
        log.exception("observer %r failed leaving a delivery of %s", observer, handler)

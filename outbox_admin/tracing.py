"""OpenTelemetry traces from the publishing request to every sink.

Three parts, none of which imports ``opentelemetry`` unless the application did:

- **Publishing** (``capture``): ``publish_outbox_event`` inside an active span stores
  that span's W3C trace context with the event (column ``trace_context``: compact
  JSON ``{"traceparent": ..., "tracestate": ...}``). Outside a span, or without
  opentelemetry, it stores NULL. The check costs a dictionary look-up: no span can
  be active unless the application imported ``opentelemetry.trace``, so while
  ``sys.modules`` lacks it nothing is imported and nothing is done.
- **Dispatching** (``DeliveryTracer``): an observer (``outbox_admin.observe``) that
  opens one span per event and handler call, a child of the event's stored context,
  so the delivery shows up in the publishing request's trace.
- **Sinks** (``trace_headers``): the headers a sink sends with an event, so the
  consumer's span continues the same trace.

Decisions:

- The context is always W3C Trace Context, written and read with
  ``TraceContextTextMapPropagator``, not with the global propagator: the stored
  value, the sinks' headers (``traceparent``/``tracestate``) and the CloudEvents
  distributed tracing extension are all defined as W3C fields, and an application
  that configured B3 for its HTTP calls must still store something every sink can
  send.
- Nothing is refused: a ``tracestate`` over the W3C limit of 512 characters (or with
  characters a header cannot hold) is dropped and the ``traceparent`` kept; a stored
  value that cannot be read (written by hand) is ignored at delivery.
- Delivery spans are ``PRODUCER`` spans named ``send <handler>``: the dispatcher
  sends the event on toward a sink; the consumer behind the sink opens the
  ``CONSUMER`` span, a child of the ``traceparent`` the sink sent.
- Tracing is turned on in code (``Dispatcher(..., observers=[DeliveryTracer()])``), or by
  ``outbox-admin dispatch --trace``, which uses the global tracer provider: spans go
  nowhere until the application sets up an SDK and an exporter (in the handlers'
  module, or with ``opentelemetry-instrument``); the library never configures one.
"""

from __future__ import annotations

import functools
import json
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError
from .handlers.base import DeliveredEvent
from .observe import DeliveryAttempt, DispatchObserver

if TYPE_CHECKING:
    from opentelemetry.trace import Span, TracerProvider

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
#: The W3C limit for ``tracestate`` (https://www.w3.org/TR/trace-context/#tracestate-limits); longer ones are dropped.
MAX_TRACESTATE = 512
#: A failed delivery's status description: the error's first characters (the exception event has it all).
MAX_STATUS_DESCRIPTION = 500
#: The instrumentation scope of the library's spans.
SCOPE = "outbox_admin"

# Version 00, the one the propagator writes, with ids that are not all zeros. Matched whole
# (``fullmatch``: ``$`` would let a trailing newline through into a header).
_TRACEPARENT = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")
# printable ASCII: what an HTTP header, an AMQP or NATS header and a Redis field all carry as is
_TRACESTATE = re.compile(r"[ -~]*")


def capture() -> str | None:
    """The active span's W3C context as the stored text, or ``None`` (no valid span, or no opentelemetry).

    Called by the publisher for every event: without ``opentelemetry.trace`` imported it is one
    ``sys.modules`` look-up; with it and no active span, one context read.
    """
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return None
    if not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    _propagator().inject(carrier)
    return encode(carrier)


def encode(carrier: Mapping[str, str]) -> str | None:
    """A carrier as the stored text: its valid ``traceparent``, and its ``tracestate`` when it fits."""
    checked = _checked(carrier)
    return None if checked is None else json.dumps(checked, separators=(",", ":"))


def decode(stored: str | None) -> dict[str, str] | None:
    """The stored text as a carrier (``{"traceparent": ..., "tracestate": ...}``), ``None`` if unreadable.

    A value that is not ours (written by hand, or truncated) is ignored rather than failing
    the delivery: tracing is an aid, never a reason to retry an event.
    """
    if not stored:
        return None
    try:
        carrier = json.loads(stored)
    except ValueError:
        return None
    return _checked(carrier) if isinstance(carrier, dict) else None


def _checked(carrier: Mapping[str, Any]) -> dict[str, str] | None:
    parent = carrier.get(TRACEPARENT)
    if not isinstance(parent, str) or not _TRACEPARENT.fullmatch(parent):
        return None
    checked = {TRACEPARENT: parent}
    state = carrier.get(TRACESTATE)
    if isinstance(state, str) and state and len(state) <= MAX_TRACESTATE and _TRACESTATE.fullmatch(state):
        checked[TRACESTATE] = state
    return checked


def trace_headers(event: DeliveredEvent) -> dict[str, str]:
    """The ``traceparent`` (and ``tracestate``) a sink sends with ``event``.

    While a ``DeliveryTracer`` delivers the event: its delivery span's context, so the
    consumer's span is that span's child (also for a batch, where no single span is
    current). Otherwise the event's stored context as it is, so consumers still join the
    publishing request's trace when the dispatcher does not trace. Else ``{}``.
    """
    delivery = _DELIVERY.get()
    if delivery is not None:
        headers = delivery.headers.get(event.id)
        if headers is not None:
            return dict(headers)
    return dict(event.trace_context) if event.trace_context else {}


@dataclass(slots=True)
class _Delivery:
    """One handler call being traced: its spans, and the headers of each, by event id."""

    tracer: DeliveryTracer
    spans: dict[str, Span]
    headers: dict[str, dict[str, str]]


#: The traced delivery in progress in this thread (or task): set by ``DeliveryTracer.delivering``
#: for the handler call, read by ``trace_headers`` and ``DeliveryTracer.delivered``. A context
#: variable, as OpenTelemetry keeps its own context, so dispatchers in several threads never mix.
_DELIVERY: ContextVar[_Delivery | None] = ContextVar("outbox_admin.tracing.delivery", default=None)


class DeliveryTracer(DispatchObserver):
    """Traces every delivery: ``Dispatcher(engine, handlers, observers=[DeliveryTracer()])``.

    One span per event and handler call, named ``send <handler>`` (kind ``PRODUCER``), a
    child of the event's stored trace context (the span it was published in) or, for an
    event published outside a span, of whatever span is current in the dispatcher. It
    carries ``outbox.event.id``, ``outbox.event.type``, ``outbox.handler``,
    ``outbox.event.attempt`` and the messaging conventions' ``messaging.operation.type``
    (``send``), ``messaging.destination.name`` (the handler) and ``messaging.message.id``
    (the event id); a failed delivery records the exception and sets status ``ERROR``.
    For a single event the span is current during the handler call (instrumented
    clients inside the handler nest under it); for a batch each sink asks
    ``trace_headers(event)`` for its event's span.

    ``tracer_provider``: the provider to use; default the global one
    (``opentelemetry.trace.set_tracer_provider``). Needs ``opentelemetry-api``
    (``pip install 'outbox_admin[tracing]'``) and an SDK configured by the application
    for the spans to go anywhere.
    """

    def __init__(self, tracer_provider: TracerProvider | None = None) -> None:
        try:
            from opentelemetry import trace
        except ImportError as exc:
            raise ConfigurationError(
                "DeliveryTracer needs the 'opentelemetry-api' package: pip install 'outbox_admin[tracing]'"
            ) from exc
        self._trace = trace
        self._tracer = trace.get_tracer(SCOPE, _version(), tracer_provider=tracer_provider)
        self._propagator = _propagator()

    @contextmanager
    def delivering(self, handler: str, events: Sequence[DeliveredEvent]) -> Iterator[None]:
        trace = self._trace
        spans: dict[str, Span] = {}
        headers: dict[str, dict[str, str]] = {}
        batch = len(events) > 1
        for event in events:
            parent = self._propagator.extract(event.trace_context) if event.trace_context else None
            attributes: dict[str, str | int] = {
                "outbox.event.id": event.id,
                "outbox.event.type": event.event_type,
                "outbox.handler": handler,
                "outbox.event.attempt": event.attempt,
                "messaging.operation.type": "send",
                "messaging.destination.name": handler,
                "messaging.message.id": event.id,
            }
            if batch:
                attributes["messaging.batch.message_count"] = len(events)
            span = self._tracer.start_span(
                f"send {handler}", context=parent, kind=trace.SpanKind.PRODUCER, attributes=attributes
            )
            spans[event.id] = span
            carrier: dict[str, str] = {}
            self._propagator.inject(carrier, context=trace.set_span_in_context(span))
            checked = _checked(carrier)
            if checked is not None:
                headers[event.id] = checked
        token = _DELIVERY.set(_Delivery(self, spans, headers))
        try:
            if len(events) == 1:
                with trace.use_span(spans[events[0].id], record_exception=False, set_status_on_exception=False):
                    yield
            else:
                yield
        finally:
            _DELIVERY.reset(token)
            for span in spans.values():
                span.end()

    def delivered(self, attempts: Sequence[DeliveryAttempt]) -> None:
        delivery = _DELIVERY.get()
        if delivery is None or delivery.tracer is not self:
            return
        for attempt in attempts:
            if attempt.error is None:
                continue
            span = delivery.spans.get(attempt.event.id)
            if span is None:
                continue
            error = attempt.error
            span.record_exception(error)
            span.set_attribute("error.type", type(error).__qualname__)
            why = f"{type(error).__name__}: {error}"
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, why[:MAX_STATUS_DESCRIPTION]))


@functools.cache
def _propagator() -> Any:
    """The W3C propagator (stateless: one serves every call)."""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator()


def _version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("outbox_admin")
    except PackageNotFoundError:
        return None

"""Prometheus metrics: what the dispatchers of this process do, and the outbox's state in the database.

Needs the ``metrics`` extra (``pip install 'outbox_admin[metrics]'``, prometheus-client).

- ``DispatchMetrics`` is a dispatcher observer (``outbox_admin.observe``) that counts and times
  the work of the dispatchers it is given; ``watch(dispatcher)`` also exposes their circuit
  breakers, ``watch_database(engine)`` the database gauges (``DatabaseCollector``).
- ``DatabaseCollector`` reads the gauges at each scrape (``analytics.outbox_gauges``: a few
  index-backed reads, time-limited). A database that is down or slow never fails the scrape: it
  answers ``outbox_database_up 0`` and leaves the other gauges out.
- ``MetricsServer`` serves a registry over HTTP (``/metrics``) and can be stopped;
  ``DispatcherService(..., metrics_port=9464)`` and ``outbox-admin dispatch --metrics-port 9464``
  run one. ``outbox-admin metrics`` prints the database gauges once (cron, textfile collector).

Metrics live in the ``CollectorRegistry`` given to ``DispatchMetrics`` (default: a new one, never
prometheus_client's global ``REGISTRY`` unless it is passed: ``DispatchMetrics(registry=REGISTRY)``).

Exported names (``deploy/`` uses these and nothing else; ``tests/test_deploy.py`` checks it):

=============================================  =========  ==================================================
``outbox_events_claimed_total``                counter    events claimed
``outbox_events_finished_total``               counter    claimed events by ``event_type`` and ``outcome``
                                                          (completed, retried, failed, waiting, released, lost)
``outbox_events_recovered_total``              counter    expired leases recovered (to PENDING or FAILED)
``outbox_deliveries_total``                    counter    handler tries by ``handler``, ``outcome`` (delivered, failed)
``outbox_tick_duration_seconds``               histogram  a tick (one batch: claim, handlers, finish), empty ones too
``outbox_handler_duration_seconds``            histogram  one handler call by ``handler`` (a batch call once)
``outbox_delivery_latency_seconds``            histogram  ``created_at`` to a handler's success, by ``handler``
``outbox_dispatcher_last_tick_timestamp_seconds`` gauge   when a dispatcher of this process last ticked
``outbox_circuit_breaker_open``                gauge      1 while a handler's breaker is open or half-open
``outbox_database_up``                         gauge      1 when the scrape read the database, else 0
``outbox_database_scrape_duration_seconds``    gauge      how long that read took
``outbox_events``                              gauge      events per ``status`` (as stored: PENDING, ...)
``outbox_oldest_due_event_age_seconds``        gauge      lag: age of the oldest due PENDING event (0: none)
``outbox_expired_leases``                      gauge      PROCESSING events whose lease ran out
``outbox_active_pauses``                       gauge      active event-type pauses
``outbox_last_claim_timestamp_seconds``        gauge      the newest claim in the history, any dispatcher (0: none)
=============================================  =========  ==================================================

Decisions: labels stay bounded. Handlers are the dispatcher's configuration; event types are kept
as they are for the first ``max_event_types`` (default 100) seen by this process, the others are
``event_type="other"``. No label names a dispatcher (its name is new at every start). Latency is
measured against this host's clock from the database's ``created_at``: clock skew shows in it, and
a negative value counts as 0. Status label values are the stored statuses (upper case), so they
read like the database, the dashboard and the CLI.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from .errors import ConfigurationError
from .models import DEFAULT_TABLES, EventStatus, OutboxTables
from .observe import DeliveryAttempt, DispatchObserver, EventResult

try:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
    from prometheus_client.core import GaugeMetricFamily, Metric
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise ConfigurationError(
        "outbox_admin.metrics needs prometheus-client: pip install 'outbox_admin[metrics]'"
    ) from exc

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from .analytics import OutboxGauges
    from .dispatcher import Dispatcher, DispatchReport

log = logging.getLogger(__name__)

DEFAULT_MAX_EVENT_TYPES = 100
#: The ``event_type`` label of the types past ``max_event_types``.
OTHER_EVENT_TYPE = "other"
#: A tick is a batch: milliseconds when idle, up to the handlers' timeouts when not.
TICK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
HANDLER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Publish to delivery: milliseconds when woken at commit, the interval when not, hours after an outage.
LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)
#: How long a scrape waits for the database beyond its statement time limit before it reports it down.
DATABASE_GRACE_SECONDS = 1.0
DEFAULT_METRICS_HOST = "127.0.0.1"
DEFAULT_METRICS_PORT = 9464  # Prometheus' default-port allocation for OpenTelemetry/exporters


class DispatchMetrics(DispatchObserver):
    """Counts and times the work of the dispatchers that have it as an observer.

    ``metrics = DispatchMetrics(); Dispatcher(engine, handlers, observers=[metrics])``, then serve
    ``metrics.registry`` (``MetricsServer``), or let ``DispatcherService(..., metrics_port=...)`` do
    all of it. One instance may observe several dispatchers: their counts add up.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        max_event_types: int = DEFAULT_MAX_EVENT_TYPES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_event_types < 0:
            raise ConfigurationError("max_event_types must not be negative")
        self.registry = registry if registry is not None else CollectorRegistry()
        self.max_event_types = max_event_types
        self._clock = clock
        self._lock = threading.Lock()
        self._event_types: set[str] = set()
        self._dispatchers: list[Dispatcher] = []
        self.database: DatabaseCollector | None = None
        r = self.registry
        self.claimed = Counter("outbox_events_claimed_total", "Events claimed by the dispatchers.", registry=r)
        self.finished_events = Counter(
            "outbox_events_finished_total",
            "Claimed events by what their tick wrote (completed, retried, failed, waiting, released, lost).",
            ["event_type", "outcome"],
            registry=r,
        )
        self.recovered = Counter(
            "outbox_events_recovered_total",
            "Events recovered from an expired lease (to PENDING or FAILED).",
            registry=r,
        )
        self.deliveries = Counter(
            "outbox_deliveries_total",
            "Handler tries of an event, by handler and outcome.",
            ["handler", "outcome"],
            registry=r,
        )
        self.tick_duration = Histogram(
            "outbox_tick_duration_seconds",
            "Duration of a dispatcher tick (one batch).",
            buckets=TICK_BUCKETS,
            registry=r,
        )
        self.handler_duration = Histogram(
            "outbox_handler_duration_seconds",
            "Duration of one handler call (a batch handler's call counts once).",
            ["handler"],
            buckets=HANDLER_BUCKETS,
            registry=r,
        )
        self.delivery_latency = Histogram(
            "outbox_delivery_latency_seconds",
            "Seconds from an event's created_at to a handler's successful delivery.",
            ["handler"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.last_tick = Gauge(
            "outbox_dispatcher_last_tick_timestamp_seconds",
            "Unix time of the latest tick of a dispatcher in this process.",
            registry=r,
        )
        r.register(_Breakers(self))

    # -- wiring ----------------------------------------------------------------------

    def watch(self, dispatcher: Dispatcher) -> None:
        """Observe ``dispatcher`` (``add_observer``) and expose its circuit breakers; its handlers' series
        start at 0, so a first failure is an increase alerts can see."""
        dispatcher.add_observer(self)
        with self._lock:
            if not any(d is dispatcher for d in self._dispatchers):
                self._dispatchers.append(dispatcher)
        for route in dispatcher.routes:
            for outcome in ("delivered", "failed"):
                self.deliveries.labels(handler=route.name, outcome=outcome)
            self.handler_duration.labels(handler=route.name)
            self.delivery_latency.labels(handler=route.name)

    def watch_database(
        self,
        engine: Engine,
        *,
        tables: OutboxTables = DEFAULT_TABLES,
        timeout_seconds: float | None = None,
    ) -> DatabaseCollector:
        """Add the database gauges of ``engine`` to the registry, once; a registry holds one database's
        gauges (a second database would repeat their names), so another database is refused."""
        with self._lock:
            existing = self.database
            if existing is not None:
                if existing.engine.url != engine.url or existing.tables != tables:
                    raise ConfigurationError(
                        "these metrics already read the gauges of another database "
                        f"({existing.engine.url.render_as_string(hide_password=True)}); give each database's "
                        "dispatchers their own DispatchMetrics and registry"
                    )
                return existing
            collector = DatabaseCollector(engine, tables=tables, timeout_seconds=timeout_seconds)
            self.registry.register(collector)
            self.database = collector
            return collector

    def dispatchers(self) -> list[Dispatcher]:
        with self._lock:
            return list(self._dispatchers)

    # -- the observer hooks ----------------------------------------------------------

    def delivered(self, attempts: Sequence[DeliveryAttempt]) -> None:
        if not attempts:
            return
        handler = attempts[0].handler
        self.handler_duration.labels(handler=handler).observe(attempts[0].seconds)  # one call
        now = self._clock()
        ok = self.deliveries.labels(handler=handler, outcome="delivered")
        failed = self.deliveries.labels(handler=handler, outcome="failed")
        latency = self.delivery_latency.labels(handler=handler)
        for attempt in attempts:
            if attempt.error is None:
                ok.inc()
                latency.observe(max(0.0, now - attempt.event.created_at.timestamp()))
            else:
                failed.inc()

    def finished(self, results: Sequence[EventResult], report: DispatchReport) -> None:
        self.last_tick.set(self._clock())
        self.tick_duration.observe(report.seconds)
        if report.claimed:
            self.claimed.inc(report.claimed)
        if report.recovered:
            self.recovered.inc(report.recovered)
        for result in results:
            self.finished_events.labels(
                event_type=self.event_type_label(result.event.event_type), outcome=result.outcome
            ).inc()

    def event_type_label(self, event_type: str) -> str:
        """``event_type`` if it is among the first ``max_event_types`` seen, else ``"other"``."""
        with self._lock:
            if event_type in self._event_types:
                return event_type
            if len(self._event_types) < self.max_event_types:
                self._event_types.add(event_type)
                return event_type
        return OTHER_EVENT_TYPE


class _Breakers:
    """``outbox_circuit_breaker_open{handler}`` of the watched dispatchers, read at scrape time (a handler
    of two dispatchers is open when either's breaker is)."""

    def __init__(self, metrics: DispatchMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Metric]:
        return [self._family()]

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        open_by_handler: dict[str, int] = {}
        for dispatcher in self.metrics.dispatchers():
            for health in dispatcher.handler_health():
                is_open = int(health.state != "closed")
                open_by_handler[health.handler] = max(open_by_handler.get(health.handler, 0), is_open)
        for handler, is_open in sorted(open_by_handler.items()):
            family.add_metric([handler], is_open)
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "outbox_circuit_breaker_open",
            "1 while a handler's circuit breaker is open or half-open in this process, else 0.",
            labels=["handler"],
        )


# -- the database gauges -------------------------------------------------------------


@dataclass
class _Read:
    """One read of the gauges in its own thread: a scrape waits for it up to a deadline."""

    done: threading.Event
    gauges: OutboxGauges | None = None
    error: str | None = None


class DatabaseCollector:
    """The database gauges, read at every scrape (``analytics.outbox_gauges``).

    The read runs in a thread of its own, and the scrape waits for it ``timeout_seconds`` (the reads'
    own time limit) plus a second: a database that does not answer (a connection that hangs, a pool
    that is exhausted) costs a scrape that long and no more. It then answers ``outbox_database_up 0``
    without the other gauges (they would be stale), and the next scrape waits for the same read
    rather than starting another. It only reads, so a read-only engine serves it.
    """

    def __init__(
        self, engine: Engine, *, tables: OutboxTables = DEFAULT_TABLES, timeout_seconds: float | None = None
    ) -> None:
        from .analytics import GAUGES_TIMEOUT_SECONDS

        timeout = GAUGES_TIMEOUT_SECONDS if timeout_seconds is None else timeout_seconds
        if timeout <= 0:
            raise ConfigurationError("timeout_seconds must be positive")
        self.engine = engine
        self.tables = tables
        self.timeout_seconds = float(timeout)
        self._lock = threading.Lock()
        self._read: _Read | None = None
        self.last_error: str | None = None  # why the latest scrape could not read the database

    def describe(self) -> list[Metric]:
        """The families without reading the database (registering must not query it)."""
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        gauges, error = self._gauges()
        families = {family.name: family for family in self._families()}
        was_down = self.last_error is not None
        self.last_error = error
        if error is not None:
            if not was_down:
                log.warning("metrics: the outbox database could not be read: %s", error)
        elif was_down:
            log.warning("metrics: the outbox database answers again")
        families["outbox_database_up"].add_metric([], 0 if gauges is None else 1)
        families["outbox_database_scrape_duration_seconds"].add_metric([], time.perf_counter() - started)
        yield families["outbox_database_up"]
        yield families["outbox_database_scrape_duration_seconds"]
        if gauges is None:
            return
        statuses = [s.value for s in EventStatus]
        for status in statuses + sorted(set(gauges.counts) - set(statuses)):
            families["outbox_events"].add_metric([status], gauges.counts.get(status, 0))
        families["outbox_oldest_due_event_age_seconds"].add_metric([], gauges.oldest_due_seconds)
        families["outbox_expired_leases"].add_metric([], gauges.expired_leases)
        families["outbox_active_pauses"].add_metric([], gauges.active_pauses)
        last_claim = gauges.last_claim_at.timestamp() if gauges.last_claim_at is not None else 0.0
        families["outbox_last_claim_timestamp_seconds"].add_metric([], last_claim)
        for name in (
            "outbox_events",
            "outbox_oldest_due_event_age_seconds",
            "outbox_expired_leases",
            "outbox_active_pauses",
            "outbox_last_claim_timestamp_seconds",
        ):
            yield families[name]

    @property
    def up(self) -> bool:
        """Whether the latest scrape read the database."""
        return self.last_error is None

    def _gauges(self) -> tuple[OutboxGauges | None, str | None]:
        with self._lock:
            read = self._read
            if read is None or read.done.is_set():
                read = self._read = _Read(threading.Event())
                # A daemon thread, not an executor's: a read that hangs must not hold up the process's exit.
                threading.Thread(target=self._run, args=(read,), name="outbox-metrics-read", daemon=True).start()
        if not read.done.wait(self.timeout_seconds + DATABASE_GRACE_SECONDS):
            return None, f"no answer within {self.timeout_seconds + DATABASE_GRACE_SECONDS:g} s"
        return read.gauges, read.error

    def _run(self, read: _Read) -> None:
        from .analytics import outbox_gauges

        try:
            read.gauges = outbox_gauges(self.engine, timeout_seconds=self.timeout_seconds, tables=self.tables)
        except Exception as exc:  # noqa: BLE001 - reported as outbox_database_up 0, never raised to the scrape
            read.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        finally:
            read.done.set()

    @staticmethod
    def _families() -> list[GaugeMetricFamily]:
        def gauge(name: str, documentation: str, labels: Sequence[str] = ()) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, documentation, labels=list(labels))

        return [
            gauge("outbox_database_up", "1 when this scrape could read the outbox database, else 0."),
            gauge("outbox_database_scrape_duration_seconds", "How long this scrape's read of the database took."),
            gauge("outbox_events", "Events per status (the rollup and the unfinished events).", ["status"]),
            gauge(
                "outbox_oldest_due_event_age_seconds",
                "Lag: seconds since the oldest due PENDING event was published (0 when none is due).",
            ),
            gauge("outbox_expired_leases", "PROCESSING events whose lease expired (waiting to be recovered)."),
            gauge("outbox_active_pauses", "Active event-type pauses."),
            gauge(
                "outbox_last_claim_timestamp_seconds",
                "Unix time of the newest claim by any dispatcher, from the history (0 when there is none).",
            ),
        ]


def database_metrics_text(
    engine: Engine, *, tables: OutboxTables = DEFAULT_TABLES, timeout_seconds: float | None = None
) -> tuple[str, str | None]:
    """The database gauges once, in the text exposition format, and why the database could not be read
    (``None`` when it could): for ``outbox-admin metrics``."""
    registry = CollectorRegistry()
    collector = DatabaseCollector(engine, tables=tables, timeout_seconds=timeout_seconds)
    registry.register(collector)
    text = generate_latest(registry).decode("utf-8")
    return text, collector.last_error


# -- serving -------------------------------------------------------------------------


class MetricsServer:
    """prometheus_client's HTTP server for ``registry``, on ``host:port`` (port 0: any free port),
    that ``stop()`` shuts down (a service may start and stop many)."""

    def __init__(self, registry: CollectorRegistry, port: int, host: str = DEFAULT_METRICS_HOST) -> None:
        if not 0 <= port <= 65535:
            raise ConfigurationError(f"the metrics port must be between 0 and 65535, not {port}")
        self.registry = registry
        self.host = host
        self.requested_port = port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int | None:
        """The port it listens on while started (the chosen one for port 0)."""
        return None if self._server is None else int(self._server.server_port)

    @property
    def url(self) -> str | None:
        if self.port is None:
            return None
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def start(self) -> None:
        """Listen; refused with ``ConfigurationError`` when the address cannot be bound."""
        from prometheus_client import start_http_server

        if self._server is not None:
            return
        try:
            self._server, self._thread = start_http_server(self.requested_port, addr=self.host, registry=self.registry)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot serve metrics on {self.host}:{self.requested_port}: {exc.strerror or exc}"
            ) from exc

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join()

    def __enter__(self) -> MetricsServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def metrics_of(dispatcher: Dispatcher) -> DispatchMetrics | None:
    """The ``DispatchMetrics`` already observing ``dispatcher``, if any."""
    return next((o for o in dispatcher.observers if isinstance(o, DispatchMetrics)), None)

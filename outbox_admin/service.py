"""The background dispatcher: an APScheduler job that drains the outbox every interval.

``DispatcherService(dispatcher, interval_seconds=30)`` runs one job (the
original's ``*/30 * * * * *`` cron) with ``max_instances=1`` and coalescing; each
tick drains until nothing is due (bounded). Besides the interval it wakes:

- when a transaction in this process commits events (``outbox_admin.wakeup``);
- on PostgreSQL, when any process commits events: a listener thread ``LISTEN``\\s
  on ``outbox_events`` and wakes the service on each ``NOTIFY``.

APScheduler is the clock, not the runner: its job only wakes the service's one
worker thread, which runs the ticks. A wake-up is then a direct hand-off to a
thread already waiting (well under a millisecond), rather than rescheduling the
job through the scheduler's thread and executor (a few milliseconds, and a
wake-up that arrived while the previous run was being closed was skipped as "maximum
number of running instances reached").

A tick that fails (the database went away) is logged and shown in ``status()``
until the next tick succeeds (``recent_errors`` keeps the last ones); the next
tick carries on. ``status()`` is updated after every batch, so a drain that runs
for minutes under load still shows its progress (``last_tick_at``, ``current_run``).
When a handler's circuit breaker is open, the service ticks again when its probe
is due. Safety between processes comes from the database (``SKIP LOCKED``), not
from the scheduler.

``metrics_port=9464`` (``metrics_host``, default 127.0.0.1: exposing metrics beyond the host is a
choice to make) serves Prometheus metrics while the service runs: the dispatcher's counts and
timings, its breakers and its database's gauges (``outbox_admin.metrics``; the ``metrics`` extra).
``metrics=DispatchMetrics(registry=...)`` chooses the observer and its registry (without it: the one the
dispatcher already has, else a new one with a registry of its own).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from apscheduler.events import EVENT_JOB_ERROR, JobExecutionEvent
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from .breaker import HandlerHealth
from .config import DEFAULT_INTERVAL_SECONDS
from .dispatcher import Dispatcher, DispatchReport
from .errors import AdminActionError, ConfigurationError
from .wakeup import NOTIFY_CHANNEL, PostgresListener, WakeSignal, wake_key, wake_signal

if TYPE_CHECKING:
    from .metrics import DispatchMetrics, MetricsServer

log = logging.getLogger(__name__)

JOB_ID = "outbox-dispatch"
#: A wake-up from a ``Connection`` commit hook can arrive just before the commit is
#: visible; a woken tick that finds nothing looks again after these pauses.
WAKE_RECHECK_SECONDS = (0.002, 0.01, 0.05)
#: How many failed ticks ``status().recent_errors`` remembers.
RECENT_ERRORS = 20


@dataclass(frozen=True)
class ServiceStatus:
    """A snapshot of the service for dashboards and the CLI.

    ``last_error`` is the error of the latest run if it failed, ``None`` once a run
    succeeds again; ``last_error_at`` and ``recent_errors`` (time, message; newest
    last) keep the history. ``last_tick_at`` is when the latest batch finished,
    ``current_run`` what the run in progress has done so far (``None`` when idle).
    ``handlers`` is each handler's circuit breaker.
    """

    running: bool
    dispatcher: str
    interval_seconds: float
    last_tick_at: dt.datetime | None
    last_report: DispatchReport | None
    next_tick_at: dt.datetime | None
    last_error: str | None
    last_error_at: dt.datetime | None
    ticks: int
    failed_ticks: int
    totals: DispatchReport
    listening: bool
    current_run: DispatchReport | None = None
    draining: bool = False  # a drain started with start_drain() is running
    recent_errors: tuple[tuple[dt.datetime, str], ...] = ()
    handlers: tuple[HandlerHealth, ...] = ()

    @property
    def open_handlers(self) -> list[HandlerHealth]:
        """Handlers whose breaker is not closed (paused, or about to be probed)."""
        return [h for h in self.handlers if h.state != "closed"]

    def seconds_to_next_tick(self, now: dt.datetime | None = None) -> float | None:
        if self.next_tick_at is None:
            return None
        now = now or dt.datetime.now(dt.UTC)
        return max(0.0, (self.next_tick_at - now).total_seconds())


def _error_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:500]


class DispatcherService:
    """Runs a ``Dispatcher`` in a background thread, every ``interval_seconds`` and on wake-ups."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        interval_seconds: float = DEFAULT_INTERVAL_SECONDS,
        *,
        drain_seconds: float | None = None,
        listen: bool = True,
        signal: WakeSignal = wake_signal,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
        metrics: DispatchMetrics | None = None,
    ) -> None:
        if interval_seconds <= 0:
            raise ConfigurationError("interval_seconds must be positive")
        self.dispatcher = dispatcher
        self.interval_seconds = float(interval_seconds)
        # A tick drains, but never for longer than an interval (at least 5 s), so status stays fresh.
        self.drain_seconds = drain_seconds if drain_seconds is not None else max(5.0, self.interval_seconds)
        self.listen = listen and dispatcher.engine.dialect.name == "postgresql"
        self._signal = signal
        self._lock = threading.Lock()
        self._scheduler: BackgroundScheduler | None = None
        self._remove_wake: Any = None
        self._listener: PostgresListener | None = None
        self._worker: threading.Thread | None = None
        self._closing = threading.Event()
        # Set by every wake-up and every scheduled run; the worker thread waits on it.
        self._wake_pending = threading.Event()
        self._scheduled = False
        self._tick_done = threading.Condition()
        self._last_tick_at: dt.datetime | None = None
        self._last_report: DispatchReport | None = None
        self._last_error: str | None = None
        self._last_error_at: dt.datetime | None = None
        self._recent_errors: deque[tuple[dt.datetime, str]] = deque(maxlen=RECENT_ERRORS)
        self._current_run: DispatchReport | None = None
        self._ticks = 0
        self._failed_ticks = 0
        self._totals = DispatchReport()
        self._drain_thread: threading.Thread | None = None
        self._manual = threading.Event()  # a run_batch() is in progress
        self.metrics: DispatchMetrics | None = None
        self._metrics_server: MetricsServer | None = None
        if metrics is not None or metrics_port is not None:
            self._wire_metrics(metrics, metrics_port, metrics_host)

    def _wire_metrics(self, metrics: DispatchMetrics | None, port: int | None, host: str) -> None:
        """Observe the dispatcher with ``metrics`` (or the ``DispatchMetrics`` it already has, or a new one),
        its breakers and its database's gauges in the same registry; serve it on ``port`` when given.

        Wired once, here: a service started and stopped again keeps its counters, and only its HTTP
        server comes and goes with ``start()`` and ``stop()``.
        """
        from .metrics import DispatchMetrics, MetricsServer, metrics_of

        metrics = metrics or metrics_of(self.dispatcher) or DispatchMetrics()
        metrics.watch(self.dispatcher)
        metrics.watch_database(self.dispatcher.engine, tables=self.dispatcher.tables)
        self.metrics = metrics
        if port is not None:
            self._metrics_server = MetricsServer(metrics.registry, port, host)

    @property
    def metrics_url(self) -> str | None:
        """Where the metrics are served while the service runs (``http://host:port/metrics``), else ``None``."""
        server = self._metrics_server
        return None if server is None else server.url

    # -- lifecycle -------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._scheduler is not None and self._scheduler.running

    def start(self) -> None:
        """Start ticking now and every interval; idempotent."""
        with self._lock:
            if self.running:
                return
            if self.draining or self._manual.is_set():
                raise AdminActionError("a drain or a batch is running; start the service when it ends")
            if self._metrics_server is not None:
                self._metrics_server.start()  # first: a port in use refuses the start before anything runs
            self.dispatcher.clear_stop()
            self._closing.clear()
            self._worker = threading.Thread(target=self._work, name="outbox-dispatch", daemon=True)
            self._worker.start()
            scheduler = BackgroundScheduler(timezone=dt.UTC, job_defaults={"misfire_grace_time": None})
            scheduler.add_listener(self._on_job_error, EVENT_JOB_ERROR)
            scheduler.add_job(
                self._scheduled_run,
                IntervalTrigger(seconds=self.interval_seconds, timezone=dt.UTC),
                id=JOB_ID,
                name=f"outbox dispatcher {self.dispatcher.name}",
                max_instances=1,
                coalesce=True,
                next_run_time=dt.datetime.now(dt.UTC),
            )
            scheduler.start()
            self._scheduler = scheduler
            url = wake_key(self.dispatcher.engine.url)
            self._remove_wake = self._signal.listen(url, self.wake)
            if self.listen:
                self._listener = PostgresListener(self.dispatcher.engine, self.wake, NOTIFY_CHANNEL)
                self._listener.start()

    def stop(self, wait: bool = True) -> None:
        """Stop: the event in hand finishes, the rest of its batch is released to PENDING."""
        self.stop_drain(wait=wait)
        with self._lock:
            scheduler, self._scheduler = self._scheduler, None
            if self._remove_wake is not None:
                self._remove_wake()
                self._remove_wake = None
            if self._listener is not None:
                self._listener.stop()
                self._listener = None
            if scheduler is None:
                return
            self.dispatcher.request_stop()
            scheduler.shutdown(wait=wait)
            worker, self._worker = self._worker, None
            self._closing.set()
            self._wake_pending.set()
            if wait and worker is not None:
                worker.join()
            if self._metrics_server is not None:
                self._metrics_server.stop()

    def configure(self, *, interval_seconds: float | None = None, batch_size: int | None = None) -> None:
        """Change the interval (rescheduling a running service) and the batch size; takes effect
        at the next tick."""
        if interval_seconds is not None and interval_seconds <= 0:
            raise ConfigurationError("interval_seconds must be positive")
        if batch_size is not None and batch_size < 1:
            raise ConfigurationError("batch_size must be at least 1")
        with self._lock:
            if batch_size is not None:
                self.dispatcher.batch_size = batch_size
            if interval_seconds is not None and interval_seconds != self.interval_seconds:
                self.interval_seconds = float(interval_seconds)
                self.drain_seconds = max(5.0, self.interval_seconds)
                scheduler = self._scheduler
                if scheduler is not None and scheduler.running:
                    scheduler.reschedule_job(
                        JOB_ID, trigger=IntervalTrigger(seconds=self.interval_seconds, timezone=dt.UTC)
                    )

    def __enter__(self) -> DispatcherService:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- triggering ------------------------------------------------------------------

    def wake(self) -> None:
        """Tick as soon as possible (or once more right after the running tick)."""
        self._wake_pending.set()

    def _scheduled_run(self) -> None:
        """The APScheduler job: every interval, hand a tick to the worker thread."""
        self._scheduled = True
        self._wake_pending.set()

    def run_now(self, timeout: float | None = 30.0) -> DispatchReport | None:
        """Tick now and wait for it; returns that tick's report (None if it failed or timed out).

        When the service is not running, the tick runs in the calling thread.
        """
        if not self.running:
            return None if self._tick() else self._last_report
        with self._tick_done:
            seen = self._ticks
            self.wake()
            finished = self._tick_done.wait_for(lambda: self._ticks > seen, timeout=timeout)
        return self._last_report if finished else None

    def run_batch(self) -> DispatchReport:
        """One batch now, in the calling thread, recovering expired leases first: an operator's
        "tick". Refused while the service runs or drains (it ticks by itself then)."""
        with self._lock:
            if self.running or self.draining:
                raise AdminActionError("the dispatcher is already running; it ticks by itself")
            self._manual.set()
        started = dt.datetime.now(dt.UTC)
        try:
            report = self.dispatcher.dispatch_once(recover=True)
        except Exception as exc:
            self._record(started, DispatchReport(), _error_line(exc), finished=True)
            raise
        finally:
            self._manual.clear()
        self._batch_done(report)
        self._record(started, report, None, finished=True)
        return report

    @property
    def draining(self) -> bool:
        drain = self._drain_thread
        return drain is not None and drain.is_alive()

    def start_drain(self) -> None:
        """Dispatch everything due, batch after batch, in a background thread; progress in
        ``status().current_run``, ``stop_drain()`` ends it after the batch in hand."""
        with self._lock:
            if self.running or self.draining or self._manual.is_set():
                raise AdminActionError("the dispatcher is already running; it ticks by itself")
            self.dispatcher.clear_stop()
            with self._tick_done:
                self._current_run = DispatchReport()
            self._drain_thread = threading.Thread(target=self._drain_all, name="outbox-drain", daemon=True)
            self._drain_thread.start()

    def stop_drain(self, wait: bool = True) -> None:
        """End a drain after the batch in hand (its unhandled events are released)."""
        drain = self._drain_thread
        if drain is None:
            return
        self.dispatcher.request_stop()
        if wait:
            drain.join()

    def _drain_all(self) -> None:
        started = dt.datetime.now(dt.UTC)
        report, error = DispatchReport(), None
        try:
            report = self.dispatcher.drain(max_seconds=None, on_tick=self._batch_done)
        except Exception as exc:  # noqa: BLE001 - recorded in status()
            error = _error_line(exc)
            log.warning("outbox drain failed: %s", error)
        finally:
            self.dispatcher.clear_stop()
        self._record(started, report, error, finished=True)

    def wait_for_tick(self, after: int, timeout: float) -> bool:
        """Block until more than ``after`` ticks have run (for tests and scripts)."""
        with self._tick_done:
            return self._tick_done.wait_for(lambda: self._ticks > after, timeout=timeout)

    # -- the worker ------------------------------------------------------------------

    def _work(self) -> None:
        """The worker thread: wait for a wake-up, the scheduled run or a breaker's probe; tick; repeat."""
        while True:
            woken = self._wake_pending.wait(self.dispatcher.seconds_to_next_probe())
            if self._closing.is_set():
                return
            if not woken:
                self._scheduled = True  # a probe is due: tick as a scheduled run would
            self._tick()

    def _tick(self) -> str | None:
        """One run: drain, again while wake-ups arrived meanwhile; returns the error, if any.

        Status is updated after every batch and every drain, so a run that goes on for
        minutes under continuous load still reports its progress.
        """
        started = dt.datetime.now(dt.UTC)
        report = DispatchReport()
        error: str | None = None
        with self._tick_done:
            self._current_run = DispatchReport()
        try:
            while True:
                woken = self._wake_pending.is_set() and not self._scheduled
                self._scheduled = False
                self._wake_pending.clear()
                drained = self._drain()
                report = report + drained
                if woken and drained.claimed == 0:
                    # The signal may have come just before the commit became visible: look again
                    # shortly, or at once when the next signal (NOTIFY, after_commit) arrives.
                    for pause in WAKE_RECHECK_SECONDS:
                        if self._wake_pending.wait(pause):
                            break
                        drained = self._drain()
                        report = report + drained
                        if drained.claimed:
                            break
                if not self._wake_pending.is_set() or self.dispatcher.stopping:
                    break
                self._record(started, report, None, finished=False)
        except Exception as exc:  # noqa: BLE001 - recorded in status(); the next tick tries again
            error = _error_line(exc)
            log.warning("outbox dispatcher tick failed: %s", error)
            self._wake_pending.clear()  # a failed tick is not retried at once; the next wake-up or run is
        self._record(started, report, error, finished=True)
        listener = self._listener
        if error is None and listener is not None and not listener.connected:
            listener.retry_now()  # the database answers again: LISTEN should not wait out its backoff
        return error

    def _drain(self) -> DispatchReport:
        return self.dispatcher.drain(max_seconds=self.drain_seconds, on_tick=self._batch_done)

    def _batch_done(self, batch: DispatchReport) -> None:
        with self._tick_done:
            self._last_tick_at = dt.datetime.now(dt.UTC)
            self._totals = self._totals + batch
            self._current_run = (self._current_run or DispatchReport()) + batch

    def _record(self, started: dt.datetime, report: DispatchReport, error: str | None, *, finished: bool) -> None:
        """Publish a run's result to ``status()``: after each drain of a long run, and at its end."""
        with self._tick_done:
            self._last_report = report
            self._ticks += 1
            if finished:
                self._current_run = None
            if error is not None:
                now = dt.datetime.now(dt.UTC)
                self._failed_ticks += 1
                self._last_error = error
                self._last_error_at = now
                self._recent_errors.append((now, error))
            else:
                self._last_error = None
                if self._last_tick_at is None or self._last_tick_at < started:
                    self._last_tick_at = started
            self._tick_done.notify_all()

    def _on_job_error(self, event: JobExecutionEvent) -> None:  # pragma: no cover - _tick catches everything
        log.error("outbox dispatcher job raised: %r", event.exception)

    # -- status ----------------------------------------------------------------------

    def status(self) -> ServiceStatus:
        next_tick = None
        scheduler = self._scheduler
        if scheduler is not None and scheduler.running:
            job = scheduler.get_job(JOB_ID)
            next_tick = job.next_run_time if job is not None else None
        with self._tick_done:
            return ServiceStatus(
                running=self.running,
                draining=self.draining,
                dispatcher=self.dispatcher.name,
                interval_seconds=self.interval_seconds,
                last_tick_at=self._last_tick_at,
                last_report=self._last_report,
                next_tick_at=next_tick,
                last_error=self._last_error,
                last_error_at=self._last_error_at,
                ticks=self._ticks,
                failed_ticks=self._failed_ticks,
                totals=self._totals,
                listening=self._listener is not None and self._listener.connected,
                current_run=self._current_run,
                recent_errors=tuple(self._recent_errors),
                handlers=tuple(self.dispatcher.handler_health()),
            )

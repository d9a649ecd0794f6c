"""The dispatcher's observer hooks (outbox_admin.observe): what metrics, traces and logs are built on."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine

from outbox_admin import Dispatcher
from outbox_admin.dispatcher import DispatchReport
from outbox_admin.handlers.base import DeliveredEvent, RecordingHandler
from outbox_admin.observe import DeliveryAttempt, DispatchObserver, EventResult

from .sinks_support import NO_WAIT, publish_demo


class Recorder(DispatchObserver):
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.inside: str | None = None  # the handler whose delivery is open

    @contextmanager
    def delivering(self, handler: str, events: Sequence[DeliveredEvent]) -> Iterator[None]:
        self.calls.append(("enter", (handler, [e.id for e in events])))
        self.inside = handler
        yield
        self.inside = None
        self.calls.append(("exit", handler))

    def delivered(self, attempts: Sequence[DeliveryAttempt]) -> None:
        assert self.inside == attempts[0].handler  # inside the delivery's context
        self.calls.append(("delivered", [(a.event.id, a.handler, a.error is None, a.seconds >= 0) for a in attempts]))

    def finished(self, results: Sequence[EventResult], report: DispatchReport) -> None:
        self.calls.append(("finished", ([(r.event.id, r.outcome) for r in results], report.claimed)))


class Broken(DispatchObserver):
    """An observer whose every hook raises: the dispatch must go on as if it were not there."""

    @contextmanager
    def delivering(self, handler: str, events: Sequence[DeliveredEvent]) -> Iterator[None]:
        yield
        raise RuntimeError("exit hook broken")

    def delivered(self, attempts: Sequence[DeliveryAttempt]) -> None:
        raise RuntimeError("delivered hook broken")

    def finished(self, results: Sequence[EventResult], report: DispatchReport) -> None:
        raise RuntimeError("finished hook broken")


class FailsFirst:
    """Fails the first event it sees once; a batch handler, so one call takes the batch."""

    name = "batcher"

    def __init__(self) -> None:
        self.failed: set[str] = set()

    def handle_batch(self, events: Sequence[DeliveredEvent]) -> Mapping[str, BaseException]:
        first = events[0].id
        if first in self.failed:
            return {}
        self.failed.add(first)
        return {first: ValueError("refused once")}


def test_observers_see_each_call_its_attempts_and_each_tick_outcome(engine: Engine) -> None:
    ids = [e["id"] for e in publish_demo(engine, 3)]
    recorder = Recorder()
    single, batch = RecordingHandler(name="single"), FailsFirst()
    dispatcher = Dispatcher(engine, [single, batch], backoff=NO_WAIT, observers=[recorder])
    report = dispatcher.dispatch_once()
    assert (report.completed, report.retried) == (2, 1)
    kinds = [kind for kind, _ in recorder.calls]
    # the batch handler: one call for the batch; the single handler: one call per event
    assert kinds == ["enter", "delivered", "exit"] * 4 + ["finished"]
    assert recorder.calls[0] == ("enter", ("batcher", ids))
    assert recorder.calls[1][1] == [(ids[0], "batcher", False, True), (ids[1], "batcher", True, True)] + [
        (ids[2], "batcher", True, True)
    ]
    assert [c[1] for c in recorder.calls if c[0] == "enter"][1:] == [("single", [i]) for i in ids]
    results, claimed = recorder.calls[-1][1]
    assert claimed == 3
    assert sorted(results) == sorted([(ids[0], "retried"), (ids[1], "completed"), (ids[2], "completed")])
    # the retry runs only the handler that failed
    recorder.calls.clear()
    dispatcher.dispatch_once()
    assert recorder.calls[0] == ("enter", ("batcher", [ids[0]]))
    assert recorder.calls[-1] == ("finished", ([(ids[0], "completed")], 1))


def test_a_tick_with_nothing_to_do_is_still_reported(engine: Engine) -> None:
    recorder = Recorder()
    Dispatcher(engine, [RecordingHandler()], observers=[recorder]).dispatch_once()
    assert recorder.calls == [("finished", ([], 0))]


def test_a_broken_observer_never_stops_a_delivery(engine: Engine) -> None:
    ids = [e["id"] for e in publish_demo(engine, 2)]
    handler = RecordingHandler()
    recorder = Recorder()
    report = Dispatcher(engine, [handler, FailsFirst()], backoff=NO_WAIT, observers=[Broken(), recorder]).drain()
    assert report.completed == 2 and sorted(handler.ids) == sorted(ids)
    assert [c for c in recorder.calls if c[0] == "finished"][-1][1] == ([], 0)  # the observer after it still runs


def test_an_observer_added_later_sees_the_next_ticks_once(engine: Engine) -> None:
    recorder = Recorder()
    dispatcher = Dispatcher(engine, [RecordingHandler()])
    assert dispatcher.observers == ()
    dispatcher.add_observer(recorder)
    dispatcher.add_observer(recorder)  # added once
    assert dispatcher.observers == (recorder,)
    [event] = [e["id"] for e in publish_demo(engine, 1)]
    dispatcher.dispatch_once()
    assert [c for c in recorder.calls if c[0] == "finished"] == [("finished", ([(event, "completed")], 1))]

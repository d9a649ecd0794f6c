from __future__ import annotations

import threading

import pytest

from outbox_admin import MessageBus, emit_message_bus_event, subscribe
from outbox_admin.bus import BusMessage, default_bus


def test_subscribe_emit_and_unsubscribe() -> None:
    bus = MessageBus()
    seen: list[BusMessage] = []
    unsubscribe = bus.subscribe("PROJECT.CREATED", seen.append)
    assert bus.emit("PROJECT.CREATED", {"id": 1}) == 1
    assert bus.emit("PROJECT.UPDATED", {"id": 1}) == 0
    unsubscribe()
    unsubscribe()  # twice is harmless
    assert bus.emit("PROJECT.CREATED", {"id": 2}) == 0
    assert [(m.event_type, m.payload) for m in seen] == [("PROJECT.CREATED", {"id": 1})]


def test_wildcard_and_patterns() -> None:
    bus = MessageBus()
    everything: list[str] = []
    projects: list[str] = []
    bus.subscribe("*", lambda m: everything.append(m.event_type))
    bus.subscribe("PROJECT.*", lambda m: projects.append(m.event_type))
    bus.emit("PROJECT.CREATED")
    bus.emit("BUDGET.UPDATED")
    assert everything == ["PROJECT.CREATED", "BUDGET.UPDATED"]
    assert projects == ["PROJECT.CREATED"]
    assert bus.subscriber_count("PROJECT.CREATED") == 2
    assert bus.subscriber_count() == 2


def test_failing_subscribers_do_not_stop_the_others() -> None:
    bus = MessageBus()
    seen: list[int] = []

    def boom(message: BusMessage) -> None:
        raise ValueError("first")

    def bang(message: BusMessage) -> None:
        raise KeyError("second")

    bus.subscribe("PROJECT.CREATED", boom)
    bus.subscribe("PROJECT.CREATED", lambda m: seen.append(m.payload))
    bus.subscribe("PROJECT.CREATED", bang)
    with pytest.raises(ExceptionGroup) as info:
        bus.emit("PROJECT.CREATED", 7)
    assert seen == [7]
    assert [type(e) for e in info.value.exceptions] == [ValueError, KeyError]


def test_subscribe_while_emitting_from_many_threads() -> None:
    bus = MessageBus()
    counter = []
    lock = threading.Lock()

    def count(message: BusMessage) -> None:
        with lock:
            counter.append(1)

    bus.subscribe("*", count)

    def churn() -> None:
        for _ in range(200):
            bus.subscribe("OTHER.EVENT", count)()

    def emit() -> None:
        for _ in range(500):
            bus.emit("PROJECT.CREATED")

    threads = [threading.Thread(target=churn) for _ in range(2)] + [threading.Thread(target=emit) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(counter) == 2000
    assert bus.subscriber_count() == 1


def test_default_bus_helpers_mirror_the_original_hook() -> None:
    seen: list[object] = []
    unsubscribe = subscribe("PROJECT.UPDATED", lambda m: seen.append(m.payload))
    try:
        assert emit_message_bus_event("PROJECT.UPDATED", {"name": "x"}) >= 1
    finally:
        unsubscribe()
    assert seen == [{"name": "x"}]
    assert default_bus.subscriber_count("PROJECT.UPDATED") == 0

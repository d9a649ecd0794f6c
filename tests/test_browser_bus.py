"""The browser message bus: the feed, the SSE stream on a real uvicorn server, resuming, several processes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from outbox_admin import make_engine
from outbox_admin.models import DEFAULT_TABLES
from outbox_admin.web import RESYNC_EVENT, BrowserBusSink, Subscriber
from outbox_admin.web.feed import _lock_key, latest_seq
from outbox_admin.web.follower import DROPPED, FeedFollower

from .bus_support import SseReader, bus_server, dispatch_feed
from .services import free_port, port_open
from .sinks_support import publish_demo, received

FEED = DEFAULT_TABLES.bus_feed
REPO = Path(__file__).resolve().parent.parent


def stream_url(base: str, org: str, types: str | None = None, **extra: str) -> str:
    query = {"org": org, **({"types": types} if types else {}), **extra}
    return f"{base}/stream?" + "&".join(f"{k}={v}" for k, v in query.items())


def test_each_org_gets_only_its_own_events_of_the_types_it_asked_for(engine: Engine) -> None:
    with bus_server(engine) as bus:
        alpha_all = SseReader(stream_url(bus.base, "alpha"))
        alpha_created = SseReader(stream_url(bus.base, "alpha", "PROJECT.CREATED"))
        beta = SseReader(stream_url(bus.base, "beta", "PROJECT.*"))
        limited = SseReader(stream_url(bus.base, "beta", only="PROJECT.UPDATED"))
        try:
            for reader in (alpha_all, alpha_created, beta, limited):
                assert reader.status == 200
            _wait_for_subscribers(bus, 4)
            alpha = publish_demo(engine, 4, org_id="alpha", prefix="a")
            betas = publish_demo(engine, 2, org_id="beta", prefix="b")
            assert dispatch_feed(engine) == 6
            got = alpha_all.take(4)
            assert [received(e.envelope) for e in got] == alpha
            assert [(e.id, e.event) for e in got] == [(a["id"], a["type"]) for a in alpha]
            assert [e.id for e in alpha_created.take(2)] == [a["id"] for a in alpha if a["type"] == "PROJECT.CREATED"]
            assert [received(e.envelope) for e in beta.take(2)] == betas
            assert [e.id for e in limited.take(1)] == [b["id"] for b in betas if b["type"] == "PROJECT.UPDATED"]
            for reader in (alpha_all, alpha_created, beta, limited):
                reader.nothing_more(0.3)  # never another org's event, never a type it did not ask for
        finally:
            for reader in (alpha_all, alpha_created, beta, limited):
                reader.close()


def _wait_for_subscribers(bus: object, count: int, timeout: float = 10.0) -> None:
    follower: FeedFollower = bus.app.state.follower  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    while follower.subscriber_count() < count:
        assert time.monotonic() < deadline, f"{follower.subscriber_count()} of {count} streams registered"
        time.sleep(0.01)


def test_an_event_reaches_the_browser_within_a_second_of_its_dispatch(engine: Engine) -> None:
    with bus_server(engine) as bus:
        reader = SseReader(stream_url(bus.base, "org-1"))
        try:
            _wait_for_subscribers(bus, 1)
            (event,) = publish_demo(engine, 1)
            assert dispatch_feed(engine) == 1
            dispatched = time.monotonic()
            assert reader.next(timeout=1.0).id == event["id"]
            assert time.monotonic() - dispatched < 1.0
        finally:
            reader.close()


def test_refusals_unauthorized_bad_types_and_a_bad_last_event_id(engine: Engine) -> None:
    import httpx

    with bus_server(engine) as bus:
        assert httpx.get(f"{bus.base}/stream").status_code == 401
        bad = httpx.get(stream_url(bus.base, "o", "PROJECT.[oops"))
        assert bad.status_code == 400 and "never closed" in bad.text
        many = httpx.get(stream_url(bus.base, "o", ",".join(f"T{i}" for i in range(40))))
        assert many.status_code == 400 and "at most 32" in many.text
        hostile = httpx.get(stream_url(bus.base, "o"), headers={"Last-Event-ID": "x" * 500})
        assert hostile.status_code == 400


def test_a_dropped_connection_resumes_with_last_event_id_every_event_once_in_order(engine: Engine) -> None:
    with bus_server(engine) as bus:
        first = SseReader(stream_url(bus.base, "org-1"))
        _wait_for_subscribers(bus, 1)
        before = publish_demo(engine, 3, prefix="before")
        dispatch_feed(engine)
        seen = first.take(3)
        first.close()  # the connection drops
        _wait_for_subscribers_gone(bus)
        missed = publish_demo(engine, 5, prefix="missed")
        dispatch_feed(engine)
        again = SseReader(stream_url(bus.base, "org-1"), headers={"Last-Event-ID": seen[-1].id or ""})
        try:
            got = again.take(5)
            assert [e.id for e in got] == [m["id"] for m in missed], "each missed event once, in order"
            live = publish_demo(engine, 2, prefix="live")
            dispatch_feed(engine)
            assert [e.id for e in again.take(2)] == [e["id"] for e in live]
            again.nothing_more(0.3)
            assert {e.id for e in seen} == {b["id"] for b in before}
        finally:
            again.close()


def _wait_for_subscribers_gone(bus: object, timeout: float = 10.0) -> None:
    follower: FeedFollower = bus.app.state.follower  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    while follower.subscriber_count():
        assert time.monotonic() < deadline, "the dropped stream was never unregistered"
        time.sleep(0.01)


def test_the_query_parameter_resumes_as_the_header_does_and_an_unknown_id_asks_for_a_resync(engine: Engine) -> None:
    with bus_server(engine) as bus:
        events = publish_demo(engine, 3)
        dispatch_feed(engine)
        resumed = SseReader(stream_url(bus.base, "org-1", lastEventId=events[0]["id"]))
        unknown = {"Last-Event-ID": "0190f3a2-0000-7000-8000-000000000000"}
        lost = SseReader(stream_url(bus.base, "org-1"), headers=unknown)
        try:
            assert [e.id for e in resumed.take(2)] == [e["id"] for e in events[1:]]
            note = lost.next()
            assert note.event == RESYNC_EVENT and note.id is None
            assert "replay window" in note.envelope["reason"]
            lost.nothing_more(0.3)  # then live only: the earlier events are not sent
        finally:
            resumed.close()
            lost.close()


def test_heartbeats_keep_an_idle_stream_talking(engine: Engine) -> None:
    with bus_server(engine, heartbeat_seconds=0.2) as bus:
        reader = SseReader(stream_url(bus.base, "org-1"))
        try:
            assert reader.comments.get(timeout=5).startswith("ping")
        finally:
            reader.close()


def test_a_stream_that_falls_behind_is_dropped_not_buffered(engine: Engine) -> None:
    """A subscription whose browser does not read holds at most its limit; then it is dropped (the browser
    reconnects and resumes from its last id)."""
    follower = FeedFollower(engine, poll_seconds=0.05)

    async def run() -> tuple[int, bool, object]:
        await asyncio.to_thread(follower.start)
        subscription = follower.subscribe(lambda row: True, limit=3)
        publish_demo(engine, 10)
        await asyncio.to_thread(dispatch_feed, engine)
        deadline = time.monotonic() + 10
        while not subscription.dropped and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        items = []
        while not subscription.queue.empty():
            items.append(subscription.queue.get_nowait())
        return len(items), subscription.dropped, items[-1] if items else "empty"

    try:
        count, dropped, last = asyncio.run(run())
    finally:
        follower.close()
    assert dropped and last is DROPPED
    assert count <= 4, "never more than its limit queued"


def test_the_sink_prunes_rows_older_than_its_window(engine: Engine) -> None:
    import datetime as dt

    publish_demo(engine, 2)
    dispatch_feed(engine)
    with engine.begin() as conn:
        conn.execute(FEED.update().values(fed_at=dt.datetime(2020, 1, 1, tzinfo=dt.UTC)))
    fresh = publish_demo(engine, 1)
    from outbox_admin import Dispatcher

    with Dispatcher(engine, [BrowserBusSink(engine)], breaker=None) as dispatcher:
        dispatcher.drain(max_seconds=10)
    with engine.connect() as conn:
        assert list(conn.execute(select(FEED.c.event_id)).scalars()) == [fresh[0]["id"]]


def test_subscriber_and_sink_refuse_bad_configuration(engine: Engine) -> None:
    import datetime as dt

    from outbox_admin.errors import ConfigurationError, FilterError

    with pytest.raises(ConfigurationError):
        Subscriber(org_id="")
    with pytest.raises(FilterError):
        Subscriber(org_id="o", event_types=("PROJECT.[",))
    with pytest.raises(ConfigurationError):
        BrowserBusSink(engine, replay_window=dt.timedelta(0))


@pytest.mark.postgres
def test_a_feed_write_waits_for_the_one_in_progress_so_seq_follows_commit_order(postgres_url: str) -> None:
    """Two writers: the second draws its seq only after the first committed, so a reader at ``seq > last`` can
    never see a later row before an earlier one commits."""
    engine = make_engine(postgres_url)
    try:
        publish_demo(engine, 1)
        holder = engine.connect()
        transaction = holder.begin()
        holder.exec_driver_sql("SELECT pg_advisory_xact_lock(%(key)s)", {"key": _lock_key(DEFAULT_TABLES)})
        done = threading.Event()
        worker = threading.Thread(target=lambda: (dispatch_feed(engine), done.set()), daemon=True)
        worker.start()
        assert not done.wait(0.5), "the feed write did not wait for the writer before it"
        with engine.connect() as conn:
            assert latest_seq(conn) == 0
        transaction.commit()
        holder.close()
        assert done.wait(10)
        with engine.connect() as conn:
            assert latest_seq(conn) >= 1
    finally:
        engine.dispose()


@pytest.mark.postgres
@pytest.mark.slow
def test_two_web_processes_and_a_dispatcher_process_on_postgres(postgres_url: str) -> None:
    engine = make_engine(postgres_url)
    ports = [free_port(), free_port()]
    processes = [
        subprocess.Popen([sys.executable, "-m", "tests.bus_support", "serve", postgres_url, str(p)], cwd=REPO)
        for p in ports
    ]
    dispatcher = subprocess.Popen(
        [sys.executable, "-m", "tests.bus_support", "dispatch", postgres_url],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    readers: list[SseReader] = []
    try:
        assert dispatcher.stdout is not None and dispatcher.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 20
        while any(port_open("127.0.0.1", p) is not None for p in ports):
            assert time.monotonic() < deadline, "the web processes did not start"
            time.sleep(0.05)
        readers = [SseReader(stream_url(f"http://127.0.0.1:{p}", "org-1")) for p in ports]
        # A stream's response starts once it is registered with its process's follower: nothing is missed.
        first = publish_demo(engine, 3)  # the dispatcher process is woken by NOTIFY
        for reader in readers:
            got = reader.take(3, timeout=10)
            assert [e.id for e in got] == [e["id"] for e in first]
        readers[0].close()
        missed = publish_demo(engine, 4, prefix="m")
        assert [e.id for e in readers[1].take(4, timeout=10)] == [e["id"] for e in missed]
        resumed = SseReader(
            stream_url(f"http://127.0.0.1:{ports[1]}", "org-1"), headers={"Last-Event-ID": first[-1]["id"]}
        )
        readers.append(resumed)
        assert [e.id for e in resumed.take(4, timeout=10)] == [e["id"] for e in missed], "resumed on the other process"
    finally:
        for reader in readers:
            reader.close()
        for process in [*processes, dispatcher]:
            process.terminate()
        for process in [*processes, dispatcher]:
            process.wait(timeout=10)
        if dispatcher.stdout is not None:
            dispatcher.stdout.close()
        engine.dispose()

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from outbox_admin import publish_outbox_event
from outbox_admin.wakeup import NOTIFY_CHANNEL, WakeSignal, wake_key, wake_signal


def publish(tx) -> None:
    publish_outbox_event(tx, org_id="o", event_type="PROJECT.CREATED", entity_type="Project", entity_id="1")


def key(engine: Engine) -> str:
    return wake_key(engine.url)


def test_wake_signal_calls_listeners_of_one_url_and_survives_failures() -> None:
    signal = WakeSignal()
    calls: list[str] = []
    signal.listen("db-a", lambda: calls.append("a"))
    signal.listen("db-a", lambda: 1 / 0)
    remove_b = signal.listen("db-b", lambda: calls.append("b"))
    assert signal.notify("db-a") == 2
    remove_b()
    assert signal.notify("db-b") == 0
    assert calls == ["a"]


def test_session_commit_wakes_once_and_rollback_does_not(engine: Engine) -> None:
    woken = threading.Event()
    count: list[int] = []
    remove = wake_signal.listen(key(engine), lambda: (count.append(1), woken.set()))
    try:
        with Session(engine) as session:
            with session.begin():
                publish(session)
                publish(session)
                assert count == []  # nothing before the commit
            assert woken.is_set() and count == [1]
            with pytest.raises(RuntimeError), session.begin():
                publish(session)
                raise RuntimeError("abort")
            assert count == [1]
            with session.begin():
                publish(session)
            assert count == [1, 1]
    finally:
        remove()


def test_connection_commit_wakes(engine: Engine) -> None:
    count: list[int] = []
    remove = wake_signal.listen(key(engine), lambda: count.append(1))
    try:
        with engine.begin() as conn:
            publish(conn)
        with engine.connect() as conn:
            with conn.begin() as tx:
                publish(conn)
                tx.rollback()
            with conn.begin():
                publish(conn)
        assert count == [1, 1]
    finally:
        remove()


def _listen(url: str) -> psycopg.Connection:
    conn = psycopg.connect(url.replace("postgresql+psycopg", "postgresql"), autocommit=True)
    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
    return conn


def test_postgres_notify_is_delivered_on_commit_only(postgres_url: str) -> None:
    from outbox_admin import make_engine

    engine = make_engine(postgres_url)
    listener = _listen(postgres_url)
    try:
        with engine.connect() as conn, conn.begin() as tx:
            publish(conn)
            tx.rollback()
        assert list(listener.notifies(timeout=0.3, stop_after=1)) == []
        started = time.perf_counter()
        with engine.begin() as conn:
            publish(conn)
            publish(conn)
        received = list(listener.notifies(timeout=5, stop_after=1))
        assert [n.channel for n in received] == [NOTIFY_CHANNEL]
        assert time.perf_counter() - started < 5
        assert list(listener.notifies(timeout=0.3, stop_after=1)) == []  # one per transaction
    finally:
        listener.close()
        engine.dispose()

"""Leases are renewed while handlers work: a slow batch is never handed to a second dispatcher.

Real time, short leases (1.2 s, renewed every 0.4 s), on SQLite and PostgreSQL; a
second dispatcher ticks all the while, looking for expired leases to recover.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

from sqlalchemy import Engine, func, select

from outbox_admin import Dispatcher, publish_outbox_event
from outbox_admin.handlers.base import DeliveredEvent
from outbox_admin.models import DEFAULT_TABLES

EV, TR = DEFAULT_TABLES.events, DEFAULT_TABLES.transitions
LEASE = 1.2


class SlowHandler:
    """Holds each delivery until released (or ``hold`` seconds pass); counts deliveries per event."""

    name = "slow"

    def __init__(self, hold: float) -> None:
        self.hold = hold
        self.started = threading.Event()
        self.release = threading.Event()
        self.calls: Counter[str] = Counter()
        self.lock = threading.Lock()

    def __call__(self, event: DeliveredEvent) -> None:
        with self.lock:
            self.calls[event.id] += 1
        self.started.set()
        self.release.wait(self.hold)


def publish(engine: Engine, count: int) -> list[str]:
    with engine.begin() as conn:
        return [
            publish_outbox_event(
                conn, org_id="org-1", event_type="PROJECT.CREATED", entity_type="Project", entity_id=f"p-{i}"
            ).id
            for i in range(count)
        ]


def run_slow_batch(engine: Engine, *, heartbeat: bool) -> tuple[SlowHandler, int, list[int]]:
    """Dispatcher A works on a batch for 3 leases while B ticks; returns A's handler, B's claims, recoveries."""
    publish(engine, 3)
    slow = SlowHandler(hold=3 * LEASE)
    a = Dispatcher(engine, [slow], lease_seconds=LEASE, name="A")
    if not heartbeat:
        a._lease_keeper.interval = 3600  # the old behaviour: the lease runs out mid-batch
    # B's deliveries count with A's but do not hold: a takeover shows at once, without B waiting 3 leases per event.
    quick = SlowHandler(hold=0)
    quick.calls, quick.lock = slow.calls, slow.lock
    b = Dispatcher(engine, [quick], lease_seconds=LEASE, name="B")
    b.recover_every_seconds = 0  # look for expired leases on every tick
    worker = threading.Thread(target=a.dispatch_once)
    worker.start()
    assert slow.started.wait(10), "A never started handling"
    claimed_by_b = 0
    recovered: list[int] = []
    deadline = time.monotonic() + 3 * LEASE
    while time.monotonic() < deadline:
        report = b.dispatch_once()
        claimed_by_b += report.claimed
        recovered.append(report.recovered)
        if claimed_by_b and not heartbeat:
            break  # the control has seen the takeover it exists to show
        time.sleep(0.05)  # pacing the poll, not synchronisation
    slow.release.set()
    worker.join(30)
    a.close()
    b.close()
    return slow, claimed_by_b, recovered


def test_a_batch_slower_than_its_lease_is_delivered_once(engine: Engine) -> None:
    slow, claimed_by_b, recovered = run_slow_batch(engine, heartbeat=True)
    assert claimed_by_b == 0 and sum(recovered) == 0, "B must not take over A's live batch"
    assert all(n == 1 for n in slow.calls.values()) and len(slow.calls) == 3
    with engine.connect() as conn:
        assert conn.execute(select(EV.c.status, func.count()).group_by(EV.c.status)).all() == [("COMPLETED", 3)]
        expired = conn.execute(select(func.count()).where(TR.c.error_message.like("lease expired%"))).scalar_one()
    assert expired == 0


def test_without_the_heartbeat_the_batch_is_taken_over(engine: Engine) -> None:
    """The control: the same run with renewals off loses the batch to B (so the test above can fail)."""
    slow, claimed_by_b, recovered = run_slow_batch(engine, heartbeat=False)
    assert sum(recovered) >= 1
    assert max(slow.calls.values()) >= 2 or claimed_by_b >= 1


def test_renewals_stop_when_the_batch_is_finished(engine: Engine) -> None:
    publish(engine, 2)
    slow = SlowHandler(hold=LEASE)  # one lease long: at least two renewals (every 0.4 s)
    d = Dispatcher(engine, [slow], lease_seconds=LEASE)
    report = d.dispatch_once()
    assert report.completed == 2
    renewals = d._lease_keeper.renewals
    assert renewals >= 2
    assert d._lease_keeper.holding == 0
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).where(EV.c.locked_by.is_not(None))).scalar_one() == 0
    d.close()

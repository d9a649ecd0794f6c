"""The rollup (``outbox_admin.stats``) against the events table it counts, on SQLite and PostgreSQL.

The events go through the real writers (publisher, dispatcher with failing handlers and
an expired lease, requeue, discard, purge); after each mix the rollup must say exactly
what counting the events table says: per minute and type, every status, retry count and
latency bucket.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import Engine, insert, select, text

from outbox_admin import Dispatcher, analytics, demo, init_db, make_engine, publish_outbox_event, stats
from outbox_admin.admin import discard, purge, recover_expired, requeue
from outbox_admin.dispatcher import Backoff
from outbox_admin.migrate import upgrade
from outbox_admin.models import DEFAULT_TABLES, STATS_RETRY_BUCKETS

EVENTS = DEFAULT_TABLES.events
STATS = DEFAULT_TABLES.stats
TYPES = ("PROJECT.CREATED", "PROJECT.UPDATED", "PROJECT.ARCHIVED")
NO_WAIT = Backoff(base=0, jitter=0)


def publish(engine: Engine, count: int, start: int = 0) -> list[str]:
    demo.ensure_demo_event_types()  # PROJECT.ARCHIVED
    with engine.begin() as conn:
        return [
            publish_outbox_event(
                conn,
                org_id=f"org-{i % 3}",
                event_type=TYPES[i % len(TYPES)],
                entity_type="Project",
                entity_id=str(i),
                payload={"i": i},
            ).id
            for i in range(start, start + count)
        ]


def flaky(event: Any) -> None:
    """Entity ids ending in 3 always fail, those ending in 7 fail their first attempt."""
    if event.entity_id.endswith("3") or (event.entity_id.endswith("7") and event.retry_count == 0):
        raise ConnectionError(f"webhook: refused for {event.entity_id}")


def minute(value: dt.datetime) -> dt.datetime:
    return value.astimezone(dt.UTC).replace(second=0, microsecond=0)


def counted_from_events(engine: Engine) -> Counter[tuple[Any, ...]]:
    """What the rollup should hold, counted from the events table: per (minute, type), each counter."""
    found: Counter[tuple[Any, ...]] = Counter()
    with engine.connect() as conn:
        columns = ("created_at", "processed_at", "event_type", "status", "retry_count")
        rows = conn.execute(select(*(EVENTS.c[c] for c in columns))).all()
    for created, processed, event_type, status, retries in rows:
        if status not in stats.COUNTED:
            continue
        key = (minute(created), event_type)
        found[(*key, status.lower())] += 1
        found[(*key, f"{stats.COUNTED[status]}{stats.retry_bucket(retries):02d}")] += 1
        if status == "COMPLETED":
            found[(*key, f"l{stats.bucket_of(processed - created):02d}")] += 1
    return found


def counted_in_rollup(engine: Engine) -> Counter[tuple[Any, ...]]:
    """The rollup's counters summed over writers and spans, per (minute, type) (minute rows only)."""
    found: Counter[tuple[Any, ...]] = Counter()
    names = [c for c in stats.COUNTER_COLUMNS if c != "latency_sum"]
    with engine.connect() as conn:
        for row in conn.execute(select(STATS.c.period, STATS.c.span, STATS.c.event_type, *(STATS.c[c] for c in names))):
            assert row.span == stats.MINUTE, "compacted rows: compare per minute only before compaction"
            for name in names:
                value = row._mapping[name]
                if value:
                    found[(minute(row.period), row.event_type, name)] += value
    return found


def assert_rollup_matches(engine: Engine) -> None:
    assert +counted_in_rollup(engine) == +counted_from_events(engine)
    totals = analytics.rollup_totals(engine)
    exact = analytics.status_counts(engine)
    assert totals.counts.to_dict("records") == exact.to_dict("records")
    retries = analytics.retry_histogram(engine)
    assert sorted(map(tuple, totals.retries.values.tolist())) == sorted(map(tuple, retries.values.tolist()))


def drain(dispatcher: Dispatcher) -> None:
    deadline = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=60)
    while dispatcher.drain(max_seconds=10).claimed:
        assert dt.datetime.now(dt.UTC) < deadline, "the dispatcher never ran dry"


def test_the_rollup_counts_what_the_events_table_holds_after_every_kind_of_write(engine: Engine) -> None:
    ids = publish(engine, 60)
    assert_rollup_matches(engine)  # nothing finished yet: an empty rollup, PENDING counted live

    dispatcher = Dispatcher(engine, [flaky], max_attempts=2, backoff=NO_WAIT, breaker=None)
    drain(dispatcher)
    assert_rollup_matches(engine)
    with engine.connect() as conn:
        assert {r[0] for r in conn.execute(select(STATS.c.writer).distinct())} == {dispatcher.name}

    # A dispatcher that dies holding a batch: the lease expires and is recovered as a failed attempt.
    publish(engine, 10, start=100)
    gone = Dispatcher(engine, [], lease_seconds=0.001, max_attempts=1, name="gone", breaker=None)
    gone._claim()
    deadline = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=10)
    rescuer = Dispatcher(engine, [flaky], max_attempts=1, name="rescuer", breaker=None)
    while analytics.count_events(engine, status="PROCESSING"):
        assert dt.datetime.now(dt.UTC) < deadline, "the expired leases were never recovered"
        rescuer.recover_expired_leases()
    assert analytics.count_events(engine, status="FAILED") > 0
    assert_rollup_matches(engine)

    # A person's recovery of a dead dispatcher's leases (admin.recover_expired), out of attempts: FAILED.
    publish(engine, 4, start=150)
    Dispatcher(engine, [], lease_seconds=0.001, max_attempts=1, name="gone too", breaker=None)._claim()
    deadline = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=10)
    while analytics.count_events(engine, status="PROCESSING"):
        assert dt.datetime.now(dt.UTC) < deadline, "the expired leases were never recovered"
        recover_expired(engine, max_attempts=1, actor="t")
    assert_rollup_matches(engine)

    failed = list(analytics.events_frame(engine, status="FAILED", limit=1000)["id"])
    requeue(engine, failed[:4], reset_attempts=True, actor="t")
    requeue(engine, failed[4:6], actor="t")
    discard(engine, failed[6:8], reason="known bad", actor="t")
    completed = list(analytics.events_frame(engine, status="COMPLETED", limit=1000)["id"])
    requeue(engine, completed[:3], force=True, actor="t")
    publish(engine, 5, start=200)
    discard(engine, status="PENDING", event_type="PROJECT.ARCHIVED", actor="t")
    assert_rollup_matches(engine)

    drain(Dispatcher(engine, [flaky], max_attempts=3, backoff=NO_WAIT, breaker=None))
    requeue(engine, analytics.events_frame(engine, status="DISCARDED", limit=1)["id"].tolist(), actor="t")
    assert_rollup_matches(engine)

    cutoff = max(analytics.get_event(engine, i)["created_at"] for i in ids[:30])  # type: ignore[index]
    result = purge(engine, cutoff + dt.timedelta(microseconds=1), statuses=("COMPLETED", "DISCARDED", "FAILED"))
    assert result.events > 0
    assert_rollup_matches(engine)


def test_a_window_from_the_rollup_equals_the_window_counted_from_the_events(engine: Engine) -> None:
    publish(engine, 40)
    drain(Dispatcher(engine, [flaky], max_attempts=2, backoff=NO_WAIT, breaker=None))
    publish(engine, 7, start=50)  # unfinished: counted live
    now = dt.datetime.now(dt.UTC)
    window = analytics.rollup_window(engine, now - dt.timedelta(hours=1), "1min", now=now)
    start = window.since
    assert start == minute(now - dt.timedelta(hours=1))
    assert window.completed == analytics.count_events(engine, status="COMPLETED", since=start)
    assert window.failed == analytics.count_events(engine, status="FAILED", since=start)
    frame = analytics.events_frame(engine, since=start, limit=1000)
    by_minute = Counter(minute(t) for t in frame["created_at"].dt.to_pydatetime())
    assert dict(zip(window.throughput["bucket"].dt.to_pydatetime(), window.throughput["published"], strict=True)) == {
        k: v for k, v in by_minute.items()
    }
    assert int(window.throughput["completed"].sum()) == window.completed
    exact = analytics.latency_stats(engine, since=start, by_type=False).iloc[0]
    for q in ("p50", "p95"):
        estimate = getattr(window, f"latency_{q}")
        assert exact[q] / 2**0.5 <= estimate <= exact[q] * 2**0.5, (q, estimate, exact[q])
    assert window.latency_mean == pytest.approx(exact["mean"], rel=1e-6)


def test_compaction_folds_old_rows_and_keeps_every_count(engine: Engine) -> None:
    publish(engine, 30)
    drain(Dispatcher(engine, [flaky], max_attempts=2, backoff=NO_WAIT, breaker=None))
    before = analytics.rollup_totals(engine)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=10)  # everything is old by then
    stats.compact(engine, now=later)
    with engine.connect() as conn:
        spans = Counter(r[0] for r in conn.execute(select(STATS.c.span)))
        writers = {r[0] for r in conn.execute(select(STATS.c.writer))}
    assert set(spans) == {stats.DAY} and writers == {stats.COMPACTED_WRITER}
    after = analytics.rollup_totals(engine)
    assert after.counts.equals(before.counts) and after.retries.equals(before.retries)
    # A window reaching that far back is counted from whole days, and still sees everything.
    window = analytics.rollup_window(engine, later - dt.timedelta(days=10), "1h", now=later)
    assert window.since.hour == 0 and window.bucket == "1d"
    assert window.completed == analytics.count_events(engine, status="COMPLETED")
    stats.compact(engine, now=later)  # nothing left to fold: unchanged
    assert analytics.rollup_totals(engine).counts.equals(before.counts)


def test_rebuild_recounts_events_written_around_the_library(engine: Engine) -> None:
    publish(engine, 12)
    drain(Dispatcher(engine, [flaky], max_attempts=1, breaker=None))
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:  # an older writer marks events COMPLETED without counting them
        conn.execute(
            insert(EVENTS),
            [
                {
                    "id": f"raw-{i}",
                    "org_id": "o",
                    "event_type": "PROJECT.CREATED",
                    "entity_type": "Project",
                    "entity_id": f"r{i}",
                    "payload": {},
                    "status": "COMPLETED",
                    "retry_count": 0,
                    "created_at": now,
                    "processed_at": now + dt.timedelta(milliseconds=30),
                    "available_at": now,
                }
                for i in range(5)
            ],
        )
    assert analytics.rollup_totals(engine).counts.set_index("status")["count"]["COMPLETED"] == (
        analytics.count_events(engine, status="COMPLETED") - 5
    )
    stats.rebuild(engine)
    assert_rollup_totals_exact(engine)


def assert_rollup_totals_exact(engine: Engine) -> None:
    assert analytics.rollup_totals(engine).counts.equals(analytics.status_counts(engine))


def test_migration_0005_counts_the_events_already_there(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE {engine.dialect.identifier_preparer.format_table(STATS)}")
            conn.exec_driver_sql('DROP TABLE "OutboxEventDelivery"')  # made by 0006, which runs again
            conn.exec_driver_sql('DROP TABLE "OutboxEventBusFeed"')  # made by 0007, likewise
            conn.exec_driver_sql("UPDATE outbox_alembic_version SET version_num = '0003'")
        publish(engine, 20)
        # Dispatched by hand (the rollup does not exist yet): some completed, some dead letters.
        with engine.begin() as conn:
            conn.execute(
                text(
                    "UPDATE \"OutboxEvent\" SET status = CASE WHEN entity_id LIKE '%3' THEN 'FAILED' "
                    "ELSE 'COMPLETED' END, retry_count = CASE WHEN entity_id LIKE '%3' THEN 2 ELSE 0 END, "
                    "processed_at = created_at"
                )
            )
        init_db(engine)
        assert_rollup_matches(engine)
        upgrade(engine, revision="head")  # again: nothing to do
        assert_rollup_matches(engine)
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_dispatchers_side_by_side_write_their_own_rows(postgres_url: str) -> None:
    engine = make_engine(postgres_url)
    try:
        publish(engine, 400)
        dispatchers = [Dispatcher(engine, [flaky], max_attempts=2, backoff=NO_WAIT, breaker=None) for _ in range(3)]
        errors: list[BaseException] = []

        def run(d: Dispatcher) -> None:
            try:
                drain(d)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(d,)) for d in dispatchers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert_rollup_matches(engine)
        with engine.connect() as conn:
            writers = {r[0] for r in conn.execute(select(STATS.c.writer).distinct())}
        assert writers <= {d.name for d in dispatchers} and len(writers) >= 2
    finally:
        engine.dispose()


def test_the_retry_bucket_of_many_retries_is_the_last(engine: Engine) -> None:
    [event_id] = publish(engine, 1)
    with engine.begin() as conn:
        conn.execute(EVENTS.update().values(retry_count=40))

    def fails(event: Any) -> None:
        raise ValueError("no")

    Dispatcher(engine, [fails], max_attempts=41, breaker=None).dispatch_once()
    histogram = analytics.rollup_totals(engine).retries
    assert histogram.to_dict("records") == [{"retry_count": STATS_RETRY_BUCKETS - 1, "status": "FAILED", "count": 1}], (
        event_id
    )


@pytest.mark.parametrize(
    ("histogram", "q", "expected"),
    [
        ([0] * 54, 0.5, None),
        ([0] * 20 + [10] + [0] * 33, 0.5, (stats.LATENCY_BOUNDS[19], stats.LATENCY_BOUNDS[20])),
        ([4] + [0] * 53, 1.0, (0.0, stats.LATENCY_BOUNDS[0])),
        ([0] * 53 + [3], 0.95, (stats.LATENCY_BOUNDS[-1], stats.LATENCY_BOUNDS[-1])),
    ],
)
def test_percentile_lies_in_the_bucket_of_its_rank(histogram: list[int], q: float, expected: Any) -> None:
    value = stats.percentile(histogram, q)
    if expected is None:
        assert value is None
    else:
        assert expected[0] <= value <= expected[1]


def test_percentile_of_two_buckets_follows_the_ranks() -> None:
    histogram = [0] * 54
    fast, slow = stats.bucket_of(dt.timedelta(milliseconds=10)), stats.bucket_of(dt.timedelta(seconds=2.5))
    histogram[fast], histogram[slow] = 90, 10
    assert fast != slow
    p50, p95 = stats.percentile(histogram, 0.5), stats.percentile(histogram, 0.95)
    assert p50 is not None and 0.010 / 2**0.5 <= p50 <= 0.010 * 2**0.5
    assert p95 is not None and 2.5 / 2**0.5 <= p95 <= 2.5 * 2**0.5


def test_windows_are_aligned_so_that_compacted_rows_never_straddle_their_start() -> None:
    now = dt.datetime(2026, 12, 1, 10, 37, 12, tzinfo=dt.UTC)
    assert stats.aligned_since(now - dt.timedelta(hours=1), now) == dt.datetime(2026, 12, 1, 9, 37, tzinfo=dt.UTC)
    assert stats.aligned_since(now - dt.timedelta(days=1), now) == dt.datetime(2026, 11, 30, 10, 37, tzinfo=dt.UTC)
    assert stats.aligned_since(now - dt.timedelta(days=7), now) == dt.datetime(2026, 11, 24, 10, tzinfo=dt.UTC)
    assert stats.aligned_since(now - dt.timedelta(days=9), now) == dt.datetime(2026, 11, 22, tzinfo=dt.UTC)
    cut = stats.cutoffs(now)
    # Hour rows only before 25 hours ago, day rows only before 8 days ago: earlier than any start above.
    assert cut[stats.HOUR] < stats.aligned_since(now - dt.timedelta(days=1), now)
    assert cut[stats.DAY] + dt.timedelta(days=1) <= stats.aligned_since(now - dt.timedelta(days=7), now)

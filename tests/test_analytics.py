"""The read side (``outbox_admin.analytics``) on SQLite and PostgreSQL, against hand-built rows with
known answers: counts, pages, filters, groups, buckets and percentiles.

Rows are inserted with SQLAlchemy Core so every time, status and error is exactly what the test
says; the same assertions run on both databases.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, Text, delete, insert, literal, select

from outbox_admin import analytics
from outbox_admin.errors import FilterError, OutboxError
from outbox_admin.filters import (
    MAX_SEARCH_LENGTH,
    EventFilter,
    as_filter,
    normalize_error,
    normalized_error,
    prepare_connection,
)
from outbox_admin.models import DEFAULT_TABLES, EventStatus

EVENTS = DEFAULT_TABLES.events
TRANSITIONS = DEFAULT_TABLES.transitions
T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
MINUTE = dt.timedelta(minutes=1)
HOUR = dt.timedelta(hours=1)


def sec(seconds: float) -> dt.timedelta:
    return dt.timedelta(seconds=seconds)


def event(
    event_id: str,
    *,
    status: str = "PENDING",
    created: dt.datetime = T0,
    processed: dt.datetime | None = None,
    event_type: str = "PROJECT.CREATED",
    org: str = "org-1",
    entity: tuple[str, str] = ("Project", "p-1"),
    retries: int = 0,
    error: str | None = None,
    available: dt.datetime | None = None,
    payload: Any = None,
) -> dict[str, Any]:
    """One events-table row with every column the analytics read set explicitly."""
    return {
        "id": event_id,
        "org_id": org,
        "event_type": event_type,
        "entity_type": entity[0],
        "entity_id": entity[1],
        "payload": {"id": event_id} if payload is None else payload,
        "status": status,
        "retry_count": retries,
        "error_message": error,
        "created_at": created,
        "processed_at": processed,
        "available_at": available or created,
        "locked_by": None,
        "locked_until": None,
        "idempotency_key": None,
    }


def step(
    event_id: str,
    from_status: str | None,
    to_status: str,
    at: dt.datetime,
    actor: str = "d1",
    attempt: int = 0,
    error: str | None = None,
) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "from_status": from_status,
        "to_status": to_status,
        "at": at,
        "actor": actor,
        "attempt": attempt,
        "error_message": error,
    }


def insert_rows(engine: Engine, events: Sequence[dict[str, Any]], steps: Sequence[dict[str, Any]] = ()) -> None:
    with engine.begin() as conn:
        if events:
            conn.execute(insert(EVENTS), list(events))
        for row in steps:  # one by one: ids follow the list order, which the feed sorts by
            conn.execute(insert(TRANSITIONS).values(**row))


def ids(frame: pd.DataFrame) -> list[str]:
    return list(frame["id"])


def plain(column: pd.Series) -> list[Any]:
    """The column's values with missing ones as None (pandas 3 text columns hold NaN for them)."""
    return [None if pd.isna(v) else v for v in column]


# --- status_counts, events_frame, count_events --------------------------------------------


def test_status_counts_list_every_status_with_zeros(engine: Engine) -> None:
    empty = analytics.status_counts(engine)
    assert list(empty["status"]) == [s.value for s in EventStatus]
    assert list(empty["count"]) == [0, 0, 0, 0, 0]

    insert_rows(
        engine,
        [
            *(event(f"p{i}", status="PENDING") for i in range(3)),
            event("c1", status="COMPLETED", processed=T0 + sec(1)),
            event("f1", status="FAILED", event_type="PROJECT.UPDATED", error="x"),
            event("f2", status="FAILED", error="y"),
        ],
    )
    counts = analytics.status_counts(engine)
    assert dict(zip(counts["status"], counts["count"], strict=True)) == {
        "PENDING": 3,
        "PROCESSING": 0,
        "COMPLETED": 1,
        "FAILED": 2,
        "DISCARDED": 0,
    }
    assert counts["count"].dtype == "int64"
    updated = analytics.status_counts(engine, event_type="PROJECT.UPDATED")
    assert list(updated["count"]) == [0, 0, 0, 1, 0]
    assert analytics.count_events(engine) == 6
    assert analytics.count_events(engine, status="FAILED,PENDING") == 5


def test_events_frame_is_newest_first_and_pages(engine: Engine) -> None:
    rows = [event(f"e{i}", created=T0 + i * MINUTE, payload={"n": i, "tags": ["a", "b"]}) for i in range(7)]
    # Two events created at the same instant: the id breaks the tie, so pages never overlap.
    rows += [event("t-a", created=T0 + 10 * MINUTE), event("t-b", created=T0 + 10 * MINUTE)]
    insert_rows(engine, rows)

    everything = analytics.events_frame(engine)
    assert ids(everything) == ["t-b", "t-a", "e6", "e5", "e4", "e3", "e2", "e1", "e0"]
    assert list(everything.columns) == analytics.EVENT_COLUMNS
    assert str(everything["created_at"].dt.tz) == "UTC"
    assert everything.loc[everything["id"] == "e3", "created_at"].iloc[0] == pd.Timestamp(T0 + 3 * MINUTE)
    assert everything.loc[everything["id"] == "e3", "payload"].iloc[0] == {"n": 3, "tags": ["a", "b"]}

    pages = [ids(analytics.events_frame(engine, limit=3, offset=offset)) for offset in (0, 3, 6, 9)]
    assert pages == [["t-b", "t-a", "e6"], ["e5", "e4", "e3"], ["e2", "e1", "e0"], []]
    last = analytics.events_frame(engine, limit=3, offset=9)
    assert last.empty and list(last.columns) == analytics.EVENT_COLUMNS
    assert analytics.event_ids(engine, limit=2) == ["t-b", "t-a"]

    got = analytics.get_event(engine, "e2")
    assert got is not None and got["payload"] == {"n": 2, "tags": ["a", "b"]}
    assert got["created_at"] == T0 + 2 * MINUTE and got["created_at"].tzinfo is not None
    assert analytics.get_event(engine, "missing") is None


FILTER_ROWS = [
    event("evt-a", status="PENDING", created=T0, entity=("Project", "p-1")),
    event(
        "evt-b",
        status="FAILED",
        event_type="PROJECT.UPDATED",
        created=T0 + HOUR,
        entity=("Project", "p-2"),
        retries=3,
        error="Timeout after 30s on 10.0.0.7",
    ),
    event(
        "evt-c",
        status="COMPLETED",
        org="org-2",
        created=T0 + 2 * HOUR,
        processed=T0 + 2 * HOUR + sec(5),
        entity=("Task", "t-1"),
    ),
    event(
        "evt-d",
        status="PENDING",
        event_type="PROJECT.UPDATED",
        org="org-2",
        created=T0 + 3 * HOUR,
        entity=("Project", "p-1"),
        retries=1,
        error="HTTP 503 from hook",
    ),
    event(
        "evt-e",
        status="DISCARDED",
        event_type="ORDER.PLACED",
        org="org-3",
        created=T0 + 24 * HOUR,
        entity=("Order", "o-9"),
        error="bad payload_v2: 50% of items",
    ),
]


def test_events_frame_filters(engine: Engine) -> None:
    insert_rows(engine, FILTER_ROWS)
    cases: list[tuple[dict[str, Any], list[str]]] = [
        ({}, ["evt-e", "evt-d", "evt-c", "evt-b", "evt-a"]),
        ({"status": "PENDING"}, ["evt-d", "evt-a"]),
        ({"status": "pending, failed"}, ["evt-d", "evt-b", "evt-a"]),
        ({"status": ["COMPLETED", "DISCARDED"]}, ["evt-e", "evt-c"]),
        ({"event_type": "PROJECT.UPDATED"}, ["evt-d", "evt-b"]),
        ({"event_type": ["ORDER.PLACED", "PROJECT.CREATED"]}, ["evt-e", "evt-c", "evt-a"]),
        ({"org_id": "org-2"}, ["evt-d", "evt-c"]),
        ({"org_id": "org-2,org-3"}, ["evt-e", "evt-d", "evt-c"]),
        ({"entity": "Project/p-1"}, ["evt-d", "evt-a"]),
        ({"entity": "Project"}, ["evt-d", "evt-b", "evt-a"]),
        ({"entity": ("Task", "t-1")}, ["evt-c"]),
        ({"entity": ("Order",)}, ["evt-e"]),
        ({"since": T0 + HOUR}, ["evt-e", "evt-d", "evt-c", "evt-b"]),
        ({"until": T0 + 2 * HOUR}, ["evt-b", "evt-a"]),  # until is exclusive
        ({"since": T0 + HOUR, "until": T0 + 3 * HOUR}, ["evt-c", "evt-b"]),
        ({"since": "2026-03-02T10:00:00Z"}, ["evt-e", "evt-d", "evt-c", "evt-b"]),
        ({"since": "2026-03-02T11:00:00+01:00"}, ["evt-e", "evt-d", "evt-c", "evt-b"]),
        ({"since": dt.datetime(2026, 3, 2, 12, 0)}, ["evt-e", "evt-d"]),  # naive means UTC
        ({"since": dt.date(2026, 3, 3)}, ["evt-e"]),
        ({"until": "2026-03-02"}, []),
        ({"search": "EVT-C"}, ["evt-c"]),  # ids, case-insensitive
        ({"search": "o-9"}, ["evt-e"]),  # entity ids
        ({"search": "p-"}, ["evt-d", "evt-b", "evt-a"]),
        ({"search": "timeout"}, ["evt-b"]),  # error messages
        ({"search": "  503 from  "}, ["evt-d"]),
        ({"search": "50%"}, ["evt-e"]),
        ({"search": "%"}, ["evt-e"]),  # a literal percent sign, not "anything"
        ({"search": "_v2"}, ["evt-e"]),
        ({"search": "evt_a"}, []),  # "_" is not "any character"
        ({"search": "D_V2"}, ["evt-e"]),
        ({"search": "evt-%"}, []),
        ({"search": "nothing like it"}, []),
        ({"error_group": normalize_error("Timeout after 1s on 192.168.0.1")}, ["evt-b"]),
        ({"status": "PENDING", "org_id": "org-2"}, ["evt-d"]),
        ({"event_type": "PROJECT.UPDATED", "since": T0 + 2 * HOUR, "search": "hook"}, ["evt-d"]),
    ]
    for loose, expected in cases:
        # As keywords, and as an EventFilter (what the dashboard keeps in its state).
        frame, count = analytics.events_frame(engine, **loose), analytics.count_events(engine, **loose)
        assert (ids(frame), count) == (expected, len(expected)), loose
        built = EventFilter.build(**loose)
        assert ids(analytics.events_frame(engine, built)) == expected, loose
        assert analytics.count_events(engine, built) == len(expected), loose


# --- transitions_frame ------------------------------------------------------------------------


def test_transitions_frame_feed_timeline_and_manual_actions(engine: Engine) -> None:
    insert_rows(
        engine,
        [
            event("ev-a", status="COMPLETED", processed=T0 + sec(5), entity=("Project", "p-7")),
            event("ev-b", status="DISCARDED", event_type="PROJECT.UPDATED", entity=("Task", "t-3")),
        ],
        [
            step("ev-a", None, "PENDING", T0, actor="publisher"),
            step("ev-a", "PENDING", "PROCESSING", T0 + sec(1), attempt=1),
            step("ev-a", "PROCESSING", "FAILED", T0 + sec(2), attempt=1, error="boom"),
            step("ev-a", "FAILED", "PENDING", T0 + sec(3), actor="admin:alice", attempt=1),
            step("ev-b", None, "PENDING", T0 + sec(3.5), actor="publisher"),
            step("ev-a", "PENDING", "PROCESSING", T0 + sec(4), attempt=2),
            step("ev-a", "PROCESSING", "COMPLETED", T0 + sec(5), attempt=2),
            step("ev-b", "PENDING", "DISCARDED", T0 + sec(6), actor="admin:bob", error="discarded: spam"),
            # Near misses for the "manual actions only" view: not the "admin:" prefix.
            step("ev-b", "DISCARDED", "PENDING", T0 + sec(7), actor="administrator"),
            step("ev-b", "PENDING", "DISCARDED", T0 + sec(8), actor="ADMIN:shouty"),
            step("ev-b", "DISCARDED", "DISCARDED", T0 + sec(9), actor="adminXbot"),
        ],
    )
    feed = analytics.transitions_frame(engine)
    assert list(feed.columns) == analytics.TRANSITION_COLUMNS
    assert list(feed["id"]) == sorted(feed["id"], reverse=True) and len(feed) == 11
    assert list(feed["at"])[:3] == [pd.Timestamp(T0 + sec(s)) for s in (9, 8, 7)]
    assert str(feed["at"].dt.tz) == "UTC"
    newest = feed.iloc[0]
    assert (newest["event_id"], newest["event_type"], newest["entity_type"], newest["entity_id"]) == (
        "ev-b",
        "PROJECT.UPDATED",
        "Task",
        "t-3",
    )
    assert list(analytics.transitions_frame(engine, limit=2)["actor"]) == ["adminXbot", "ADMIN:shouty"]

    timeline = analytics.transitions_frame(engine, "ev-a")
    assert list(zip(plain(timeline["from_status"]), timeline["to_status"], strict=True)) == [
        (None, "PENDING"),
        ("PENDING", "PROCESSING"),
        ("PROCESSING", "FAILED"),
        ("FAILED", "PENDING"),
        ("PENDING", "PROCESSING"),
        ("PROCESSING", "COMPLETED"),
    ]
    assert list(timeline["attempt"]) == [0, 1, 1, 1, 2, 2]
    assert list(timeline["actor"]) == ["publisher", "d1", "d1", "admin:alice", "d1", "d1"]
    assert plain(timeline["error_message"]) == [None, None, "boom", None, None, None]
    assert list(timeline["at"]) == sorted(timeline["at"])
    assert list(analytics.transitions_frame(engine, "ev-a", oldest_first=False)["to_status"])[0] == "COMPLETED"

    recent = analytics.transitions_frame(engine, since=T0 + sec(6))
    assert list(recent["at"]) == [pd.Timestamp(T0 + sec(s)) for s in (9, 8, 7, 6)]
    assert len(analytics.transitions_frame(engine, since="2026-03-02T09:00:04Z")) == 6
    assert list(analytics.transitions_frame(engine, actor="publisher")["event_id"]) == ["ev-b", "ev-a"]

    manual = analytics.transitions_frame(engine, manual_only=True)
    assert list(manual["actor"]) == ["admin:bob", "admin:alice"]
    assert plain(manual["error_message"]) == ["discarded: spam", None]
    assert analytics.transitions_frame(engine, "missing").empty


# --- retry_histogram -------------------------------------------------------------------------


def test_retry_histogram_counts_events_per_retry_count_and_status(engine: Engine) -> None:
    empty = analytics.retry_histogram(engine)
    assert empty.empty and list(empty.columns) == ["retry_count", "status", "count"]
    rows = [
        *(event(f"c0-{i}", status="COMPLETED", retries=0) for i in range(3)),
        *(event(f"c1-{i}", status="COMPLETED", retries=1) for i in range(2)),
        event("p1", status="PENDING", retries=1),
        event("p0", status="PENDING", retries=0),
        *(event(f"f3-{i}", status="FAILED", retries=3, event_type="PROJECT.UPDATED") for i in range(2)),
    ]
    insert_rows(engine, rows)
    frame = analytics.retry_histogram(engine)
    assert list(frame.itertuples(index=False, name=None)) == [
        (0, "COMPLETED", 3),
        (0, "PENDING", 1),
        (1, "COMPLETED", 2),
        (1, "PENDING", 1),
        (3, "FAILED", 2),
    ]
    assert (frame["retry_count"].dtype, frame["count"].dtype) == ("int64", "int64")
    assert list(analytics.retry_histogram(engine, event_type="PROJECT.UPDATED").itertuples(index=False, name=None)) == [
        (3, "FAILED", 2)
    ]
    assert analytics.retry_histogram(engine, status="DISCARDED").empty


# --- error_summary ----------------------------------------------------------------------------

TIMEOUT_GROUP = "timeout after <n>s on <n>.<n>.<n>.<n>"


def test_error_summary_groups_by_normalised_message(engine: Engine) -> None:
    assert analytics.error_summary(engine).empty
    rows = [
        event("err-1", status="FAILED", created=T0 + MINUTE, error="timeout after 30s on 10.0.0.7"),
        event(
            "err-2",
            status="PENDING",
            retries=2,
            event_type="PROJECT.UPDATED",
            created=T0 + 5 * MINUTE,
            error="timeout after 5s on 10.0.0.9",
        ),
        event("err-3", status="FAILED", created=T0 + 3 * MINUTE, error="timeout after 120s on 192.168.1.1"),
        event("uuid-1", status="FAILED", created=T0, error="event 3F2A9C1E-7B4D-4E8F-9A0B-123456789ABC not found"),
        event(
            "uuid-2",
            status="COMPLETED",
            processed=T0 + HOUR,
            created=T0 + 2 * MINUTE,
            error="event 0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9 not found",
        ),
        event("hex-1", status="FAILED", created=T0 + 9 * MINUTE, error="checksum 0xDEADBEEF for deadbeefcafebabe0123"),
        event("ok-1", status="COMPLETED", processed=T0 + sec(1)),  # no error: not in any group
    ]
    insert_rows(engine, rows)
    messages = {r["id"]: r["error_message"] for r in rows}

    summary = analytics.error_summary(engine)
    assert list(summary.columns) == [
        "error_group",
        "events",
        "failed",
        "first_seen",
        "last_seen",
        "event_types",
        "example_event_id",
        "example_message",
    ]
    assert list(summary["error_group"]) == [TIMEOUT_GROUP, "event <id> not found", "checksum <hex> for <hex>"]
    assert list(summary["events"]) == [3, 2, 1]
    assert list(summary["failed"]) == [2, 1, 1]
    assert list(summary["first_seen"]) == [pd.Timestamp(t) for t in (T0 + MINUTE, T0, T0 + 9 * MINUTE)]
    assert list(summary["last_seen"]) == [pd.Timestamp(t) for t in (T0 + 5 * MINUTE, T0 + 2 * MINUTE, T0 + 9 * MINUTE)]
    assert list(summary["event_types"]) == ["PROJECT.CREATED,PROJECT.UPDATED", "PROJECT.CREATED", "PROJECT.CREATED"]
    groups = [{"err-1", "err-2", "err-3"}, {"uuid-1", "uuid-2"}, {"hex-1"}]
    for row, members in zip(summary.itertuples(), groups, strict=True):
        assert row.example_event_id in members
        # The example is one event: its id and its message go together.
        assert row.example_message == messages[row.example_event_id]
        assert normalize_error(row.example_message) == row.error_group

    assert list(analytics.error_summary(engine, limit=1)["error_group"]) == [TIMEOUT_GROUP]
    updated = analytics.error_summary(engine, event_type="PROJECT.UPDATED")
    assert list(
        updated[["error_group", "events", "failed", "example_event_id"]].itertuples(index=False, name=None)
    ) == [(TIMEOUT_GROUP, 1, 0, "err-2")]
    failed_only = analytics.error_summary(engine, status="FAILED")
    assert list(zip(failed_only["error_group"], failed_only["events"], strict=True)) == [
        (TIMEOUT_GROUP, 2),
        ("checksum <hex> for <hex>", 1),
        ("event <id> not found", 1),  # ties: by group text
    ]


# --- throughput ------------------------------------------------------------------------------


def test_throughput_counts_published_completed_and_failed_per_bucket(engine: Engine) -> None:
    empty = analytics.throughput(engine)
    assert empty.empty and list(empty.columns) == ["bucket", "published", "completed", "failed"]
    at = T0.replace  # times within 09:00-09:04
    created = {
        "p1": at(second=10),
        "p2": at(second=50),
        "d1": at(second=20),
        "p3": at(minute=1, second=30),
        "p4": at(minute=3),
        "p5": at(minute=1, second=59, microsecond=999_999),
    }
    insert_rows(
        engine,
        [
            event("p1", status="COMPLETED", created=created["p1"], processed=at(minute=1, second=5)),
            event(
                "p2",
                status="COMPLETED",
                event_type="PROJECT.UPDATED",
                created=created["p2"],
                processed=at(second=55),
            ),
            event("d1", status="DISCARDED", created=created["d1"]),
            event("p3", status="FAILED", created=created["p3"], retries=2, error="x"),
            event("p4", status="PENDING", created=created["p4"], retries=1, error="y"),
            event("p5", status="COMPLETED", created=created["p5"], processed=at(minute=3, microsecond=1)),
        ],
        # The history the dispatcher and the publisher would have written for those rows.
        [
            *(step(i, None, "PENDING", t, actor="publisher") for i, t in created.items()),
            step("p2", "PENDING", "PROCESSING", at(second=54), attempt=1),
            step("p2", "PROCESSING", "COMPLETED", at(second=55), attempt=1),
            step("p1", "PENDING", "PROCESSING", at(minute=1, second=4), attempt=1),
            step("p1", "PROCESSING", "COMPLETED", at(minute=1, second=5), attempt=1),
            step("d1", "PENDING", "DISCARDED", at(second=30), actor="admin:ops"),
            step("p3", "PENDING", "PROCESSING", at(minute=1, second=35), attempt=1),
            step("p3", "PROCESSING", "PENDING", at(minute=1, second=40), attempt=1, error="x"),
            step("p3", "PENDING", "PROCESSING", at(minute=2, second=5), attempt=2),
            step("p3", "PROCESSING", "FAILED", at(minute=2, second=10), attempt=2, error="x"),
            step("p5", "PENDING", "PROCESSING", at(minute=2, second=59), attempt=1),
            step("p5", "PROCESSING", "COMPLETED", at(minute=3, microsecond=1), attempt=1),
            step("p4", "PENDING", "PROCESSING", at(minute=3, second=10), attempt=1),
            step("p4", "PROCESSING", "PENDING", at(minute=3, second=20), attempt=1, error="y"),
        ],
    )

    def rows(frame: pd.DataFrame) -> list[tuple[pd.Timestamp, int, int, int]]:
        assert list(frame.columns) == ["bucket", "published", "completed", "failed"]
        assert str(frame["bucket"].dt.tz) == "UTC"
        return [(pd.Timestamp(b), int(p), int(c), int(f)) for b, p, c, f in frame.itertuples(index=False, name=None)]

    minute = pd.Timestamp(T0).replace
    assert rows(analytics.throughput(engine, "1min")) == [
        (minute(minute=0), 3, 1, 0),
        (minute(minute=1), 2, 1, 0),
        (minute(minute=2), 0, 0, 1),
        (minute(minute=3), 1, 1, 0),
    ]
    assert rows(analytics.throughput(engine, "5min")) == [(minute(minute=0), 6, 3, 1)]
    assert rows(analytics.throughput(engine, "1h")) == [(minute(minute=0), 6, 3, 1)]
    # After minute buckets on the same engine: SQLAlchemy's statement cache must tell the units apart.
    assert rows(analytics.throughput(engine, "30s")) == [
        (minute(minute=0, second=0), 2, 0, 0),
        (minute(minute=0, second=30), 1, 1, 0),
        (minute(minute=1, second=0), 0, 1, 0),
        (minute(minute=1, second=30), 2, 0, 0),
        (minute(minute=2, second=0), 0, 0, 1),
        (minute(minute=3, second=0), 1, 1, 0),
    ]
    assert rows(analytics.throughput(engine, "1min", since=at(minute=1), until=at(minute=3))) == [
        (minute(minute=1), 2, 1, 0),
        (minute(minute=2), 0, 0, 1),
    ]
    assert rows(analytics.throughput(engine, "1min", event_type="PROJECT.UPDATED")) == [(minute(minute=0), 1, 1, 0)]
    assert rows(analytics.throughput(engine, "1min", status="FAILED")) == [
        (minute(minute=1), 1, 0, 0),
        (minute(minute=2), 0, 0, 1),
    ]
    for bad in ("soon", "0s", "500ms", "-1min", ""):
        with pytest.raises(FilterError) as caught:
            analytics.throughput(engine, bad)
        assert caught.value.field == "bucket"


def test_throughput_window_bounds_are_exact_on_both_databases(engine: Engine) -> None:
    """``since``/``until`` are instants: a window that starts or ends inside a minute counts what
    happened inside the window only, on SQLite as on PostgreSQL."""
    at = T0.replace
    insert_rows(
        engine,
        [event("early", created=at(minute=1, second=10)), event("late", created=at(minute=1, second=50))],
        [
            step("early", None, "PENDING", at(minute=1, second=10), actor="publisher"),
            step("late", None, "PENDING", at(minute=1, second=50), actor="publisher"),
        ],
    )
    window = analytics.throughput(engine, "1min", since=at(minute=1, second=30), until=at(minute=1, second=55))
    assert list(window["published"]) == [1]
    assert analytics.throughput(engine, "1min", since=at(minute=1, second=55)).empty
    assert analytics.throughput(engine, "1min", until=at(minute=1, second=5)).empty


# --- latency_stats ---------------------------------------------------------------------------


def nearest_rank(values: Iterable[float], q: float) -> float:
    ordered = sorted(values)
    rank = next(r for r in range(1, len(ordered) + 1) if r >= q * len(ordered))
    return ordered[rank - 1]


def test_latency_stats_nearest_rank_percentiles_overall_then_per_type(engine: Engine) -> None:
    empty = analytics.latency_stats(engine)
    assert list(empty["event_type"]) == ["*"] and list(empty["events"]) == [0]
    assert empty[["mean", "p50", "p90", "p99", "max"]].isna().all(axis=None)

    created = [T0 + sec(i * 7.123457) for i in range(12)]  # microseconds in the times on purpose
    created.append(T0 + sec(100.9996))  # 0.4 ms before a whole second, which the latency crosses
    latencies = {"PROJECT.CREATED": [float(s) for s in range(1, 11)], "PROJECT.UPDATED": [20.0, 40.0]}
    latencies["TASK.PINGED"] = [0.00025]  # a quarter of a millisecond
    rows = []
    for event_type, values in latencies.items():
        for value in values:
            start = created[len(rows)]
            rows.append(
                event(
                    f"lat-{len(rows)}",
                    status="COMPLETED",
                    event_type=event_type,
                    created=start,
                    processed=start + sec(value),
                )
            )
    # Not COMPLETED: never in the latency, whatever their times say.
    rows.append(event("failed", status="FAILED", created=T0, processed=T0 + sec(999), error="x"))
    rows.append(event("pending", status="PENDING", created=T0))
    insert_rows(engine, rows)

    stats = analytics.latency_stats(engine)
    assert list(stats.columns) == ["event_type", "events", "mean", "p50", "p90", "p95", "p99", "max"]
    assert list(stats["event_type"]) == ["*", "PROJECT.CREATED", "PROJECT.UPDATED", "TASK.PINGED"]
    assert list(stats["events"]) == [13, 10, 2, 1]
    by_type = stats.set_index("event_type")
    # The example: latencies 1..10 s.
    created_row = by_type.loc["PROJECT.CREATED"]
    expected_created = {"p50": 5.0, "p90": 9.0, "p95": 10.0, "p99": 10.0, "max": 10.0, "mean": 5.5}
    assert created_row[list(expected_created)].to_dict() == pytest.approx(expected_created, abs=1e-6)
    expected_updated = {"p50": 20.0, "p90": 40.0, "p95": 40.0, "p99": 40.0, "max": 40.0, "mean": 30.0}
    assert by_type.loc["PROJECT.UPDATED"][list(expected_updated)].to_dict() == pytest.approx(expected_updated, abs=1e-6)
    everything = [v for values in latencies.values() for v in values]
    expected_all = {f"p{round(q * 100)}": nearest_rank(everything, q) for q in analytics.LATENCY_QUANTILES}
    expected_all.update(mean=sum(everything) / len(everything), max=40.0)
    assert expected_all["p50"] == 6.0 and expected_all["p90"] == 20.0
    assert by_type.loc["*"][list(expected_all)].to_dict() == pytest.approx(expected_all, abs=1e-6)
    # Timestamps keep microseconds; so must the latency computed from them.
    assert by_type.loc["TASK.PINGED", "p50"] == pytest.approx(0.00025, abs=1e-6)

    only_updated = analytics.latency_stats(engine, event_type="PROJECT.UPDATED")
    assert list(only_updated["event_type"]) == ["*", "PROJECT.UPDATED"]
    assert list(only_updated["p90"]) == pytest.approx([40.0, 40.0], abs=1e-6)
    assert analytics.latency_stats(engine, since=T0 + HOUR)["events"].tolist() == [0]


# --- distinct_values --------------------------------------------------------------------------


def test_distinct_values_for_the_filter_pickers(engine: Engine) -> None:
    assert analytics.distinct_values(engine, "event_type") == []
    insert_rows(engine, FILTER_ROWS)
    assert analytics.distinct_values(engine, "event_type") == ["ORDER.PLACED", "PROJECT.CREATED", "PROJECT.UPDATED"]
    assert analytics.distinct_values(engine, "org_id") == ["org-1", "org-2", "org-3"]
    assert analytics.distinct_values(engine, "entity_type") == ["Order", "Project", "Task"]
    assert analytics.distinct_values(engine, "org_id", limit=2) == ["org-1", "org-2"]
    with pytest.raises(FilterError):
        analytics.distinct_values(engine, "payload")


# --- error normalisation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "group"),
    [
        ("timeout after 30s on 10.0.0.7", TIMEOUT_GROUP),
        ("timeout after 5s on 10.0.0.9", TIMEOUT_GROUP),
        ("event 3f2a9c1e-7b4d-4e8f-9a0b-123456789abc not found", "event <id> not found"),
        ("event 3F2A9C1E-7B4D-4E8F-9A0B-123456789ABC not found", "event <id> not found"),
        ("checksum 0xDEADBEEF and 0X1f", "checksum <hex> and <hex>"),
        ("sha deadbeefcafebabe0123 bad", "sha <hex> bad"),
        ("short hex deadbeef stays", "short hex deadbeef stays"),  # 8 hex letters: a word, not an id
        ("v2 abc123", "v<n> abc<n>"),
        ("no numbers here", "no numbers here"),
        ("50% of 'quoted' \"text\"", "<n>% of 'quoted' \"text\""),
        ("", ""),
        (None, None),
    ],
)
def test_normalize_error(message: str | None, group: str | None) -> None:
    assert normalize_error(message) == group


SQL_MESSAGES = [
    "timeout after 30s on 10.0.0.7",
    "event 3F2A9C1E-7B4D-4E8F-9A0B-123456789ABC not found",
    "deadbeef-dead-beef-dead-beefdeadbeef then 0X1f and 0x",
    "checksum 0xDEADBEEF mismatch for deadbeefcafebabe0123",
    "abcdef0123456789abcdef",
    "50% done; 100% sure; %s %d %% %(name)s",
    "it's a \"quoted\" 'message' with 12 and \\backslash\\ and \\1 & $1",
    "naïve café №7 ünïcode ٣ ４２ 42",
    "under_score [0-9]+ .* {16,} 1e10",
    "line1\nline2 77\ttab",
    "no digits at all",
    "",
    None,
]


def test_sql_normalized_error_matches_python(engine: Engine) -> None:
    insert_rows(engine, [event(f"m{i:02d}", error=m) for i, m in enumerate(SQL_MESSAGES)])
    with engine.connect() as conn:
        prepare_connection(conn)
        stored = conn.execute(
            select(EVENTS.c.error_message, normalized_error(EVENTS.c.error_message)).order_by(EVENTS.c.id)
        ).all()
        assert [tuple(r) for r in stored] == [(m, normalize_error(m)) for m in SQL_MESSAGES]
        # Any SQL expression, a bound value included, not only a column.
        for message in SQL_MESSAGES:
            value = conn.execute(select(normalized_error(literal(message, Text())))).scalar_one()
            assert value == normalize_error(message), message
    # And the filter on a group finds exactly the events in that group.
    for message in filter(None, SQL_MESSAGES):
        group = normalize_error(message)
        expected = {f"m{j:02d}" for j, m in enumerate(SQL_MESSAGES) if normalize_error(m) == group}
        assert set(analytics.event_ids(engine, error_group=group)) == expected, message


# --- bad filters --------------------------------------------------------------------------


def test_bad_filters_give_a_clear_filter_error(sqlite_url: str) -> None:
    from outbox_admin import make_engine

    def refused(field: str, **loose: Any) -> str:
        with pytest.raises(FilterError) as caught:
            EventFilter.build(**loose)
        assert caught.value.field == field, loose
        return str(caught.value)

    assert "unknown status LOST" in refused("status", status="lost")
    assert "PENDING, PROCESSING, COMPLETED, FAILED, DISCARDED" in refused("status", status=["PENDING", "nope"])
    assert "ISO 8601" in refused("since", since="yesterday")
    assert "'2026-02-30'" in refused("until", until="2026-02-30")
    refused("since", since=12345)
    assert "later than since" in refused("until", since="2026-03-02", until="2026-03-02")
    refused("until", since=T0 + HOUR, until=T0)
    assert str(MAX_SEARCH_LENGTH) in refused("search", search="x" * (MAX_SEARCH_LENGTH + 1))
    assert EventFilter.build(search=f"  {'x' * MAX_SEARCH_LENGTH}  ").search == "x" * MAX_SEARCH_LENGTH
    assert "NUL" in refused("search", search="a\x00b")
    refused("entity", entity=("a", "b", "c"))
    assert EventFilter.build(search="   ").search is None
    assert EventFilter.build().is_empty()

    with pytest.raises(FilterError) as both:
        as_filter(EventFilter(), status="FAILED")
    assert both.value.field == "filters"
    assert isinstance(both.value, ValueError) and isinstance(both.value, OutboxError)

    engine = make_engine(sqlite_url)
    try:
        for kwargs, field in (
            ({"limit": 0}, "limit"),
            ({"limit": analytics.MAX_PAGE + 1}, "limit"),
            ({"offset": -1}, "offset"),
        ):
            with pytest.raises(FilterError) as caught:
                analytics.events_frame(engine, **kwargs)
            assert caught.value.field == field
        for call in (
            lambda: analytics.transitions_frame(engine, limit=0),
            lambda: analytics.error_summary(engine, limit=0),
            lambda: analytics.event_ids(engine, limit=0),
            lambda: analytics.transitions_frame(engine, since="last week"),
            lambda: analytics.status_counts(engine, status="LOST"),
            lambda: analytics.latency_stats(engine, since="never"),
        ):
            with pytest.raises(FilterError):
                call()
    finally:
        engine.dispose()


@pytest.mark.parametrize("field", ["event_type", "org_id", "entity", "error_group"])
def test_a_nul_in_any_text_filter_is_a_filter_error(field: str) -> None:
    """PostgreSQL cannot compare text with NUL in it: refuse it up front, as search does."""
    with pytest.raises(FilterError):
        EventFilter.build(**{field: "a\x00b"})


# --- any text, literally ----------------------------------------------------------------------

REAL_ID, DECOY_ID = "1111-2222", "3333-4444"
REAL_ENTITY, DECOY_ENTITY = "5555", "6666"
WILDCARDS = st.sampled_from(["%", "_", "\\", "'", '"', "\\%", "\\_", "%%", "[", "]", "^", "$", "*", "?", " "])
SEARCH_TEXT = (
    st.lists(st.one_of(WILDCARDS, st.characters(codec="utf-8", exclude_characters="\x00")), min_size=1, max_size=12)
    .map("".join)
    .filter(lambda s: s.strip() != "")
)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=SEARCH_TEXT)
def test_search_and_filters_accept_any_text_and_match_literally(engine: Engine, text: str) -> None:
    needle = text.strip()
    decoy_message = text.replace("%", "pct").replace("_", "u")
    with engine.begin() as conn:
        conn.execute(delete(TRANSITIONS))
        conn.execute(delete(EVENTS))
        conn.execute(
            insert(EVENTS),
            [
                event(REAL_ID, entity=("Project", REAL_ENTITY), error=f"<<{text}>>", status="FAILED"),
                # Would match only if % or _ were wildcards (ids are digits: they cannot match by accident).
                event(
                    DECOY_ID,
                    entity=("Project", DECOY_ENTITY),
                    error=decoy_message if decoy_message != text else None,
                    status="FAILED",
                ),
            ],
        )
    decoy_matches = needle in DECOY_ID or needle in DECOY_ENTITY
    found = ids(analytics.events_frame(engine, search=text))
    assert REAL_ID in found
    assert (DECOY_ID in found) == decoy_matches
    assert analytics.count_events(engine, search=text) == len(found)
    assert int(analytics.status_counts(engine, search=text)["count"].sum()) == len(found)
    groups = analytics.error_summary(engine, search=text)
    assert normalize_error(f"<<{text}>>") in set(groups["error_group"])
    # Every other text filter takes the same text without a database error.
    assert analytics.count_events(engine, event_type=text, org_id=text, entity=text, error_group=text) == 0
    assert analytics.count_events(engine, error_group=normalize_error(f"<<{text}>>")) >= 1

"""Plotly figures (``outbox_admin.charts``) built from real analytics frames, empty and not."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import pytest
from sqlalchemy import Engine, insert

from outbox_admin import analytics, charts, make_engine
from outbox_admin.charts import SERIES_COLORS, STATUS_COLORS
from outbox_admin.models import DEFAULT_TABLES, EventStatus

T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)


@pytest.fixture
def sqlite_engine(sqlite_url: str) -> Iterator[Engine]:
    engine = make_engine(sqlite_url)
    yield engine
    engine.dispose()


def seconds(n: float) -> dt.timedelta:
    return dt.timedelta(seconds=n)


def fill(engine: Engine) -> None:
    """A few events with history: completed after a retry, failed, pending, discarded."""
    rows: list[dict[str, Any]] = []
    steps: list[dict[str, Any]] = []

    def add(event_id: str, status: str, path: list[tuple[str | None, str, float, str | None]], **extra: Any) -> None:
        rows.append(
            {
                "id": event_id,
                "org_id": "org-1",
                "event_type": extra.get("event_type", "PROJECT.CREATED"),
                "entity_type": "Project",
                "entity_id": event_id,
                "payload": {},
                "status": status,
                "retry_count": extra.get("retries", 0),
                "error_message": extra.get("error"),
                "created_at": T0,
                "processed_at": T0 + seconds(path[-1][2]) if status == "COMPLETED" else None,
                "available_at": T0,
                "locked_by": None,
                "locked_until": None,
                "idempotency_key": None,
            }
        )
        for attempt, (old, new, at, error) in enumerate(path):
            steps.append(
                {
                    "event_id": event_id,
                    "from_status": old,
                    "to_status": new,
                    "at": T0 + seconds(at),
                    "actor": "publisher" if old is None else "d1",
                    "attempt": attempt,
                    "error_message": error,
                }
            )

    add(
        "retried",
        "COMPLETED",
        [
            (None, "PENDING", 0, None),
            ("PENDING", "PROCESSING", 1, None),
            ("PROCESSING", "PENDING", 2, "timeout after 3s"),
            ("PENDING", "PROCESSING", 70, None),
            ("PROCESSING", "COMPLETED", 71, None),
        ],
        retries=1,
        error="timeout after 3s",
    )
    add(
        "quick",
        "COMPLETED",
        [(None, "PENDING", 0, None), ("PENDING", "PROCESSING", 1, None), ("PROCESSING", "COMPLETED", 2, None)],
        event_type="PROJECT.UPDATED",
    )
    add(
        "dead",
        "FAILED",
        [(None, "PENDING", 0, None), ("PENDING", "PROCESSING", 1, None), ("PROCESSING", "FAILED", 2, "HTTP 503")],
        retries=1,
        error="HTTP 503",
    )
    add("waiting", "PENDING", [(None, "PENDING", 5, None)])
    add("aside", "DISCARDED", [(None, "PENDING", 0, None), ("PENDING", "DISCARDED", 3, "discarded: spam")])
    with engine.begin() as conn:
        conn.execute(insert(DEFAULT_TABLES.events), rows)
        conn.execute(insert(DEFAULT_TABLES.transitions), steps)


def utc_wall_time(value: Any) -> dt.datetime:
    """A time as plotly holds it (with or without its UTC zone), as an aware datetime."""
    stamp = pd.Timestamp(value)
    return (stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp).to_pydatetime()


def series_color(trace: Any) -> str:
    """The colour of a line or of bars."""
    line = getattr(trace, "line", None)
    return line.color if line is not None and line.color else trace.marker.color


def titled(fig: go.Figure, title: str, x: str | None = None, y: str | None = None) -> None:
    assert isinstance(fig, go.Figure)
    assert fig.layout.title.text == title
    assert fig.layout.xaxis.title.text == x
    assert fig.layout.yaxis.title.text == y
    fig.to_json()  # serialisable, as the dashboard sends it


def is_empty(fig: go.Figure, title: str, message: str) -> None:
    assert isinstance(fig, go.Figure)
    assert len(fig.data) == 0
    assert fig.layout.title.text == title
    assert [a.text for a in fig.layout.annotations] == [message]
    assert fig.layout.xaxis.visible is False and fig.layout.yaxis.visible is False


def test_status_colors_cover_every_status_once() -> None:
    assert list(STATUS_COLORS) == [s.value for s in EventStatus]
    assert len(set(STATUS_COLORS.values())) == len(STATUS_COLORS)
    assert (
        SERIES_COLORS["completed"] == STATUS_COLORS["COMPLETED"] and SERIES_COLORS["failed"] == STATUS_COLORS["FAILED"]
    )
    assert charts.status_color("FAILED") == STATUS_COLORS["FAILED"]
    assert charts.status_color(None) not in STATUS_COLORS.values()


def test_figures_from_frames_with_data(sqlite_engine: Engine) -> None:
    fill(sqlite_engine)

    status = charts.status_figure(analytics.status_counts(sqlite_engine))
    titled(status, "Events by status")
    (pie,) = status.data
    assert isinstance(pie, go.Pie)
    assert list(pie.labels) == ["PENDING", "COMPLETED", "FAILED", "DISCARDED"]  # zero counts left out
    assert list(pie.values) == [1, 2, 1, 1]
    assert list(pie.marker.colors) == [STATUS_COLORS[s] for s in pie.labels]
    assert charts.status_figure(analytics.status_counts(sqlite_engine), title="Now").layout.title.text == "Now"

    flow = charts.throughput_figure(analytics.throughput(sqlite_engine, "1min"))
    titled(flow, "Events per minute", "time (UTC)", "events")
    assert [t.name for t in flow.data] == ["published", "completed", "failed"]
    assert [series_color(t) for t in flow.data] == [SERIES_COLORS[s] for s in ("published", "completed", "failed")]
    assert [list(t.y) for t in flow.data] == [[5, 0], [1, 1], [1, 0]]
    assert [utc_wall_time(x) for x in flow.data[0].x] == [T0, T0 + seconds(60)]

    retries = charts.retry_histogram_figure(analytics.retry_histogram(sqlite_engine))
    titled(retries, "Retries per event", "retry count", "events")
    assert [t.name for t in retries.data] == ["PENDING", "COMPLETED", "FAILED", "DISCARDED"]  # lifecycle order
    assert [t.marker.color for t in retries.data] == [STATUS_COLORS[t.name] for t in retries.data]
    completed = next(t for t in retries.data if t.name == "COMPLETED")
    assert (list(completed.x), list(completed.y)) == ([0, 1], [1, 1])
    assert retries.layout.barmode == "stack"

    errors = charts.error_groups_figure(analytics.error_summary(sqlite_engine))
    titled(errors, "Top error groups", "events", None)
    assert errors.data[0].name == "FAILED" and len(errors.data) == 2  # then the rest: retried or recovered
    assert [t.marker.color for t in errors.data] == [STATUS_COLORS["FAILED"], STATUS_COLORS["PENDING"]]
    assert list(errors.data[0].y) == ["timeout after <n>s", "HTTP <n>"]  # the largest group on top
    failed_by_group = dict(zip(errors.data[0].y, errors.data[0].x, strict=True))
    other_by_group = dict(zip(errors.data[1].y, errors.data[1].x, strict=True))
    assert failed_by_group == {"HTTP <n>": 1, "timeout after <n>s": 0}
    assert other_by_group == {"HTTP <n>": 0, "timeout after <n>s": 1}

    latency = charts.latency_figure(analytics.latency_stats(sqlite_engine))
    titled(latency, "Latency, created to processed", "event type", "seconds")
    assert [t.name for t in latency.data] == ["p50", "p90", "p99"]
    assert list(latency.data[0].x) == ["all types", "PROJECT.CREATED", "PROJECT.UPDATED"]
    assert list(latency.data[2].y) == pytest.approx([71, 71, 2], abs=1e-3)

    timeline = charts.timeline_figure(analytics.transitions_frame(sqlite_engine, "retried"))
    titled(timeline, "Status timeline", "time (UTC)", "status")
    (line,) = timeline.data
    assert list(line.y) == ["PENDING", "PROCESSING", "PENDING", "PROCESSING", "COMPLETED"]
    assert list(line.marker.color) == [STATUS_COLORS[s] for s in line.y]
    assert list(line.text) == ["", "#1", "#2", "#3", "#4"]
    assert "timeout after 3s" in line.hovertext[2] and "by d1" in line.hovertext[2]
    assert list(timeline.layout.yaxis.categoryarray) == list(STATUS_COLORS)

    changes = charts.status_flow_figure(analytics.transitions_frame(sqlite_engine), bucket="1min")
    titled(changes, "Status changes over time", "time (UTC)", "status changes")
    assert [t.name for t in changes.data] == ["PENDING", "PROCESSING", "COMPLETED", "FAILED", "DISCARDED"]
    assert [t.marker.color for t in changes.data] == [STATUS_COLORS[t.name] for t in changes.data]
    assert sum(sum(t.y) for t in changes.data) == 14  # every history row once


def test_figures_from_empty_frames(sqlite_engine: Engine) -> None:
    is_empty(charts.status_figure(analytics.status_counts(sqlite_engine)), "Events by status", "No events yet")
    is_empty(charts.throughput_figure(analytics.throughput(sqlite_engine)), "Events per minute", "No events yet")
    is_empty(
        charts.retry_histogram_figure(analytics.retry_histogram(sqlite_engine)), "Retries per event", "No events yet"
    )
    is_empty(charts.error_groups_figure(analytics.error_summary(sqlite_engine)), "Top error groups", "No errors")
    is_empty(
        charts.latency_figure(analytics.latency_stats(sqlite_engine)),
        "Latency, created to processed",
        "No completed events",
    )
    is_empty(
        charts.timeline_figure(analytics.transitions_frame(sqlite_engine, "none")), "Status timeline", "No history"
    )
    is_empty(
        charts.status_flow_figure(analytics.transitions_frame(sqlite_engine)),
        "Status changes over time",
        "No status changes in this window",
    )


def test_error_groups_keep_long_groups_apart() -> None:
    """Two groups that differ only after the label's cut-off are still two bars."""
    prefix = "webhook: HTTPStatusError: Server error '503 Service Unavailable' for url 'https://hooks.example/"
    frame = pd.DataFrame(
        {
            "error_group": [prefix + "orders'", prefix + "projects'", "short"],
            "events": [5, 3, 1],
            "failed": [2, 3, 0],
        }
    )
    fig = charts.error_groups_figure(frame, top=10)
    labels = list(fig.data[0].y)
    assert len(labels) == len(set(labels)) == 3
    assert all(len(label) <= 60 for label in labels)  # cut short for the axis...
    assert list(fig.data[0].x) == [0, 3, 2] and list(fig.data[1].x) == [1, 0, 3]  # largest group on top
    top_two = charts.error_groups_figure(frame, top=2)
    assert len(top_two.data[0].y) == 2


def test_handler_latency_boxes_escape_handler_names(engine: Engine) -> None:
    """One box per handler from a real dispatch; a handler's name is text, not plotly's HTML."""
    from .ledger_support import two_handlers

    run = two_handlers(engine, beta_name="<b>beta</b>\u202e")
    frame = analytics.deliveries_frame(engine)
    figure = charts.handler_latency_figure(frame)
    names = sorted(trace.name for trace in figure.data)
    assert names == ["&lt;b&gt;beta&lt;/b&gt;\\u202e", "alpha"]
    beta = next(trace for trace in figure.data if trace.name.startswith("&lt;b&gt;"))
    assert sorted(beta.y) == sorted(frame.loc[frame["handler"] == run.beta.name, "latency_ms"] / 1000)
    empty = charts.handler_latency_figure(analytics.deliveries_frame(engine, since="2999-01-01"))
    assert not empty.data and empty.layout.annotations[0].text == "No deliveries recorded"
    star = frame.assign(handler="*")
    assert [t.name for t in charts.handler_latency_figure(star).data] == [analytics.ALL_HANDLERS_LABEL]

"""The ledger's reads (``outbox_admin.deliveries``, through ``analytics``) after a real dispatch through two
handlers, one of which fails an event once and another for good, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import math

import pandas as pd
import pytest
from sqlalchemy import Engine, insert, select

from outbox_admin import admin, analytics, publish_outbox_event
from outbox_admin.deliveries import DELIVERY_COLUMNS
from outbox_admin.errors import FilterError
from outbox_admin.models import DEFAULT_TABLES

from .ledger_support import TwoHandlers, two_handlers

LEDGER, EVENTS = DEFAULT_TABLES.deliveries, DEFAULT_TABLES.events


@pytest.fixture
def run(engine: Engine) -> TwoHandlers:
    return two_handlers(engine)


def stored(engine: Engine) -> dict[tuple[str, str], tuple[dt.datetime, dt.datetime]]:
    """(event id, handler) -> (created_at, delivered_at), read straight from the tables."""
    with engine.connect() as conn:
        found = conn.execute(
            select(LEDGER.c.event_id, LEDGER.c.handler, EVENTS.c.created_at, LEDGER.c.delivered_at)
            .join_from(LEDGER, EVENTS, EVENTS.c.id == LEDGER.c.event_id)
            .where(LEDGER.c.delivered_at.is_not(None))
        ).all()
    return {(r[0], r[1]): (r[2], r[3]) for r in found}


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[math.ceil(len(ordered) * q) - 1]


def test_the_frame_has_each_delivery_with_its_attempts_and_latency(run: TwoHandlers) -> None:
    frame = analytics.deliveries_frame(run.engine)
    assert list(frame.columns) == DELIVERY_COLUMNS
    delivered = {(e, h) for e, h in zip(frame["event_id"], frame["handler"], strict=True)}
    everyone = set(run.ids.values())
    assert delivered == {(i, "alpha") for i in everyone} | {(i, "beta") for i in everyone - {run.ids["p-2"]}}
    assert frame["delivered_at"].is_monotonic_decreasing, "newest delivery first"
    row = frame.set_index(["event_id", "handler"])
    retried = row.loc[(run.ids["p-1"], "beta")]
    assert retried["attempt"] == 2 and retried["last_error"] == "beta: ConnectionError: p-1 refused once"
    assert row.loc[(run.ids["p-1"], "alpha"), "attempt"] == 1, "alpha was not run again on the retry"
    assert set(row.xs("alpha", level="handler")["attempt"]) == {1}
    # Commit to acknowledgement: the event's created_at to the ledger's delivered_at, in ms.
    times = stored(run.engine)
    for (event_id, handler), latency in row["latency_ms"].items():
        created, acknowledged = times[(event_id, handler)]
        assert latency == pytest.approx((acknowledged - created).total_seconds() * 1000, abs=1e-3)
        assert latency >= 0
    assert retried["delivered_at"] > row.loc[(run.ids["p-1"], "alpha"), "delivered_at"], "beta delivered p-1 later"
    assert str(frame["delivered_at"].dt.tz) == "UTC" and str(frame["created_at"].dt.tz) == "UTC"
    assert frame["duration_ms"].notna().all() and (frame["duration_ms"] >= 0).all()


def test_the_frame_narrows_by_handler_time_and_event(run: TwoHandlers) -> None:
    engine = run.engine
    assert set(analytics.deliveries_frame(engine, handler="beta")["handler"]) == {"beta"}
    assert len(analytics.deliveries_frame(engine, handler=["alpha", "beta"])) == 11
    assert len(analytics.deliveries_frame(engine, limit=3)) == 3
    newest = analytics.deliveries_frame(engine)["delivered_at"].max()
    assert analytics.deliveries_frame(engine, since=newest + pd.Timedelta(seconds=1)).empty
    assert analytics.deliveries_frame(engine, until=newest).shape[0] < 11
    assert len(analytics.deliveries_frame(engine, since="2000-01-01", until=newest + pd.Timedelta(seconds=1))) == 11
    created = analytics.deliveries_frame(engine, event_type="PROJECT.CREATED")
    assert set(created["event_type"]) == {"PROJECT.CREATED"} and len(created) == 5  # p-0, p-2, p-4; p-2 not by beta
    assert analytics.deliveries_frame(engine, org_id="nobody").empty
    with pytest.raises(FilterError, match="limit"):
        analytics.deliveries_frame(engine, limit=0)
    with pytest.raises(FilterError, match="handler"):
        analytics.deliveries_frame(engine, handler=["x" * 300])


def test_the_summary_counts_deliveries_failures_and_latency_per_handler(run: TwoHandlers) -> None:
    summary = analytics.handler_summary(run.engine, dt.timedelta(hours=1))
    assert not summary.capped
    table = summary.frame.set_index("handler")
    assert list(summary.frame["handler"]) == ["alpha", "beta"], "the busiest first"
    assert table.loc["alpha", ["deliveries", "failing", "retried"]].tolist() == [6, 0, 0]
    assert table.loc["beta", ["deliveries", "failing", "retried"]].tolist() == [5, 1, 1]
    assert table.loc["beta", "failure_rate"] == pytest.approx(1 / 6)
    assert table.loc["alpha", "failure_rate"] == 0
    assert table.loc["alpha", "per_minute"] == pytest.approx(6 / 60)
    frame = analytics.deliveries_frame(run.engine)
    for handler in ("alpha", "beta"):
        seconds = list(frame.loc[frame["handler"] == handler, "latency_ms"] / 1000)
        assert table.loc[handler, "latency_p50"] == pytest.approx(nearest_rank(seconds, 0.5), abs=1e-5)
        assert table.loc[handler, "latency_p95"] == pytest.approx(nearest_rank(seconds, 0.95), abs=1e-5)
        assert table.loc[handler, "latency_max"] == pytest.approx(max(seconds), abs=1e-5)
        assert table.loc[handler, "last_delivery"] == frame.loc[frame["handler"] == handler, "delivered_at"].max()
    # A window that begins after everything: nothing delivered, nothing failed in it.
    later = analytics.handler_summary(
        run.engine, dt.timedelta(minutes=1), now=dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
    )
    assert later.frame.empty


def test_a_busy_window_is_shortened_to_its_newest_deliveries(run: TwoHandlers) -> None:
    summary = analytics.handler_summary(run.engine, dt.timedelta(hours=1), newest=4)
    assert summary.capped
    assert int(summary.frame["deliveries"].sum()) == 4
    newest_four = analytics.deliveries_frame(run.engine, limit=4)["delivered_at"]
    assert summary.since == newest_four.min() > summary.until - dt.timedelta(hours=1)
    with pytest.raises(FilterError, match="window"):
        analytics.handler_summary(run.engine, dt.timedelta(0))


def test_one_event_per_handler_through_a_replay(run: TwoHandlers) -> None:
    engine = run.engine
    failing = analytics.event_deliveries(engine, run.ids["p-2"])
    assert failing[["handler", "state", "attempt"]].values.tolist() == [
        ["alpha", "delivered", 1],
        ["beta", "failing", 2],
    ]
    assert failing["last_error"][1] == "beta: ConnectionError: p-2 refused for good"
    assert pd.isna(failing["delivered_at"][1]) and pd.notna(failing["delivered_at"][0])
    assert admin.replay(engine, run.ids["p-1"], handlers=["alpha"], actor="ana") == 1
    owed = analytics.event_deliveries(engine, run.ids["p-1"]).set_index("handler")
    assert owed.loc["alpha", "state"] == "replay requested" and owed.loc["alpha", "requested_by"] == "admin:ana"
    assert pd.notna(owed.loc["alpha", "requested_at"]) and pd.isna(owed.loc["alpha", "delivered_at"])
    assert owed.loc["beta", "state"] == "delivered"
    run.dispatch()
    again = analytics.event_deliveries(engine, run.ids["p-1"]).set_index("handler")
    assert again.loc["alpha", "state"] == "delivered (replayed)" and again.loc["alpha", "attempt"] == 1
    assert run.alpha.ids.count(run.ids["p-1"]) == 2 and run.beta.seen.count(run.ids["p-1"]) == 2
    assert analytics.event_deliveries(engine, "no-such-event").empty


def test_the_star_row_comes_first(engine: Engine) -> None:
    with engine.begin() as conn:
        event = publish_outbox_event(conn, org_id="o", event_type="PROJECT.CREATED", entity_type="P", entity_id="1")
        conn.execute(
            insert(LEDGER),
            [
                {"event_id": event.id, "handler": "zed", "attempt": 1, "delivered_at": dt.datetime.now(dt.UTC)},
                {"event_id": event.id, "handler": "*", "attempt": 1, "delivered_at": dt.datetime(2026, 1, 1)},
            ],
        )
    frame = analytics.event_deliveries(engine, event.id)
    assert frame["handler"].tolist() == ["*", "zed"]
    assert analytics.handler_label("*") == "all handlers (delivered before the ledger existed)"
    assert analytics.handler_label("zed") == "zed"
    assert analytics.known_handlers(engine) == ["zed"], "the * row is no handler's name"


def test_failures_by_handler_group_the_dead_letters(run: TwoHandlers) -> None:
    page = analytics.handler_failures(run.engine)
    assert page.total == 1
    [group] = page.frame.to_dict("records")
    assert group["handler"] == "beta" and group["events"] == 1
    assert group["error_group"] == "beta: ConnectionError: p-<n> refused for good"
    assert group["example_event_id"] == run.ids["p-2"]
    assert group["example_message"] == "beta: ConnectionError: p-2 refused for good"
    assert group["event_types"] == "PROJECT.CREATED"
    assert analytics.failing_event_ids(run.engine, "beta") == [run.ids["p-2"]]
    assert analytics.failing_event_ids(run.engine, "beta", group["error_group"]) == [run.ids["p-2"]]
    assert analytics.failing_event_ids(run.engine, "beta", "something else") == []
    assert analytics.failing_event_ids(run.engine, "alpha") == []
    assert analytics.handler_failures(run.engine, org_id="nobody").total == 0
    assert analytics.handler_failures(run.engine, offset=5).total == 1, "past the last page, counted apart"


def test_more_failing_events_make_one_group_per_handler_and_error(engine: Engine) -> None:
    run = two_handlers(engine)
    more = two_handlers(engine, beta_name="gamma")  # six more events: gamma fails its p-2 for good too
    page = analytics.handler_failures(engine)
    assert page.total == 2
    assert sorted(page.frame["handler"]) == ["beta", "gamma"] and set(page.frame["events"]) == {1}
    assert analytics.known_handlers(engine) == ["alpha", "beta", "gamma"]
    assert analytics.known_handlers(engine, [run.ids["p-2"], more.ids["p-2"]]) == ["alpha", "beta", "gamma"]
    summary = analytics.handler_summary(engine).frame.set_index("handler")
    assert summary.loc["alpha", "deliveries"] == 12
    assert summary.loc[["beta", "gamma"], "failing"].tolist() == [1, 1]

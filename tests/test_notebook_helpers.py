"""The notebooks' helpers (``outbox_admin.notebook``): demo databases, the live watch, failure
breakdowns, throughput buckets, paging reads and exports. The watch is driven with a fake
display, clock and sleep, so it is tested without IPython and without waiting."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import pytest
from sqlalchemy import Engine, create_engine, insert, inspect
from sqlalchemy.orm import Session

from outbox_admin import DispatcherService, analytics, charts, demo, make_engine, notebook
from outbox_admin.errors import ConfigurationError, FilterError
from outbox_admin.models import DEFAULT_TABLES, EventStatus

EVENTS = DEFAULT_TABLES.events
TRANSITIONS = DEFAULT_TABLES.transitions
T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
STATUSES = [s.value for s in EventStatus]


def add_events(engine: Engine, rows: list[tuple[str, str, str, str, int]]) -> None:
    """Events from ``(id, event_type, org_id, status, retry_count)``, one second apart."""
    values = [
        {
            "id": event_id,
            "org_id": org,
            "event_type": event_type,
            "entity_type": "Project",
            "entity_id": f"p-{event_id}",
            "payload": {"n": i, "tags": ["a", "b"]},
            "status": status,
            "retry_count": retries,
            "error_message": "boom" if retries else None,
            "created_at": T0 + dt.timedelta(seconds=i),
            "available_at": T0 + dt.timedelta(seconds=i),
        }
        for i, (event_id, event_type, org, status, retries) in enumerate(rows)
    ]
    with engine.begin() as conn:
        conn.execute(insert(EVENTS), values)


def publish_one(engine: Engine, name: str = "Apollo") -> str:
    with Session(engine) as session, session.begin():
        return demo.create_project(session, org_id="acme", name=name, budget="10.00").id


# -- databases -----------------------------------------------------------------------


def test_demo_database_in_a_temporary_folder_holds_every_kind_of_event() -> None:
    url, engine = notebook.demo_database(events=40, always_fail_share=0.5)
    try:
        assert url.startswith("sqlite:///") and "outbox-notebook-" in url
        counts = dict(zip(*analytics.status_counts(engine).to_dict("list").values(), strict=True))
        assert counts["COMPLETED"] > 0 and counts["FAILED"] > 0 and counts["PENDING"] > 0
        assert inspect(engine).has_table(demo.Project.__tablename__)
    finally:
        engine.dispose()


def test_demo_database_at_a_path_and_empty(tmp_path: Path) -> None:
    url, engine = notebook.demo_database(tmp_path / "sub" / "demo.db", events=0)
    try:
        assert url == f"sqlite:///{tmp_path / 'sub' / 'demo.db'}"
        assert analytics.count_events(engine) == 0
        publish_one(engine)  # the demo schema is there
        assert analytics.count_events(engine) == 1
    finally:
        engine.dispose()
    with pytest.raises(ValueError, match="negative"):
        notebook.demo_database(tmp_path / "x.db", events=-1)


def test_open_database_without_url_is_a_demo_database() -> None:
    url, engine = notebook.open_database(None, demo_events=10)
    try:
        assert "outbox-notebook-" in url
        assert analytics.count_events(engine) >= 10
    finally:
        engine.dispose()


def test_open_database_reads_a_database_as_it_is(db_url: str) -> None:
    url, engine = notebook.open_database(db_url)
    try:
        assert analytics.count_events(engine) == 0  # nothing added
        assert not inspect(engine).has_table(demo.Project.__tablename__)
        assert url == str(engine.url) and "://" in url
    finally:
        engine.dispose()


def test_open_database_refuses_a_database_without_the_outbox(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with create_engine(f"sqlite:///{path}").begin() as conn:
        conn.exec_driver_sql("CREATE TABLE app (id INTEGER)")
    with pytest.raises(ConfigurationError, match="no OutboxEvent table.*outbox-admin init"):
        notebook.open_database(f"sqlite:///{path}")
    assert inspect(create_engine(f"sqlite:///{path}")).get_table_names() == ["app"]  # nothing written


def test_demo_activity_runs_next_to_a_busy_dispatcher_on_sqlite(tmp_path: Path) -> None:
    _, engine = notebook.demo_database(tmp_path / "busy.db", events=5)
    before = analytics.count_events(engine)
    service = DispatcherService(demo.demo_dispatcher(engine, demo.DemoHandler(fail_share=0.3)), interval_seconds=0.05)
    reports = []
    with service:
        # At least 25 rounds, and on until the dispatcher has claimed (a loaded machine may give it
        # one tick in 25 rounds), so both really ran side by side; the deadline bounds the wait.
        deadline = time.monotonic() + 30
        while len(reports) < 25 or (service.status().totals.claimed == 0 and time.monotonic() < deadline):
            reports.append(notebook.demo_activity(engine, 3, seed=len(reports)))  # updates read, then write
    assert sum(r.events for r in reports) == 3 * len(reports)
    assert sum(r.updated + r.archived for r in reports) > 0
    assert analytics.count_events(engine) == before + 3 * len(reports)
    assert service.status().totals.claimed > 0  # the dispatcher committed while the activity ran
    engine.dispose()


# -- watch ---------------------------------------------------------------------------


class FakeDisplay:
    """Stands for ``IPython.display.display(obj, display_id=True)`` and the handle it returns."""

    def __init__(self) -> None:
        self.shown: list[Any] = []
        self.updates: list[Any] = []

    def __call__(self, obj: Any) -> FakeDisplay:
        self.shown.append(obj)
        return self

    def update(self, obj: Any) -> None:
        self.updates.append(obj)


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def sqlite_engine(sqlite_url: str) -> Iterator[Engine]:
    engine = make_engine(sqlite_url)
    demo.create_demo_schema(engine)
    yield engine
    engine.dispose()


def test_watch_shows_one_output_and_updates_it_in_place(sqlite_engine: Engine) -> None:
    fake, time = FakeDisplay(), FakeTime()
    published: list[str] = []
    history = notebook.watch(
        sqlite_engine,
        seconds=3,
        interval=1,
        step=lambda: published.append(publish_one(sqlite_engine)),
        display=fake,
        clock=time.clock,
        sleep=time.sleep,
    )
    assert len(fake.shown) == 1 and len(fake.updates) == 3
    assert time.sleeps == [1, 1, 1]
    first, last = fake.shown[0], fake.updates[-1]
    assert first.counts == dict.fromkeys(STATUSES, 0) and first.state == "live"
    assert last.state == "finished" and last.counts["PENDING"] == 3 and last.delta("PENDING") == 1
    assert [b.state for b in fake.updates] == ["live", "live", "finished"]
    assert list(history.columns) == ["at", "elapsed", *STATUSES]
    assert history["PENDING"].tolist() == [0, 1, 2, 3]
    assert history["elapsed"].tolist() == [0, 1, 2, 3]
    assert str(history["at"].dtype).startswith("datetime64") and history["at"].dt.tz is not None
    assert len(published) == 3


def test_watch_takes_filters_and_a_short_last_wait(sqlite_engine: Engine) -> None:
    publish_one(sqlite_engine)
    fake, time = FakeDisplay(), FakeTime()
    history = notebook.watch(
        sqlite_engine, seconds=2.5, interval=1, status="COMPLETED", display=fake, clock=time.clock, sleep=time.sleep
    )
    assert time.sleeps == [1, 1, 0.5]
    assert history["PENDING"].tolist() == [0, 0, 0, 0]  # filtered out
    with pytest.raises(FilterError):
        notebook.watch(sqlite_engine, seconds=1, status="NOPE", display=fake)


def test_watch_for_zero_seconds_shows_one_finished_board(sqlite_engine: Engine) -> None:
    fake = FakeDisplay()
    history = notebook.watch(sqlite_engine, seconds=0, display=fake, sleep=lambda s: pytest.fail("slept"))
    assert len(fake.shown) == 1 and fake.updates == [] and fake.shown[0].state == "finished"
    assert len(history) == 1


def test_watch_stops_quietly_when_interrupted(sqlite_engine: Engine) -> None:
    fake, time = FakeDisplay(), FakeTime()
    calls = []

    def step() -> None:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    history = notebook.watch(sqlite_engine, seconds=10, display=fake, step=step, clock=time.clock, sleep=time.sleep)
    assert len(history) == 2
    assert fake.updates[-1].state == "stopped"
    assert "stopped after 1.0 s" in str(fake.updates[-1])


def test_watch_rejects_bad_timing(sqlite_engine: Engine) -> None:
    with pytest.raises(ValueError, match="seconds"):
        notebook.watch(sqlite_engine, seconds=-1, display=FakeDisplay())
    with pytest.raises(ValueError, match="interval"):
        notebook.watch(sqlite_engine, seconds=1, interval=0, display=FakeDisplay())


def test_watch_outside_ipython_prints_one_line_per_refresh(sqlite_engine: Engine, capsys) -> None:
    time = FakeTime()
    notebook.watch(sqlite_engine, seconds=2, interval=1, clock=time.clock, sleep=time.sleep)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("[live: 0.0 s of 2 s, 0 events")
    assert lines[-1].startswith("[finished after 2.0 s, 0 events") and "FAILED 0" in lines[-1]


def test_status_board_renders_colours_changes_and_escapes_names() -> None:
    board = notebook.StatusBoard(
        counts={"PENDING": 3, "FAILED": 1, "<b>ODD</b>": 2},
        previous={"PENDING": 5, "FAILED": 1},
        elapsed=4,
        seconds=10,
        at=T0,
    )
    page = board._repr_html_()
    assert "#f2a900" in page and "#d62728" in page  # the chart colours
    assert "(-2)" in page and "(+2)" in page and "&lt;b&gt;ODD&lt;/b&gt;" in page and "<b>ODD" not in page
    assert str(board) == "[live: 4.0 s of 10 s, 6 events, 09:00:00 UTC] PENDING 3 (-2) | FAILED 1 | <b>ODD</b> 2 (+2)"


def test_importing_the_package_and_watching_need_no_ipython(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["IPython"] = None  # any import of IPython now fails
        import outbox_admin, outbox_admin.notebook as nb
        from outbox_admin import make_engine, init_db
        engine = make_engine("sqlite:///{tmp_path / "x.db"}")
        init_db(engine)
        nb.watch(engine, seconds=0)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("[finished after 0.0 s, 0 events")


# -- analysis ------------------------------------------------------------------------

ROWS = [
    ("e1", "PROJECT.CREATED", "acme", "COMPLETED", 0),
    ("e2", "PROJECT.CREATED", "acme", "COMPLETED", 2),
    ("e3", "PROJECT.CREATED", "globex", "FAILED", 3),
    ("e4", "PROJECT.UPDATED", "globex", "FAILED", 3),
    ("e5", "PROJECT.UPDATED", "globex", "FAILED", 3),
    ("e6", "PROJECT.ARCHIVED", "initech", "PENDING", 0),
]


@pytest.fixture
def any_engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def test_notebooks_keep_the_failure_breakdown_names() -> None:
    assert notebook.failure_breakdown is analytics.failure_breakdown
    assert notebook.failure_breakdown_figure is charts.failure_breakdown_figure


def test_failure_breakdown_by_type_and_org(any_engine: Engine) -> None:
    add_events(any_engine, ROWS)
    by_type = analytics.failure_breakdown(any_engine)
    assert by_type.to_dict("records") == [
        {"event_type": "PROJECT.UPDATED", "events": 2, "retried": 2, "failed": 2, "failed_share": 1.0},
        {"event_type": "PROJECT.CREATED", "events": 3, "retried": 2, "failed": 1, "failed_share": 1 / 3},
        {"event_type": "PROJECT.ARCHIVED", "events": 1, "retried": 0, "failed": 0, "failed_share": 0.0},
    ]
    by_org = analytics.failure_breakdown(any_engine, "org_id", status=["FAILED", "COMPLETED"])
    assert by_org[["org_id", "events", "failed"]].values.tolist() == [["globex", 3, 3], ["acme", 2, 0]]
    assert analytics.failure_breakdown(any_engine, "org_id", org_id="nobody").empty
    with pytest.raises(FilterError, match="by"):
        analytics.failure_breakdown(any_engine, "payload")


def test_failure_breakdown_figure_stacks_failed_retried_and_clean(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    add_events(engine, ROWS)
    fig = charts.failure_breakdown_figure(analytics.failure_breakdown(engine, "org_id"))
    assert isinstance(fig, go.Figure) and fig.layout.title.text == "Failures by org id"
    traces = {t.name: list(t.y) for t in fig.data}
    assert list(fig.data[0].x) == ["globex", "acme", "initech"]
    assert traces == {"FAILED": [3, 0, 0], "retried, not failed": [0, 1, 0], "no retry": [0, 1, 1]}
    empty = charts.failure_breakdown_figure(analytics.failure_breakdown(engine, org_id="nobody"))
    assert empty.layout.annotations[0].text == "No events yet"
    engine.dispose()


@pytest.mark.parametrize(
    ("span", "bucket"),
    [
        (0, "1s"),
        (30, "1s"),
        (59, "1s"),
        (60, "5s"),
        (599, "10s"),
        (600, "30s"),
        (3 * 3600, "5min"),
        (30 * 86400, "1D"),
        (3650 * 86400, "7D"),
    ],
)
def test_throughput_bucket_fits_the_history(sqlite_url: str, span: int, bucket: str) -> None:
    engine = make_engine(sqlite_url)
    assert notebook.throughput_bucket(engine) == "1min"  # no history yet
    add_events(engine, [("e1", "PROJECT.CREATED", "acme", "PENDING", 0)])
    with engine.begin() as conn:
        conn.execute(
            insert(TRANSITIONS),
            [
                {"event_id": "e1", "from_status": None, "to_status": "PENDING", "at": T0, "actor": "t", "attempt": 0},
                {
                    "event_id": "e1",
                    "from_status": "PENDING",
                    "to_status": "PENDING",
                    "at": T0 + dt.timedelta(seconds=span),
                    "actor": "t",
                    "attempt": 0,
                },
            ],
        )
    assert notebook.throughput_bucket(engine) == bucket
    assert len(analytics.throughput(engine, bucket)) <= 60
    with pytest.raises(ValueError):
        notebook.throughput_bucket(engine, 0)
    engine.dispose()


def test_read_events_pages_through_every_match(any_engine: Engine) -> None:
    add_events(any_engine, ROWS)
    everything = notebook.read_events(any_engine, page_size=2)
    assert everything["id"].tolist() == ["e6", "e5", "e4", "e3", "e2", "e1"]  # newest first
    assert list(everything.columns) == analytics.EVENT_COLUMNS
    assert notebook.read_events(any_engine, status="FAILED", page_size=2)["id"].tolist() == ["e5", "e4", "e3"]
    assert notebook.read_events(any_engine, max_rows=3, page_size=2)["id"].tolist() == ["e6", "e5", "e4"]
    none = notebook.read_events(any_engine, org_id="nobody")
    assert none.empty and list(none.columns) == analytics.EVENT_COLUMNS
    with pytest.raises(ValueError):
        notebook.read_events(any_engine, max_rows=0)


def test_export_frame_writes_csv_and_parquet_with_payloads_as_json(sqlite_url: str, tmp_path: Path) -> None:
    engine = make_engine(sqlite_url)
    add_events(engine, ROWS)
    frame = notebook.read_events(engine)
    csv = notebook.export_frame(frame, tmp_path / "out" / "events.csv")
    parquet = notebook.export_frame(frame, tmp_path / "out" / "events.parquet")
    assert csv == tmp_path / "out" / "events.csv" and parquet.exists()
    from_csv, from_parquet = pd.read_csv(csv), pd.read_parquet(parquet)
    for back in (from_csv, from_parquet):
        assert back["id"].tolist() == frame["id"].tolist()
        assert [json.loads(p) for p in back["payload"]] == frame["payload"].tolist()
    assert from_parquet["created_at"].tolist() == frame["created_at"].tolist()
    assert isinstance(frame["payload"][0], dict)  # the frame itself is left as it was
    with pytest.raises(ValueError, match=r"\.csv or \.parquet"):
        notebook.export_frame(frame, tmp_path / "events.xlsx")
    engine.dispose()

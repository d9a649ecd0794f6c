"""The console on a real database: opening only reads, read-only writes nothing (files
included), failures are one line, and its dispatcher delivers to configured handlers or
does not run. Real SQLite files and the real PostgreSQL, through Streamlit's AppTest."""

from __future__ import annotations

import sqlite3
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import streamlit as st
from sqlalchemy import create_engine, inspect, text
from streamlit.testing.v1 import AppTest

from outbox_admin import analytics, demo, init_db, make_engine, publish_outbox_event
from outbox_admin.handlers import Route
from outbox_admin.migrate import upgrade
from outbox_admin.ui.context import stop_all_services

from .dashboard_support import keep_main_module, page  # noqa: F401 - an autouse fixture

TIMEOUT = 60
PAGES = ("overview", "live", "events", "failures", "publish")


@pytest.fixture(autouse=True)
def clean_dashboard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("OUTBOX_DASHBOARD_PASSWORD", "OUTBOX_DASHBOARD_READONLY", "OUTBOX_CONFIG", "OUTBOX_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no outbox.toml of the checkout, and ./outbox.db is this test's
    yield
    stop_all_services()
    st.cache_resource.clear()
    st.cache_data.clear()


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def _foreign_sqlite(path: Path, *, wal: bool) -> None:
    conn = sqlite3.connect(path)
    if wal:
        conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE app_users (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO app_users (name) VALUES ('ana')")
    conn.commit()
    conn.close()


def _publish(engine, count: int) -> None:
    with engine.begin() as tx:
        for n in range(count):
            publish_outbox_event(
                tx, org_id="acme", event_type="PROJECT.CREATED", entity_type="Project", entity_id=f"p{n}", payload={}
            )


# --- opening never writes -----------------------------------------------------------------


@pytest.mark.parametrize("wal", [False, True], ids=["rollback-journal", "wal"])
def test_opening_a_foreign_sqlite_database_changes_no_byte(tmp_path: Path, monkeypatch, wal: bool) -> None:
    directory = tmp_path / "app"
    directory.mkdir()
    _foreign_sqlite(directory / "app.db", wal=wal)
    before = _files(directory)
    monkeypatch.setenv("OUTBOX_DATABASE_URL", f"sqlite:///{directory / 'app.db'}")
    for name in PAGES:
        at = page(name).run()
        assert not at.exception
        assert any("has no outbox tables" in w.value for w in at.warning)
        assert "Create the outbox tables" in {b.label for b in at.button}
    assert _files(directory) == before  # the same files, byte for byte: no tables, no WAL switch, no side files


def test_opening_a_foreign_postgres_database_changes_nothing(empty_postgres_url: str, monkeypatch) -> None:
    engine = create_engine(empty_postgres_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE app_users (id serial PRIMARY KEY, name text)"))
    monkeypatch.setenv("OUTBOX_DATABASE_URL", empty_postgres_url)
    for name in PAGES:
        at = page(name).run()
        assert not at.exception
        assert any("has no outbox tables" in w.value for w in at.warning)
    assert inspect(engine).get_table_names() == ["app_users"]
    engine.dispose()


def test_the_tables_appear_only_when_asked_for_and_without_the_demo_tables(tmp_path: Path, monkeypatch) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    _foreign_sqlite(tmp_path / "app.db", wal=False)
    monkeypatch.setenv("OUTBOX_DATABASE_URL", url)
    at = page("overview").run()
    [create] = [b for b in at.button if b.label == "Create the outbox tables"]
    create.click().run()
    assert not at.exception
    tables = set(inspect(create_engine(url)).get_table_names())
    assert {"OutboxEvent", "app_users"} <= tables
    assert not tables & {"demo_project", "demo_outbox_marker"}  # demo tables only by the demo actions
    assert "same transaction" in at.info[0].value  # the Overview's empty state now


def test_an_outdated_schema_is_shown_and_upgraded_on_request(tmp_path: Path, monkeypatch) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url)
    upgrade(engine, revision="0002")
    monkeypatch.setenv("OUTBOX_DATABASE_URL", url)
    at = page("events").run()
    assert any("revision 0002" in w.value for w in at.warning)
    [upgrade_button] = [b for b in at.button if b.label == "Upgrade the outbox tables"]
    upgrade_button.click().run()
    assert not at.exception
    assert not any("revision 0002" in w.value for w in at.warning)
    engine.dispose()


def test_first_run_on_a_missing_file_creates_it_only_with_load_demo_data(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("OUTBOX_DATABASE_URL", f"sqlite:///{tmp_path / 'outbox.db'}")
    at = page("overview").run()
    assert any("does not exist yet" in w.value for w in at.warning)
    assert not (tmp_path / "outbox.db").exists()
    [load] = [b for b in at.button if b.label == "Load demo data"]
    load.click().run()
    assert not at.exception
    engine = make_engine(f"sqlite:///{tmp_path / 'outbox.db'}")
    assert analytics.count_events(engine) > 0 and demo.is_demo_database(engine)
    engine.dispose()


# --- read-only ----------------------------------------------------------------------------


def test_read_only_creates_no_file_and_offers_no_creation(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("OUTBOX_DASHBOARD_READONLY", "1")
    monkeypatch.setenv("OUTBOX_DATABASE_URL", f"sqlite:///{tmp_path / 'new.db'}")
    for name in ("overview", "events"):
        at = page(name).run()
        assert not at.exception
        assert any("does not exist yet" in w.value for w in at.warning)
        assert not {"Create the outbox tables", "Load demo data"} & {b.label for b in at.button}
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_read_only_switches_only_to_configured_databases(tmp_path: Path, monkeypatch) -> None:
    from outbox_admin.errors import ConfigurationError
    from outbox_admin.ui.context import DashboardSettings, open_database

    allowed = tmp_path / "allowed.db"
    engine = make_engine(f"sqlite:///{allowed}")
    init_db(engine)
    _publish(engine, 2)
    engine.dispose()
    (tmp_path / "outbox.toml").write_text(f'[dashboard]\ndatabases = {{ reports = "sqlite:///{allowed}" }}\n')
    monkeypatch.setenv("OUTBOX_DASHBOARD_READONLY", "1")
    monkeypatch.setenv("OUTBOX_DATABASE_URL", f"sqlite:///{tmp_path / 'main.db'}")
    with pytest.raises(ConfigurationError, match="only the databases in its configuration"):
        open_database(DashboardSettings.from_env(), f"sqlite:///{tmp_path / 'elsewhere.db'}")
    at = page("events").run()
    assert not [t for t in at.sidebar.text_input if "URL" in t.label]  # no free-text URL in read-only mode
    at.sidebar.selectbox[0].select("reports")
    [connect] = [b for b in at.sidebar.button if b.label == "Connect"]
    connect.click().run()
    assert not at.exception
    assert "of 2 matching events" in " ".join(c.value for c in at.caption)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["allowed.db", "outbox.toml"]


def test_read_only_postgres_refuses_writes_at_the_server(postgres_url: str) -> None:
    engine = make_engine(postgres_url, read_only=True)
    with engine.connect() as conn:
        assert conn.execute(text("SHOW default_transaction_read_only")).scalar() == "on"
        with pytest.raises(Exception, match="read-only transaction"):
            conn.execute(text('DELETE FROM "OutboxEvent"'))
    engine.dispose()


def test_read_only_sqlite_reads_a_live_database_and_leaves_a_quiet_one_alone(tmp_path: Path) -> None:
    path = tmp_path / "live.db"
    writer = make_engine(f"sqlite:///{path}")
    init_db(writer)
    writer.dispose()  # quiet: WAL database, no side files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live.db"]
    reader = make_engine(f"sqlite:///{path}", read_only=True)
    assert analytics.count_events(reader) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live.db"]
    writer = make_engine(f"sqlite:///{path}")
    with writer.connect() as held:  # a writer holds the database open, as an application does
        _publish(writer, 3)
        assert analytics.count_events(reader) == 3  # reads share the writer's WAL, seeing its commits
        held.execute(text("SELECT 1"))
        with reader.connect() as conn, pytest.raises(Exception, match="readonly"):
            conn.execute(text('DELETE FROM "OutboxEvent"'))
    writer.dispose()
    reader.dispose()


# --- failures are one line -----------------------------------------------------------------


def test_a_failed_connection_is_one_line_and_the_database_stays(sqlite_url: str, monkeypatch) -> None:
    monkeypatch.setenv("OUTBOX_DATABASE_URL", sqlite_url)
    at = page("events").run()
    [url_box] = [t for t in at.sidebar.text_input if "URL" in t.label]
    url_box.set_value("postgresql://nobody@127.0.0.1:1/nope")
    [connect] = [b for b in at.sidebar.button if b.label == "Connect"]
    started = time.monotonic()
    connect.click().run()
    assert time.monotonic() - started < 6
    assert not at.exception
    [error] = [e.value for e in at.sidebar.error if "Not connected" in e.value]
    assert "\n" not in error and "Traceback" not in error and "OperationalError" in error
    assert "outbox.db" in at.sidebar.code[0].value  # the database in use did not change
    assert [t.value for t in at.title] == ["Events"]  # and its page is still there


def test_a_page_that_fails_shows_one_line_not_a_traceback(sqlite_url: str, monkeypatch) -> None:
    monkeypatch.setenv("OUTBOX_DATABASE_URL", sqlite_url)
    at = page("events").run()
    assert not at.exception
    engine = make_engine(sqlite_url)
    with engine.begin() as conn:  # the tables vanish under a running console (its state is cached)
        conn.execute(text('DROP TABLE "OutboxEventTransition"'))
        conn.execute(text('DROP TABLE "OutboxEvent"'))
    engine.dispose()
    at.run()
    assert not at.exception
    failed = [e.value for e in at.main.error if "This page failed" in e.value]
    assert len(failed) == 1 and "no such table" in failed[0] and "\n" not in failed[0]
    panel = [e.value for e in at.sidebar.error if "This page failed" in e.value]  # the sidebar's panel too
    assert len(panel) == 1 and "no such table" in panel[0]


def test_an_unreachable_configured_database_keeps_the_sidebar(monkeypatch) -> None:
    monkeypatch.setenv("OUTBOX_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/nope")
    at = page("overview").run()
    assert not at.exception
    assert any("Cannot open the database" in e.value for e in at.error)
    assert "Connect" in {b.label for b in at.sidebar.button}


# --- the dashboard's dispatcher -------------------------------------------------------------

APP_MODULE = """
    received = []

    class Recorder:
        name = "recorder"

        def __call__(self, event):
            received.append(event.id)

    def handlers():
        return [Recorder()]
"""


@pytest.fixture
def app_handlers(tmp_path: Path, monkeypatch) -> Iterator[object]:
    """An application package with a handler factory, named in outbox.toml."""
    module = f"app_outbox_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(APP_MODULE))
    (tmp_path / "outbox.toml").write_text(f'handlers = "{module}:handlers"\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    yield lambda: sys.modules[module].received  # type: ignore[attr-defined]
    sys.modules.pop(module, None)


def test_no_handlers_configured_means_no_dispatching(sqlite_url: str, monkeypatch) -> None:
    engine = make_engine(sqlite_url)
    _publish(engine, 5)
    monkeypatch.setenv("OUTBOX_DATABASE_URL", sqlite_url)
    at = page("overview").run()
    assert not at.exception
    controls = {b.label: b for b in at.sidebar.button if b.label in ("Start", "Tick", "Drain")}
    assert set(controls) == {"Start", "Tick", "Drain"} and all(b.disabled for b in controls.values())
    assert all("No handlers are configured" in (b.help or "") for b in controls.values())
    assert any("No handlers are configured" in c.value for c in at.sidebar.caption)
    assert analytics.count_events(engine, status="PENDING") == 5
    engine.dispose()


def test_the_dispatcher_delivers_to_the_configured_handlers(sqlite_url: str, monkeypatch, app_handlers) -> None:
    engine = make_engine(sqlite_url)
    _publish(engine, 5)
    monkeypatch.setenv("OUTBOX_DATABASE_URL", sqlite_url)
    at = page("overview").run()
    assert not at.exception
    assert any("Delivers to" in c.value and "`recorder`" in c.value for c in at.sidebar.caption)
    assert not any("`demo`" in c.value for c in at.sidebar.caption)  # not a demo database
    [tick] = [b for b in at.sidebar.button if b.label == "Tick"]
    tick.click().run()
    assert not at.exception
    assert len(app_handlers()) == 5
    assert analytics.count_events(engine, status="COMPLETED") == 5
    engine.dispose()


def test_tick_runs_one_batch_and_names_every_outcome(sqlite_url: str, monkeypatch, app_handlers) -> None:
    engine = make_engine(sqlite_url)
    _publish(engine, 30)
    monkeypatch.setenv("OUTBOX_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("OUTBOX_BATCH_SIZE", "10")
    at = page("overview").run()
    [tick] = [b for b in at.sidebar.button if b.label == "Tick"]
    tick.click().run()
    assert not at.exception
    assert analytics.count_events(engine, status="COMPLETED") == 10
    [toast] = [t.value for t in at.toast]
    for kind in ("10 claimed", "10 completed", "0 retried", "0 failed", "0 recovered", "waiting", "0 lost"):
        assert kind in toast
    engine.dispose()


def test_drain_shows_progress_and_stops_on_request(sqlite_url: str, monkeypatch, app_handlers) -> None:
    from outbox_admin.ui.context import dashboard_dispatcher

    engine = make_engine(sqlite_url)
    _publish(engine, 40)
    monkeypatch.setenv("OUTBOX_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("OUTBOX_BATCH_SIZE", "1")
    at = page("overview").run()
    service = dashboard_dispatcher(sqlite_url).service
    assert service is not None
    gate = threading.Event()
    service.dispatcher.routes = [Route.of(_Slow(gate))]  # a receiver that waits for the test
    [drain] = [b for b in at.sidebar.button if b.label == "Drain"]
    drain.click().run()
    assert not at.exception
    assert service.status().draining
    assert any("draining" in m.value for m in at.sidebar.markdown)
    assert "Stop drain" in {b.label for b in at.sidebar.button}
    gate.set()
    deadline = time.monotonic() + 30
    while (service.status().current_run or _Empty).completed < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    at.run()
    assert any("In progress: " in c.value for c in at.sidebar.caption)
    [stop] = [b for b in at.sidebar.button if b.label == "Stop drain"]
    stop.click().run()
    assert not at.exception and not service.status().draining
    done = analytics.count_events(engine, status="COMPLETED")
    assert 3 <= done < 40 and analytics.count_events(engine, status="PENDING") == 40 - done
    engine.dispose()


class _Empty:
    completed = 0


class _Slow:
    name = "slow"

    def __init__(self, gate) -> None:
        self.gate = gate

    def __call__(self, event) -> None:
        self.gate.wait(30)
        time.sleep(0.02)


def test_a_refresh_that_fails_is_one_line_too() -> None:
    """The live parts rerun on their own (fragments): a failure in a rerun is caught as the page's are."""

    def script() -> None:
        import streamlit as st

        from outbox_admin.ui import components

        @components.live(None)
        def part() -> None:
            st.button("Refresh")  # a click reruns only this part
            if st.session_state.get("runs", 0) > 0:
                raise RuntimeError("the database went away\nwith a second line")
            st.session_state["runs"] = 1

        part()

    at = AppTest.from_function(script, default_timeout=TIMEOUT).run()
    assert not at.exception and not at.error
    at.button[0].click().run()
    assert not at.exception
    assert [e.value for e in at.error] == [
        "This page failed: `RuntimeError: the database went away`. The server log has the details."
    ]


def test_two_sinks_with_one_name_are_a_sentence_not_a_crash(sqlite_url: str, monkeypatch, tmp_path: Path) -> None:
    (tmp_path / "outbox.toml").write_text(
        '[[sinks]]\ntype = "redis-streams"\nurl = "redis://127.0.0.1:6379/0"\nname = "bus"\n'
        '[[sinks]]\ntype = "redis-streams"\nurl = "redis://127.0.0.1:6379/1"\nname = "bus"\n'
    )
    monkeypatch.setenv("OUTBOX_DATABASE_URL", sqlite_url)
    at = page("overview").run()
    assert not at.exception
    assert any("two handlers are named 'bus'" in c.value for c in at.sidebar.caption)
    assert all(b.disabled for b in at.sidebar.button if b.label in ("Start", "Tick", "Drain"))

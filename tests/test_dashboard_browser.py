"""The dashboard in a real browser: ``streamlit run dashboard.py`` driven by headless Chromium.

Publishes an event from the Publish page, runs a tick from the sidebar, sees the
event COMPLETED on the Events page, and saves a screenshot of every page under
``test-artifacts/screenshots`` (or ``$OUTBOX_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest

from outbox_admin import analytics, demo, init_db, make_engine

from .browser_support import chromium

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("OUTBOX_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "screenshots"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_dashboard(
    tmp_path: Path, *, project_config: bool, env: Mapping[str, str] | None = None
) -> Iterator[tuple[str, str, subprocess.Popen[bytes]]]:
    """A dashboard server on a free port and a temporary SQLite demo database: (base URL, database URL, process).

    ``project_config``: started from the checkout, as the quick start does, so the project's
    ``.streamlit/config.toml`` is what configures it; otherwise from a temporary folder with
    the same settings given as flags. ``env``: more variables for the server (access settings, ...).
    """
    url = f"sqlite:///{tmp_path / 'browser.db'}"
    engine = make_engine(url)  # a demo database: outbox tables and the demo's mark, so its dispatcher runs
    init_db(engine)
    demo.create_demo_schema(engine)
    engine.dispose()
    port = free_port()
    extra = env or {}
    env = {**os.environ, "OUTBOX_DATABASE_URL": url, "OUTBOX_INTERVAL_SECONDS": "3600"}
    for name in [n for n in env if n.startswith(("STREAMLIT_", "OUTBOX_DASHBOARD_")) or n == "OUTBOX_CONFIG"]:
        env.pop(name)
    env.update(extra)
    flags = ["--server.port", str(port), "--server.fileWatcherType", "none"]
    if not project_config:
        flags += ["--server.headless", "true", "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"]
    log = (tmp_path / "streamlit.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "dashboard.py"), *flags],
        cwd=ROOT if project_config else tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail(f"streamlit did not start:\n{(tmp_path / 'streamlit.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield base, url, server
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[tuple[str, str]]:
    with running_dashboard(tmp_path, project_config=False) as (base, url, _):
        yield base, url


@pytest.fixture
def browser_page() -> Iterator[object]:
    with chromium() as browser:
        yield browser.new_page(viewport={"width": 1400, "height": 1000})


def open_page(page, base: str, path: str, heading: str) -> None:
    page.goto(f"{base}/{path}")
    page.get_by_role("heading", name=heading).first.wait_for(timeout=30_000)


def test_publish_tick_and_see_it_completed_in_a_real_browser(dashboard, browser_page) -> None:
    base, url = dashboard
    page = browser_page
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    open_page(page, base, "publish", "Publish")
    # The type box takes any text; an unregistered type is refused by the publisher, visibly.
    type_box = page.get_by_role("combobox", name="Event type")
    type_box.click()
    type_box.fill("INVOICE.PAID")
    type_box.press("Enter")
    page.get_by_role("button", name="Publish", exact=True).click()
    page.get_by_text("Nothing was published").wait_for(timeout=30_000)
    assert "INVOICE.PAID" in page.get_by_text("Nothing was published").inner_text()
    type_box.click()
    type_box.fill("PROJECT.CREATED")
    type_box.press("Enter")
    page.get_by_label("Payload (JSON)").fill('{"name": "Browser", "budget": 42.5}')
    page.get_by_role("button", name="Publish", exact=True).click()
    try:
        page.get_by_text("Published PROJECT.CREATED").wait_for(timeout=30_000)
    finally:
        page.screenshot(path=str(ARTIFACTS / "publish.png"), full_page=True)
    page.screenshot(path=str(ARTIFACTS / "publish.png"), full_page=True)

    engine = make_engine(url)
    try:
        assert analytics.count_events(engine, status="PENDING") == 1
        event_id = analytics.events_frame(engine)["id"][0]
        page.get_by_role("button", name="Tick").click()
        deadline = time.monotonic() + 30
        while analytics.count_events(engine, status="COMPLETED") != 1:
            assert time.monotonic() < deadline, "the tick did not complete the event"
            time.sleep(0.1)
    finally:
        engine.dispose()

    open_page(page, base, "events?status=COMPLETED", "Events")
    page.get_by_text("of 1 matching events").wait_for(timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "events.png"), full_page=True)

    # A link to the event opens its detail, and the link survives a reload.
    open_page(page, base, f"events?id={event_id}", "Events")
    page.get_by_text("Last error, in full").or_(page.get_by_text("Payload", exact=True)).first.wait_for(timeout=30_000)
    assert page.get_by_text(event_id).count() > 0
    page.reload()
    page.get_by_text("Payload", exact=True).first.wait_for(timeout=30_000)
    assert f"id={event_id}" in page.url

    for path, heading in (("", "Overview"), ("live", "Live"), ("failures", "Failures")):
        open_page(page, base, path, heading)
        page.wait_for_timeout(1500)  # let the charts draw before the picture (not a synchronisation)
        page.screenshot(path=str(ARTIFACTS / f"{heading.lower()}.png"), full_page=True)
    assert sorted(p.name for p in ARTIFACTS.glob("*.png")) >= [
        "events.png",
        "failures.png",
        "live.png",
        "overview.png",
        "publish.png",
    ]


def test_quiet_and_local_by_default(tmp_path: Path, browser_page) -> None:
    """Started as the quick start does: every page load stays on this server (no usage statistics, no
    icon fonts from the internet), no Deploy button, and the server listens on 127.0.0.1 only."""
    import psutil

    page = browser_page
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    with running_dashboard(tmp_path, project_config=True) as (base, _url, server):
        for path, heading in (("", "Overview"), ("events", "Events"), ("failures", "Failures"), ("publish", "Publish")):
            open_page(page, base, path, heading)
        page.get_by_role("heading", name="Publish").first.wait_for(timeout=30_000)
        assert page.get_by_text("Deploy", exact=True).count() == 0
        listening = {
            c.laddr.ip for c in psutil.Process(server.pid).net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN
        }
    local = ("http://127.0.0.1:", "ws://127.0.0.1:", "data:", "blob:")
    assert requests and not [u for u in requests if not u.startswith(local)], "a page load left this server"
    assert listening == {"127.0.0.1"}, listening

"""The dashboard in a real browser: ``streamlit run dashboard.py`` driven by headless Chromium.

Publishes an event from the Publish page, runs a tick from the sidebar, sees the
event COMPLETED on the Events page, and saves a screenshot of every page under
``test-artifacts/screenshots`` (or ``$OUTBOX_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from outbox_admin import analytics, make_engine

from .services import unavailable

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("OUTBOX_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(os.environ.get("OUTBOX_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "screenshots"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A dashboard server on a free port and a temporary SQLite database: (base URL, database URL)."""
    url = f"sqlite:///{tmp_path / 'browser.db'}"
    port = free_port()
    env = {**os.environ, "OUTBOX_DATABASE_URL": url, "OUTBOX_INTERVAL_SECONDS": "3600"}
    for name in ("OUTBOX_DASHBOARD_PASSWORD", "OUTBOX_DASHBOARD_READONLY"):
        env.pop(name, None)
    log = (tmp_path / "streamlit.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            str(ROOT / "dashboard.py"),
            "--server.headless",
            "true",
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--browser.gatherUsageStats",
            "false",
            "--server.fileWatcherType",
            "none",
        ],
        cwd=tmp_path,
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
        yield base, url
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


@pytest.fixture
def browser_page() -> Iterator[object]:
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
        unavailable("Chromium", f"{CHROMIUM} not found (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            yield browser.new_page(viewport={"width": 1400, "height": 1000})
        finally:
            browser.close()


def open_page(page, base: str, path: str, heading: str) -> None:
    page.goto(f"{base}/{path}")
    page.get_by_role("heading", name=heading).first.wait_for(timeout=30_000)


def test_publish_tick_and_see_it_completed_in_a_real_browser(dashboard, browser_page) -> None:
    base, url = dashboard
    page = browser_page
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    open_page(page, base, "publish", "Publish")
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
        page.get_by_role("button", name="Tick").click()
        deadline = time.monotonic() + 30
        while analytics.count_events(engine, status="COMPLETED") != 1:
            assert time.monotonic() < deadline, "the tick did not complete the event"
            time.sleep(0.1)
    finally:
        engine.dispose()

    open_page(page, base, "events?status=COMPLETED", "Events")
    page.get_by_text("1 events match").wait_for(timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "events.png"), full_page=True)

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

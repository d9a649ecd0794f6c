"""The example application (``examples/fastapi_app``) as a user runs it, in headless Chromium.

The example runs as its own process (``python -m examples.fastapi_app``), with its
dispatcher in its lifespan; the page lists projects and updates through
``useMessageBus``. An event published by another process (this test, on PostgreSQL,
where NOTIFY wakes the example's dispatcher) reaches the page; a project created in
one tab appears in another of the same org and never in another org's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from examples.fastapi_app.models import Project
from outbox_admin import make_engine, publish_outbox_event
from outbox_admin.models import OutboxEvent

from .browser_support import chromium
from .services import free_port, unavailable

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


class Example:
    def __init__(self, base: str, url: str) -> None:
        self.base = base
        self.url = url

    def page_url(self, org: str) -> str:
        return f"{self.base}/?org={org}"


def _start_example(tmp_path: Path, url: str, vendor_cache: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    port = free_port()
    env = {**os.environ, "OUTBOX_EXAMPLE_CACHE": str(vendor_cache), "PYTHONPATH": str(ROOT)}
    log_path = tmp_path / "example.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "examples.fastapi_app", "--port", str(port), "--database-url", url],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return process, f"http://127.0.0.1:{port}", log_path


@pytest.fixture
def example(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Example]:
    """The example on the database of the test's parameter (``sqlite`` or ``postgres``)."""
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")
    vendor_cache = Path(request.config.cache.mkdir("example-vendor"))
    process, base, log_path = _start_example(tmp_path, url, vendor_cache)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/api/projects", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the example did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        # React comes from the npm registry on first use (then from the cache): an offline machine
        # without the cache falls back to a CDN, which headless Chromium here cannot reach either.
        react = httpx.get(f"{base}/vendor/react.js", timeout=30)
        if react.status_code != 200:
            unavailable("the npm registry", f"React could not be fetched for the example page ({react.status_code})")
        yield Example(base, url)
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def browser() -> Iterator[object]:
    with chromium() as launched:
        yield launched


def open_projects(browser, example: Example, org: str):
    """A new browser context (its own cookies: its own sign-in) showing ``org``'s projects, stream open."""
    page = browser.new_context().new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(example.page_url(org))
    page.locator(f'[data-org="{org}"]').wait_for(timeout=20_000)
    page.errors = errors
    return page


def names(page) -> list[str]:
    return page.locator("#project-list li").all_inner_texts()


def wait_for_name(page, name: str, timeout: float = 10.0) -> float:
    started = time.monotonic()
    page.locator("#project-list li", has_text=name).wait_for(timeout=timeout * 1000)
    return time.monotonic() - started


def stream_open(page) -> None:
    """Wait until the page's bus stream is connected (so a live event is not a replay)."""
    page.wait_for_function(
        "async () => { const m = await import('/bus/outbox-bus.js'); return m.getMessageBus().state === 'connected'; }",
        timeout=20_000,
    )


@pytest.mark.postgres
@pytest.mark.parametrize("example", ["postgres"], indirect=True)
def test_a_project_published_by_another_process_appears_on_the_page(example, browser) -> None:
    page = open_projects(browser, example, "acme")
    stream_open(page)
    assert names(page) == []

    engine = make_engine(example.url)  # this test process: not the example's
    try:
        with Session(engine) as session, session.begin():
            project = Project(org_id="acme", name="Apollo from a batch job")
            session.add(project)
            session.flush()
            publish_outbox_event(
                session,
                org_id="acme",
                event_type="PROJECT.CREATED",
                entity_type="project",
                entity_id=project.id,
                payload=project.as_json(),
            )
        took = wait_for_name(page, "Apollo from a batch job")
        print(f"published in another process -> on the page in {took:.2f} s")
        assert names(page) == ["Apollo from a batch job"]
        assert page.errors == []
    finally:
        engine.dispose()


@pytest.mark.parametrize("example", ["sqlite"], indirect=True)
def test_a_project_created_in_one_tab_appears_in_the_other_and_never_in_another_org(example, browser) -> None:
    hostile = '<img src=x onerror="window.pwned=1"> Mars & <b>co</b>'
    writer = open_projects(browser, example, "acme")
    reader = open_projects(browser, example, "acme")
    other = open_projects(browser, example, "globex")
    for page in (writer, reader, other):
        stream_open(page)

    writer.fill("input[name=name]", hostile)
    writer.click("button[type=submit]")
    wait_for_name(reader, "Mars")
    assert names(reader) == [hostile]  # shown as text, not markup
    assert reader.evaluate("() => window.pwned") is None
    wait_for_name(writer, "Mars")  # the writer's own list updates through the bus too

    # globex's own project arrives after acme's (one feed, in order): by then acme's would have too.
    httpx.post(f"{example.base}/projects", data={"name": "Globex only"}, cookies={"example_org": "globex"}, timeout=10)
    wait_for_name(other, "Globex only")
    assert names(other) == ["Globex only"]
    assert names(reader) == [hostile]
    assert [p.errors for p in (writer, reader, other)] == [[], [], []]


@pytest.mark.parametrize("example", ["sqlite"], indirect=True)
def test_a_refused_name_creates_nothing_and_publishes_nothing(example) -> None:
    for name in ["   ", "x" * 201]:
        answer = httpx.post(f"{example.base}/projects", data={"name": name}, headers={"Accept": "application/json"})
        assert answer.status_code == 422, answer.text
    json_answer = {"Accept": "application/json"}
    created = httpx.post(f"{example.base}/projects", data={"name": "  Ok   name "}, headers=json_answer)
    assert created.status_code == 201 and created.json()["name"] == "Ok name"
    engine = make_engine(example.url)
    try:
        with engine.connect() as conn:
            assert conn.scalar(select(func.count()).select_from(Project)) == 1
            assert conn.scalar(select(func.count()).select_from(OutboxEvent)) == 1
    finally:
        engine.dispose()

"""Signing in to the real dashboard (``streamlit run dashboard.py``): a plain HTTP client, and headless Chromium.

- a deep link survives signing in; the session survives a reload and a new tab;
- an export's ``/media/...`` URL, fetched without the session, is refused;
- the WebSocket and downloads are refused without a session; wrong passwords are slowed down
  while signed-in requests are not;
- the trusted proxy header names the user, with their role.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from outbox_admin import demo, init_db, make_engine

from .browser_support import chromium
from .test_dashboard_browser import running_dashboard

PASSWORD = "correct horse battery"
ACCESS = {
    "OUTBOX_DASHBOARD_PASSWORD": PASSWORD,
    "OUTBOX_DASHBOARD_OPERATORS": "alice",
    "OUTBOX_DASHBOARD_SECRET": "x" * 40,
}


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return None


def fetch(url: str, *, cookie: str | None = None, data: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
    """(status, headers, body) without following redirects; ``cookie`` is a Cookie header."""
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    request = urllib.request.Request(url, data=body, headers={"Cookie": cookie} if cookie else {})
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def session_cookie(base: str, name: str = "alice") -> str:
    status, headers, _ = fetch(f"{base}/_outbox/login", data={"name": name, "password": PASSWORD, "next": "/"})
    assert status == 303, status
    return headers["set-cookie"].split(";")[0]


def seeded(tmp_path: Path) -> None:
    """Events in the database the server will open (the same file ``running_dashboard`` names)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'browser.db'}")
    try:
        init_db(engine)
        demo.generate_activity(engine, 6, seed=2)
    finally:
        engine.dispose()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    seeded(tmp_path)
    with running_dashboard(tmp_path, project_config=False, env=ACCESS) as (base, _url, _process):
        yield base


@pytest.fixture
def browser() -> Iterator[object]:
    with chromium() as launched:
        yield launched


# -- a plain HTTP client --------------------------------------------------------------------------


def test_without_a_session_the_real_server_gives_nothing_away(server: str) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    status, headers, _ = fetch(f"{server}/events?status=FAILED")
    assert status == 303 and headers["location"] == "/_outbox/login?next=%2Fevents%3Fstatus%3DFAILED"
    assert fetch(f"{server}/_stcore/health")[0] == 200
    assert fetch(f"{server}/media/0123456789abcdef.csv")[0] == 401
    assert fetch(f"{server}/_stcore/host-config")[0] == 401
    stream = server.replace("http", "ws") + "/_stcore/stream"
    with pytest.raises(InvalidStatus) as refused, connect(stream, open_timeout=10):
        pass
    assert refused.value.response.status_code == 403
    cookie = session_cookie(server)
    assert fetch(f"{server}/media/0123456789abcdef.csv", cookie=cookie)[0] == 404  # through to Streamlit: no such file
    with connect(stream, additional_headers={"Cookie": cookie}, open_timeout=10) as websocket:
        assert websocket.protocol.state.name == "OPEN"


def test_a_guesser_is_slowed_down_while_signed_in_people_are_not(server: str) -> None:
    cookie = session_cookie(server, "carol")
    answers: list[tuple[int, float]] = []

    def guess() -> None:
        for n in range(3):  # waits 0.5, 1 and 2 s
            started = time.monotonic()
            status = fetch(f"{server}/_outbox/login", data={"name": "alice", "password": f"guess {n}"})[0]
            answers.append((status, time.monotonic() - started))

    guesser = threading.Thread(target=guess)
    guesser.start()
    signed_in: list[float] = []
    while guesser.is_alive():
        started = time.monotonic()
        assert fetch(f"{server}/events", cookie=cookie)[0] == 200
        signed_in.append(time.monotonic() - started)
    guesser.join()
    assert [status for status, _ in answers] == [401, 401, 401]
    assert [round(seconds, 1) >= wait for (_, seconds), wait in zip(answers, (0.5, 1, 2), strict=True)] == [True] * 3
    assert len(signed_in) > 5 and max(signed_in) < 0.5  # the guesser's waiting held nobody else up


# -- Chromium -------------------------------------------------------------------------------------


def sign_in_form(page, name: str, password: str) -> None:
    page.get_by_label("Name").fill(name)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


def test_signing_in_keeps_the_link_and_survives_reloads_and_new_tabs(server: str, browser) -> None:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(f"{server}/events?status=FAILED")
    page.get_by_role("button", name="Sign in").wait_for(timeout=30_000)
    assert urllib.parse.urlsplit(page.url).path == "/_outbox/login"
    sign_in_form(page, "alice", "wrong")
    page.get_by_text("Wrong name or password.").wait_for(timeout=30_000)
    sign_in_form(page, "alice", PASSWORD)
    page.get_by_role("heading", name="Events").first.wait_for(timeout=30_000)
    assert page.url == f"{server}/events?status=FAILED"
    page.get_by_text("of 0 matching events").wait_for(timeout=30_000)  # the link's filter: events exist, none FAILED
    page.get_by_text("Signed in as").first.wait_for(timeout=30_000)
    assert "alice" in page.get_by_text("Signed in as").first.inner_text()

    page.reload()
    page.get_by_role("heading", name="Events").first.wait_for(timeout=30_000)
    assert page.get_by_role("button", name="Sign in").count() == 0

    tab = context.new_page()
    tab.goto(f"{server}/failures")
    tab.get_by_role("heading", name="Failures").first.wait_for(timeout=30_000)
    assert tab.url == f"{server}/failures"
    cookie = next(c for c in context.cookies() if c["name"] == "outbox_dashboard_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"

    tab.get_by_role("link", name="Sign out").click()  # in this tab
    tab.get_by_text("You are signed out.").wait_for(timeout=30_000)
    assert not [c for c in context.cookies() if c["name"] == "outbox_dashboard_session"]
    page.reload()
    page.get_by_role("button", name="Sign in").wait_for(timeout=30_000)
    context.close()


def test_an_export_url_needs_the_session(server: str, browser) -> None:
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.goto(f"{server}/events")
    sign_in_form(page, "carol", PASSWORD)  # a viewer: exports are reading
    page.get_by_role("heading", name="Events").first.wait_for(timeout=30_000)
    page.get_by_text("Export this view").click()
    download = None
    deadline = time.monotonic() + 60
    while download is None:  # a rerun may replace the button under the click: click the new one
        try:
            with page.expect_download(timeout=10_000) as download_info:
                page.get_by_role("button", name="CSV", exact=True).click()
            download = download_info.value
        except PlaywrightTimeout:
            assert time.monotonic() < deadline, "the CSV export never downloaded"
    assert "/media/" in download.url and Path(download.path()).read_text().startswith("id,")
    status, _, body = fetch(download.url)  # the link alone, without the session cookie
    assert status == 401 and b"id," not in body
    cookie = "; ".join(f"{c['name']}={c['value']}" for c in context.cookies())
    status, _, body = fetch(download.url, cookie=cookie)
    assert status in (200, 404)  # with the session: the file, unless Streamlit already dropped it
    assert status == 404 or body.startswith(b"id,")
    context.close()


def test_the_proxy_header_names_the_user_end_to_end(tmp_path: Path, browser) -> None:
    env = {"OUTBOX_DASHBOARD_USER_HEADER": "X-Forwarded-User", "OUTBOX_DASHBOARD_OPERATORS": "alice"}
    with running_dashboard(tmp_path, project_config=False, env=env) as (base, _url, _process):
        alice = browser.new_context(extra_http_headers={"X-Forwarded-User": "alice"})
        page = alice.new_page()
        page.goto(f"{base}/")
        page.get_by_role("heading", name="Overview").first.wait_for(timeout=30_000)
        page.get_by_text("Signed in as").first.wait_for(timeout=30_000)
        assert "alice" in page.get_by_text("Signed in as").first.inner_text()
        page.get_by_role("button", name="Tick").wait_for(timeout=30_000)
        assert page.get_by_role("link", name="Publish").count() == 1
        assert page.get_by_text("Sign out").count() == 0  # the proxy signs people out, not the dashboard

        carol = browser.new_context(extra_http_headers={"X-Forwarded-User": "carol"})
        page = carol.new_page()
        page.goto(f"{base}/")
        page.get_by_role("heading", name="Overview").first.wait_for(timeout=30_000)
        page.get_by_text("Signed in as").first.wait_for(timeout=30_000)
        assert "viewer" in page.get_by_text("Signed in as").first.inner_text()
        assert page.get_by_role("button", name="Tick").count() == 0
        assert page.get_by_role("link", name="Publish").count() == 0

        nobody = browser.new_context()
        page = nobody.new_page()
        response = page.goto(f"{base}/")
        assert response is not None and response.status == 401
        assert "X-Forwarded-User" in page.content()
        for context in (alice, carol, nobody):
            context.close()

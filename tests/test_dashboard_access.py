"""The dashboard's sign-in page and access middleware (``outbox_admin.ui.server``) over HTTP.

The routes and the middleware are the real ones, run by Starlette's test client in front of a
small stand-in for Streamlit's own routes (a page, ``/media/...``, the WebSocket). The real
Streamlit server is covered by ``test_dashboard_access_browser.py``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect

from outbox_admin.access import SESSION_COOKIE, AccessSettings, ThrottlePolicy, hash_password
from outbox_admin.ui.server import LOGIN_PATH, AccessLayer

SECRET = "k" * 40
QUICK = ThrottlePolicy(base_seconds=0.05, max_seconds=0.2, global_free=1000)


@pytest.fixture(autouse=True)
def no_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OUTBOX_CONFIG", raising=False)


def stand_in(layer: AccessLayer) -> Starlette:
    """Streamlit's routes as far as access goes: pages, downloads, the WebSocket, health, assets."""

    async def page(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"console {request.url.path}")

    async def media(request: Request) -> PlainTextResponse:
        return PlainTextResponse("id,status\n1,FAILED\n", media_type="text/csv")

    async def stream(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("hello")
        await websocket.close()

    async def ok(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    base = layer.base
    return Starlette(
        routes=[
            *layer.routes,
            Route(f"{base}/_stcore/health", ok),
            Route(f"{base}/static/js/index.js", ok),
            Route(f"{base}/media/{{name}}", media),
            WebSocketRoute(f"{base}/_stcore/stream", stream),
            Route(f"{base}/{{path:path}}", page),
        ],
        middleware=layer.middleware,
    )


def client_for(env: dict[str, str], *, policy: ThrottlePolicy = QUICK, base: str = "") -> TestClient:
    settings = {"OUTBOX_DASHBOARD_SECRET": SECRET, **env}
    layer = AccessLayer(lambda: AccessSettings.from_env(settings), policy=policy, base=base)
    return TestClient(stand_in(layer), follow_redirects=False)


@pytest.fixture
def client() -> Iterator[TestClient]:
    with client_for({"OUTBOX_DASHBOARD_PASSWORD": "pw", "OUTBOX_DASHBOARD_OPERATORS": "alice"}) as client:
        yield client


def sign_in(client: TestClient, name: str, password: str, next_path: str = "/") -> object:
    return client.post(LOGIN_PATH, data={"name": name, "password": password, "next": next_path})


def test_a_deep_link_leads_through_the_sign_in_page_back_to_itself(client: TestClient) -> None:
    response = client.get("/events?status=FAILED&page=2")
    assert response.status_code == 303
    location = response.headers["location"]
    assert urlsplit(location).path == LOGIN_PATH
    assert parse_qs(urlsplit(location).query) == {"next": ["/events?status=FAILED&page=2"]}
    form = client.get(location)
    assert form.status_code == 200 and 'value="/events?status=FAILED&amp;page=2"' in form.text
    signed_in = sign_in(client, "alice", "pw", "/events?status=FAILED&page=2")
    assert signed_in.status_code == 303 and signed_in.headers["location"] == "/events?status=FAILED&page=2"
    cookie = signed_in.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=") and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert "Max-Age=43200" in cookie and "Path=/" in cookie
    assert client.get("/events?status=FAILED").text == "console /events"
    assert client.get(LOGIN_PATH + "?next=/failures").headers["location"] == "/failures"  # already signed in


def test_nothing_but_health_and_assets_answers_without_a_session(client: TestClient) -> None:
    assert client.get("/_stcore/health").text == "ok"
    assert client.get("/static/js/index.js").text == "ok"
    download = client.get("/media/0123abcd.csv")
    assert download.status_code == 401 and "id,status" not in download.text
    assert client.post("/_stcore/upload_file/x").status_code == 401
    with pytest.raises(WebSocketDisconnect) as refused, client.websocket_connect("/_stcore/stream"):
        pass
    assert refused.value.code == 1008
    sign_in(client, "carol", "pw")
    assert client.get("/media/0123abcd.csv").text == "id,status\n1,FAILED\n"
    with client.websocket_connect("/_stcore/stream") as websocket:
        assert websocket.receive_text() == "hello"


def test_a_forged_cookie_is_no_session(client: TestClient) -> None:
    client.cookies.set(SESSION_COOKIE, "eyJ1IjoiYWxpY2UifQ.aaaaaa.bbbbbbbbbbbbbbbbbbbbbbbbbbb")
    assert client.get("/media/x.csv").status_code == 401


def test_signing_out_ends_the_session(client: TestClient) -> None:
    sign_in(client, "alice", "pw")
    assert client.get("/media/x.csv").status_code == 200
    out = client.get("/_outbox/logout")
    assert out.status_code == 303 and "Max-Age=0" in out.headers["set-cookie"]
    assert client.get("/media/x.csv").status_code == 401
    assert "You are signed out." in client.get(out.headers["location"]).text


def test_wrong_passwords_are_slowed_down_and_logged(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    typed = "al\x1bice\u202e<b>"
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="outbox_admin.ui.server"):
        answers = [sign_in(client, typed, f"guess-{n}") for n in range(5)]
    elapsed = time.monotonic() - started
    assert [a.status_code for a in answers] == [401] * 5
    assert all("Wrong name or password." in a.text for a in answers)
    assert "<b>" not in answers[0].text and "&lt;b&gt;" in answers[0].text  # the typed name is shown escaped
    assert elapsed >= 0.05 + 0.1 + 0.2 + 0.2 + 0.2  # each answer waited for its backoff
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 5 and all("sign-in failed for 'al\\x1bice\\u202e<b>' from testclient" in m for m in lines)
    assert "(5 in a row from there; next attempt allowed in 0.2 s)" in lines[-1]
    assert "\x1b" not in "".join(lines)
    assert sign_in(client, "alice", "pw").status_code == 303  # the right password still works afterwards


def test_attempts_during_the_backoff_are_refused_unchecked(caplog: pytest.LogCaptureFixture) -> None:
    policy = ThrottlePolicy(base_seconds=30, global_free=1000)
    settings = {"OUTBOX_DASHBOARD_SECRET": SECRET, "OUTBOX_DASHBOARD_PASSWORD": "pw"}
    # The answer comes at once; the backoff still holds.
    layer = AccessLayer(lambda: AccessSettings.from_env(settings), policy=policy, base="", reply_delay_seconds=0)
    with TestClient(stand_in(layer), follow_redirects=False) as client, caplog.at_level(logging.WARNING):
        assert sign_in(client, "bob", "wrong").status_code == 401
        refused = sign_in(client, "bob", "pw")  # right, but within the 30 s backoff: not even checked
        assert refused.status_code == 429 and "Try again in 30 s" in refused.text
        assert refused.headers["retry-after"] == "30"
        assert SESSION_COOKIE not in refused.headers.get("set-cookie", "")
    assert "too many failed sign-ins" in caplog.records[-1].getMessage()


def test_a_personal_password_and_roles_from_the_file(tmp_path: Path) -> None:
    (tmp_path / "outbox.toml").write_text(f'[dashboard.users]\ndana = "{hash_password("dana-pw", n=2**10)}"\n')
    with client_for({}) as client:  # personal passwords only: no shared one
        assert sign_in(client, "dana", "dana-pw").status_code == 303
        assert client.get("/media/x.csv").status_code == 200
    with client_for({}) as client:
        assert sign_in(client, "erin", "dana-pw").status_code == 401


def test_a_form_from_another_site_is_refused(client: TestClient) -> None:
    answer = client.post(
        LOGIN_PATH, data={"name": "alice", "password": "pw"}, headers={"Origin": "https://evil.example"}
    )
    assert answer.status_code == 403 and SESSION_COOKIE not in answer.headers.get("set-cookie", "")
    same = client.post(LOGIN_PATH, data={"name": "alice", "password": "pw"}, headers={"Origin": "http://testserver"})
    assert same.status_code == 303


def test_an_oversized_form_is_refused(client: TestClient) -> None:
    assert client.post(LOGIN_PATH, data={"password": "x" * 20_000}).status_code == 413


def test_the_next_link_never_leaves_the_server(client: TestClient) -> None:
    page = client.get(LOGIN_PATH + '?next=/x"><script>alert(1)</script>')
    assert "<script>" not in page.text and "&lt;script&gt;" in page.text
    away = sign_in(client, "alice", "pw", "https://evil.example/")
    assert away.headers["location"] == "/"


def test_behind_the_proxy_header_no_password_is_asked() -> None:
    with client_for({"OUTBOX_DASHBOARD_USER_HEADER": "X-Forwarded-User"}) as client:
        assert client.get("/events", headers={"X-Forwarded-User": "alice"}).text == "console /events"
        with client.websocket_connect("/_stcore/stream", headers={"X-Forwarded-User": "alice"}) as websocket:
            assert websocket.receive_text() == "hello"
        assert client.get("/media/x.csv").status_code == 401
        login = client.get(client.get("/events").headers["location"])
        assert login.status_code == 401 and "X-Forwarded-User" in login.text and "<form" not in login.text


def test_an_open_dashboard_lets_everything_through() -> None:
    with client_for({}) as client:
        assert client.get("/events").text == "console /events"
        assert client.get("/media/x.csv").status_code == 200


def test_a_broken_configuration_refuses_everything_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "outbox.toml").write_text("[dashboard]\noperators = 'alice'\n")
    with client_for({"OUTBOX_DASHBOARD_PASSWORD": "pw"}) as client, caplog.at_level(logging.ERROR):
        answer = client.get("/events")
        assert answer.status_code == 500 and "operators must be a list of user names" in answer.text
        assert client.get("/_stcore/health").text == "ok"
    assert "operators must be a list" in caplog.records[-1].getMessage()


def test_under_a_base_path_links_and_cookie_stay_under_it() -> None:
    with client_for({"OUTBOX_DASHBOARD_PASSWORD": "pw"}, base="/console") as client:
        location = client.get("/console/events?status=FAILED").headers["location"]
        assert location == "/console/_outbox/login?next=%2Fconsole%2Fevents%3Fstatus%3DFAILED"
        answer = client.post(
            "/console/_outbox/login", data={"name": "a", "password": "pw", "next": "/console/events?status=FAILED"}
        )
        assert answer.headers["location"] == "/console/events?status=FAILED"
        assert "Path=/console/" in answer.headers["set-cookie"]
        assert client.get("/console/media/x.csv").status_code == 200

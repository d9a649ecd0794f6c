"""The browser client ``outbox-bus.js`` in real Chromium, against the real bus app on a real uvicorn server.

The test server is a Starlette app of its own: ``message_bus_app`` mounted under ``/bus``
(as an application would), a test page importing ``/bus/outbox-bus.js`` as a module, React's
UMD builds (downloaded once from the npm registry with ``npm pack``, cached under
``~/.cache/outbox-admin-tests``) and a request log, so a test can count the streams a page
opened. Events are published in the test's own database and delivered with the real
dispatcher and ``BrowserBusSink`` (``dispatch_feed``). Waits are ``wait_for_function`` with
deadlines; a window during which nothing may happen is observed by polling, never slept.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Mount, Route

from outbox_admin import EventSpec, admin, make_engine, publish_outbox_events, register_event_type
from outbox_admin.web import message_bus_app

from .browser_support import chromium
from .bus_support import authorize, dispatch_feed, uvicorn_thread
from .services import free_port, unavailable

REACT_VERSION = "18.3.1"
REACT_FILES = {"react": "umd/react.production.min.js", "react-dom": "umd/react-dom.production.min.js"}
CACHE = Path(os.environ.get("OUTBOX_TEST_CACHE", Path.home() / ".cache" / "outbox-admin-tests"))
UNKNOWN_ID = "0190f3a2-0000-7000-8000-000000000000"

register_event_type("BUDGET.APPROVED")


# --- the test server ------------------------------------------------------------------------


@dataclass
class Served:
    base: str
    port: int
    app: Any
    requests: list[tuple[str, dict[str, str], int]] = field(default_factory=list)

    def streams(self) -> list[dict[str, str]]:
        """The query of each stream request so far, in order."""
        return [query for path, query, _ in self.requests if path == "/bus/stream"]


def _page(react: bool) -> str:
    scripts = "".join(f'<script src="/vendor/{name}.js"></script>' for name in REACT_FILES) if react else ""
    return (
        '<!doctype html><html><head><meta charset="utf-8"><title>bus</title>'
        f"{scripts}</head><body><div id=root></div>"
        '<script type="module">import * as bus from "/bus/outbox-bus.js";'
        "window.outboxBus = bus; window.busReady = true;</script></body></html>"
    )


@contextmanager
def bus_page_server(
    engine: Engine,
    *,
    pages: Pages | None = None,
    port: int | None = None,
    react_dir: Path | None = None,
    heartbeat_seconds: float = 0.25,
) -> Iterator[Served]:
    """The bus under ``/bus``, the test page at ``/`` (``/?react=1`` with React), on uvicorn in a thread.

    ``pages`` are closed before the server stops, so it need not wait for their streams to time out;
    without it, open streams are cut as a crash would (the restart test wants that)."""
    bus = message_bus_app(engine, authorize=authorize, heartbeat_seconds=heartbeat_seconds)

    async def page(request: Request) -> Response:
        return HTMLResponse(_page(request.query_params.get("react") == "1"))

    async def vendor(request: Request) -> Response:
        name = request.path_params["name"]
        if react_dir is None or name not in REACT_FILES:
            return Response(status_code=404)
        return FileResponse(react_dir / f"{name}.js", media_type="text/javascript")

    inner = Starlette(routes=[Route("/", page), Route("/vendor/{name}.js", vendor), Mount("/bus", bus)])
    port = port or free_port()
    served = Served(f"http://127.0.0.1:{port}", port, bus)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        """Log each request's path, query and status (the counts the retry tests assert)."""
        if scope["type"] != "http":
            return await inner(scope, receive, send)
        query = dict(Request(scope).query_params)

        async def logged_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                served.requests.append((scope["path"], query, message["status"]))
            await send(message)

        await inner(scope, receive, logged_send)

    try:
        with uvicorn_thread(app, port):
            try:
                yield served
            finally:
                if pages is not None:
                    pages.close()
    finally:
        bus.state.follower.close()


# --- the browser ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


class Pages:
    """The test's pages: ``pages.open(base, react=False)`` opens the test page; uncaught page errors are kept."""

    def __init__(self, browser: Any) -> None:
        self.browser = browser
        self.pages: list[Any] = []
        self.errors: list[str] = []

    def open(self, base: str, *, react: bool = False) -> Any:
        page = self.browser.new_page()
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.pages.append(page)
        page.goto(f"{base}/" + ("?react=1" if react else ""))
        page.wait_for_function("window.busReady === true", timeout=10_000)
        return page

    def close(self) -> None:
        """Close every page (and so its stream), so the server stops at once."""
        while self.pages:
            self.pages.pop().close()


@pytest.fixture
def pages(browser: Any) -> Iterator[Pages]:
    """A new page per test (one browser per module); fails the test on an uncaught error in a page."""
    opened = Pages(browser)
    yield opened
    opened.close()
    assert not opened.errors, f"uncaught errors in the page: {opened.errors}"


@pytest.fixture
def sqlite_engine(sqlite_url: str) -> Iterator[Engine]:
    engine = make_engine(sqlite_url)
    yield engine
    engine.dispose()


@pytest.fixture
def react_dir() -> Path:
    """React 18's UMD builds, from the npm registry (``npm pack``) on first use, then from the cache."""
    target = CACHE / f"react-{REACT_VERSION}"
    if all((target / f"{name}.js").exists() for name in REACT_FILES):
        return target
    npm = shutil.which("npm")
    if npm is None:
        unavailable("npm registry", "npm is not installed (needed once, to fetch React's UMD builds)")
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as work:
        specs = [f"{name}@{REACT_VERSION}" for name in REACT_FILES]
        try:
            done = subprocess.run(
                [npm, "pack", *specs, "--pack-destination", work, "--silent"],
                capture_output=True,
                text=True,
                timeout=120,
                cwd=work,
            )
        except subprocess.TimeoutExpired:
            unavailable("npm registry", "npm pack took over 120 s")
        if done.returncode != 0:
            unavailable("npm registry", f"npm pack failed: {done.stderr.strip()[-300:]}")
        staging = Path(work) / "out"
        staging.mkdir()
        for name, member in REACT_FILES.items():
            with tarfile.open(Path(work) / f"{name}-{REACT_VERSION}.tgz") as tar:
                extracted = tar.extractfile(f"package/{member}")
                assert extracted is not None
                (staging / f"{name}.js").write_bytes(extracted.read())
        try:
            staging.rename(target)  # atomic: another worker may have won the race, which is fine
        except OSError:
            assert target.exists()
    return target


# --- helpers --------------------------------------------------------------------------------


def publish(engine: Engine, org: str, *types: str, prefix: str = "e") -> list[str]:
    """Publish one event per type (payload ``{"n": i, "type": ...}``) in one transaction; their ids."""
    specs = [
        EventSpec(org_id=org, event_type=t, entity_type="Thing", entity_id=f"{prefix}-{i}", payload={"n": i, "t": t})
        for i, t in enumerate(types)
    ]
    with engine.begin() as conn:
        return [event.id for event in publish_outbox_events(conn, specs)]


SETUP = """({ org, patterns, options }) => {
  const { configureMessageBus, subscribe } = window.outboxBus;
  window.got = {}; window.errors = []; window.resyncs = []; window.stop = {};
  configureMessageBus({
    params: org ? { org } : {}, retry: { initialMs: 100, maxMs: 800 },
    onError: (error, info) => window.errors.push({ message: String(error.message), ...info }),
    onResync: (info) => window.resyncs.push(info), ...options });
  for (const p of patterns) {
    window.got[p] = [];
    window.stop[p] = subscribe(p, (payload, event) => window.got[p].push({ payload, event }));
  }
}"""


def setup(page: Any, org: str | None, *patterns: str, **options: Any) -> None:
    page.evaluate(SETUP, {"org": org, "patterns": list(patterns), "options": options})


def wait_state(page: Any, state: str, timeout: float = 10.0) -> None:
    page.wait_for_function(
        "(s) => window.outboxBus.getMessageBus().state === s", arg=state, timeout=int(timeout * 1000)
    )


def wait_count(page: Any, pattern: str, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Wait until the subscriber of ``pattern`` got at least ``count`` events; what it got."""
    page.wait_for_function("([p, n]) => window.got[p].length >= n", arg=[pattern, count], timeout=int(timeout * 1000))
    return page.evaluate("(p) => window.got[p]", pattern)  # type: ignore[no-any-return]


def ids(got: list[dict[str, Any]]) -> list[str]:
    return [item["event"]["id"] for item in got]


def subscriber_count(served: Served) -> int:
    return served.app.state.follower.subscriber_count()  # type: ignore[no-any-return]


def wait_until(condition: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


# --- tests ----------------------------------------------------------------------------------


def test_wildcards_match_as_in_python_and_the_payload_and_envelope_arrive(engine: Engine, pages: Pages) -> None:
    with bus_page_server(engine, pages=pages) as served:
        page = pages.open(served.base)
        setup(page, "alpha", "PROJECT.*", "*", "BUDGET.APPROVED")
        wait_state(page, "connected")
        assert "types" not in served.streams()[-1], "a * subscriber: the stream asks for every type"
        sent = publish(engine, "alpha", "BUDGET.APPROVED", "PROJECT.CREATED", "PROJECT.UPDATED")
        assert dispatch_feed(engine) == 3
        everything = wait_count(page, "*", 3)
        assert ids(everything) == sent
        project = page.evaluate("window.got['PROJECT.*']")
        assert ids(project) == sent[1:], "PROJECT.* gets PROJECT.CREATED and PROJECT.UPDATED, never BUDGET.APPROVED"
        assert [item["payload"] for item in project] == [
            {"n": 1, "t": "PROJECT.CREATED"},
            {"n": 2, "t": "PROJECT.UPDATED"},
        ]
        envelope = project[0]["event"]
        assert (envelope["type"], envelope["orgid"], envelope["subject"]) == ("PROJECT.CREATED", "alpha", "Thing/e-1")
        assert envelope["specversion"] == "1.0" and envelope["data"] == project[0]["payload"]
        assert ids(page.evaluate("window.got['BUDGET.APPROVED']")) == sent[:1]
        assert len(served.streams()) == 1, "three subscriptions in one tick share one stream"
        script = httpx.get(f"{served.base}/bus/outbox-bus.js")
        assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
        assert "export const subscribe" in script.text


def test_the_stream_asks_for_the_union_and_unsubscribing_reconnects_without_losing_or_repeating(
    sqlite_engine: Engine, pages: Pages
) -> None:
    engine = sqlite_engine
    with bus_page_server(engine, pages=pages) as served:
        page = pages.open(served.base)
        setup(page, "alpha", "PROJECT.CREATED", "PROJECT.*")
        wait_state(page, "connected")
        assert served.streams()[-1]["types"] == "PROJECT.*,PROJECT.CREATED"
        first = publish(engine, "alpha", "PROJECT.CREATED", "PROJECT.UPDATED", prefix="a")
        dispatch_feed(engine)
        assert ids(wait_count(page, "PROJECT.*", 2)) == first
        assert ids(page.evaluate("window.got['PROJECT.CREATED']")) == first[:1]

        page.evaluate("window.stop['PROJECT.CREATED']()")
        wait_until(lambda: len(served.streams()) == 2, "unsubscribing did not reconnect with the new types")
        wait_state(page, "connected")
        again = served.streams()[-1]
        assert again["types"] == "PROJECT.*" and again["lastEventId"] == first[-1], "resumes from the last id"
        second = publish(engine, "alpha", "PROJECT.CREATED", "PROJECT.UPDATED", prefix="b")
        dispatch_feed(engine)
        assert ids(wait_count(page, "PROJECT.*", 4)) == first + second, "each event once, in order"
        assert ids(page.evaluate("window.got['PROJECT.CREATED']")) == first[:1], "unsubscribed: nothing more"

        page.evaluate(
            "() => { for (let i = 0; i < 33; i++) window.stop[i] = window.outboxBus.subscribe(`T${i}.*`, () => {}); }"
        )
        wait_until(lambda: len(served.streams()) == 3, "33 patterns did not reconnect")
        assert "types" not in served.streams()[-1], "over the server's 32 patterns: ask for * and filter here"
        page.evaluate("() => Object.values(window.stop).forEach((stop) => stop())")
        wait_state(page, "idle")
        wait_until(lambda: subscriber_count(served) == 0, "the last unsubscribe did not close the stream")


def test_a_page_never_sees_another_orgs_events(sqlite_engine: Engine, pages: Pages) -> None:
    engine = sqlite_engine
    with bus_page_server(engine, pages=pages) as served:
        alpha, beta = pages.open(served.base), pages.open(served.base)
        setup(alpha, "alpha", "*")
        setup(beta, "beta", "*")
        wait_state(alpha, "connected")
        wait_state(beta, "connected")
        sent_alpha: list[str] = []
        sent_beta: list[str] = []
        for i in range(2):  # alternating in the feed: a leak would show up before each page's last event
            sent_alpha += publish(engine, "alpha", "PROJECT.CREATED", prefix=f"a{i}")
            sent_beta += publish(engine, "beta", "PROJECT.CREATED", prefix=f"b{i}")
        assert dispatch_feed(engine) == 4
        assert ids(wait_count(alpha, "*", 2)) == sent_alpha, "only alpha's events, in order"
        assert ids(wait_count(beta, "*", 2)) == sent_beta
        assert all(item["event"]["orgid"] == "alpha" for item in alpha.evaluate("window.got['*']"))


def test_use_message_bus_renders_the_payload_keeps_one_subscription_and_unsubscribes_on_unmount(
    sqlite_engine: Engine, pages: Pages, react_dir: Path
) -> None:
    engine = sqlite_engine
    with bus_page_server(engine, pages=pages, react_dir=react_dir) as served:
        page = pages.open(served.base, react=True)
        page.evaluate(
            """() => {
              const { useMessageBus, configureMessageBus } = window.outboxBus;
              configureMessageBus({ params: { org: "alpha" }, React });
              const h = React.createElement;
              function Latest() {
                const [seen, setSeen] = React.useState([]);
                useMessageBus("PROJECT.*", (payload, event) => setSeen((s) => [...s, event.type + ":" + payload.n]));
                return h("p", { id: "latest" }, seen.join(" ") || "none");
              }
              function App() {
                const [shown, setShown] = React.useState(true);
                window.unmount = () => setShown(false);
                return shown ? h(Latest) : h("p", { id: "gone" }, "gone");
              }
              ReactDOM.createRoot(document.getElementById("root")).render(h(App));
            }"""
        )
        page.wait_for_selector("#latest", timeout=10_000)
        assert page.text_content("#latest") == "none"
        wait_state(page, "connected")
        publish(engine, "alpha", "PROJECT.CREATED", "BUDGET.APPROVED", "PROJECT.UPDATED")
        dispatch_feed(engine)
        page.wait_for_function(
            "document.querySelector('#latest')?.textContent === 'PROJECT.CREATED:0 PROJECT.UPDATED:2'",
            timeout=10_000,
        )
        assert page.evaluate("window.outboxBus.getMessageBus().connects") == 1, "re-renders never resubscribe"
        page.evaluate("window.unmount()")
        page.wait_for_selector("#gone", timeout=10_000)
        wait_state(page, "idle")
        wait_until(lambda: subscriber_count(served) == 0, "unmounting did not close the stream")
        assert page.evaluate("window.outboxBus.emitMessageBusEvent('PROJECT.CREATED', {})") == 0


def test_emit_message_bus_event_reaches_matching_subscribers_without_the_server(
    sqlite_engine: Engine, pages: Pages
) -> None:
    with bus_page_server(sqlite_engine, pages=pages) as served:
        page = pages.open(served.base)
        result = page.evaluate(
            """() => {
              const bus = window.outboxBus.createMessageBus({ baseUrl: "http://127.0.0.1:9/" });
              const got = [], errors = [];
              bus.configure({ onError: (error, info) => errors.push([error.message, info.kind, info.pattern]) });
              bus.subscribe("PROJECT.*", () => { throw new Error("a broken subscriber"); });
              bus.subscribe("PROJECT.*", (payload, event) => got.push(["project", payload, event]));
              bus.subscribe("*", (payload) => got.push(["all", payload]));
              const calls = [bus.emit("PROJECT.CREATED", { n: 1 }), bus.emit("BUDGET.APPROVED", { n: 2 })];
              bus.close();
              let hookError = null;
              try { window.outboxBus.createMessageBus().useMessageBus("X", () => {}); }
              catch (error) { hookError = error.message; }
              return { calls, got, errors, hookError };
            }"""
        )
        assert result["calls"] == [3, 1]
        assert result["got"] == [
            ["project", {"n": 1}, {"type": "PROJECT.CREATED", "data": {"n": 1}, "local": True}],
            ["all", {"n": 1}],
            ["all", {"n": 2}],
        ], "a subscriber that throws does not stop the others"
        assert result["errors"] == [["a broken subscriber", "callback", "PROJECT.*"]]
        assert "needs React" in result["hookError"]
        # the default bus too, as the original's emitMessageBusEvent
        setup(page, "alpha", "PROJECT.*")
        assert page.evaluate("window.outboxBus.emitMessageBusEvent('PROJECT.UPDATED', { local: 1 })") == 1
        assert page.evaluate("window.got['PROJECT.*'][0].payload") == {"local": 1}


def test_patterns_match_as_pythons_fnmatchcase(sqlite_engine: Engine, pages: Pages) -> None:
    patterns = ["*", "PROJECT.*", "PROJECT.CREATED", "P?OJECT.*", "[!P]*", "[PB]*.APPROVED", "[A-C]*", "[]x]*",
                "*[-]*", "[a-c-]*", "[z-a]*", "[!z-a]*", "x[", "*.?????ED", "a.b", "[^B]*", "[[]*"]  # fmt: skip
    types = ["PROJECT.CREATED", "PROJECT.UPDATED", "BUDGET.APPROVED", "PROJECTXCREATED", "]x", "a-b", "-z", "c",
             "x[", "^B", "[P", "a.b", "axb", "", "PROJECT.CREATED.EXTRA"]  # fmt: skip
    with bus_page_server(sqlite_engine, pages=pages) as served:
        page = pages.open(served.base)
        got = page.evaluate(
            "([ps, ts]) => ps.map((p) => ts.map((t) => window.outboxBus.globToRegExp(p).test(t)))", [patterns, types]
        )
    expected = [[fnmatch.fnmatchcase(t, p) for t in types] for p in patterns]
    for pattern, mine, python in zip(patterns, got, expected, strict=True):
        assert mine == python, f"{pattern!r}: {dict(zip(types, mine, strict=True))}"


def test_the_sse_parser_handles_any_chunking_crlf_comments_and_multiline_data(
    sqlite_engine: Engine, pages: Pages
) -> None:
    stream = (
        ': ping\r\nid: 1\r\nevent: A.B\r\ndata: {"x":1}\r\n\r\n'
        "data: line 1\ndata:line 2\ndata\n\n"
        "retry: 100\rid: 2\revent: C\rdata: x: y\r\r"
        "event: dropped\n\n"
        "id\ndata:  two spaces\n\n"
        "data: no end"
    )
    expected = [
        {"id": "1", "hasId": True, "type": "A.B", "data": '{"x":1}'},
        {"id": "1", "hasId": False, "type": "message", "data": "line 1\nline 2\n"},
        {"id": "2", "hasId": True, "type": "C", "data": "x: y"},
        {"id": "", "hasId": True, "type": "message", "data": " two spaces"},
    ]
    with bus_page_server(sqlite_engine, pages=pages) as served:
        page = pages.open(served.base)
        result = page.evaluate(
            """(stream) => {
              const runs = new Set();
              let comments = [];
              for (let cut = 0; cut <= stream.length; cut++) {
                for (const size of [1, 3, 1000]) {
                  const out = [];
                  comments = [];
                  const onComment = (c) => comments.push(c);
                  const parser = new window.outboxBus.SseParser((e) => out.push(e), { onComment });
                  const parts = [stream.slice(0, cut)];
                  for (let i = cut; i < stream.length; i += size) parts.push(stream.slice(i, i + size));
                  parts.forEach((part) => parser.push(part));
                  runs.add(JSON.stringify([out, parser.retry]));
                }
              }
              return { runs: [...runs], comments };
            }""",
            stream,
        )
    assert len(result["runs"]) == 1, "the events must not depend on where the chunks are cut"
    assert json.loads(result["runs"][0]) == [expected, 100]
    assert result["comments"] == [" ping"]


@pytest.mark.slow
def test_a_restarted_server_resumes_every_missed_event_once_in_order(engine: Engine, pages: Pages) -> None:
    with bus_page_server(engine) as served:
        port = served.port
        page = pages.open(served.base)
        setup(page, "alpha", "*")
        wait_state(page, "connected")
        before = publish(engine, "alpha", "PROJECT.CREATED", "PROJECT.UPDATED", prefix="before")
        dispatch_feed(engine)
        wait_count(page, "*", 2)
    wait_state(page, "connecting")  # the server is gone: the page retries with backoff
    missed = publish(engine, "alpha", "PROJECT.CREATED", "BUDGET.APPROVED", "PROJECT.UPDATED", prefix="missed")
    assert dispatch_feed(engine) == 3
    with bus_page_server(engine, pages=pages, port=port) as served:
        assert ids(wait_count(page, "*", 5, timeout=15)) == before + missed
        assert served.streams()[0]["lastEventId"] == before[-1]
        live = publish(engine, "alpha", "PROJECT.CREATED", prefix="live")
        dispatch_feed(engine)
        assert ids(wait_count(page, "*", 6)) == before + missed + live
        # At least once upstream: an event fed again (a replay) keeps its id and reaches the page once.
        assert admin.replay(engine, [before[0]], handlers="browser-bus") == 1
        dispatch_feed(engine)
        sentinel = publish(engine, "alpha", "PROJECT.UPDATED", prefix="sentinel")
        dispatch_feed(engine)
        assert ids(wait_count(page, "*", 7)) == before + missed + live + sentinel
        assert page.evaluate("window.resyncs") == [] and page.evaluate("window.errors") == []


def test_an_id_outside_the_window_reaches_on_resync_and_never_a_subscriber(sqlite_engine: Engine, pages: Pages) -> None:
    engine = sqlite_engine
    with bus_page_server(engine, pages=pages) as served:
        page = pages.open(served.base)
        page.evaluate("(id) => { window.outboxBus.getMessageBus().lastEventId = id; }", UNKNOWN_ID)
        setup(page, "alpha", "*")
        page.wait_for_function("window.resyncs.length === 1", timeout=10_000)
        assert served.streams()[0]["lastEventId"] == UNKNOWN_ID
        assert "replay window" in page.evaluate("window.resyncs[0].reason")
        sent = publish(engine, "alpha", "PROJECT.CREATED")
        dispatch_feed(engine)
        assert ids(wait_count(page, "*", 1)) == sent, "then live events, and the resync was not one of them"


def test_refusals_reach_on_error_without_a_retry_storm_and_configure_tries_again(
    sqlite_engine: Engine, pages: Pages
) -> None:
    with bus_page_server(sqlite_engine, pages=pages) as served:
        page = pages.open(served.base)
        setup(page, None, "PROJECT.*", retry={"initialMs": 20, "maxMs": 40})  # no org: the server answers 401
        wait_state(page, "stopped")
        assert page.evaluate("window.errors.map((e) => [e.kind, e.status, e.fatal])") == [["refused", 401, True]]
        assert "not authorized" in page.evaluate("window.errors[0].message")
        page.evaluate("window.outboxBus.subscribe('BUDGET.*', () => {})")  # a change does not restart a refused bus
        deadline = time.monotonic() + 0.6  # at 20-40 ms backoff, a retrying client would ask ~15 times by then
        while time.monotonic() < deadline:
            assert len(served.streams()) == 1, "asked again after a 401"
            time.sleep(0.05)
        page.evaluate("window.outboxBus.configureMessageBus({ params: { org: 'alpha' } })")
        wait_state(page, "connected")
        assert len(served.streams()) == 2

        bad = page.evaluate(
            """() => new Promise((resolve) => {
              const bus = window.outboxBus.createMessageBus({ baseUrl: "/bus/", params: { org: "alpha" },
                onError: (error, info) => resolve([info.status, bus.state, error.message]) });
              bus.subscribe("PROJECT.[oops", () => {});
            })"""
        )
        assert bad[:2] == [400, "stopped"] and "never closed" in bad[2]


def test_an_event_reaches_the_page_within_a_second_of_its_dispatch(engine: Engine, pages: Pages) -> None:
    with bus_page_server(engine, pages=pages) as served:
        page = pages.open(served.base)
        setup(page, "alpha", "PROJECT.*")
        wait_state(page, "connected")
        sent = publish(engine, "alpha", "PROJECT.CREATED")
        assert dispatch_feed(engine) == 1
        dispatched = time.monotonic()
        assert ids(wait_count(page, "PROJECT.*", 1, timeout=2)) == sent
        elapsed = time.monotonic() - dispatched
        print(f"dispatch -> page: {elapsed * 1000:.0f} ms ({engine.dialect.name})")
        assert elapsed < 2.0


def test_a_stream_silent_for_longer_than_idle_timeout_is_reopened(sqlite_engine: Engine, pages: Pages) -> None:
    """No byte, not even a heartbeat, for ``idleTimeoutMs``: the connection is taken for dead (a proxy or a
    network that dropped it without closing) and a new stream resumes from the last id."""
    engine = sqlite_engine
    with bus_page_server(engine, pages=pages, heartbeat_seconds=60) as served:
        page = pages.open(served.base)
        setup(page, "alpha", "*", idleTimeoutMs=1500)
        wait_state(page, "connected")
        sent = publish(engine, "alpha", "PROJECT.CREATED")
        dispatch_feed(engine)
        wait_count(page, "*", 1)
        wait_until(lambda: len(served.streams()) >= 2, "a silent stream was never reopened")
        assert served.streams()[1]["lastEventId"] == sent[0]
        assert page.evaluate("window.errors") == []

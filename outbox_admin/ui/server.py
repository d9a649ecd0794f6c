"""The dashboard's HTTP side: a sign-in page, and no page, WebSocket or download without a session.

``dashboard.py`` hands ``AccessLayer().routes`` and ``.middleware`` to ``st.App``, which
``streamlit run dashboard.py`` serves (Streamlit finds the ``app = st.App(...)`` in the file).
The rules themselves live in ``outbox_admin.access``; this module only speaks HTTP:

- ``GET /_outbox/login?next=/events?status=FAILED`` shows a plain form (no script, nothing
  loaded from elsewhere); ``POST`` checks the password off the event loop, sets the signed
  session cookie (``HttpOnly``, ``SameSite=Lax``, ``Secure`` over HTTPS) and sends the browser
  back to ``next``, so a deep link survives signing in. ``/_outbox/logout`` clears it.
- The middleware runs before Streamlit on every request. Without a user (proxy header or
  session cookie) a page load is redirected to the sign-in page with its path and query as
  ``next``; the WebSocket is refused before it opens, and every other request —
  ``/media/...`` downloads (Streamlit serves ``st.download_button`` files there to anyone
  holding the URL), uploads, ``/_stcore/...`` — gets 401. Only the health check, the
  sign-in routes and Streamlit's static JavaScript, CSS and icons stay public.
- A wrong password is logged (the typed name escaped) and slowed down: the answer waits and
  the client's next attempt is refused until its backoff (``access.LoginThrottle``) has
  passed. The waiting is an ``await``: no thread is held, sessions already signed in are
  never slowed, and the scrypt checks run in the thread pool, at most four at a time.
"""

from __future__ import annotations

import asyncio
import html
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocketClose

from ..access import (
    SESSION_COOKIE,
    AccessSettings,
    LoginThrottle,
    ThrottlePolicy,
    check_password,
    identify,
    issue_session,
    safe_next,
)
from ..errors import ConfigurationError

log = logging.getLogger(__name__)

PREFIX = "/_outbox"
LOGIN_PATH = f"{PREFIX}/login"
LOGOUT_PATH = f"{PREFIX}/logout"
MAX_FORM_BYTES = 16 * 1024
MAX_REPLY_DELAY_SECONDS = 5.0  # a wrong password's answer waits at most this long (the backoff goes on)
CONCURRENT_CHECKS = 4  # scrypt checks at once (16 MiB each)
# Paths anyone may fetch (relative to the base path): nothing in them depends on the database.
PUBLIC_PATHS = frozenset({"/_stcore/health", "/healthz", "/favicon.png", "/manifest.json", LOGIN_PATH, LOGOUT_PATH})
PUBLIC_PREFIXES = ("/static/",)  # Streamlit's bundled JavaScript, CSS and fonts
# Paths the browser loads as a page (the others are API calls, downloads, the WebSocket).
API_PREFIXES = ("/_stcore/", "/media/", "/component/", "/bidi-component/", f"{PREFIX}/")
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def base_path() -> str:
    """Streamlit's ``server.baseUrlPath`` as ``/prefix`` (empty when served at the root)."""
    from streamlit import config

    path = str(config.get_option("server.baseUrlPath") or "").strip("/")
    return f"/{path}" if path else ""


def login_url(next_path: str, base: str = "") -> str:
    """The sign-in page that comes back to ``next_path`` (a path with its query)."""
    return f"{base}{LOGIN_PATH}?next={quote(next_path, safe='')}"


class AccessLayer:
    """The sign-in routes and the middleware, sharing one throttle per server process.

    ``settings`` is read on every request (``AccessSettings.from_env`` by default), so the
    middleware and the pages always apply the same rules; ``base`` defaults to Streamlit's
    ``server.baseUrlPath``. A wrong password's answer waits for its backoff, at most
    ``reply_delay_seconds``; attempts before the backoff ends are refused (429) either way.
    """

    def __init__(
        self,
        settings: Callable[[], AccessSettings] = AccessSettings.from_env,
        *,
        policy: ThrottlePolicy | None = None,
        base: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        reply_delay_seconds: float = MAX_REPLY_DELAY_SECONDS,
    ) -> None:
        self.settings = settings
        self.reply_delay_seconds = reply_delay_seconds
        self.throttle = LoginThrottle(policy, clock)
        self.base = base_path() if base is None else base.rstrip("/")
        self._checks: asyncio.Semaphore | None = None

    @property
    def routes(self) -> list[Route]:
        return [
            Route(f"{self.base}{LOGIN_PATH}", self.login, methods=["GET", "POST"]),
            Route(f"{self.base}{LOGOUT_PATH}", self.logout, methods=["GET", "POST"]),
        ]

    @property
    def middleware(self) -> list[Middleware]:
        return [Middleware(AccessMiddleware, layer=self)]

    def relative(self, path: str) -> str:
        if self.base and (path == self.base or path.startswith(self.base + "/")):
            return path[len(self.base) :] or "/"
        return path

    # -- routes ------------------------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        try:
            settings = self.settings()
        except ConfigurationError as exc:
            return _broken(exc)
        home = f"{self.base}/"
        if request.method == "GET":
            target = safe_next(request.query_params.get("next"), home)
            if identify(settings, request.headers, request.cookies) is not None:
                return RedirectResponse(target, status_code=303)
            status = 200 if settings.passwords else 401
            return _page(settings, target, status=status, note=_note(request.query_params.get("note")))
        if not _same_origin(request):
            return PlainTextResponse("Sign-in forms are only accepted from this site.", 403, headers=SECURITY_HEADERS)
        form = await _read_form(request)
        if form is None:
            return PlainTextResponse("The sign-in form is too large.", 413, headers=SECURITY_HEADERS)
        target = safe_next(form.get("next"), home)
        typed_name, password = form.get("name", ""), form.get("password", "")
        client = request.client.host if request.client else "unknown"
        wait = self.throttle.retry_after(client)
        if wait > 0:
            log.warning(
                "dashboard sign-in refused for %r from %s: too many failed sign-ins, next attempt in %.1f s",
                typed_name[:200],
                client,
                wait,
            )
            message = f"Too many failed sign-ins. Try again in {wait:.0f} s." if wait >= 1 else "Try again."
            return _page(settings, target, status=429, error=message, name=typed_name, retry_after=wait)
        if not settings.passwords:
            return _page(settings, target, status=401)
        if self._checks is None:
            self._checks = asyncio.Semaphore(CONCURRENT_CHECKS)
        async with self._checks:
            user = await run_in_threadpool(check_password, settings, typed_name, password)
        if user is None:
            failure = self.throttle.failed(client)
            log.warning(
                "dashboard sign-in failed for %r from %s: wrong name or password "
                "(%d in a row from there; next attempt allowed in %.1f s)",
                typed_name[:200],
                client,
                failure.failures,
                failure.wait_seconds,
            )
            await asyncio.sleep(min(failure.wait_seconds, self.reply_delay_seconds))
            return _page(settings, target, status=401, error="Wrong name or password.", name=typed_name)
        self.throttle.succeeded(client)
        log.info("dashboard sign-in: %r (%s) from %s", user.name, user.role.value, client)
        response = RedirectResponse(target, status_code=303, headers={"Cache-Control": "no-store"})
        response.set_cookie(
            SESSION_COOKIE,
            issue_session(settings, user.name),
            max_age=int(settings.session_seconds),
            path=home,
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
        )
        return response

    async def logout(self, request: Request) -> Response:
        response = RedirectResponse(f"{self.base}{LOGIN_PATH}?note=signed-out", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path=f"{self.base}/", httponly=True, samesite="lax")
        return response


class AccessMiddleware:
    """Lets a request through only with a user (or on an open dashboard, or to a public path)."""

    def __init__(self, app: ASGIApp, layer: AccessLayer) -> None:
        self.app = app
        self.layer = layer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path = self.layer.relative(scope.get("path", "/"))
        if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            await self.app(scope, receive, send)
            return
        try:
            settings = self.layer.settings()
        except ConfigurationError as exc:
            await self._refuse(scope, receive, send, _broken(exc))
            return
        if settings.open:
            await self.app(scope, receive, send)
            return
        connection = HTTPConnection(scope)
        if identify(settings, Headers(scope=scope), connection.cookies) is not None:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "http" and scope.get("method") in ("GET", "HEAD") and not path.startswith(API_PREFIXES):
            query = scope.get("query_string", b"").decode("latin-1")
            target = scope.get("path", "/") + (f"?{query}" if query else "")
            response: Response = RedirectResponse(login_url(target, self.layer.base), status_code=303)
        else:
            response = PlainTextResponse("Sign in first.", 401, headers=SECURITY_HEADERS)
        await self._refuse(scope, receive, send, response)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, response: Response) -> None:
        if scope["type"] == "websocket":
            await WebSocketClose(code=1008)(scope, receive, send)  # before accept: the server answers 403
        else:
            await response(scope, receive, send)


def _broken(exc: ConfigurationError) -> Response:
    log.error("dashboard access configuration: %s", exc)
    return PlainTextResponse(f"The dashboard's access configuration is unusable: {exc}", 500, headers=SECURITY_HEADERS)


def _same_origin(request: Request) -> bool:
    """A form posted from another site (login CSRF) is refused; browsers send Origin with POSTs.
    Behind a proxy that rewrites Host, its ``X-Forwarded-Host`` counts as well."""
    origin = request.headers.get("origin")
    if origin is None:
        return True  # not a browser, or an old one: nothing to compare
    hosts = {request.headers.get("host", ""), *request.headers.get("x-forwarded-host", "").split(",")}
    return urlsplit(origin).netloc in {h.strip() for h in hosts if h.strip()}


async def _read_form(request: Request) -> dict[str, str] | None:
    """The url-encoded form, read up to ``MAX_FORM_BYTES`` (None beyond)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return None
    fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=10)
    return {key: values[0] for key, values in fields.items() if values}


def _note(code: str | None) -> str | None:
    return "You are signed out." if code == "signed-out" else None


def _page(
    settings: AccessSettings,
    target: str,
    *,
    status: int,
    error: str | None = None,
    note: str | None = None,
    name: str = "",
    retry_after: float | None = None,
) -> HTMLResponse:
    """The sign-in form: plain HTML, inline style, every value escaped."""
    esc = html.escape
    if settings.passwords:
        form: Any = (
            f'<form method="post" action="">'
            f'<input type="hidden" name="next" value="{esc(target)}">'
            f'<label for="name">Name</label>'
            f'<input id="name" name="name" autocomplete="username" maxlength="100" placeholder="operator" '
            f'value="{esc(name[:100])}">'
            f'<label for="password">Password</label>'
            f'<input id="password" name="password" type="password" autocomplete="current-password" required autofocus>'
            f'<button type="submit">Sign in</button></form>'
        )
    else:
        header = esc(settings.user_header or "")
        form = (
            f"<p>This dashboard is signed in to through its proxy, which names you in the "
            f"<code>{header}</code> header; this request came without it.</p>"
        )
    messages = "".join(
        f'<p class="{kind}" role="{"alert" if kind == "error" else "status"}">{esc(text)}</p>'
        for kind, text in (("error", error), ("note", note))
        if text
    )
    body = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        "<title>Sign in · outbox_admin</title><style>"
        "body{font-family:system-ui,sans-serif;background:#f6f7f9;color:#1f2328;margin:0}"
        "main{max-width:22rem;margin:12vh auto;background:#fff;padding:2rem;border-radius:.5rem;"
        "box-shadow:0 1px 3px #0002}h1{font-size:1.4rem;margin:0 0 1.2rem}"
        "label{display:block;margin:.8rem 0 .3rem;font-size:.9rem}"
        "input{width:100%;box-sizing:border-box;padding:.5rem;font-size:1rem;border:1px solid #bbb;"
        "border-radius:.3rem}button{margin-top:1.2rem;width:100%;padding:.6rem;font-size:1rem;"
        "background:#ff4b4b;color:#fff;border:0;border-radius:.3rem;cursor:pointer}"
        ".error{color:#b42318}.note{color:#1a7f37}</style></head>"
        f"<body><main><h1>outbox_admin</h1>{messages}{form}</main></body></html>"
    )
    headers = dict(SECURITY_HEADERS)
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, round(retry_after)))
    return HTMLResponse(body, status_code=status, headers=headers)

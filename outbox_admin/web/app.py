"""``message_bus_app``: the browser message bus, an ASGI app streaming the outbox's events as SSE.

Mount it in FastAPI or Starlette (``app.mount("/bus", message_bus_app(engine,
authorize=...))``). ``GET /stream?types=PROJECT.*,BUDGET.APPROVED`` is a Server-Sent
Events stream: each event as ``id:`` its event id, ``event:`` its type, ``data:`` the
CloudEvents JSON the sinks send. ``authorize(request)`` (sync or async) returns a
``Subscriber`` or ``None`` (answered 401): a stream carries only that subscriber's
org and the types it may see. ``GET /outbox-bus.js`` serves the browser client.

A browser that reconnects sends ``Last-Event-ID`` (or ``?lastEventId=``, which the
client adds when it opens a new stream): the stream first sends what it missed,
in order, from the feed (``outbox_admin.web.feed``), then goes live. An id that is no
longer in the replay window (or never was) gets one ``outbox-resync`` event first:
the page should reload its data, since events may have been missed. Heartbeat
comments keep proxies from closing an idle stream; a browser that stops reading
is dropped (its queue is bounded and each send has a deadline), and its
EventSource reconnects and resumes.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import inspect
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from importlib import resources

from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from ..db import check_engine, read_connection
from ..errors import ConfigurationError, OutboxError
from ..models import DEFAULT_TABLES, OutboxTables
from ..patterns import check_pattern
from .feed import DEFAULT_REPLAY_WINDOW, READ_LIMIT, FeedRow, read_after, read_window_start, seq_of
from .follower import DROPPED, FeedFollower

#: The event a stream sends first when it cannot resume from the id the browser gave.
RESYNC_EVENT = "outbox-resync"
#: At most this many patterns in ``types``; an event id the browser sends is at most this long.
MAX_TYPES = 32
MAX_EVENT_ID = 64


@dataclass(frozen=True)
class Subscriber:
    """Who a stream is for: the org whose events it carries, and the event types it may see (globs)."""

    org_id: str
    event_types: tuple[str, ...] = ("*",)

    def __post_init__(self) -> None:
        if not isinstance(self.org_id, str) or not self.org_id:
            raise ConfigurationError(f"Subscriber.org_id must be non-empty text, not {self.org_id!r}")
        if isinstance(self.event_types, str):
            object.__setattr__(self, "event_types", (self.event_types,))
        object.__setattr__(self, "event_types", tuple(check_pattern(t, field="event_types") for t in self.event_types))


Authorize = Callable[[Request], "Subscriber | None | Awaitable[Subscriber | None]"]


def requested_types(text: str | None) -> tuple[str, ...]:
    """The globs of ``?types=`` (comma-separated; none means every type), each checked as pauses are."""
    if text is None or not text.strip():
        return ("*",)
    parts = [part for part in text.split(",") if part.strip()]
    if len(parts) > MAX_TYPES:
        raise _BadRequest(f"types: {len(parts)} patterns, at most {MAX_TYPES}")
    return tuple(check_pattern(part, field="types") for part in parts)


class _BadRequest(OutboxError):
    """A stream request the bus refuses (answered 400 with this message)."""


def _matcher(subscriber: Subscriber, types: Sequence[str]) -> Callable[[FeedRow], bool]:
    allowed, wanted = subscriber.event_types, tuple(types)
    org = subscriber.org_id

    def accepts(row: FeedRow) -> bool:
        return (
            row.org_id == org
            and any(fnmatch.fnmatchcase(row.event_type, p) for p in wanted)
            and any(fnmatch.fnmatchcase(row.event_type, p) for p in allowed)
        )

    return accepts


def _client_script() -> bytes:
    return resources.files("outbox_admin.web").joinpath("static/outbox-bus.js").read_bytes()


def message_bus_app(
    engine: Engine,
    *,
    authorize: Authorize,
    tables: OutboxTables = DEFAULT_TABLES,
    replay_window: dt.timedelta = DEFAULT_REPLAY_WINDOW,
    heartbeat_seconds: float = 15.0,
    max_queued: int = 1000,
    send_timeout_seconds: float = 30.0,
    poll_seconds: float = 0.5,
) -> Starlette:
    """The browser bus as an ASGI app (see the module). ``engine`` is the outbox's database (sync engine).

    ``max_queued``: events waiting for one slow browser before it is dropped;
    ``send_timeout_seconds``: how long one send may block before the same;
    ``poll_seconds``: the longest a feed write waits to be seen when no wake-up arrives.
    The app's follower thread starts with its first stream; ``app.state.follower.close()`` stops it.
    """
    from sse_starlette.sse import EventSourceResponse, ServerSentEvent

    check_engine(engine)
    follower = FeedFollower(engine, tables=tables, poll_seconds=poll_seconds)

    async def stream(request: Request) -> Response:
        found = authorize(request)
        subscriber = await found if inspect.isawaitable(found) else found
        if subscriber is None:
            return PlainTextResponse("not authorized for the message bus\n", status_code=401)
        if not isinstance(subscriber, Subscriber):
            raise ConfigurationError(f"authorize must return a Subscriber or None, not {type(subscriber).__name__}")
        try:
            types = requested_types(request.query_params.get("types"))
            last_id = request.headers.get("last-event-id") or request.query_params.get("lastEventId") or None
            if last_id is not None and (len(last_id) > MAX_EVENT_ID or not last_id.isprintable()):
                raise _BadRequest(f"Last-Event-ID: not an event id (at most {MAX_EVENT_ID} printable characters)")
        except OutboxError as exc:
            return PlainTextResponse(f"{exc}\n", status_code=400)
        accepts = _matcher(subscriber, types)
        await run_in_threadpool(follower.start)  # the first stream starts the follower (one read of the feed's end)
        subscription = follower.subscribe(accepts, limit=max_queued)

        def backlog() -> tuple[list[FeedRow], bool]:
            """What the browser missed since ``last_id``, up to where the live queue begins; and whether
            it could resume at all."""
            if last_id is None:
                return [], True
            since = read_window_start(engine, replay_window)
            rows: list[FeedRow] = []
            with read_connection(engine) as conn:
                after = seq_of(conn, last_id, since, tables)
                if after is None:
                    return [], False
                while after < subscription.start:
                    page = read_after(conn, after, upto=subscription.start, org_id=subscriber.org_id, tables=tables)
                    rows.extend(row for row in page if accepts(row))
                    if len(page) < READ_LIMIT:
                        break
                    after = page[-1].seq
            return rows, True

        async def events() -> AsyncIterator[ServerSentEvent]:
            try:
                missed, resumed = await run_in_threadpool(backlog)
                if not resumed:
                    note = {"reason": "the last event id is not in the replay window", "lastEventId": last_id}
                    yield ServerSentEvent(data=json.dumps(note), event=RESYNC_EVENT)
                for row in missed:
                    yield ServerSentEvent(data=row.data, event=row.event_type, id=row.event_id)
                while True:
                    live = await subscription.queue.get()
                    if live is DROPPED:
                        return  # fell behind: the browser reconnects and resumes from its last id
                    yield ServerSentEvent(data=live.data, event=live.event_type, id=live.event_id)
            finally:
                follower.unsubscribe(subscription)

        return EventSourceResponse(
            events(),
            ping=heartbeat_seconds,
            send_timeout=send_timeout_seconds,
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def client(_request: Request) -> Response:
        try:
            script = _client_script()
        except FileNotFoundError:
            return PlainTextResponse("outbox-bus.js is not installed with this package\n", status_code=404)
        return Response(script, media_type="text/javascript; charset=utf-8")

    app = Starlette(routes=[Route("/stream", stream), Route("/outbox-bus.js", client)])
    app.state.follower = follower
    return app


__all__ = ["RESYNC_EVENT", "Subscriber", "message_bus_app", "requested_types"]

"""The browser message bus: the original's ``useMessageBus``, fed by the outbox (extra ``web``).

- ``BrowserBusSink(engine)``: a dispatcher handler appending each delivered event to the
  feed table (``outbox_admin.web.feed`` explains why a table, and how its order follows commits).
- ``message_bus_app(engine, authorize=...)``: a Starlette app to mount in FastAPI or
  Starlette; ``GET /stream`` is the SSE stream, ``GET /outbox-bus.js`` the browser client.
- ``Subscriber(org_id, event_types)``: what ``authorize(request)`` returns.
"""

from __future__ import annotations

from .app import RESYNC_EVENT, Subscriber, message_bus_app
from .feed import BUS_CHANNEL, DEFAULT_REPLAY_WINDOW
from .sink import BrowserBusSink

__all__ = ["BUS_CHANNEL", "DEFAULT_REPLAY_WINDOW", "RESYNC_EVENT", "BrowserBusSink", "Subscriber", "message_bus_app"]

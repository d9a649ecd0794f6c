"""What the ledger's tests share: a handler that fails some events, and a real dispatch through two handlers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from outbox_admin import Dispatcher
from outbox_admin.handlers.base import DeliveredEvent, RecordingHandler

from .sinks_support import NO_WAIT, publish_demo


class Flaky:
    """Fails the events whose entity id is in ``once`` the first time it sees them, and those in ``always``
    every time; records every call."""

    def __init__(self, name: str, *, once: set[str] | None = None, always: set[str] | None = None) -> None:
        self.name = name
        self.once = set(once or ())
        self.always = set(always or ())
        self.seen: list[str] = []

    def __call__(self, event: DeliveredEvent) -> None:
        self.seen.append(event.id)
        if event.entity_id in self.always:
            raise ConnectionError(f"{event.entity_id} refused for good")
        if event.entity_id in self.once:
            self.once.discard(event.entity_id)
            raise ConnectionError(f"{event.entity_id} refused once")


@dataclass
class TwoHandlers:
    """Six events dispatched to ``alpha`` (always accepts) and ``beta`` (refuses p-1 once and p-2 always),
    two attempts each: p-2 ends FAILED, the rest COMPLETED."""

    engine: Engine
    ids: dict[str, str]  # entity id -> event id
    alpha: RecordingHandler
    beta: Flaky
    handlers: list[Any] = field(default_factory=list)

    def dispatch(self) -> None:
        with Dispatcher(self.engine, self.handlers, max_attempts=2, backoff=NO_WAIT, breaker=None) as dispatcher:
            dispatcher.drain(max_seconds=30)


def two_handlers(engine: Engine, *, beta_name: str = "beta") -> TwoHandlers:
    published = publish_demo(engine, 6)
    ids = {e["subject"].split("/", 1)[1]: e["id"] for e in published}
    alpha = RecordingHandler(name="alpha")
    beta = Flaky(beta_name, once={"p-1"}, always={"p-2"})
    run = TwoHandlers(engine, ids, alpha, beta, [alpha, beta])
    run.dispatch()
    return run

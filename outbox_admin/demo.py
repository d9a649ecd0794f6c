"""A small real domain for demos, notebooks and tests: projects with budgets.

Each mutation changes a ``Project`` row and publishes its event in the same
transaction, exactly as the original README asks application code to do
(``prisma.$transaction`` + ``publishOutboxEvent(tx, ...)``). The budget is a
``Decimal``; the publisher turns it into a plain JSON number.

``DemoHandler`` is a handler that fails on purpose: a share of deliveries fail
once in a while (they retry and recover) and a share of events always fail (they
end as dead letters), so retries, backoff and failures can be shown live.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, Engine, MetaData, String, inspect, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from .coltypes import UTCDateTime
from .db import read_connection, read_engine, write_engine
from .dispatcher import Backoff, Dispatcher, DispatchReport
from .errors import OutboxError
from .event_types import EventTypeRegistry, default_registry
from .handlers.base import AuditLogHandler, DeliveredEvent, MessageBusHandler
from .publisher import publish_outbox_event

DEMO_EVENT_TYPES = ("PROJECT.CREATED", "PROJECT.UPDATED", "PROJECT.ARCHIVED")
DEMO_ORGS = ("acme", "globex", "initech", "umbrella")
#: The name ``load_demo_data``'s own short-lived dispatcher writes in the history.
DEMO_LOADER_NAME = "demo-loader"
_NAMES = (
    "Apollo",
    "Borealis",
    "Cassini",
    "Daedalus",
    "Europa",
    "Fermi",
    "Gemini",
    "Hubble",
    "Icarus",
    "Juno",
    "Kepler",
    "Lunar",
    "Mercury",
    "Nova",
    "Orion",
    "Pioneer",
    "Quasar",
    "Rosetta",
    "Skylab",
    "Titan",
)


class DemoBase(DeclarativeBase):
    metadata = MetaData()


class Project(DemoBase):
    """A project of an organisation; money is kept in cents, shown as a ``Decimal``."""

    __tablename__ = "demo_project"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    org_id: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(200))
    budget_cents: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default="ACTIVE")
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)

    @property
    def budget(self) -> Decimal:
        return Decimal(self.budget_cents) / 100

    def snapshot(self) -> dict[str, Any]:
        """The payload the project's events carry."""
        return {"id": self.id, "name": self.name, "budget": self.budget, "status": self.status}


class ProjectNotFound(OutboxError, LookupError):
    """No project with that id."""


def ensure_demo_event_types(registry: EventTypeRegistry | None = None) -> None:
    """Register ``PROJECT.ARCHIVED`` (the original registers CREATED and UPDATED)."""
    for name in DEMO_EVENT_TYPES:
        (registry or default_registry).register(name)


class DemoMarker(DemoBase):
    """One row saying this database was made for the demo, and when.

    The dashboard runs its demo handler (which completes events nobody receives) only on
    a database holding this row: written by the demo actions, never guessed from data.
    """

    __tablename__ = "demo_outbox_marker"

    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


def create_demo_schema(engine: Engine) -> None:
    """Create the demo's tables if missing and mark the database as a demo one (the outbox
    tables come from ``init_db``). Only demo actions call this."""
    DemoBase.metadata.create_all(engine, checkfirst=True)
    with Session(write_engine(engine)) as session, session.begin():
        if session.get(DemoMarker, 1) is None:
            session.add(DemoMarker(id=1, created_at=_now()))
    ensure_demo_event_types()


def is_demo_database(engine: Engine) -> bool:
    """Whether the demo actions made this database (reads only; False when the marker table is absent)."""
    with read_connection(engine) as conn:
        if not inspect(conn).has_table(DemoMarker.__tablename__):
            return False
        return conn.execute(select(DemoMarker.id).limit(1)).first() is not None


def _cents(budget: Decimal | int | str) -> int:
    value = Decimal(str(budget))
    if not value.is_finite() or value < 0:
        raise ValueError(f"budget must be a non-negative amount, not {budget!r}")
    return int((value * 100).to_integral_value())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def create_project(session: Session, *, org_id: str, name: str, budget: Decimal | int | str) -> Project:
    """Create a project and publish ``PROJECT.CREATED`` in the caller's transaction."""
    import uuid

    ensure_demo_event_types()
    project = Project(
        id=str(uuid.uuid4()), org_id=org_id, name=name, budget_cents=_cents(budget), status="ACTIVE", updated_at=_now()
    )
    session.add(project)
    session.flush()
    publish_outbox_event(
        session,
        org_id=org_id,
        event_type="PROJECT.CREATED",
        entity_type="Project",
        entity_id=project.id,
        payload=project.snapshot(),
    )
    return project


def _get(session: Session, project_id: str) -> Project:
    project = session.get(Project, project_id)
    if project is None:
        raise ProjectNotFound(f"no project {project_id!r}")
    return project


def update_project(
    session: Session, project_id: str, *, name: str | None = None, budget: Decimal | int | str | None = None
) -> Project:
    """Rename or re-budget a project and publish ``PROJECT.UPDATED`` with what changed."""
    ensure_demo_event_types()
    project = _get(session, project_id)
    changes: dict[str, Any] = {}
    if name is not None and name != project.name:
        changes["name"] = {"from": project.name, "to": name}
        project.name = name
    if budget is not None and _cents(budget) != project.budget_cents:
        changes["budget"] = {"from": project.budget, "to": Decimal(_cents(budget)) / 100}
        project.budget_cents = _cents(budget)
    project.updated_at = _now()
    session.flush()
    publish_outbox_event(
        session,
        org_id=project.org_id,
        event_type="PROJECT.UPDATED",
        entity_type="Project",
        entity_id=project.id,
        payload={**project.snapshot(), "changes": changes},
    )
    return project


def archive_project(session: Session, project_id: str) -> Project:
    """Archive a project and publish ``PROJECT.ARCHIVED``."""
    ensure_demo_event_types()
    project = _get(session, project_id)
    project.status = "ARCHIVED"
    project.updated_at = _now()
    session.flush()
    publish_outbox_event(
        session,
        org_id=project.org_id,
        event_type="PROJECT.ARCHIVED",
        entity_type="Project",
        entity_id=project.id,
        payload=project.snapshot(),
    )
    return project


_ERRORS = (
    "BillingService: HTTP 503 Service Unavailable from billing-{n}.internal",
    "SearchIndexer: timeout after {ms}ms indexing project {id}",
    "NotificationHub: connection reset by peer (request 0x{hex})",
)
_DEAD = "ProjectValidator: budget currency mismatch for project {id}"


class DeadLetterDemoError(RuntimeError):
    """The demo's poison events: the event is at fault, not the handler (breakers ignore it)."""

    event_fault = True


class DemoHandler:
    """A handler that fails on purpose, for demos.

    ``fail_share``: the chance that any one delivery fails (it is retried and
    usually recovers). ``always_fail_share``: the share of events that fail every
    time (decided from the event id, so it holds across retries and processes):
    they end as FAILED dead letters.
    """

    name = "demo"

    def __init__(self, fail_share: float = 0.2, always_fail_share: float = 0.05, seed: int | None = None) -> None:
        for label, share in (("fail_share", fail_share), ("always_fail_share", always_fail_share)):
            if not 0 <= share <= 1:
                raise ValueError(f"{label} must be between 0 and 1")
        self.fail_share = fail_share
        self.always_fail_share = always_fail_share
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.delivered = 0

    def configure(self, *, fail_share: float | None = None, always_fail_share: float | None = None) -> None:
        """Change the failure shares while a dispatcher uses this handler."""
        for label, share in (("fail_share", fail_share), ("always_fail_share", always_fail_share)):
            if share is not None and not 0 <= share <= 1:
                raise ValueError(f"{label} must be between 0 and 1")
        with self._lock:
            if fail_share is not None:
                self.fail_share = fail_share
            if always_fail_share is not None:
                self.always_fail_share = always_fail_share

    def always_fails(self, event_id: str) -> bool:
        digest = int(hashlib.sha256(event_id.encode()).hexdigest()[:8], 16)
        return digest / 0xFFFFFFFF < self.always_fail_share

    def __call__(self, event: DeliveredEvent) -> None:
        if self.always_fails(event.id):
            raise DeadLetterDemoError(_DEAD.format(id=event.entity_id))
        with self._lock:
            roll = self._rng.random()
            pick = self._rng.randrange(len(_ERRORS))
            numbers = (self._rng.randrange(1, 9), self._rng.randrange(500, 5000), self._rng.getrandbits(32))
        if roll < self.fail_share:
            raise ConnectionError(
                _ERRORS[pick].format(n=numbers[0], ms=numbers[1], hex=f"{numbers[2]:08x}", id=event.entity_id)
            )
        with self._lock:
            self.delivered += 1


@dataclass(frozen=True)
class ActivityReport:
    created: int
    updated: int
    archived: int

    @property
    def events(self) -> int:
        return self.created + self.updated + self.archived


def generate_activity(
    engine: Engine,
    count: int,
    *,
    orgs: tuple[str, ...] = DEMO_ORGS,
    seed: int | None = None,
    progress: Callable[[int, int], object] | None = None,
) -> ActivityReport:
    """Run ``count`` demo mutations, each in its own transaction: mostly creations, then updates
    and some archives of existing projects. ``progress(done, count)`` after each one."""
    if count < 0:
        raise ValueError("count must not be negative")
    create_demo_schema(engine)
    rng = random.Random(seed)
    # Each mutation reads the project, then writes: its transaction takes the write lock up front,
    # whatever the engine's default (BEGIN IMMEDIATE on SQLite). The first read takes none.
    writer = write_engine(engine)
    with Session(read_engine(engine)) as session:
        active = list(session.scalars(select(Project.id).where(Project.status == "ACTIVE")))
    created = updated = archived = 0
    for done in range(1, count + 1):
        roll = rng.random()
        with Session(writer) as session, session.begin():
            if not active or roll < 0.45:
                project = create_project(
                    session,
                    org_id=rng.choice(orgs),
                    name=f"{rng.choice(_NAMES)} {rng.randrange(1, 100)}",
                    budget=Decimal(rng.randrange(1_000_00, 900_000_00)) / 100,
                )
                active.append(project.id)
                created += 1
            elif roll < 0.9:
                update_project(session, rng.choice(active), budget=Decimal(rng.randrange(1_000_00, 900_000_00)) / 100)
                updated += 1
            else:
                archive_project(session, active.pop(rng.randrange(len(active))))
                archived += 1
        if progress is not None:
            progress(done, count)
    return ActivityReport(created, updated, archived)


def demo_dispatcher(
    engine: Engine, handler: DemoHandler | None = None, *, extra_handlers: Sequence[Any] = (), **kwargs: Any
) -> Dispatcher:
    """A dispatcher with the audit log, the message bus, a ``DemoHandler`` and any sinks in
    ``extra_handlers``; quick retries (``max_attempts=3``, backoff from 1 s) so failures show
    up within a demo."""
    kwargs.setdefault("max_attempts", 3)
    kwargs.setdefault("backoff", Backoff(base=1, factor=2, cap=30, jitter=0.5))
    handlers = [AuditLogHandler(), MessageBusHandler(), handler or DemoHandler(), *extra_handlers]
    return Dispatcher(engine, handlers, **kwargs)


def load_demo_data(
    engine: Engine,
    count: int = 120,
    *,
    seed: int | None = 7,
    fail_share: float = 0.25,
    always_fail_share: float = 0.08,
    progress: Callable[[int, int], object] | None = None,
    extra_handlers: Sequence[Any] = (),
) -> DispatchReport:
    """Fill an empty outbox with a realistic mix: completed, retried, failed and pending events.

    Runs ``count`` mutations, then dispatches them with a ``DemoHandler`` (after any
    ``extra_handlers``, which the delivery ledger then records beside it) and no waiting
    between retries until only the dead letters fail, then publishes a few more that stay
    PENDING. Returns what the dispatcher did.
    """
    generate_activity(engine, count, seed=seed, progress=progress)
    handler = DemoHandler(fail_share=fail_share, always_fail_share=always_fail_share, seed=seed)
    # No breaker: the loader retries at once until only the dead letters fail, and a run of
    # random failures must not pause it halfway.
    dispatcher = Dispatcher(
        engine,
        [*extra_handlers, handler],
        max_attempts=3,
        backoff=Backoff(base=0, jitter=0),
        name=DEMO_LOADER_NAME,
        breaker=None,
    )
    report = DispatchReport()
    for _ in range(6):
        tick = dispatcher.drain(max_seconds=30)
        report = report + tick
        if tick.claimed == 0:
            break
    generate_activity(engine, max(1, count // 20), seed=None if seed is None else seed + 1)
    return report

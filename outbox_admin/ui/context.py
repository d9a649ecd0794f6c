"""What every page needs: settings, the database (read-only unless an action writes), its
state, and the dashboard's own dispatcher.

Opening a database never writes to it. Pages read through ``Context.engine``, a
``make_engine(url, read_only=True)`` engine (SQLite ``mode=ro``, PostgreSQL read-only
transactions), so neither a foreign database nor a new path is changed by looking. Writes
go through ``Context.write_engine``, used only by explicit actions (create the tables,
load demo data, requeue, publish, dispatch) and absent in read-only mode.

Engines and dispatcher services are created once per server process and database URL
(``st.cache_resource``), not once per rerun or per browser tab.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import streamlit as st
from sqlalchemy import Engine

from ..config import Settings
from ..db import default_database_url, make_engine, normalize_url
from ..demo import DemoHandler, demo_dispatcher, is_demo_database
from ..dispatcher import Dispatcher
from ..display import error_line
from ..errors import AdminActionError, ConfigurationError, DatabaseUnavailableError, OutboxError
from ..handlers.config import CONFIG_ENV, Deliveries, config_path, dashboard_databases, load_deliveries
from ..migrate import SchemaStatus, schema_status
from ..service import DispatcherService

log = logging.getLogger("outbox_admin.dashboard")

DATABASE_KEY = "database_url"
CONNECT_TIMEOUT_SECONDS = 5
STATE_TTL_SECONDS = 10.0  # how long a database's schema state is trusted before it is read again


@dataclass(frozen=True)
class DashboardSettings:
    """Settings read from the environment and the config file: the database, the access
    rules, the refresh rate, and the databases a read-only dashboard may switch to."""

    database_url: str
    readonly: bool
    refresh_seconds: float
    outbox: Settings
    databases: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls) -> DashboardSettings:
        url = default_database_url()
        try:
            configured = dashboard_databases()
        except ConfigurationError as exc:
            log.warning("ignoring the [dashboard] databases of the config file: %s", exc)
            configured = {}
        return cls(
            database_url=url,
            readonly=os.environ.get("OUTBOX_DASHBOARD_READONLY", "").strip().lower() in ("1", "true", "yes"),
            refresh_seconds=float(os.environ.get("OUTBOX_DASHBOARD_REFRESH_SECONDS", "2") or 2),
            outbox=Settings.from_env(),
            databases={"default": url, **configured},
        )

    def allows(self, url: str) -> bool:
        """Whether the dashboard may open ``url``: any URL, or in read-only mode only configured ones."""
        if not self.readonly:
            return True
        return normalize_url(url) in {normalize_url(u) for u in self.databases.values()}


def _connect_args(url: str) -> dict[str, object]:
    return {"connect_timeout": CONNECT_TIMEOUT_SECONDS} if url.startswith("postgresql") else {}


_engines: list[Engine] = []  # every engine this process made, so tests can close them all


@st.cache_resource(show_spinner=False)
def get_engine(url: str) -> Engine:
    """The read-only engine of a database URL: every page reads through it."""
    engine = make_engine(url, read_only=True, connect_args=_connect_args(url))
    _engines.append(engine)
    return engine


@st.cache_resource(show_spinner=False)
def get_write_engine(url: str) -> Engine:
    """The engine explicit actions write through (never used just to look)."""
    engine = make_engine(url, connect_args=_connect_args(url))
    _engines.append(engine)
    return engine


@dataclass(frozen=True)
class DatabaseState:
    """What opening a database found: its outbox tables and whether the demo made it."""

    schema: SchemaStatus
    demo: bool


@st.cache_data(ttl=STATE_TTL_SECONDS, show_spinner=False)
def database_state(url: str) -> DatabaseState:
    """Read the schema state (cached a few seconds; ``forget_state()`` after a change).

    Raises ``DatabaseUnavailableError`` with one line when the database cannot be read.
    """
    engine = get_engine(url)
    try:
        schema = schema_status(engine)
        demo = schema.usable and is_demo_database(engine)
    except OutboxError:
        raise
    except Exception as exc:  # noqa: BLE001 - any driver error: one line for the page, the whole in the log
        log.warning("cannot open %s: %s", engine.url.render_as_string(hide_password=True), exc)
        raise DatabaseUnavailableError(error_line(exc)) from None
    return DatabaseState(schema, demo)


def forget_state() -> None:
    """After creating or upgrading tables, or loading demo data: read the state again."""
    database_state.clear()


@dataclass(frozen=True)
class DashboardDispatcher:
    """The dispatcher this dashboard can run, or why it does not.

    ``targets`` names what it delivers to, in order; ``demo_handler`` is set on a demo
    database, where the demo handler fails on purpose at shares the Publish page sets.
    """

    service: DispatcherService | None
    targets: tuple[str, ...]
    reason: str | None = None
    demo_handler: DemoHandler | None = None
    source: str | None = None  # where the handlers came from


_services: list[DispatcherService] = []  # every service this process made, so tests can stop them all


def _config_stamp() -> tuple[str | None, float | None]:
    """The config file and its modification time: a changed file makes a new dispatcher."""
    try:
        path = config_path()
    except OSError:
        return None, None
    if path is None:
        return None, None
    try:
        return str(path.resolve()), path.stat().st_mtime
    except OSError:
        return str(path), None


@st.cache_resource(show_spinner=False)
def get_dispatcher(url: str, demo: bool, config: tuple[str | None, float | None]) -> DashboardDispatcher:
    """One dispatcher service per database, kind and config file (not started).

    It delivers to the application's handlers and sinks from ``outbox.toml`` /
    ``OUTBOX_CONFIG`` (``handlers = "module:attr"``, ``[[sinks]]``); on a database the
    demo made, to the demo chain before them. With nothing to deliver to it does not
    exist: completing events that nobody received would lose them.
    """
    settings = Settings.from_env()
    origin = config[0]
    try:
        deliveries = load_deliveries()
    except ConfigurationError as exc:
        log.warning("the dashboard's dispatcher cannot use the configuration: %s", exc)
        return DashboardDispatcher(None, (), reason=f"The configuration cannot be used: {error_line(exc)}")
    try:
        return _build_dispatcher(url, demo, deliveries, settings, origin)
    except ConfigurationError as exc:  # two handlers with one name, a bad setting
        log.warning("the dashboard's dispatcher cannot be built: %s", exc)
        return DashboardDispatcher(None, (), reason=f"The configuration cannot be used: {error_line(exc)}")


def _build_dispatcher(
    url: str, demo: bool, deliveries: Deliveries, settings: Settings, origin: str | None
) -> DashboardDispatcher:
    engine = get_write_engine(url)
    handler: DemoHandler | None = None
    source: str | None
    if demo:
        handler = DemoHandler(fail_share=0.0, always_fail_share=0.0)
        dispatcher = demo_dispatcher(
            engine,
            handler,
            extra_handlers=deliveries.targets,
            batch_size=settings.batch_size,
            lease_seconds=settings.lease_seconds,
        )
        source = "the demo (this database was made by Load demo data)"
    elif deliveries.targets:
        dispatcher = Dispatcher.from_settings(engine, settings, handlers=deliveries.targets)
        source = Path(origin).name if origin else None
    else:
        where = f"`{CONFIG_ENV}` or outbox.toml"
        return DashboardDispatcher(
            None,
            (),
            reason=(
                f"No handlers are configured, so this dashboard does not dispatch: set "
                f'`handlers = "myapp.outbox:handlers"` or `[[sinks]]` in {where}. '
                "It watches the dispatchers running elsewhere."
            ),
        )
    service = DispatcherService(dispatcher, interval_seconds=settings.interval_seconds)
    _services.append(service)
    names = tuple(route.name for route in dispatcher.routes)
    return DashboardDispatcher(service, names, demo_handler=handler, source=source)


def stop_all_services() -> None:
    """Stop every dispatcher the dashboard started in this process and close its engines'
    connections (for tests and shutdown)."""
    for service in list(_services):
        service.stop(wait=True)
    for engine in list(_engines):
        engine.dispose()


@dataclass(frozen=True)
class Context:
    settings: DashboardSettings
    url: str
    engine: Engine  # read-only
    state: DatabaseState

    @property
    def readonly(self) -> bool:
        return self.settings.readonly

    @property
    def schema(self) -> SchemaStatus:
        return self.state.schema

    @property
    def demo(self) -> bool:
        return self.state.demo

    @property
    def display_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    @property
    def write_engine(self) -> Engine:
        """The engine for an explicit action; refused in read-only mode and to viewers
        (a second check behind the pages, which show viewers no action)."""
        from .auth import current_user  # auth builds on this module

        if self.readonly:
            raise AdminActionError("this dashboard is read-only")
        if not current_user().is_operator:
            raise AdminActionError("viewers cannot change the outbox; ask an operator")
        return get_write_engine(self.url)

    @property
    def dispatcher(self) -> DashboardDispatcher:
        if self.readonly:
            return DashboardDispatcher(None, (), reason="This dashboard is read-only; it watches the dispatchers.")
        if not self.schema.usable:
            return DashboardDispatcher(None, (), reason=self.schema.describe())
        return dashboard_dispatcher(self.url)


def dashboard_dispatcher(url: str) -> DashboardDispatcher:
    """The dispatcher the dashboard runs on ``url`` (for its database kind and config file)."""
    return get_dispatcher(url, database_state(url).demo, _config_stamp())


def chosen_url(settings: DashboardSettings) -> str:
    """The database chosen in the sidebar, else ``OUTBOX_DATABASE_URL`` (else ./outbox.db)."""
    url = st.session_state.get(DATABASE_KEY) or settings.database_url
    return url if settings.allows(url) else settings.database_url


def current() -> Context:
    """The context of this rerun. Raises ``DatabaseUnavailableError`` (one line) when the
    database cannot be read."""
    settings = DashboardSettings.from_env()
    url = chosen_url(settings)
    return Context(settings, url, get_engine(url), database_state(url))


def open_database(settings: DashboardSettings, url: str) -> str:
    """Check a URL typed or picked in the sidebar before switching to it; returns it normalised.

    Only reads. Raises ``OutboxError`` (one line for the form) when it is refused or unreachable.
    """
    url = normalize_url(url.strip())
    if not settings.allows(url):
        raise ConfigurationError("this dashboard is read-only: it opens only the databases in its configuration")
    database_state(url)  # reachable and readable, or DatabaseUnavailableError
    return url

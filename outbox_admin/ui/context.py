"""What every page needs: settings, the engine and the dashboard's own dispatcher.

The engine and the dispatcher service are created once per server process and
database URL (``st.cache_resource``), not once per rerun or per browser tab.
Pages only read them or call their methods; the service is started and stopped
from the sidebar.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import streamlit as st
from sqlalchemy import Engine

from ..config import Settings
from ..db import default_database_url, init_db, make_engine
from ..demo import DemoHandler, create_demo_schema, demo_dispatcher
from ..handlers.config import load_sinks
from ..service import DispatcherService

DATABASE_KEY = "database_url"
ACTOR = "dashboard"


@dataclass(frozen=True)
class DashboardSettings:
    """Settings read from the environment: the database, the access rules, the refresh rate."""

    database_url: str
    password: str | None
    readonly: bool
    refresh_seconds: float
    outbox: Settings

    @classmethod
    def from_env(cls) -> DashboardSettings:
        return cls(
            database_url=default_database_url(),
            password=os.environ.get("OUTBOX_DASHBOARD_PASSWORD") or None,
            readonly=os.environ.get("OUTBOX_DASHBOARD_READONLY", "").strip().lower() in ("1", "true", "yes"),
            refresh_seconds=float(os.environ.get("OUTBOX_DASHBOARD_REFRESH_SECONDS", "2") or 2),
            outbox=Settings.from_env(),
        )


@dataclass(frozen=True)
class DashboardDispatcher:
    """The dispatcher this dashboard can run, and the demo handler whose failure shares it sets."""

    service: DispatcherService
    demo_handler: DemoHandler


_services: list[DispatcherService] = []  # every service this process made, so tests can stop them all


@st.cache_resource(show_spinner=False)
def get_engine(url: str) -> Engine:
    """One engine per database URL, with the outbox and demo tables in place."""
    engine = make_engine(url)
    init_db(engine)
    create_demo_schema(engine)
    return engine


@st.cache_resource(show_spinner=False)
def get_dispatcher(url: str) -> DashboardDispatcher:
    """One dispatcher service per database URL and server process (not started), with the sinks
    of ``outbox.toml`` / ``OUTBOX_CONFIG`` after the demo handlers."""
    settings = Settings.from_env()
    handler = DemoHandler(fail_share=0.0, always_fail_share=0.0)
    dispatcher = demo_dispatcher(
        get_engine(url),
        handler,
        extra_handlers=load_sinks(),
        batch_size=settings.batch_size,
        lease_seconds=settings.lease_seconds,
    )
    service = DispatcherService(dispatcher, interval_seconds=settings.interval_seconds)
    _services.append(service)
    return DashboardDispatcher(service, handler)


def stop_all_services() -> None:
    """Stop every dispatcher the dashboard started in this process (for tests and shutdown)."""
    for service in list(_services):
        service.stop(wait=True)


@dataclass(frozen=True)
class Context:
    settings: DashboardSettings
    url: str
    engine: Engine
    dispatcher: DashboardDispatcher

    @property
    def readonly(self) -> bool:
        return self.settings.readonly

    @property
    def display_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)


def current() -> Context:
    """The context of this rerun: the database chosen in the sidebar, else ``OUTBOX_DATABASE_URL``."""
    settings = DashboardSettings.from_env()
    url = st.session_state.get(DATABASE_KEY) or settings.database_url
    return Context(settings, url, get_engine(url), get_dispatcher(url))

"""The dashboard's frame: page config, the password gate, the sidebar and the list of pages."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass

import streamlit as st

from . import pages, sidebar
from .context import Context, DashboardSettings, current


@dataclass(frozen=True)
class PageSpec:
    name: str
    title: str
    icon: str
    render: Callable[[], None]
    writes: bool = False


PAGES = (
    PageSpec("overview", "Overview", ":material/dashboard:", pages.overview),
    PageSpec("live", "Live", ":material/monitoring:", pages.live),
    PageSpec("events", "Events", ":material/table_rows:", pages.events),
    PageSpec("failures", "Failures", ":material/error:", pages.failures),
    PageSpec("publish", "Publish", ":material/send:", pages.publish, writes=True),
)


def password_ok(settings: DashboardSettings, typed: str | None) -> bool:
    """Constant-time comparison with ``OUTBOX_DASHBOARD_PASSWORD`` (no password set: always open)."""
    if settings.password is None:
        return True
    return typed is not None and hmac.compare_digest(typed.encode("utf-8"), settings.password.encode("utf-8"))


def gate(settings: DashboardSettings) -> bool:
    """Ask for the password once per browser session; False while locked."""
    if settings.password is None or st.session_state.get("authenticated"):
        return True
    st.title("outbox_admin")
    with st.form("login"):
        typed = st.text_input("Password", type="password")
        if st.form_submit_button("Enter"):
            if password_ok(settings, typed):
                st.session_state["authenticated"] = True
                st.rerun()
            st.error("Wrong password.")
    return False


def start() -> Context | None:
    """Everything before a page: config, gate, context, sidebar. None while the gate is locked."""
    st.set_page_config(page_title="outbox_admin", page_icon="📤", layout="wide")
    settings = DashboardSettings.from_env()
    if not gate(settings):
        return None
    ctx = current()
    sidebar.render(ctx)
    return ctx


def navigation_pages(ctx: Context) -> list[st.Page]:
    """The pages this user may see (no Publish page when read-only)."""
    return [
        st.Page(spec.render, title=spec.title, icon=spec.icon, url_path=spec.name, default=spec.name == "overview")
        for spec in PAGES
        if not (spec.writes and ctx.readonly)
    ]


def render_page(name: str) -> None:
    """Render one page with the same frame as the router (used by tests: ``AppTest.from_function``)."""
    ctx = start()
    if ctx is None:
        return
    spec = next(p for p in PAGES if p.name == name)
    if spec.writes and ctx.readonly:
        st.error("This dashboard is read-only.")
        return
    spec.render()

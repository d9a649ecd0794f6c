"""The dashboard's frame: page config, the password gate, the sidebar and the list of pages."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass

import streamlit as st

from ..errors import OutboxError
from . import components, pages, schema, sidebar
from .context import Context, DashboardSettings, chosen_url, current


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
    """Everything before a page: config, gate, context, sidebar, the schema check.

    None when no page can be shown: the gate is locked, the database cannot be read (one
    line, the sidebar still offers another), or it has no usable outbox tables (then what
    it lacks is shown, with the action that creates them where writing is allowed).
    """
    st.set_page_config(page_title="outbox_admin", page_icon="📤", layout="wide")
    settings = DashboardSettings.from_env()
    if not gate(settings):
        return None
    components.keep_widget_state()
    try:
        ctx = current()
    except OutboxError as exc:
        sidebar.render_database(settings, chosen_url(settings))
        st.title("outbox_admin")
        st.error(f"Cannot open the database: {components.literal(exc)}")
        return None
    sidebar.render(ctx)
    if not ctx.schema.usable:
        schema.notice(ctx)
        return None
    return ctx


def run(ctx: Context) -> None:
    """Run the page the link names; an error in it is one short line (and a log entry), never a traceback."""
    components.guarded(st.navigation(navigation_pages(ctx)).run)


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
    components.guarded(spec.render)

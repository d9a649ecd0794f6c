"""The dashboard's frame: page config, who is signed in, the sidebar and the list of pages."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import streamlit as st

from ..errors import OutboxError
from . import auth, components, pages, schema, sidebar
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


def start(as_user: str | None = None) -> Context | None:
    """Everything before a page: config, who is signed in, context, sidebar, the schema check.

    None when no page can be shown: nobody is signed in, the database cannot be read (one
    line, the sidebar still offers another), or it has no usable outbox tables (then what
    it lacks is shown, with the action that creates them where writing is allowed).
    ``as_user``: for tests, the user instead of the request's (see ``auth.gate``).
    """
    st.set_page_config(page_title="outbox_admin", page_icon="📤", layout="wide")
    user = auth.gate(as_user)
    if user is None:
        return None
    settings = DashboardSettings.from_env()
    auth.render_user(user, readonly=settings.readonly)
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
    """The pages this user may see (no Publish page for viewers and in read-only mode)."""
    return [
        st.Page(spec.render, title=spec.title, icon=spec.icon, url_path=spec.name, default=spec.name == "overview")
        for spec in PAGES
        if not (spec.writes and not auth.can_write(ctx))
    ]


def render_page(name: str, as_user: str | None = None) -> None:
    """Render one page with the same frame as the router (used by tests: ``AppTest.from_function``)."""
    ctx = start(as_user)
    if ctx is None:
        return
    spec = next(p for p in PAGES if p.name == name)
    if spec.writes and not auth.can_write(ctx):
        st.error("This dashboard is read-only." if ctx.readonly else "Viewers cannot open this page.")
        return
    components.guarded(spec.render)

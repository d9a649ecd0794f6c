"""Who is acting in this browser session, and whether they may act.

The sign-in itself happens over plain HTTP (``ui/server.py``: a sign-in page that sets a
signed session cookie, and a middleware that lets no page, WebSocket or download through
without one). Here every rerun checks again who the session is (``access.identify`` on the
proxy header and cookies of the session's WebSocket), so an expired session is noticed
without a reload, and records it for the pages:

- ``current_user()``: a ``DashboardUser(name, role)``; manual actions are recorded as
  ``admin:<name>``.
- ``can_write(ctx)``: an operator, and the dashboard not in read-only mode. A viewer sees
  what read-only mode shows: no Publish page, no requeue or discard, no dispatcher controls.
"""

from __future__ import annotations

import html
import logging
from urllib.parse import urlencode, urlsplit

import streamlit as st

from ..access import OPEN_USER, AccessSettings, DashboardUser, Role, identify
from ..errors import ConfigurationError
from . import components
from .context import Context
from .server import LOGIN_PATH, LOGOUT_PATH, base_path, login_url

log = logging.getLogger(__name__)

USER_KEY = "dashboard_user"
#: Who a session is when nobody recognised it (a page rendered without ``gate``): it may not act.
NOBODY = DashboardUser("anonymous", Role.VIEWER, "none")


def gate(as_user: str | None = None) -> DashboardUser | None:
    """The user of this rerun, kept for the pages; None after drawing "sign in" (nobody is signed in).

    ``as_user`` names the user instead of the request (tests: AppTest sends no cookies or headers);
    their role still comes from the configuration.
    """
    try:
        settings = AccessSettings.from_env()
    except ConfigurationError as exc:
        log.error("dashboard access configuration: %s", exc)
        st.title("outbox_admin")
        st.error(f"The dashboard's access configuration is unusable: {components.literal(exc)}")
        return None
    if as_user is not None:
        user: DashboardUser | None = settings.user(as_user, "test")
    else:
        user = identify(settings, st.context.headers, st.context.cookies)
    if user is None:
        st.session_state.pop(USER_KEY, None)
        _sign_in_prompt()
        return None
    st.session_state[USER_KEY] = user
    return user


def current_user() -> DashboardUser:
    """Who is acting in this session (as ``gate`` found them on this rerun)."""
    user = st.session_state.get(USER_KEY)
    return user if isinstance(user, DashboardUser) else NOBODY


def can_write(ctx: Context) -> bool:
    """Whether this session may publish, requeue, discard and run the dispatcher."""
    return not ctx.readonly and current_user().is_operator


def render_user(user: DashboardUser, *, readonly: bool) -> None:
    """Who is signed in, with their rights, at the top of the sidebar; a sign-out link for cookie sessions."""
    if user.source == "open" and user.name == OPEN_USER:
        return  # an open dashboard: nobody signed in, nothing to say
    rights = "read-only mode" if readonly and user.is_operator else user.role.value
    with st.sidebar:
        st.caption(f"Signed in as {components.literal(user.name)} ({rights})")
        if user.source == "password":
            _same_tab_link("Sign out", f"{base_path()}{LOGOUT_PATH}")


def _sign_in_prompt() -> None:
    """Shown when the session has no user: its cookie expired, or the page is served without the
    sign-in routes (``streamlit run`` on a file without ``dashboard.py``'s ``st.App``)."""
    st.title("outbox_admin")
    st.info("Sign in to use the dashboard; you will come back to this page.")
    _same_tab_link("Sign in", login_url(_here(), base_path()))


def _same_tab_link(label: str, href: str) -> None:
    """A link that opens in this tab (Markdown links and ``st.link_button`` open a new one, which
    would leave this tab signed in, or signed out). Only our own constant text and URL go into the HTML."""
    st.markdown(f'<a href="{html.escape(href)}" target="_self">{html.escape(label)}</a>', unsafe_allow_html=True)


def _here() -> str:
    """This page's path and query, for coming back after signing in."""
    path = urlsplit(st.context.url or "").path or "/"
    query = urlencode({key: st.query_params.get_all(key) for key in st.query_params}, doseq=True)
    return path + (f"?{query}" if query else "")


__all__ = ["LOGIN_PATH", "can_write", "current_user", "gate", "render_user"]

"""The sidebar: which database, the dashboard's dispatcher, and the refresh rate.

The dispatcher panel is a fragment on the page's refresh, so its state is never older
than the page beside it.
"""

from __future__ import annotations

import datetime as dt

import streamlit as st

from .. import analytics
from ..demo import DEMO_LOADER_NAME
from ..display import visible
from ..errors import OutboxError
from . import auth, components
from .context import DATABASE_KEY, Context, DashboardSettings, open_database

REFRESH_KEY = "live_refresh"
REFRESH_SECONDS_KEY = "refresh_seconds"
DATABASE_ERROR_KEY = "database_error"


def refresh_interval(ctx: Context) -> float | None:
    """Seconds between live refreshes, or None when paused; a live part given a ``name`` waits longer
    after a slow refresh (``components.live``, ``ui.refresh.backoff``)."""
    if not st.session_state.get(REFRESH_KEY, True):
        return None
    return float(st.session_state.get(REFRESH_SECONDS_KEY, ctx.settings.refresh_seconds))


def render(ctx: Context) -> None:
    with st.sidebar:
        _database(ctx.settings, ctx.display_url)
        if ctx.schema.usable:
            _dispatcher_panel(ctx)
        st.divider()
        st.toggle("Live refresh", value=True, key=REFRESH_KEY, help="Pause to read a page without it moving.")
        st.number_input(
            "Refresh every (s)",
            min_value=1.0,
            max_value=60.0,
            step=1.0,
            value=float(ctx.settings.refresh_seconds),
            key=REFRESH_SECONDS_KEY,
        )


def render_database(settings: DashboardSettings, url: str) -> None:
    """Only the database picker: what is left when the current database cannot be opened."""
    with st.sidebar:
        _database(settings, url)


def _database(settings: DashboardSettings, shown_url: str) -> None:
    """The database in use and the form to change it.

    A URL is checked (read-only) before the switch; a refusal or a failed connection is one
    line under the form and the database in use stays. Read-only mode offers only the
    databases of the configuration (``[dashboard] databases`` in outbox.toml).
    """
    st.caption("Database")
    st.code(visible(_hide_password(shown_url)), language=None)
    names = list(settings.databases)
    with st.expander("Change database"), st.form("database_form", border=False):
        picked = st.selectbox("Configured", names, index=None, placeholder="Pick a configured database")
        typed = None
        if not settings.readonly and auth.current_user().is_operator:  # viewers: configured databases only
            typed = st.text_input("or a SQLAlchemy URL", placeholder="postgresql://user@host/db or sqlite:///file.db")
        if st.form_submit_button("Connect"):
            target = (typed or "").strip() or (settings.databases.get(picked) if picked else None)
            if target:
                try:
                    with st.spinner("Connecting..."):
                        st.session_state[DATABASE_KEY] = open_database(settings, target)
                except OutboxError as exc:
                    st.session_state[DATABASE_ERROR_KEY] = str(exc)
                else:
                    st.session_state.pop(DATABASE_ERROR_KEY, None)
                    st.rerun()
        error = st.session_state.get(DATABASE_ERROR_KEY)
        if error:
            st.error(f"Not connected: {components.literal(error)}")


def _hide_password(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - shown as typed when it does not even parse
        return url


def _dispatcher_panel(ctx: Context) -> None:
    @components.live(refresh_interval(ctx), name="sidebar")
    def panel() -> None:
        _dispatcher(ctx)

    panel()


def _dispatcher(ctx: Context) -> None:
    st.subheader("Dispatcher")
    dispatcher = ctx.dispatcher
    service = dispatcher.service
    if service is None:
        reason = dispatcher.reason or "This dashboard does not dispatch."
        st.caption(reason)
        if auth.can_write(ctx):  # the controls are there, and say why they cannot be used
            labels = ("Start", "Tick", "Drain")
            for column, label in zip(st.columns(len(labels)), labels, strict=True):
                column.button(label, disabled=True, width="stretch", help=reason, key=f"no_dispatcher_{label}")
        _elsewhere(ctx, None)
        return
    status = service.status()
    if status.running:
        st.markdown(f":green-background[running] in this dashboard as {components.literal(status.dispatcher)}")
    elif status.draining:
        st.markdown(":blue-background[draining] everything due, batch after batch")
    else:
        st.markdown(":gray-background[stopped] in this dashboard")
    source = f" ({dispatcher.source})" if dispatcher.source else ""
    st.caption(f"Delivers to{source}: {components.literals(dispatcher.targets)}")
    progress = status.current_run
    if progress is not None and (status.draining or progress.claimed):
        st.caption(f"In progress: {progress.describe()}")
    if status.last_tick_at is not None and status.last_report is not None:
        ago = (dt.datetime.now(dt.UTC) - status.last_tick_at).total_seconds()
        st.caption(f"Last run {ago:.0f} s ago: {status.last_report.describe()}")
    seconds = status.seconds_to_next_tick()
    if seconds is not None:
        st.caption(f"Next tick in {seconds:.0f} s (every {status.interval_seconds:g} s)")
    if status.last_error:
        st.warning(f"Last run failed: {components.literal(status.last_error)}")
    for health in status.open_handlers:
        probe = ""
        if health.next_probe_at is not None:
            wait = max(0.0, (health.next_probe_at - dt.datetime.now(dt.UTC)).total_seconds())
            probe = f" Next probe in {wait:.0f} s."
        st.error(
            f"Handler {components.literal(health.handler)} is paused (circuit {health.state}): its events wait "
            f"without spending attempts.{probe} Last error: {components.literal(health.last_error)}"
        )
    _elsewhere(ctx, status.dispatcher)
    if auth.can_write(ctx):
        _controls(ctx, status.running, status.draining)


def _elsewhere(ctx: Context, own: str | None) -> None:
    """Dispatchers seen in the history lately, other than this dashboard's and its demo loader."""
    others = analytics.active_dispatchers(ctx.engine)
    others = others[~others["dispatcher"].isin([own, DEMO_LOADER_NAME])]
    if others.empty:
        if own is None:
            st.caption("No dispatcher has written to this outbox in the last 5 minutes.")
        return
    names = components.literals(others["dispatcher"].head(3))
    more = f" and {len(others) - 3} more" if len(others) > 3 else ""
    st.info(f"Dispatching elsewhere in the last 5 minutes: {names}{more}.")


def _controls(ctx: Context, running: bool, draining: bool) -> None:
    service = ctx.dispatcher.service
    assert service is not None
    start, stop = st.columns(2)
    if not running and start.button("Start", disabled=draining, width="stretch", help="Tick every interval"):
        _act(service.start)
    if running and stop.button("Stop", width="stretch", help="Stop after the event in hand"):
        _act(lambda: service.stop(wait=True))
    tick, drain = st.columns(2)
    if tick.button(
        "Tick",
        disabled=running or draining,
        width="stretch",
        help="One batch now (expired leases recovered first)"
        + ("; the running dispatcher ticks by itself" if running else ""),
    ):
        try:
            report = service.run_batch()
        except OutboxError as exc:
            st.toast(f"Tick refused: {visible(str(exc))}")
        except Exception:  # noqa: BLE001 - recorded in the status: shown as the last error above
            st.toast("The tick failed; see the last error above")
        else:
            st.toast(f"Tick: {report.describe()}")
    if draining:
        if drain.button("Stop drain", width="stretch", help="Stop after the batch in hand"):
            _act(lambda: service.stop_drain(wait=True))
    elif drain.button(
        "Drain", disabled=running, width="stretch", help="Dispatch everything due, batch after batch, until stopped"
    ):
        _act(service.start_drain)
    with st.expander("Dispatcher settings"):
        interval = st.number_input(
            "Interval (s)", min_value=1.0, max_value=3600.0, value=float(service.interval_seconds), step=1.0
        )
        batch = st.number_input("Batch size", min_value=1, max_value=5000, value=int(service.dispatcher.batch_size))
        if st.button("Apply"):
            _act(lambda: service.configure(interval_seconds=interval, batch_size=int(batch)))


def _act(action: object) -> None:
    try:
        action()  # type: ignore[operator]
    except OutboxError as exc:
        st.toast(visible(str(exc)))
        return
    st.rerun(scope="app")

"""The sidebar: which database, the dashboard's dispatcher, and the refresh rate."""

from __future__ import annotations

import datetime as dt

import streamlit as st

from .. import analytics
from ..db import normalize_url
from ..display import visible
from ..errors import OutboxError
from . import components
from .context import DATABASE_KEY, Context

REFRESH_KEY = "live_refresh"
REFRESH_SECONDS_KEY = "refresh_seconds"


def refresh_interval(ctx: Context) -> float | None:
    """Seconds between live refreshes, or None when paused."""
    if not st.session_state.get(REFRESH_KEY, True):
        return None
    return float(st.session_state.get(REFRESH_SECONDS_KEY, ctx.settings.refresh_seconds))


def render(ctx: Context) -> None:
    with st.sidebar:
        st.caption("Database")
        st.code(visible(ctx.display_url), language=None)
        with st.expander("Change database"), st.form("database_form", border=False):
            url = st.text_input("SQLAlchemy URL", placeholder="postgresql://user@host/db or sqlite:///file.db")
            if st.form_submit_button("Connect") and url.strip():
                try:
                    st.session_state[DATABASE_KEY] = normalize_url(url.strip())
                except OutboxError as exc:
                    st.error(components.literal(exc))
                else:
                    st.rerun()
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


def _dispatcher_panel(ctx: Context) -> None:
    service = ctx.dispatcher.service
    status = service.status()
    st.subheader("Dispatcher")
    if status.running:
        st.markdown(f":green-background[running] {components.literal(status.dispatcher)}")
    else:
        st.markdown(":gray-background[stopped] in this dashboard")
    if status.last_tick_at is not None and status.last_report is not None:
        report = status.last_report
        ago = (dt.datetime.now(dt.UTC) - status.last_tick_at).total_seconds()
        waiting = f", {report.waiting} waiting for a paused handler" if report.waiting else ""
        st.caption(
            f"Last tick {ago:.0f} s ago: {report.claimed} claimed, {report.completed} completed, "
            f"{report.retried} retried, {report.failed} failed, {report.recovered} recovered{waiting}"
        )
    seconds = status.seconds_to_next_tick()
    if seconds is not None:
        st.caption(f"Next tick in {seconds:.0f} s (every {status.interval_seconds:g} s)")
    if status.last_error:
        st.warning(f"Last tick failed: {components.literal(status.last_error)}")
    for health in status.open_handlers:
        probe = ""
        if health.next_probe_at is not None:
            seconds = max(0.0, (health.next_probe_at - dt.datetime.now(dt.UTC)).total_seconds())
            probe = f" Next probe in {seconds:.0f} s."
        st.error(
            f"Handler {components.literal(health.handler)} is paused (circuit {health.state}): its events wait "
            f"without spending attempts.{probe} Last error: {components.literal(health.last_error)}"
        )
    others = analytics.active_dispatchers(ctx.engine)
    others = others[others["dispatcher"] != status.dispatcher]
    if not others.empty:
        names = components.literals(others["dispatcher"].head(3))
        st.info(f"Dispatching elsewhere in the last 5 minutes: {names}. This dashboard can just watch.")
    if ctx.readonly:
        return
    start, stop, tick = st.columns(3)
    if start.button("Start", disabled=status.running, width="stretch"):
        service.start()
        st.rerun()
    if stop.button("Stop", disabled=not status.running, width="stretch"):
        service.stop(wait=True)
        st.rerun()
    if tick.button("Tick", help="Run a tick now", width="stretch"):
        tick_report = service.run_now(timeout=30)
        st.toast(
            f"Tick: {tick_report.completed} completed, {tick_report.retried} retried, {tick_report.failed} failed, "
            f"{tick_report.recovered} recovered, {tick_report.waiting} waiting for a paused handler"
            if tick_report
            else "The tick failed; see the last error above"
        )
    with st.expander("Dispatcher settings"):
        interval = st.number_input(
            "Interval (s)", min_value=1.0, max_value=3600.0, value=float(service.interval_seconds), step=1.0
        )
        batch = st.number_input("Batch size", min_value=1, max_value=5000, value=int(service.dispatcher.batch_size))
        if st.button("Apply"):
            service.configure(interval_seconds=interval, batch_size=int(batch))
            st.rerun()

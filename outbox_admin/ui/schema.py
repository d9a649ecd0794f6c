"""What a page shows instead of itself when the database has no usable outbox tables.

Nothing is created by looking: the tables appear only when a person asks for them here
(or runs ``outbox-admin init``), and never in read-only mode.
"""

from __future__ import annotations

import streamlit as st

from .. import demo
from ..db import init_db
from . import auth, components
from .context import Context, forget_state

INTRO = (
    "Application code writes each event into the outbox table in the same transaction as its change, "
    "so an event exists only if the change committed. A dispatcher then delivers every event at least "
    "once, retrying failures and parking poison events as FAILED for a person to requeue."
)


def notice(ctx: Context) -> None:
    st.title("outbox_admin")
    status = ctx.schema
    st.warning(status.describe())
    if status.state == "newer":
        return
    if not auth.can_write(ctx):
        st.caption(
            ("This dashboard is read-only, so it creates nothing. " if ctx.readonly else "Viewers create nothing. ")
            + "Create or upgrade the tables with "
            "`outbox-admin init --database-url ...`, or from a dashboard that is not read-only."
        )
        return
    st.info(INTRO)
    label = "Upgrade the outbox tables" if status.state == "outdated" else "Create the outbox tables"
    create, load = st.columns(2)
    if create.button(label, type="primary" if status.state == "outdated" else "secondary", width="stretch"):
        init_db(ctx.write_engine)
        forget_state()
        components.flash("The outbox tables are ready." if status.state != "outdated" else "The tables are upgraded.")
        st.rerun()
    if status.state == "outdated":
        return
    if load.button("Load demo data", type="primary", width="stretch"):
        load_demo(ctx)
    st.caption(
        "Load demo data also creates the demo's own tables (projects) and marks this database as a demo one, "
        "where the dashboard's dispatcher runs the demo handler."
    )


def load_demo(ctx: Context) -> None:
    """The demo action: outbox tables, demo tables and a realistic mix of events."""
    engine = ctx.write_engine
    bar = st.progress(0.0, text="Running demo mutations...")
    init_db(engine)
    demo.load_demo_data(engine, progress=lambda done, total: bar.progress(done / total))
    bar.empty()
    forget_state()
    components.flash("Demo data loaded: projects created, updated and archived, some deliveries failed.")
    st.rerun()

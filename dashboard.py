"""outbox_admin's operator console: ``streamlit run dashboard.py``.

A router only: the pages, the sidebar and the sign-in live in ``outbox_admin.ui``.

Streamlit runs this file twice over. ``streamlit run`` finds the ``app = st.App(...)`` below and
imports the file to serve that app: Streamlit's server plus the sign-in routes and the
middleware that lets nothing through without a session (``outbox_admin.ui.server``). The app
then runs the file as its page script, as ``__main__``, on every rerun: the router.
"""

import streamlit as st

if __name__ == "__main__":
    from outbox_admin.ui.app import run, start

    context = start()
    if context is not None:
        run(context)
else:
    from outbox_admin.ui.server import AccessLayer

    access = AccessLayer()
    app = st.App(__file__, routes=access.routes, middleware=access.middleware)

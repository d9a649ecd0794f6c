"""outbox_admin's operator console: ``streamlit run dashboard.py``.

A router only: the pages, the sidebar and the gate live in ``outbox_admin.ui``.
"""

import streamlit as st

from outbox_admin.ui.app import navigation_pages, start

context = start()
if context is not None:
    st.navigation(navigation_pages(context)).run()

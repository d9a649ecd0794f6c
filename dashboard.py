"""outbox_admin's operator console: ``streamlit run dashboard.py``.

A router only: the pages, the sidebar and the gate live in ``outbox_admin.ui``.
"""

from outbox_admin.ui.app import run, start

context = start()
if context is not None:
    run(context)

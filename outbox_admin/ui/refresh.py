"""The live refresh backs off: a page whose live part renders slower than its interval is refreshed less often.

At a fixed interval a render slower than it never settles: the next refresh is due
before the last one ended, so an open tab renders without pause and burns a core.
``backoff`` is the rule (a pure function, tested by itself); ``interval`` and
``rendered`` keep the last render time of each page in the session;
``components.live(..., name=...)`` applies them to a live part. Streamlit fixes
a fragment's ``run_every`` when the fragment is declared, so when a render changes
the interval, ``rendered`` reruns the page once to declare it anew.
"""

from __future__ import annotations

import math

import streamlit as st

#: The longest interval a backed-off page waits between refreshes.
MAX_SECONDS = 300.0
_RENDER_KEY = "refresh_render_seconds:{}"
_DECLARED_KEY = "refresh_declared:{}"


def backoff(base: float, last_render: float | None) -> float:
    """The next refresh interval: ``base`` while renders take at most that long; after a slower
    render, at least twice its time, as ``base`` times a power of two (at most ``MAX_SECONDS``).

    Twice the render time keeps the database idle at least half the time; powers of two
    keep the interval from changing (a rerun of the page each time) with every small
    variation of the render time. Back to ``base`` after the first render that fits in it.
    """
    if last_render is None or last_render <= base or base <= 0:
        return base
    steps = math.ceil(math.log2(2 * last_render / base))
    return min(MAX_SECONDS, base * 2**steps)


def interval(base: float | None, page: str, *, declare: bool = True) -> float | None:
    """The interval ``page``'s live part refreshes at (None: refresh paused). ``declare``: the fragment is
    being declared with it, so its next run is the one of a full page run (``rendered`` does not rerun
    the page for it)."""
    if base is None:
        return None
    if declare:
        st.session_state[_DECLARED_KEY.format(page)] = True
    return backoff(base, st.session_state.get(_RENDER_KEY.format(page)))


def rendered(base: float | None, page: str, seconds: float, declared: float | None) -> None:
    """Record how long ``page``'s live part took. On a refresh (a fragment run) whose time calls for
    another interval than ``declared``, rerun the page so the fragment is declared with it."""
    st.session_state[_RENDER_KEY.format(page)] = seconds
    full_run = st.session_state.pop(_DECLARED_KEY.format(page), False)
    if base is None or declared is None or full_run:
        return
    if backoff(base, seconds) != declared:
        st.rerun(scope="app")


def last_render(page: str) -> float | None:
    """The last recorded render time of ``page``'s live part, in seconds."""
    value = st.session_state.get(_RENDER_KEY.format(page))
    return float(value) if value is not None else None

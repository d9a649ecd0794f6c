"""The live refresh backs off (``outbox_admin.ui.refresh``): the rule, and the Overview following it."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import streamlit as st
from hypothesis import given
from hypothesis import strategies as hs
from streamlit.testing.v1 import AppTest

from outbox_admin import demo, init_db, make_engine
from outbox_admin.ui.context import stop_all_services
from outbox_admin.ui.refresh import MAX_SECONDS, backoff

from .dashboard_support import keep_main_module  # noqa: F401 - an autouse fixture

RENDER_KEY = "refresh_render_seconds:overview"


def test_fast_renders_keep_the_interval() -> None:
    assert backoff(2.0, None) == 2.0
    assert backoff(2.0, 0.3) == 2.0
    assert backoff(2.0, 2.0) == 2.0


def test_a_slow_render_at_least_doubles_the_wait_in_steps_of_powers_of_two() -> None:
    assert backoff(2.0, 2.1) == 8.0  # 4 s would leave the database busy more than half the time
    assert backoff(2.0, 3.9) == 8.0  # the same step: small variations do not change the interval
    assert backoff(2.0, 4.1) == 16.0
    assert backoff(2.0, 10_000.0) == MAX_SECONDS


@given(base=hs.floats(0.5, 60.0), render=hs.floats(0.0, 1_000.0))
def test_the_rule_leaves_the_database_idle_half_the_time(base: float, render: float) -> None:
    interval = backoff(base, render)
    if render <= base:
        assert interval == base
    else:
        assert interval >= min(MAX_SECONDS, 2 * render)
        power = math.log2(interval / base)
        assert interval == MAX_SECONDS or math.isclose(power, round(power), abs_tol=1e-9)


def render(name: str) -> None:
    from outbox_admin.ui.app import render_page

    render_page(name)


@pytest.fixture
def demo_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'dashboard.db'}"
    monkeypatch.setenv("OUTBOX_DATABASE_URL", url)
    for name in ("OUTBOX_DASHBOARD_PASSWORD", "OUTBOX_DASHBOARD_READONLY"):
        monkeypatch.delenv(name, raising=False)
    engine = make_engine(url)
    init_db(engine)
    demo.load_demo_data(engine, 20, seed=2)
    engine.dispose()
    yield url
    stop_all_services()
    st.cache_resource.clear()
    st.cache_data.clear()


def test_the_overview_backs_off_after_a_slow_refresh_and_comes_back(demo_url: str) -> None:
    at = AppTest.from_function(render, kwargs={"name": "overview"}, default_timeout=60)
    at.session_state[RENDER_KEY] = 5.0  # the last refresh took 5 s against the 2 s interval
    at.run()
    assert not at.exception
    [about] = [c.value for c in at.caption if "Events created since" in c.value]
    assert "refreshing every 16 s instead of 2 s: the last refresh took 5.0 s" in about
    assert 0 < at.session_state[RENDER_KEY] < 2.0  # this render was fast
    at.run()
    [about] = [c.value for c in at.caption if "Events created since" in c.value]
    assert "refreshing every" not in about

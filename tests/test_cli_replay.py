"""``outbox-admin replay``: finished events sent again to the named handlers only, through ``main()`` (the
console script's function), on SQLite and PostgreSQL.

The handlers are an application module named in ``outbox.toml``, as a deployment names them, and
the deliveries are made by ``outbox-admin dispatch --once`` with that configuration.
"""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from outbox_admin import Dispatcher
from outbox_admin.handlers.base import RecordingHandler
from outbox_admin.models import DEFAULT_TABLES

from .cli_support import run_main
from .sinks_support import publish_demo, rows

LEDGER = DEFAULT_TABLES.deliveries
TRANSITIONS = DEFAULT_TABLES.transitions

MODULE = """
    from outbox_admin.handlers.base import RecordingHandler

    alpha = RecordingHandler(name="alpha")
    beta = RecordingHandler(name="beta")
    handlers = [alpha, beta]
"""


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """An application module with handlers ``alpha`` and ``beta``, named by ./outbox.toml; the module."""
    name = f"replay_app_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(MODULE))
    (tmp_path / "outbox.toml").write_text(f'handlers = "{name}:handlers"\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OUTBOX_CONFIG", raising=False)
    __import__(name)
    yield sys.modules[name]
    sys.modules.pop(name, None)


@pytest.fixture
def no_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A working directory without outbox.toml, and no OUTBOX_CONFIG."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OUTBOX_CONFIG", raising=False)


def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], db_url: str, *args: str):
    return run_main(monkeypatch, capsys, *args, "--database-url", db_url)


def dispatch_once(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], db_url: str) -> None:
    code, _, err = cli(monkeypatch, capsys, db_url, "dispatch", "--once", "--quiet", "--json")
    assert code == 0, err


def state(engine: Engine) -> tuple[dict[str, tuple[str, int]], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """(status and attempts by event, ledger rows, history rows): everything a replay writes."""
    with engine.connect() as conn:
        ledger = sorted(tuple(r) for r in conn.execute(select(LEDGER)))
        history = [tuple(r) for r in conn.execute(select(TRANSITIONS).order_by(TRANSITIONS.c.id))]
    return {i: (r.status, r.retry_count) for i, r in rows(engine).items()}, ledger, history


def delivered(engine: Engine, count: int, monkeypatch, capsys, db_url: str) -> list[str]:
    """``count`` events published and delivered to alpha and beta by ``outbox-admin dispatch``; their ids."""
    ids = [e["id"] for e in publish_demo(engine, count)]
    dispatch_once(monkeypatch, capsys, db_url)
    assert {rows(engine)[i].status for i in ids} == {"COMPLETED"}
    return ids


def test_dry_run_says_what_would_be_sent_and_writes_nothing(
    app: Any, engine: Engine, db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = delivered(engine, 4, monkeypatch, capsys, db_url)
    before = state(engine)
    code, out, err = cli(
        monkeypatch, capsys, db_url, "replay", "--handler", "beta", "--event-type", "PROJECT.CREATED", "--dry-run"
    )
    assert (code, err) == (0, "")
    assert out.startswith("replay would send 2 event(s) in COMPLETED, FAILED, DISCARDED again to beta; e.g. ")
    assert set(out.split("e.g. ")[1].strip().split(", ")) == {ids[0], ids[2]}
    code, out, _ = cli(monkeypatch, capsys, db_url, "replay", *ids[:3], "--handler", "beta", "--dry-run", "--json")
    plan = json.loads(out)
    assert code == 0 and plan["count"] == 3 and set(plan["sample_ids"]) == set(ids[:3])
    assert (plan["handlers"], plan["handlers_checked"], plan["refused_ids"]) == (["beta"], True, 0)
    assert state(engine) == before, "a dry run writes nothing"
    dispatch_once(monkeypatch, capsys, db_url)
    assert (len(app.alpha.events), len(app.beta.events)) == (4, 4), "and nothing is sent"


def test_replay_by_id_reaches_the_chosen_handler_only(
    app: Any, engine: Engine, db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = delivered(engine, 3, monkeypatch, capsys, db_url)
    code, out, err = cli(monkeypatch, capsys, db_url, "replay", ids[1], "--handler", "beta", "--actor", "alice")
    assert (code, out.strip(), err) == (0, "replay: 1 event(s) queued for beta", "")
    event = rows(engine)[ids[1]]
    assert (event.status, event.retry_count) == ("PENDING", 0)
    with engine.connect() as conn:
        note = conn.execute(
            select(TRANSITIONS.c.actor, TRANSITIONS.c.error_message)
            .where(TRANSITIONS.c.event_id == ids[1])
            .order_by(TRANSITIONS.c.id.desc())
        ).first()
    assert tuple(note) == ("admin:alice", "replay to beta")
    dispatch_once(monkeypatch, capsys, db_url)
    assert app.alpha.ids == ids, "alpha received each event once"
    assert sorted(app.beta.ids) == sorted([*ids, ids[1]]), "beta received the replayed one again"
    assert app.beta.events[-1].id == ids[1] and app.beta.events[-1].payload == app.beta.events[1].payload
    assert {r.status for r in rows(engine).values()} == {"COMPLETED"}


def test_replay_by_filter_to_two_handlers(
    app: Any, engine: Engine, db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = delivered(engine, 4, monkeypatch, capsys, db_url)
    publish_demo(engine, 2, prefix="late")  # PENDING: a filter replay leaves them alone
    code, out, _ = cli(
        monkeypatch,
        capsys,
        db_url,
        "replay",
        "--handler",
        "beta",
        "--handler",
        "alpha",
        "--event-type",
        "PROJECT.UPDATED",
        "--json",
    )
    assert (code, json.loads(out)) == (
        0,
        {"action": "replay", "handlers": ["beta", "alpha"], "handlers_checked": True, "moved": 2},
    )
    dispatch_once(monkeypatch, capsys, db_url)
    late = [i for i, r in rows(engine).items() if r.entity_id.startswith("late-")]
    for recorder in (app.alpha, app.beta):
        assert sorted(recorder.ids) == sorted([*ids, ids[1], ids[3], *late])


def test_an_unknown_handler_is_refused_with_the_configured_names(
    app: Any, engine: Engine, db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = delivered(engine, 2, monkeypatch, capsys, db_url)
    before = state(engine)
    for extra in ([], ["--dry-run"]):
        code, out, err = cli(
            monkeypatch, capsys, db_url, "replay", *ids, "--handler", "beta", "--handler", "webhok\x1b[2J", *extra
        )
        assert (code, out) == (2, "")
        assert err.strip() == (
            "error: no configured handler is named 'webhok\\x1b[2J'; the handlers of outbox.toml are: 'alpha', 'beta'"
        ), "one line, the name shown as data"
    assert state(engine) == before


def test_without_a_configuration_the_names_are_not_checked(
    no_config: None, engine: Engine, db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = [e["id"] for e in publish_demo(engine, 2)]
    recorder = RecordingHandler(name="beta")
    Dispatcher(engine, [recorder], breaker=None).dispatch_once()
    code, out, err = cli(monkeypatch, capsys, db_url, "replay", *ids, "--handler", "beta")
    assert (code, out.strip()) == (0, "replay: 2 event(s) queued for beta")
    assert err.startswith("note: no configuration, so the handler names were not checked: 'beta'")
    Dispatcher(engine, [recorder], breaker=None).dispatch_once()  # in-process, a dispatcher of the application's
    assert sorted(recorder.ids) == sorted(ids * 2)


def test_unfinished_ids_are_refused_and_nothing_moves(
    app: Any, engine: Engine, db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    done = delivered(engine, 2, monkeypatch, capsys, db_url)
    (pending,) = [e["id"] for e in publish_demo(engine, 1, prefix="new")]
    before = state(engine)
    code, out, err = cli(monkeypatch, capsys, db_url, "replay", *done, pending, "--handler", "beta")
    assert (code, out) == (1, "")
    assert err.strip() == f"error: cannot replay: {pending} is PENDING"
    assert state(engine) == before
    code, out, err = cli(monkeypatch, capsys, db_url, "replay", *done, pending, "--handler", "beta", "--dry-run")
    assert code == 0 and out.startswith("replay would send 2 event(s)")
    assert "note: 1 of the given ids are not COMPLETED, FAILED or DISCARDED" in err
    code, out, _ = cli(
        monkeypatch, capsys, db_url, "replay", *done, pending, "--handler", "beta", "--status", "COMPLETED"
    )
    assert (code, out.strip()) == (0, "replay: 2 event(s) queued for beta"), "--status narrows instead of refusing"
    assert rows(engine)[pending].status == "PENDING"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--handler", "beta"], "give event ids or at least one filter"),
        (["some-id"], "Missing option '--handler'"),
        (["some-id", "--handler", "*"], "'*' is not a handler's name"),
        (["some-id", "--handler", " "], "' ' is not a handler's name"),
        (["--status", "FAILED", "--handler", "x" * 256], "handler: is 256 characters"),
        (["--since", "yesterday", "--handler", "beta"], "since: 'yesterday' is not an ISO 8601 date"),
    ],
)
def test_bad_input_is_a_usage_error(
    args: list[str], message: str, no_config: None, sqlite_url: str, monkeypatch, capsys
) -> None:
    code, out, err = cli(monkeypatch, capsys, sqlite_url, "replay", *args)
    assert (code, out) == (2, "") and message in err, err


def test_a_status_replay_does_not_apply_to_is_refused(
    no_config: None, sqlite_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli(monkeypatch, capsys, sqlite_url, "replay", "--status", "PENDING", "--handler", "beta")
    assert code == 1 and "cannot replay events that are PENDING" in err


def test_help_explains_every_option(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import typer

    from outbox_admin import cli as cli_module

    command = typer.main.get_command(cli_module.app).commands["replay"]  # type: ignore[attr-defined]
    undocumented = [p.name for p in command.params if p.param_type_name == "option" and not p.help]
    assert undocumented == []
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run_main(monkeypatch, capsys, "replay", "--help")
    assert code == 0
    for option in ("--handler", "--dry-run", "--config", "--payload", "--status", "--error-group", "--actor"):
        assert option in out
    assert "[required]" in out and "OUTBOX_CONFIG" in out

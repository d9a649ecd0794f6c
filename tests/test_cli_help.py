"""The CLI's help, ``--max-attempts none`` and the hint for an ``--error-group`` that matches nothing
(issue 18, point 4). Everything runs through ``cli.main`` (the console script's function) in this process."""

from __future__ import annotations

import re

import pytest
import typer
from sqlalchemy import Engine, select, update

from outbox_admin import cli, make_engine, publish_outbox_event
from outbox_admin.models import DEFAULT_TABLES

from .cli_support import run_main

EVENTS = DEFAULT_TABLES.events
TIMEOUT_GROUP = "webhook: timeout after <n>s on <n>.<n>.<n>.<n>"
COMMANDS = sorted(typer.main.get_command(cli.app).commands)  # type: ignore[attr-defined]


def test_every_command_is_walked() -> None:
    """The walk below covers the commands as the app has them, so a new command is walked too."""
    assert {"publish", "dispatch", "events", "requeue", "recover", "replay", "purge"} <= set(COMMANDS)


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_explains_every_option_without_type_noise(
    command: str | None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every option and argument has a help text, and no help line carries typer's type labels
    (``<bool>``, ``<int range>``, ``<list[str]>``): flags show nothing, options a short metavar."""
    group = typer.main.get_command(cli.app)
    click_command = group if command is None else group.commands[command]  # type: ignore[attr-defined]
    undocumented = [p.name for p in click_command.params if not p.help]
    assert undocumented == [], (command, undocumented)
    monkeypatch.setenv("COLUMNS", "200")
    code, out, err = run_main(monkeypatch, capsys, *([] if command is None else [command]), "--help")
    assert (code, err) == (0, ""), (command, code, err)
    assert "Usage: outbox-admin" in out
    assert re.findall(r"<(?:bool|str|int|float|path|list)[^>]*>", out) == [], (command, out)
    for param in click_command.params:
        for opt in getattr(param, "opts", []):
            if opt.startswith("--"):
                line = next(
                    line for line in out.splitlines() if line.strip().startswith(opt + " ") or line.strip() == opt
                )
                if getattr(param, "is_flag", False):
                    assert line.split()[0] == opt and not re.match(rf"\s*{opt} [A-Z]", line), line
                else:
                    assert re.match(rf"\s*{opt} \S+", line), line  # a metavar follows


def test_publish_help_states_its_demo_defaults(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run_main(monkeypatch, capsys, "publish", "--help")
    assert code == 0
    assert "Project/1" in out and "demo-org" in out
    assert "[default: demo-org]" in out and "[default: Project]" in out and "[default: 1]" in out


def test_help_text_is_not_read_as_markup(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Brackets in help texts are printed as written (rich markup mode swallowed ``[dashboard.users]``)."""
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run_main(monkeypatch, capsys, "hash-password", "--help")
    assert code == 0 and "[dashboard.users]" in out


# --- --max-attempts: a positive integer or none ------------------------------------------------


def expire(engine: Engine, count: int, retries: int) -> list[str]:
    """``count`` PROCESSING events whose lease expired, each having failed ``retries`` times."""
    with engine.begin() as conn:
        ids = [
            publish_outbox_event(
                conn, org_id="o", event_type="PROJECT.CREATED", entity_type="P", entity_id=str(i), payload={}
            ).id
            for i in range(count)
        ]
        conn.execute(
            update(EVENTS)
            .where(EVENTS.c.id.in_(ids))
            .values(status="PROCESSING", retry_count=retries, locked_by="gone", locked_until=EVENTS.c.created_at)
        )
    return ids


def statuses(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return {row[0] for row in conn.execute(select(EVENTS.c.status))}


def test_the_variable_and_the_option_share_one_parser() -> None:
    from outbox_admin.config import Settings, parse_max_attempts
    from outbox_admin.errors import ConfigurationError

    assert [parse_max_attempts(text) for text in ("none", " Forever ", "0", "3")] == [None, None, None, 3]
    assert Settings.from_env({"OUTBOX_MAX_ATTEMPTS": "none"}).max_attempts is None
    assert Settings.from_env({}).max_attempts == 5
    assert parse_max_attempts("forever", "--max-attempts", forever=("none", "forever")) is None
    for bad in ("-1", "x", "1.5"):
        with pytest.raises(ConfigurationError, match="OUTBOX_MAX_ATTEMPTS"):
            parse_max_attempts(bad)
    with pytest.raises(ConfigurationError, match="--max-attempts"):
        parse_max_attempts("0", "--max-attempts", forever=("none", "forever"))


def test_recover_with_max_attempts_none_retries_forever(
    engine: Engine, db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With 'none' an event that failed many times goes back to PENDING; with a number it is FAILED."""
    expire(engine, 2, retries=50)
    code, out, err = run_main(monkeypatch, capsys, "recover", "--max-attempts", "none", "--database-url", db_url)
    assert (code, err) == (0, ""), err
    assert "recover: 2 event(s) moved" in out
    assert statuses(engine) == {"PENDING"}

    with engine.begin() as conn:
        conn.execute(update(EVENTS).values(status="PROCESSING", locked_by="gone", locked_until=EVENTS.c.created_at))
    code, out, err = run_main(monkeypatch, capsys, "recover", "--max-attempts", "3", "--database-url", db_url)
    assert code == 0 and statuses(engine) == {"FAILED"}, (out, err)


def test_dispatch_accepts_max_attempts_none(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_main(
        monkeypatch, capsys, "dispatch", "--once", "--log-only", "--quiet", "--max-attempts", "none", "--json",
        "--database-url", sqlite_url,
    )  # fmt: skip
    assert code == 0, err
    assert '"ticks": 1' in out


@pytest.mark.parametrize("value", ["0", "-1", "many", "1.5", ""])
@pytest.mark.parametrize("command", [["recover", "--dry-run"], ["dispatch", "--once", "--log-only"]])
def test_a_bad_max_attempts_is_a_usage_error(
    command: list[str], value: str, sqlite_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_main(monkeypatch, capsys, *command, "--max-attempts", value, "--database-url", sqlite_url)
    assert code == 2 and out == "", (code, out, err)
    assert err.startswith("error: ") and "'--max-attempts'" in err and "'none'" in err, err


# --- --error-group that matches nothing ---------------------------------------------------------


def seed_errors(engine: Engine) -> None:
    """Three FAILED timeouts (one group), two refused connections, and one COMPLETED event."""
    with engine.begin() as conn:
        for i in range(6):
            event = publish_outbox_event(
                conn, org_id="o", event_type="PROJECT.CREATED", entity_type="P", entity_id=str(i), payload={}
            )
            message = f"webhook: timeout after {i}s on 10.0.0.{i}" if i < 3 else "redis: connection refused"
            values = {"status": "FAILED", "error_message": message} if i < 5 else {"status": "COMPLETED"}
            conn.execute(update(EVENTS).where(EVENTS.c.id == event.id).values(**values))


@pytest.mark.parametrize(
    "command",
    [
        ["events"],
        ["events", "--json"],
        ["requeue", "--dry-run"],
        ["requeue"],
        ["discard"],
        ["retry-now"],
        ["replay", "--handler", "webhook", "--status", "FAILED"],
        ["replay", "--handler", "webhook", "--status", "FAILED", "--dry-run"],
    ],
)
def test_an_error_group_matching_no_stored_error_names_the_closest(
    command: list[str], engine: Engine, db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A mistyped group is not "0 events" and exit 0: it says no stored group matches, lists the
    closest groups by their exact names (one a line, to copy) and exits 1, having changed nothing."""
    seed_errors(engine)
    code, out, err = run_main(
        monkeypatch, capsys, *command, "--error-group", "webhook: timout after <n>s", "--database-url", db_url
    )
    assert code == 1 and out == "", (code, out, err)
    lines = err.splitlines()
    if command[0] == "replay":  # first its note that no configuration names the handlers
        assert lines.pop(0).startswith("note: no configuration")
    assert lines[0] == (
        "error: no stored error group is 'webhook: timout after <n>s' (groups are matched exactly, as stats lists them)"
    )
    assert "closest" in lines[1]
    assert [line.strip() for line in lines[2:]][:1] == [TIMEOUT_GROUP]
    assert statuses(engine) == {"FAILED", "COMPLETED"}
    with engine.connect() as conn:
        assert len(conn.execute(select(EVENTS.c.id).where(EVENTS.c.status == "FAILED")).all()) == 5


def test_an_existing_group_the_other_filters_exclude_is_a_plain_zero(
    engine: Engine, db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seed_errors(engine)
    args = ["--error-group", TIMEOUT_GROUP, "--database-url", db_url]
    code, out, err = run_main(monkeypatch, capsys, "requeue", "--org", "nobody", "--dry-run", *args)
    assert (code, err) == (0, "") and "would move 0 event(s)" in out
    code, out, err = run_main(monkeypatch, capsys, "requeue", "--dry-run", *args)
    assert (code, err) == (0, "") and "would move 3 event(s)" in out


def test_a_group_close_to_nothing_says_so(
    engine: Engine, db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seed_errors(engine)
    code, out, err = run_main(monkeypatch, capsys, "events", "--error-group", "zzzz qqqq", "--database-url", db_url)
    assert code == 1 and out == ""
    assert "none of the groups of the newest 5 errors is close" in err.splitlines()[1]


def test_the_closest_groups_are_printed_as_data(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stored group holding markup and control characters is shown as typed, with escapes."""
    engine = make_engine(sqlite_url)
    with engine.begin() as conn:
        event = publish_outbox_event(
            conn, org_id="o", event_type="PROJECT.CREATED", entity_type="P", entity_id="1", payload={}
        )
        conn.execute(
            update(EVENTS).where(EVENTS.c.id == event.id).values(status="FAILED", error_message="[bold]boom\x1b[2J")
        )
    engine.dispose()
    code, _, err = run_main(monkeypatch, capsys, "events", "--error-group", "[bold]bom", "--database-url", sqlite_url)
    assert code == 1
    assert err.splitlines()[2].strip() == "[bold]boom\\x1b[<n>J"  # the group: its number normalised
    assert "\x1b" not in err

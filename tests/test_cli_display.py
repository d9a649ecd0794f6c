"""The CLI prints data as data: the field reports of issue 12 (point 5, and the CLI part of 3 and 9).

Markup in arguments or stored fields is printed literally, never interpreted; control and
invisible characters are shown as escapes; undecodable bytes in argv are refused in one line;
no input ends in a traceback. Everything runs through ``cli.main`` (the console script's
function) in this process, except the two cases that need real bytes in argv or the real
stderr of ``dispatch``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from outbox_admin import Dispatcher, analytics, cli, make_engine, publish_outbox_event
from outbox_admin.display import visible, visible_json

from .cli_support import clean_env, run_entry_point
from .cli_support import run_main as run

LINK = "[link=https://evil.example]click[/link]"
# What a webhook receiver's error body can hold: colours, a screen clear, a title change, a
# carriage return that overwrites the line, a C1 control, a right-to-left override, a newline.
NASTY = "\x1b[31mred\x1b[0m\x1b[2J\x1b]0;pwned\x07\rover\x9b\u202ekcab\u200b\nline2"
NASTY_SHOWN = "\\x1b[31mred\\x1b[0m\\x1b[2J\\x1b]0;pwned\\x07\\rover\\x9b\\u202ekcab\\u200b\\nline2"
RAW_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b\u202e]")  # anything but \t and \n, raw
ANSI_STYLE = re.compile(r"\x1b\[[0-9;]*m")  # what rich itself writes when colours are forced


def one_error_line(result: tuple[int, str, str], code: int, *fragments: str) -> str:
    returncode, out, err = result
    assert returncode == code, result
    assert out == "" and "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def table_rows(out: str) -> list[list[str]]:
    """The data rows of rich tables in ``out``, each cell's folded lines joined back together."""
    rows: list[list[str]] = []
    for line in ANSI_STYLE.sub("", out).splitlines():
        if not line.startswith("│"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("│").split("│")]
        if cells[0] or not rows:  # the first column (id, or at) is never folded: a new row
            rows.append(cells)
        else:
            rows[-1] = [a + b for a, b in zip(rows[-1], cells, strict=True)]
    return rows


def publish(engine: Engine, **fields: Any) -> str:
    values = {
        "org_id": "org-1",
        "event_type": "PROJECT.CREATED",
        "entity_type": "Project",
        "entity_id": "p-1",
        "payload": {},
        **fields,
    }
    with engine.begin() as conn:
        return publish_outbox_event(conn, **values).id


@pytest.fixture
def sqlite_engine(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("OUTBOX_DATABASE_URL", sqlite_url)
    engine = make_engine(sqlite_url)
    yield engine
    engine.dispose()


# --- markup in arguments ---------------------------------------------------------------------


@pytest.mark.parametrize("event_id", ["[/x]", "[bold]x", "[/]", LINK, ":smile:"])
def test_show_an_id_with_markup_names_it_literally(
    event_id: str, sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    line = one_error_line(run(monkeypatch, capsys, "show", event_id), 1)
    assert line == f"error: no event with id {event_id!r}"


def test_publish_an_event_type_with_markup_is_refused_naming_it(
    sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    one_error_line(
        run(monkeypatch, capsys, "publish", "PROJ[/]ECT.CREATED"), 2, "unknown event type 'PROJ[/]ECT.CREATED'"
    )
    assert analytics.count_events(sqlite_engine) == 0


def test_publish_prints_and_stores_markup_as_text(
    sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(monkeypatch, capsys, "publish", "PROJECT.CREATED", "--entity-id", "p-[/b]", "--org", "[red]o")
    assert (code, err) == (0, "")
    [event] = analytics.events_frame(sqlite_engine).to_dict(orient="records")
    assert (event["entity_id"], event["org_id"]) == ("p-[/b]", "[red]o")
    assert out == f"published PROJECT.CREATED {event['id']}\n"


# --- markup and control characters in stored fields ------------------------------------------


def webhook(event: Any) -> None:
    """A sink whose receiver answers PROJECT.UPDATED with NASTY as its error body."""
    if event.event_type == "PROJECT.UPDATED":
        raise RuntimeError(NASTY)


@pytest.fixture
def stored(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """An event whose entity id is a rich link, one whose entity id closes a tag that was never
    opened, and one that FAILED with NASTY as the handler's error (as a webhook body lands)."""
    monkeypatch.setenv("OUTBOX_DATABASE_URL", db_url)
    engine = make_engine(db_url)
    link_id = publish(engine, entity_id=LINK)
    closing_id = publish(engine, entity_id="p-[/b]", payload={"note": "[bold]not bold[/bold]"})
    failing_id = publish(engine, entity_id="p-\x1b[2J\u202e", event_type="PROJECT.UPDATED", payload={"body": NASTY})

    with Dispatcher(engine, [webhook], max_attempts=1) as dispatcher:
        dispatcher.drain(max_seconds=None)
    failed = analytics.get_event(engine, failing_id)
    assert failed is not None and failed["status"] == "FAILED" and NASTY in failed["error_message"]
    yield engine, {"link": link_id, "closing": closing_id, "failing": failing_id}
    engine.dispose()


def test_events_prints_stored_markup_and_controls_as_data(
    stored: tuple[Engine, dict[str, str]], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _, ids = stored
    monkeypatch.setenv("FORCE_COLOR", "1")  # a terminal: rich would write a hyperlink for [link=...]
    code, out, err = run(monkeypatch, capsys, "events")
    assert (code, err) == (0, "")
    assert "\x1b]8;" not in out  # no hyperlink
    assert not RAW_CONTROLS.search(ANSI_STYLE.sub("", out))  # no control character from the data
    rows = {row[0]: row for row in table_rows(out)}
    assert set(rows) == set(ids.values())
    assert f"Project/{LINK}" in rows[ids["link"]]
    assert "Project/p-[/b]" in rows[ids["closing"]]
    failing = rows[ids["failing"]]
    assert "Project/p-\\x1b[2J\\u202e" in failing
    # error_message is 40 wide and folds; the escapes are all there, newlines as \n
    assert "webhook:RuntimeError:" + NASTY_SHOWN in ["".join(cell.split()) for cell in failing]  # wrapped at spaces
    assert "3 of 3 events" in out


def test_show_prints_stored_markup_and_controls_as_data(
    stored: tuple[Engine, dict[str, str]], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _, ids = stored
    code, out, err = run(monkeypatch, capsys, "show", ids["link"])
    assert (code, err) == (0, "")
    assert f"entity_id: {LINK}\n" in out
    code, out, err = run(monkeypatch, capsys, "show", ids["closing"])
    assert (code, err) == (0, "")
    assert "entity_id: p-[/b]\n" in out and '"note": "[bold]not bold[/bold]"' in out
    code, out, err = run(monkeypatch, capsys, "show", ids["failing"])
    assert (code, err) == (0, "")
    assert not RAW_CONTROLS.search(out)
    assert "entity_id: p-\\x1b[2J\\u202e\n" in out
    assert f"error_message: webhook: RuntimeError: {NASTY_SHOWN}\n" in out  # one line
    # the payload as JSON: valid JSON escapes, the format characters too
    assert '"body": "\\u001b[31mred' in out and "\\u202ekcab\\u200b\\nline2" in out
    timeline = {row[2]: row for row in table_rows(out)}  # by to_status
    assert "".join(timeline["FAILED"][-1].split()) == "webhook:RuntimeError:" + NASTY_SHOWN


def test_json_output_is_valid_json_with_no_raw_controls(
    stored: tuple[Engine, dict[str, str]], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    engine, ids = stored
    for args in (["events", "--json"], ["show", ids["failing"], "--json"], ["stats", "--json"]):
        code, out, err = run(monkeypatch, capsys, *args)
        assert (code, err) == (0, ""), args
        assert not RAW_CONTROLS.search(out), args  # json escapes C0; \u202e, \u200b and C1 too
        json.loads(out)
    code, out, _ = run(monkeypatch, capsys, "show", ids["failing"], "--json")
    shown = json.loads(out)["event"]
    stored_event = analytics.get_event(engine, ids["failing"])
    assert stored_event is not None
    assert shown["entity_id"] == stored_event["entity_id"] == "p-\x1b[2J\u202e"
    assert shown["payload"] == {"body": NASTY}
    assert shown["error_message"] == stored_event["error_message"]


def test_a_stored_error_in_an_error_line_stays_one_line(
    sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Text echoed back in an error (a search string, an id) cannot add lines or colours."""
    line = one_error_line(run(monkeypatch, capsys, "show", "a\nb\x1b[31m\u202e"), 1)
    assert line == "error: no event with id 'a\\nb\\x1b[31m\\u202e'"
    line = one_error_line(run(monkeypatch, capsys, "purge", "--older-than", "1\n\x1b[2J"), 2)
    assert "'1\\n\\x1b[2J'" in line


# --- invalid encodings and errors of any kind: one line, a documented code -------------------


@pytest.mark.parametrize(
    ("args", "name"),
    [
        (["show", "a\udcff"], "'event_id'"),
        (["events", "--org", "\udce9t\udce9"], "'--org'"),
        (["events", "--search=x\udcff"], "'--search'"),
        (["publish", "PROJECT.CREATED", "--entity-id", "p\udc80"], "'--entity-id'"),
        (["publish", "PROJECT.CREATED", "--payload", '{"a": "\udcff"}'], "'--payload'"),
        (["requeue", "ok", "b\udcff", "--dry-run"], "'event_ids'"),
        (["stats", "--database-url", "sqlite:///\udcff.db"], "'--database-url'"),
    ],
)
def test_undecodable_arguments_are_refused_in_one_line(
    args: list[str],
    name: str,
    sqlite_engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    line = one_error_line(run(monkeypatch, capsys, *args), 2, name, "not valid UTF-8")
    assert "\\udc" in line  # where the bad bytes are
    assert analytics.count_events(sqlite_engine) == 0


def test_undecodable_bytes_in_the_real_argv_are_refused(sqlite_url: str, tmp_path: Path) -> None:
    """Bytes that are not UTF-8, as a shell passes them, through the real entry point."""
    env = clean_env(PYTHONIOENCODING="utf-8", OUTBOX_DATABASE_URL=sqlite_url)
    result = subprocess.run(
        [sys.executable, "-m", "outbox_admin", "events", b"--search", b"caf\xe9"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        timeout=60,
    )
    err = result.stderr.decode("utf-8")
    one_error_line((result.returncode, result.stdout.decode(), err), 2, "'--search'", "'caf\\udce9'")


@pytest.mark.parametrize("args", [["show", "a\x00b"], ["requeue", "a\x00", "--dry-run"], ["events", "--org=o\x00"]])
def test_a_nul_in_an_argument_is_refused_as_bad_input(
    args: list[str], db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No real argv holds NUL, but main(argv) can be given one: bad input (2), not a database error (1)."""
    one_error_line(run(monkeypatch, capsys, *args, f"--database-url={db_url}"), 2, "contains a NUL character")


def test_a_json_payload_with_a_lone_surrogate_is_refused(
    sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Valid JSON, but not text any database can store (the library lets it through to the driver)."""
    payload = '{"ok": ["x", {"\\ud800": 1}]}'
    one_error_line(run(monkeypatch, capsys, "publish", "PROJECT.CREATED", "--payload", payload), 2, "payload.ok[1]")
    one_error_line(
        run(monkeypatch, capsys, "publish", "PROJECT.CREATED", "--payload", '"\\udfff"'), 2, "payload: not valid"
    )
    assert analytics.count_events(sqlite_engine) == 0


def test_a_payload_nested_beyond_the_parser_is_refused(
    sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    deep = "[" * 200_000 + "]" * 200_000
    one_error_line(run(monkeypatch, capsys, "publish", "PROJECT.CREATED", "--payload", deep), 2, "nested too deeply")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["events", "--no-such-option"], "No such option: --no-such-option"),
        (["show"], "Missing argument"),
        (["sh[/]ow"], "No such command 'sh[/]ow'"),
        (["events", "--limit", "many"], "'--limit'"),
    ],
)
def test_usage_errors_are_one_line_with_code_2(
    args: list[str],
    fragment: str,
    sqlite_engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    one_error_line(run(monkeypatch, capsys, *args), 2, fragment)


def test_an_unexpected_error_is_one_line_with_code_3_and_its_traceback_with_debug(
    sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Whatever the library raises (here a bug planted in it), main() never shows a traceback,
    unless asked to with --debug."""

    def broken(*_args: Any, **_kwargs: Any) -> None:
        raise KeyError("[bold]boom\x1b[2J")

    monkeypatch.setattr(analytics, "get_event", broken)
    line = one_error_line(run(monkeypatch, capsys, "show", "x"), 3, "internal error: KeyError")
    assert "[bold]boom\\x1b[2J" in line and "--debug" in line
    code, out, err = run(monkeypatch, capsys, "--debug", "show", "x")
    assert (code, out) == (3, "")
    assert "Traceback (most recent call last)" in err and "raise KeyError" in err
    assert err.splitlines()[-1] == line and "\x1b" not in err
    one_error_line(run(monkeypatch, capsys, "show", "x"), 3)  # --debug lasted one run


def test_the_docs_and_main_document_the_same_exit_codes() -> None:
    page = (Path(__file__).resolve().parents[1] / "docs" / "operations.md").read_text(encoding="utf-8")
    paragraph = page[page.index("## The CLI") :].split("\n\n")[1]
    documented = set(re.findall(r"(\d+)\s+(?:ok|a failure|bad usage|an internal error|interrupted)", paragraph))
    in_main = set(re.findall(r"^\s*- (\d+) ", cli.main.__doc__ or "", re.MULTILINE))
    constants = {str(getattr(cli, n)) for n in dir(cli) if n.startswith("EXIT_")}
    assert documented == in_main == constants == {"0", "1", "2", "3", "130"}


def test_the_dispatch_log_shows_stored_text_visibly(sqlite_url: str, tmp_path: Path) -> None:
    """The audit log prints every payload and entity id: on the real stderr, as data."""
    engine = make_engine(sqlite_url)
    publish(engine, entity_id="p-\x1b[2J", payload={"body": "\x9b\u202eevil"})
    engine.dispose()
    env = clean_env(PYTHONIOENCODING="utf-8", OUTBOX_DATABASE_URL=sqlite_url)
    result = run_entry_point(["dispatch", "--once", "--log-only", "--json"], tmp_path, env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["completed"] == 1
    assert not RAW_CONTROLS.search(result.stderr)
    assert "Project/p-\\x1b[2J" in result.stderr and "\\x9b\\u202eevil" in result.stderr


# --- the display module ------------------------------------------------------------------------


def test_visible_escapes_what_a_terminal_would_act_on_and_nothing_else() -> None:
    assert visible("plain café ☄ 東京 \u00a0nbsp\ttab") == "plain café ☄ 東京 \u00a0nbsp\\ttab"
    assert visible(NASTY) == NASTY_SHOWN
    assert visible("\x00\x7f\x85\u061c\u2028\u2029\ufeff\U000e0041\udcff") == (
        "\\x00\\x7f\\x85\\u061c\\u2028\\u2029\\ufeff\\U000e0041\\udcff"
    )
    assert visible("C:\\temp [b]x[/b]") == "C:\\temp [b]x[/b]"  # backslashes and markup untouched
    assert visible(12) == "12"
    data = {"k\u202e": ["\x1b\x85\u2028\U000e0041", 1.5, None], "é": "\n"}
    text = visible_json(data, indent=2)
    assert json.loads(text) == data and not RAW_CONTROLS.search(text)
    assert "\\u202e" in text and "\\udb40\\udc41" in text and "é" in text

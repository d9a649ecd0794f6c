"""Property-based tests of the CLI's arguments, on SQLite and PostgreSQL.

Generated text (markup, control and format characters, quotes, wildcards, separators, bytes
that are not UTF-8 as ``surrogateescape`` gives them) goes into event types, org ids, entity
types and ids, payloads, filters and ids given to ``publish``, ``events`` and ``show``, run
through ``cli.main`` in this process. Every run either succeeds, and what was stored reads back
equal (``show --json`` / ``events --json``), or is refused with one line on stderr and exit code
1 or 2: never a traceback, a markup error or an internal error (3).

One database per test function (the fixtures), shared by its examples: every example publishes
new events (UUIDv7 ids) and makes its idempotency key unique, so examples never see each other's
data. ``OUTBOX_CLI_EXAMPLES=200`` makes a longer local run (and shrinks what it finds).
"""

from __future__ import annotations

import json
import os
import re
import uuid
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from outbox_admin import make_engine, publish_outbox_event
from outbox_admin.display import has_surrogates
from outbox_admin.errors import OutboxError

from .cli_support import run_main as run

EXPLORING = "OUTBOX_CLI_EXAMPLES" in os.environ  # a longer local run, shrinking what it finds
settings.register_profile(
    "cli-properties",
    max_examples=int(os.environ.get("OUTBOX_CLI_EXAMPLES", "20")),
    deadline=None,  # a run is a few database round trips on 2 shared cores
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    # Shrinking a failure takes minutes here (every step runs the CLI against the database): in CI the
    # failing example is reported as found, bounded in time; OUTBOX_CLI_EXAMPLES=200 shrinks it.
    phases=tuple(Phase) if EXPLORING else (Phase.explicit, Phase.reuse, Phase.generate),
)
PROFILE = settings.get_profile("cli-properties")
RAW_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b\u202e]")

# Pieces that have broken terminals, markup, Markdown, LIKE, option parsing and filters before.
FRAGMENTS = st.sampled_from(
    [
        "[bold]",
        "[/]",
        "[/b]",
        "[link=https://evil.example]",
        "[/link]",
        ":smile:",
        "\x1b[31m",
        "\x1b]8;;",
        "\r",
        "\n",
        "\t",
        "\x00",
        "\u202e",
        "\u200b",
        "\x85",
        "**",
        "`",
        "%",
        "_",
        "\\",
        "'",
        '"',
        "/",
        ",",
        " ",
        "-",
        "--",
        "=",
        "é",
        "☄",
        "\U0001f600",
    ]
)
CHARS = st.characters(exclude_categories=("Cs",))
CLEAN = st.lists(st.one_of(FRAGMENTS, st.text(CHARS, max_size=6)), max_size=5).map("".join)
UNDECODABLE = st.tuples(CLEAN, st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF), CLEAN).map("".join)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | CLEAN,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(CLEAN, inner, max_size=3),
    max_leaves=8,
)
FIELDS = ("org", "entity_type", "entity_id", "payload", "event_type")


def often(draw: Any, usual: Any, unusual: Any, share: int = 4) -> Any:
    """``usual`` about ``share`` times in ``share + 1``, else ``unusual``: enough runs get through."""
    return draw(unusual if draw(st.integers(0, share)) == 0 else usual)


@st.composite
def event_inputs(draw: Any) -> dict[str, Any]:
    """Texts for one event; at most one field holds undecodable bytes (``bad`` names it)."""
    bad = draw(st.sampled_from([None] * len(FIELDS) * 2 + list(FIELDS)))
    values: dict[str, Any] = {"bad": bad}
    for name in ("org", "entity_type", "entity_id"):
        values[name] = draw(UNDECODABLE) if bad == name else often(draw, st.text(CHARS, min_size=1, max_size=12), CLEAN)
    data = draw(JSON_VALUES)
    values["payload_data"] = data
    values["payload"] = often(draw, st.just(json.dumps(data, ensure_ascii=draw(st.booleans()))), CLEAN)  # or not JSON
    if bad == "payload":
        values["payload"] += draw(UNDECODABLE)
    values["event_type"] = (
        draw(UNDECODABLE)
        if bad == "event_type"
        else often(draw, st.sampled_from(["PROJECT.CREATED", "PROJECT.UPDATED"]), CLEAN)
    )
    return values


def as_numbers(text: str) -> Any:
    """JSON with every number as a Decimal: PostgreSQL's jsonb keeps numbers as decimals, so
    ``-4.023223190969917e+16`` reads back as the int ``-40232231909699170``, the same number."""
    return json.loads(text, parse_float=Decimal, parse_int=Decimal)


def check_outcome(result: tuple[int, str, str], bad: bool) -> Any:
    """Success with JSON on stdout (returned), or one visible error line with code 1 or 2."""
    code, out, err = result
    event(f"exit {code}")  # --hypothesis-show-statistics: how many runs succeed, how many are refused
    assert "Traceback" not in err and "MarkupError" not in err
    if code == 0:
        assert not bad, "undecodable text was accepted"
        assert err == ""
        assert not RAW_CONTROLS.search(out)
        return as_numbers(out)
    assert code in (1, 2), result  # 3 would be a bug: an internal error
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert not RAW_CONTROLS.search(err)
    if bad:  # refused as bad usage: for the undecodable text, or for another bad argument checked first
        assert code == 2, lines[0]
    return None


@PROFILE
@given(values=event_inputs())
def test_publish_stores_what_it_was_given_or_refuses_in_one_line(
    values: dict[str, Any], db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    key = f"{uuid.uuid4().hex}-{values['entity_id']}"  # unique per example, with the generated text in it
    result = run(
        monkeypatch,
        capsys,
        "publish",
        f"--org={values['org']}",
        f"--entity-type={values['entity_type']}",
        f"--entity-id={values['entity_id']}",
        f"--payload={values['payload']}",
        f"--idempotency-key={key}",
        "--json",
        f"--database-url={db_url}",
        "--",
        values["event_type"],
    )
    published = check_outcome(result, values["bad"] is not None)
    if published is None:
        return
    result = run(monkeypatch, capsys, "show", "--json", f"--database-url={db_url}", "--", published["id"])
    shown = check_outcome(result, False)
    assert shown is not None, result
    event = shown["event"]
    assert (event["id"], event["event_type"], event["status"]) == (published["id"], values["event_type"], "PENDING")
    assert (event["org_id"], event["entity_type"], event["entity_id"], event["idempotency_key"]) == (
        values["org"],
        values["entity_type"],
        values["entity_id"],
        key,
    )
    given = as_numbers(values["payload"])
    assert event["payload"] == ({} if given is None else given)  # null is no payload, as when omitted
    assert [step["to_status"] for step in shown["timeline"]] == ["PENDING"]


@PROFILE
@given(
    values=event_inputs(),
    cut=st.tuples(st.integers(0, 20), st.integers(0, 20)),
    type_filter=st.one_of(st.none(), st.just("PROJECT.CREATED"), CLEAN),
    status_filter=st.one_of(st.none(), st.just("PENDING"), CLEAN),
)
def test_events_filters_find_what_was_stored_or_refuse_in_one_line(
    values: dict[str, Any],
    cut: tuple[int, int],
    type_filter: str | None,
    status_filter: str | None,
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Filter on the values of an event just published (through the library): found, or refused."""
    bad = values["bad"] in ("org", "entity_type", "entity_id")
    event_id = None
    if not bad:
        engine = make_engine(db_url)
        try:
            with engine.begin() as conn:
                event_id = publish_outbox_event(
                    conn,
                    org_id=values["org"],
                    event_type="PROJECT.CREATED",
                    entity_type=values["entity_type"],
                    entity_id=values["entity_id"],
                    payload=values["payload_data"],
                ).id
        except OutboxError:
            pass  # the library refused these values; the filters must still not crash
        finally:
            engine.dispose()
    org, entity_type, entity_id = values["org"], values["entity_type"], values["entity_id"]
    search = entity_id[min(cut) : max(cut)]
    args = [
        "events",
        "--json",
        "--limit=10000",
        f"--org={org}",
        f"--entity={entity_type}/{entity_id}",
        f"--search={search}",
        f"--database-url={db_url}",
    ]
    args += [f"--event-type={type_filter}"] if type_filter is not None else []
    args += [f"--status={status_filter}"] if status_filter is not None else []
    listed = check_outcome(run(monkeypatch, capsys, *args), bad)
    if listed is None:
        return
    ids = [event["id"] for event in listed["events"]]
    assert listed["total"] == len(ids)
    filterable = (  # what the filters' own syntax cannot express: commas in an org, "/" in a type, edge spaces
        "," not in org
        and org == org.strip()
        and "/" not in entity_type
        and entity_type == entity_type.strip()
        and entity_id == entity_id.strip()
        and type_filter in (None, "PROJECT.CREATED")
        and status_filter in (None, "PENDING")
    )
    if event_id is not None and filterable:  # found (earlier examples may have stored the same values)
        assert event_id in ids
        [event] = [e for e in listed["events"] if e["id"] == event_id]
        assert (event["org_id"], event["entity_type"], event["entity_id"]) == (org, entity_type, entity_id)
        assert event["payload"] == as_numbers(
            json.dumps(values["payload_data"] if values["payload_data"] is not None else {})
        )
    wanted_type, _, wanted_id = f"{entity_type}/{entity_id}".strip().partition("/")
    for event in listed["events"] if wanted_type else []:  # whatever matched, matched the entity filter
        assert event["entity_type"] == wanted_type and (not wanted_id or event["entity_id"] == wanted_id)


@PROFILE
@given(event_id=st.one_of(CLEAN, UNDECODABLE, st.uuids().map(str)))
def test_show_any_id_finds_nothing_in_one_line(
    event_id: str, db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = has_surrogates(event_id)
    result = run(monkeypatch, capsys, "show", f"--database-url={db_url}", "--", event_id)
    assert check_outcome(result, bad) is None
    if not bad and "\x00" not in event_id:
        assert result[2] == f"error: no event with id {event_id!r}\n"

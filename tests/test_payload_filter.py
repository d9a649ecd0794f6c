"""Search inside payloads (issue 14, point 6): ``EventFilter(payload=...)`` on SQLite and PostgreSQL.

The same table of cases runs on both databases against payloads published by the real publisher:
nested objects, arrays by index, numbers, text, booleans and null told apart, unicode, keys holding
JSONPath characters, a payload that is an array. Then the text form (links, the CLI's ``--payload``,
the dashboard's field), every function and action that takes a filter, the CLI, and the bounds.
"""

from __future__ import annotations

import datetime as dt
import enum
import itertools
import json
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, update

from outbox_admin import admin, analytics, make_engine
from outbox_admin.errors import FilterError
from outbox_admin.filters import (
    MAX_PATH_LENGTH,
    MAX_PATH_SEGMENTS,
    MAX_PAYLOAD_CONDITIONS,
    MAX_PAYLOAD_TEXT,
    MAX_TEXT_LENGTH,
    EventFilter,
    PayloadCondition,
    filter_from_query,
    filter_to_query,
    format_path,
    format_payload_conditions,
    parse_path,
    parse_payload_conditions,
)
from outbox_admin.models import DEFAULT_TABLES

from .cli_support import run_main
from .input_support import publish

EVENTS = DEFAULT_TABLES.events
BOUND = 1.0  # seconds: a refusal must not grow with its input (the work is microseconds)

#: Published once per database, each under its name as the entity id.
PAYLOADS: dict[str, Any] = {
    "order": {
        "customer": {"id": 42, "name": "Zoë"},
        "status": "ACTIVE",
        "items": [{"sku": "A-1", "qty": 2}, {"sku": "B-2", "qty": 1}],
        "total": 12.5,
    },
    "float-id": {"customer": {"id": 42.0}, "status": "active"},
    "text-id": {"customer": {"id": "42"}, "status": "ACTIVE "},
    "true": {"flag": True, "n": None},
    "one": {"flag": 1, "n": 0},
    "false": {"flag": False, "n": "null"},
    "zero": {"flag": 0, "other": None},
    "top-array": [{"sku": "A-1"}, "x", 3],
    "digit-keys": {"0": {"sku": "K-0"}, "007": "bond", "-1": "minus", " 1": "space"},
    "odd-keys": {
        'say "hi"': 1,
        "$.a": 2,
        "[0]": 3,
        "a.b": {"c": 4},
        "back\\slash": 5,
        "eq=": 6,
        " pad ": 7,
        "": 8,
        "$": {"$": 9},
    },
    "unicode": {"café": "naïve ☄", "e\u0301": "decomposed", "\U0001d11e": "clef", "rtl": "\u202eevil"},
    "text-json": {"s": "[1, 2]", "o": '{"a": 1}'},
    "big": {"n": 2**53 + 1, "f": 1e23, "neg": -0.0, "tiny": 5e-324, "dec": Decimal("1250.50")},
}


class Colour(enum.Enum):
    RED = "red"


CASES: list[tuple[Any, set[str]]] = [
    # nested objects; numbers as numbers, never text
    ({"customer.id": 42}, {"order", "float-id"}),
    ({"customer.id": 42.0}, {"order", "float-id"}),
    ({"customer.id": Decimal("42.00")}, {"order", "float-id"}),
    ({"customer.id": "42"}, {"text-id"}),
    ({"customer.name": "Zoë"}, {"order"}),
    # text matches exactly
    ({"status": "ACTIVE"}, {"order"}),
    ({"status": "ACTIVE "}, {"text-id"}),
    # booleans are not 1 or 0, and null is an explicit null (not the text "null", not a missing key)
    ({"flag": True}, {"true"}),
    ({"flag": 1}, {"one"}),
    ({"flag": False}, {"false"}),
    ({"flag": 0}, {"zero"}),
    ({"n": None}, {"true"}),
    ({"n": "null"}, {"false"}),
    ({"n": 0}, {"one"}),
    ({"other": None}, {"zero"}),
    # arrays by index; digits read an object's key where they meet an object
    ({"items.0.sku": "A-1"}, {"order"}),
    ({"items.1.qty": 1}, {"order"}),
    ({"items.2.sku": "A-1"}, set()),
    ({"items.01.sku": "B-2"}, {"order"}),  # PostgreSQL's reading of a digit segment: index 1
    ({"0.sku": "A-1"}, {"top-array"}),
    ({"0.sku": "K-0"}, {"digit-keys"}),
    ({"1": "x"}, {"top-array"}),
    ({"2": 3}, {"top-array"}),
    ({"007": "bond"}, {"digit-keys"}),
    ({"7": "bond"}, set()),  # the key is "007": digits compare as a key on an object
    ({"-1": "minus"}, {"digit-keys"}),
    ({"-1": 3}, set()),  # "-1" is a key only: it never indexes an array (on neither database)
    ({(" 1",): "space"}, {"digit-keys"}),
    ({(" 1",): "x"}, set()),
    # keys holding JSONPath syntax are plain keys
    ({('say "hi"',): 1}, {"odd-keys"}),
    ({"$\\.a": 2}, {"odd-keys"}),
    ({("$.a",): 2}, {"odd-keys"}),
    ({"[0]": 3}, {"odd-keys"}),
    ({"a\\.b.c": 4}, {"odd-keys"}),
    ({("a.b", "c"): 4}, {"odd-keys"}),
    ({"a.b.c": 4}, set()),
    ({"back\\\\slash": 5}, {"odd-keys"}),
    ({"eq=": 6}, {"odd-keys"}),
    ({(" pad ",): 7}, {"odd-keys"}),
    ({"$.$": 9}, {"odd-keys"}),
    # unicode, compared exactly (no normalisation)
    ({"café": "naïve ☄"}, {"unicode"}),
    ({"e\u0301": "decomposed"}, {"unicode"}),
    ({"\u00e9": "decomposed"}, set()),
    ({"\U0001d11e": "clef"}, {"unicode"}),
    ({"rtl": "\u202eevil"}, {"unicode"}),
    # a text holding JSON is text, not JSON to walk into
    ({"s": "[1, 2]"}, {"text-json"}),
    ({"s.0": 1}, set()),
    ({"o.a": 1}, set()),
    # numbers at the edges, as the publisher stored them
    ({"n": 2**53 + 1}, {"big"}),
    ({"n": 2**53}, set()),
    ({"n": float(2**53)}, set()),
    ({"f": 1e23}, {"big"}),
    ({"neg": 0}, {"big"}),
    ({"tiny": 5e-324}, {"big"}),
    ({"dec": 1250.5}, {"big"}),
    ({"dec": Decimal("1250.50")}, {"big"}),
    # a path to an object or array, or to nothing, matches nothing
    ({"items": "A-1"}, set()),
    ({"customer.id.deeper": 42}, set()),
    ({"nope": None}, set()),
    # several conditions: all must hold
    ({"customer.id": 42, "status": "ACTIVE"}, {"order"}),
    ({"customer.id": 42, "status": "active"}, {"float-id"}),
    ({"customer.id": 42, "status": "ARCHIVED"}, set()),
    # text forms (the CLI's, the dashboard's): JSON when it parses, else text
    ("customer.id=42", {"order", "float-id"}),
    ('customer.id="42"', {"text-id"}),
    ("status=ACTIVE\n\n  flag = true ", set()),
    ("status = ACTIVE\ncustomer.id=42.0", {"order"}),
    (["flag=true"], {"true"}),
    (["n=null"], {"true"}),
    (['n="null"'], {"false"}),
    (["$\\.a=2", "a\\.b.c=4", "eq\\==6"], {"odd-keys"}),
]


@pytest.fixture
def published(engine: Engine) -> Engine:
    with engine.begin() as conn:
        for name, payload in PAYLOADS.items():
            publish(conn, entity_id=name, payload=payload)
    return engine


def matching(engine: Engine, payload: Any, **others: Any) -> set[str]:
    frame = analytics.events_frame(engine, payload=payload, limit=1000, **others)
    return set(frame["entity_id"])


def test_payload_search_on_both_databases(published: Engine) -> None:
    failures = []
    for payload, expected in CASES:
        found = matching(published, payload)
        if found != expected:
            failures.append((payload, found, expected))
    assert not failures, failures
    assert analytics.count_events(published) == len(PAYLOADS)


def test_every_reader_and_action_honours_the_payload_filter(published: Engine) -> None:
    flt = EventFilter(payload={"customer.id": 42})
    assert analytics.count_events(published, flt) == 2
    ids = analytics.event_ids(published, flt)
    assert len(ids) == 2
    exported = json.loads(analytics.export_events(published, flt, "json"))
    assert sorted(e["entity_id"] for e in exported) == ["float-id", "order"]
    assert b"Zo\xc3\xab" in analytics.export_events(published, flt, "csv")
    assert int(analytics.status_counts(published, flt)["count"].sum()) == 2
    assert int(analytics.throughput(published, "1min", flt)["published"].sum()) == 2  # joins the history
    assert int(analytics.retry_histogram(published, flt)["count"].sum()) == 2
    assert analytics.latency_stats(published, flt)["events"].sum() == 0  # none delivered yet

    with published.begin() as conn:  # two of them, and one other event, become dead letters
        conn.execute(
            update(EVENTS)
            .where(EVENTS.c.entity_id.in_(["order", "text-id", "float-id"]))
            .values(status="FAILED", retry_count=5, error_message="boom")
        )
    plan = admin.plan_action(published, "requeue", payload={"customer.id": 42, "status": "ACTIVE"})
    assert (plan.count, plan.sample_ids) == (1, [analytics.event_ids(published, payload={"status": "ACTIVE"})[0]])
    assert admin.requeue(published, payload={"customer.id": 42, "status": "ACTIVE"}, actor="t") == 1
    assert matching(published, {"customer.id": 42}, status="FAILED") == {"float-id"}
    flt = EventFilter.build(payload="customer.id=42")
    assert admin.discard(published, filters=flt, status="FAILED", actor="t") == 1
    assert matching(published, None, status="DISCARDED") == {"float-id"}
    assert matching(published, None, status="FAILED") == {"text-id"}  # the text "42" was never touched
    assert analytics.error_summary(published, payload='customer.id="42"')["events"].tolist() == [1]


def test_the_link_keeps_the_payload_filter() -> None:
    flt = EventFilter.build(
        status="FAILED",
        payload={
            "customer.id": 42,
            "name": "42",
            ("a.b", " pad ", "eq=", "back\\slash"): "x=y",
            "items.0.sku": "A-1",
            "note": " padded\nline ",
            "flag": True,
            "n": None,
            "f": 1e23,
            "u": "caf\u00e9 \u202e",
            "empty": "",
        },
    )
    query = filter_to_query(flt)
    assert query["status"] == "FAILED"
    lines = query["payload"].split("\n")
    assert lines[:2] == ["customer.id=42", 'name="42"']
    assert lines[2] == "a\\.b. pad .eq\\=.back\\\\slash=x=y"
    assert PayloadCondition((" pad ", "x"), 1).as_text() == "\\ pad .x=1"
    assert PayloadCondition(("x", " pad "), 1).as_text() == "x. pad\\ =1"
    assert 'note=" padded\\nline "' in lines and "flag=true" in lines and "n=null" in lines
    assert filter_from_query(query) == flt
    assert filter_from_query({"payload": ["customer.id=42", "status=ACTIVE"]}).payload == (
        PayloadCondition(("customer", "id"), 42),
        PayloadCondition(("status",), "ACTIVE"),
    )
    assert filter_from_query({"payload": ""}).payload is None
    assert EventFilter(payload={}).is_empty() and EventFilter(payload="\n \n").is_empty()


def test_conditions_keep_json_types_apart() -> None:
    one, true, text = (PayloadCondition(("a",), v) for v in (1, True, "1"))
    assert len({one, true, text}) == 3 and one != true
    assert PayloadCondition(("a",), 1.0) != one  # 1.0 and 1 match the same events, but are kept as given
    assert (one.kind, true.kind, text.kind, PayloadCondition(("a",), None).kind) == ("number", "true", "text", "null")
    assert EventFilter(payload={"a": 1, "b": 2}) == EventFilter.build(payload="a=1\nb=2")
    assert EventFilter(payload={"a": 1}).with_(status=("FAILED",)).payload == (one,)
    # As the publisher stores them: Decimal, datetime, UUID, Enum.
    moment = dt.datetime(2026, 11, 27, 10, 0, tzinfo=dt.UTC)
    uid = uuid.UUID(int=7)
    assert [PayloadCondition(("a",), v).value for v in (Decimal("1.50"), moment, uid, Colour.RED)] == [
        1.5,
        moment.isoformat(),
        str(uid),
        "red",
    ]


@pytest.mark.parametrize(
    ("line", "path", "value"),
    [
        ("customer.id=42", ("customer", "id"), 42),
        ("  customer.id  =  42  ", ("customer", "id"), 42),
        ('name="42"', ("name",), "42"),
        ("name=42.0", ("name",), 42.0),
        ("status=ACTIVE", ("status",), "ACTIVE"),
        ("status= two words ", ("status",), "two words"),
        ('status=" padded "', ("status",), " padded "),
        ("status=", ("status",), ""),
        ("x=NaN", ("x",), "NaN"),  # not JSON: text
        ("x=-Infinity", ("x",), "-Infinity"),
        ("x=[1", ("x",), "[1"),
        ("x=a=b", ("x",), "a=b"),
        ("x=null", ("x",), None),
        ("x=false", ("x",), False),
        ("a\\=b=1", ("a=b",), 1),
        ("a\\ =1", ("a ",), 1),
        ("\\ a=1", (" a",), 1),
        ("a\\\\=1", ("a\\",), 1),
        ("items.0.sku=A-1", ("items", "0", "sku"), "A-1"),
        ("\U0001d11e.caf\u00e9=\u2603", ("\U0001d11e", "caf\u00e9"), "\u2603"),
    ],
)
def test_the_text_form(line: str, path: tuple[str, ...], value: Any) -> None:
    (condition,) = parse_payload_conditions(line)
    assert condition.path == path
    assert condition.json == json.dumps(value, ensure_ascii=False)
    assert parse_payload_conditions(condition.as_text()) == (condition,)


BAD: dict[str, tuple[Any, str]] = {
    "empty-key": ({"a..b": 1}, "empty key"),
    "leading-dot": ({".a": 1}, "empty key"),
    "trailing-dot": ({"a.": 1}, "empty key"),
    "empty-path": ({"": 1}, "empty key"),
    "empty-tuple": ({(): 1}, "at least one key"),
    "empty-key-in-tuple": ({("a", ""): 1}, "empty key"),
    "lone-backslash": ({"a\\": 1}, "lone backslash"),
    "tab": ({"a\tb": 1}, "control character"),
    "newline-key": ({("a\nb",): 1}, "control character"),
    "c1-control": ({"a\x9bb": 1}, "control character"),
    "nul": ({"a\x00": 1}, "NUL"),
    "surrogate": ({"a\ud800": 1}, "surrogate"),
    "too-many-keys": ({".".join("k" * (MAX_PATH_SEGMENTS + 1)): 1}, f"more than {MAX_PATH_SEGMENTS} keys"),
    "too-long": ({"k" * (MAX_PATH_LENGTH + 1): 1}, f"at most {MAX_PATH_LENGTH}"),
    "too-many-conditions": ({f"k{i}": i for i in range(MAX_PAYLOAD_CONDITIONS + 1)}, "more than"),
    "too-many-lines": ("\n".join(f"k{i}=1" for i in range(MAX_PAYLOAD_CONDITIONS + 1)), "more than"),
    "object-value": ({"a": {"b": 1}}, "not an object or array"),
    "array-value": ({"a": [1]}, "not an object or array"),
    "set-value": ({"a": {1}}, "not an object or array"),
    "json-array-value": ("a=[1, 2]", "not an object or array"),
    "nan": ({"a": float("nan")}, "finite"),
    "decimal-nan": ({"a": Decimal("NaN")}, "finite"),
    "json-overflow": ("a=1e400", "finite"),
    "huge-int": ({"a": 2**63}, "64-bit"),
    "json-huge-int": ("a=9223372036854775808", "64-bit"),
    "bytes": ({"a": b"x"}, "no JSON form"),
    "object": ({"a": object()}, "no JSON form"),
    "nul-value": ({"a": "x\x00"}, "NUL"),
    "long-value": ({"a": "x" * (MAX_TEXT_LENGTH + 1)}, f"{MAX_TEXT_LENGTH:,}"),
    "no-equals": ("customer.id", "write path=value"),
    "blank-cli-value": ([" "], "write path=value"),
    "not-text-key": ({5: 1}, "not int"),
    "not-text-segment": ({("a", 5): 1}, "must be text"),
    "not-conditions": (5, "not int"),
    "not-a-condition": ([5], "not int"),
    "deep-text": ("a=" + "[" * 1400, "nested too deeply"),
}


@pytest.mark.parametrize(("payload", "fragment"), list(BAD.values()), ids=list(BAD))
def test_bad_payload_filters_are_filter_errors(payload: Any, fragment: str) -> None:
    for build in (lambda: EventFilter.build(payload=payload), lambda: EventFilter(payload=payload)):
        with pytest.raises(FilterError) as caught:
            build()
        assert caught.value.field == "payload"
        assert fragment in str(caught.value), str(caught.value)


def test_bad_payload_filters_are_refused_in_bounded_time() -> None:
    huge = "x" * 50_000_000
    payloads = [
        {huge: 1},
        {("k",) * 10_000_000: 1},
        {tuple(huge[:1_000_000]): 1},
        {"a": huge},
        {"a": 10**5000},
        {"a": Decimal("1e999999999")},
        {"a": [[0] * 1000] * 10_000},
        dict.fromkeys((f"k{i}" for i in range(1_000_000)), 1),
        (f"k{i}=1" for i in itertools.count()),
        huge,
        "a=" + huge,
        ["a=" + huge],
    ]
    started = time.perf_counter()  # the inputs are built; their refusal is timed
    for payload in payloads:
        with pytest.raises(FilterError):
            EventFilter.build(payload=payload)
    assert time.perf_counter() - started < BOUND


def test_the_largest_filter_is_accepted_and_written_back() -> None:
    # Every character escaped: keys of dots (\.), values of control characters (\u0001) and quotes.
    dots = ["."] * (MAX_PATH_SEGMENTS - 2) + ["." * (MAX_PATH_LENGTH - MAX_PATH_SEGMENTS)]
    value = '\x01"\\' * (MAX_TEXT_LENGTH // 3)
    flt = EventFilter(payload={(f"{i:02}", *dots): value for i in range(MAX_PAYLOAD_CONDITIONS)})
    assert flt.payload is not None and len(flt.payload) == MAX_PAYLOAD_CONDITIONS
    text = format_payload_conditions(flt.payload)
    assert len(text) <= MAX_PAYLOAD_TEXT
    assert filter_from_query(filter_to_query(flt)) == flt


def test_a_database_sees_only_parameters(published: Engine) -> None:
    """Keys and values never become SQL: an attempt at injection is a key that matches nothing."""
    hostile = "x') OR 1=1 --"
    for payload in ({hostile: 1}, {"a": hostile}, {(hostile, "$[0]"): None}, {"status": "' OR ''='"}):
        assert matching(published, payload) == set()
    from sqlalchemy import select

    statement = select(EVENTS.c.id).where(EventFilter(payload={hostile: hostile}).clause(DEFAULT_TABLES))
    sql = str(statement.compile(published))
    assert hostile not in sql and "OR 1=1" not in sql


# --- the text form, as a property --------------------------------------------------------------

keys = st.text(st.characters(exclude_categories=("Cc", "Cs")), min_size=1, max_size=12)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=("Cs",)), max_size=20).filter(lambda t: "\x00" not in t)
)


@settings(max_examples=300, deadline=None)
@given(conditions=st.lists(st.tuples(st.lists(keys, min_size=1, max_size=5), scalars), max_size=5))
def test_any_valid_filter_reads_back_from_its_link(conditions: list[tuple[list[str], Any]]) -> None:
    flt = EventFilter(payload=[PayloadCondition(tuple(path), value) for path, value in conditions])
    for condition in flt.payload or ():
        assert parse_path(format_path(condition.path)) == condition.path
    assert filter_from_query(filter_to_query(flt)) == flt


# --- the CLI -----------------------------------------------------------------------------------


@pytest.fixture
def cli_db(published: Engine, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    monkeypatch.setenv("OUTBOX_DATABASE_URL", db_url)
    yield published


def test_the_cli_searches_payloads(
    cli_db: Engine, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def listed(*args: str) -> list[str]:
        code, out, err = run_main(monkeypatch, capsys, "events", "--json", *args)
        assert (code, err) == (0, ""), err
        return sorted(e["entity_id"] for e in json.loads(out)["events"])

    assert listed("--payload", "customer.id=42") == ["float-id", "order"]
    assert listed("--payload", 'customer.id="42"') == ["text-id"]
    assert listed("--payload", "customer.id=42", "--payload", "status=ACTIVE") == ["order"]
    assert listed("--payload", "flag=true") == ["true"]
    assert listed("--payload", "items.0.sku=A-1") == ["order"]
    assert listed("--payload", "$\\.a=2") == ["odd-keys"]
    assert listed("--payload", "café=naïve ☄") == ["unicode"]
    assert listed("--payload", "customer.id=42", "--entity", "Project/order") == ["order"]

    code, out, _ = run_main(monkeypatch, capsys, "events", "--payload", "customer.id=42")
    assert code == 0 and "2 of 2 events" in out
    code, out, _ = run_main(monkeypatch, capsys, "stats", "--payload", "customer.id=42", "--json")
    assert code == 0 and sum(r["count"] for r in json.loads(out)["status_counts"]) == 2

    with cli_db.begin() as conn:
        conn.execute(update(EVENTS).values(status="FAILED", retry_count=5, error_message="boom"))
    code, out, _ = run_main(monkeypatch, capsys, "requeue", "--payload", "customer.id=42", "--dry-run", "--json")
    assert (code, json.loads(out)["count"]) == (0, 2)
    code, out, _ = run_main(monkeypatch, capsys, "discard", "--payload", "flag=true", "--json")
    assert (code, json.loads(out)) == (0, {"action": "discard", "moved": 1})
    code, out, _ = run_main(monkeypatch, capsys, "requeue", "--payload", 'customer.id="42"', "--json")
    assert (code, json.loads(out)) == (0, {"action": "requeue", "moved": 1})
    assert matching(cli_db, None, status="DISCARDED") == {"true"}
    assert matching(cli_db, None, status="PENDING") == {"text-id"}


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["events", "--payload", "a..b=1"], "payload: 'a..b': empty key"),
        (["events", "--payload", "customer.id"], "write path=value"),
        (["events", "--payload", "tags=[1]"], "not an object or array"),
        (["stats", "--payload", "n=1e400"], "finite"),
        (["requeue", "--payload", "a\tb=1"], "control character"),
        (["discard", "--payload", "x=" + "[" * 1400], "nested too deeply"),
    ],
)
def test_a_bad_payload_option_is_one_line_and_exit_2(
    args: list[str],
    fragment: str,
    sqlite_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("OUTBOX_DATABASE_URL", sqlite_url)
    code, out, err = run_main(monkeypatch, capsys, *args)
    assert (code, out) == (2, "")
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err


def test_the_sqlite_file_and_the_server_agree_on_a_fresh_engine(db_url: str) -> None:
    """Statements are cached per shape: a second filter of the same shape gets its own values."""
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            publish(conn, entity_id="a", payload={"k": {"v": 1}})
            publish(conn, entity_id="b", payload={"k": {"v": 2}})
        assert matching(engine, {"k.v": 1}) == {"a"}
        assert matching(engine, {"k.v": 2}) == {"b"}
        assert matching(engine, {"k.v": 3}) == set()
    finally:
        engine.dispose()


def test_a_payload_condition_reads_only_the_rows_the_other_filters_leave(sqlite_url: str) -> None:
    """SQLite still reaches rows through the index of the other filters; the condition runs per row left."""
    from sqlalchemy import func, select

    engine = make_engine(sqlite_url)
    try:
        flt = EventFilter.build(since="2026-01-01", payload={"customer.id": 42})
        statement = select(func.count()).select_from(EVENTS).where(flt.clause(DEFAULT_TABLES))
        sql = str(statement.compile(engine, compile_kwargs={"literal_binds": True}))
        with engine.connect() as conn:
            plan = [row[3] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}")]
    finally:
        engine.dispose()
    assert plan[0].startswith("SEARCH OutboxEvent USING INDEX ix_OutboxEvent_time (created_at>?)"), plan
    assert not any(step.startswith("SCAN OutboxEvent") for step in plan), plan

"""The field reports of issue 12 (payloads, ids, filters), one test each, on both databases.

Every input is stored and read back equal, or refused with an ``OutboxError`` that
names the field; never a ``TypeError``, ``ValueError``, ``OverflowError`` or
``UnicodeEncodeError`` from deeper down. The timing tests prove a bound, not a
speed: the limits are generous.
"""

from __future__ import annotations

import datetime as dt
import itertools
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine

from outbox_admin import (
    InvalidEventError,
    OutboxError,
    PayloadError,
    UnknownEventTypeError,
    analytics,
    make_engine,
)
from outbox_admin.admin import publish_from_form
from outbox_admin.errors import FilterError
from outbox_admin.filters import (
    MAX_ERROR_GROUP_LENGTH,
    MAX_EVENT_IDS,
    MAX_TEXT_LENGTH,
    MAX_VALUES,
    EventFilter,
)
from outbox_admin.payload import MAX_DECIMAL_DIGITS

from .input_support import delivered, event_count, publish, same, stored

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
BOUND = 1.0  # seconds: proves a refusal does not grow with the input (the work measured is microseconds)


def refused(exc_type: type[OutboxError], call: Any, *args: Any, **kwargs: Any) -> OutboxError:
    with pytest.raises(OutboxError) as caught:
        call(*args, **kwargs)
    assert type(caught.value) is exc_type, repr(caught.value)
    return caught.value


def refused_quickly(exc_type: type[OutboxError], call: Any, **kwargs: Any) -> OutboxError:
    """Refused within ``BOUND`` seconds of this process's CPU time: the work, not the machine's load
    (a CI run with three workers on two cores once stretched 0.1 s of work to 1.6 s of wall time)."""
    started = time.process_time()
    error = refused(exc_type, call, **kwargs)
    assert time.process_time() - started < BOUND
    return error


# --- payloads: objects and arrays only --------------------------------------------------------


SCALARS = [5, 12345678901234567890, 10**308, -1, 1.5, True, "text", Decimal("5")]


def test_a_top_level_scalar_payload_is_refused(engine: Engine) -> None:
    # On SQLite the JSON column's NUMERIC affinity stored 5 as an integer, 12345678901234567890 as a
    # REAL and 10**308 as inf, and the dispatcher could not decode them.
    with engine.begin() as conn:
        for payload in SCALARS:
            error = refused(PayloadError, publish, conn, payload=payload)
            assert error.path == "payload" and "object or array" in str(error) and '{"value": ...}' in str(error)
    assert event_count(engine) == 0


def test_objects_and_arrays_reach_handlers_as_published(engine: Engine) -> None:
    cases: list[tuple[Any, Any]] = [
        (None, {}),
        ({}, {}),
        ([], []),
        ([1, "a", None, 2.5], [1, "a", None, 2.5]),
        ((1, 2), [1, 2]),
        ({"a": {"b": [True]}}, {"a": {"b": [True]}}),
    ]
    with engine.begin() as conn:
        events = [(publish(conn, payload=given), expected) for given, expected in cases]
    received = delivered(engine)
    for event, expected in events:
        assert same(event.payload, expected)
        assert same(stored(engine, event.id)["payload"], expected)
        assert same(received[event.id].payload, expected)


# --- payloads: numbers ----------------------------------------------------------------------


def test_payload_integers_hold_in_64_bits(engine: Engine) -> None:
    with engine.begin() as conn:
        event = publish(conn, payload={"max": INT64_MAX, "min": INT64_MIN, "list": [INT64_MAX, 0]})
        for value in (INT64_MAX + 1, INT64_MIN - 1, 10**5000, -(10**5000)):
            error = refused(PayloadError, publish, conn, payload={"n": [value]})
            assert error.path == "payload.n[0]" and "64-bit" in str(error) and "text" in str(error)
    expected = {"max": INT64_MAX, "min": INT64_MIN, "list": [INT64_MAX, 0]}
    assert same(stored(engine, event.id)["payload"], expected)
    assert same(delivered(engine)[event.id].payload, expected)


DECIMALS: list[tuple[Decimal, object]] = [
    (Decimal("12"), 12),
    (Decimal("12.000"), 12),
    (Decimal("-0"), 0),
    (Decimal("0E+5000"), 0),
    (Decimal("0E-5000"), 0),
    (Decimal(INT64_MAX), INT64_MAX),
    (Decimal(INT64_MIN), INT64_MIN),
    (Decimal("1250.50"), 1250.5),
    (Decimal("-1.5E-7"), -1.5e-7),
    (Decimal(INT64_MAX + 1), float(INT64_MAX + 1)),  # integral, beyond int64: a double, as Number()
    (Decimal("1E+30"), 1e30),
    (Decimal("1" + "0" * 300), 1e300),  # 301 digits, one significant
    (Decimal("1.7976931348623157E+308"), 1.7976931348623157e308),
    (Decimal("5E-324"), 5e-324),
    (Decimal("0." + "3" * MAX_DECIMAL_DIGITS), 1 / 3),
]


def test_decimals_become_numbers_as_number_of_decimal(engine: Engine) -> None:
    payload = {str(i): value for i, (value, _) in enumerate(DECIMALS)}
    expected = {str(i): number for i, (_, number) in enumerate(DECIMALS)}
    with engine.begin() as conn:
        event = publish(conn, payload=payload)
    assert same(event.payload, expected)
    assert same(stored(engine, event.id)["payload"], expected)
    assert same(delivered(engine)[event.id].payload, expected)


REFUSED_DECIMALS: list[tuple[Decimal, str]] = [
    (Decimal("NaN"), "not a finite number"),
    (Decimal("-Infinity"), "not a finite number"),
    (Decimal("1E+309"), "too large"),
    (Decimal("2E+308"), "too large"),
    (Decimal("1E+1000000"), "too large"),
    (Decimal("1E-400"), "too small"),
    (Decimal("2E-324"), "too small"),
    (Decimal("0." + "3" * (MAX_DECIMAL_DIGITS + 1)), "significant digits"),
]


def test_decimals_without_a_double_are_refused(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    try:
        with engine.begin() as conn:
            for value, reason in REFUSED_DECIMALS:
                error = refused(PayloadError, publish, conn, payload={"items": [{"price": value}]})
                assert error.path == "payload.items[0].price" and reason in str(error), value
    finally:
        engine.dispose()


FLOATS = [1e20, 1e23, 1e300, -1e16, 1e16 - 2, 2.0**53 + 2, 1.0, -0.0, 0.1, 5e-324, 1.7976931348623157e308, -2.5e-300]


def test_floats_come_back_as_equal_floats(engine: Engine) -> None:
    # PostgreSQL's jsonb gave 1e23 back as the int 100000000000000000000000, which is not the double 1e23.
    payload = {"floats": FLOATS, "one": 1e23}
    with engine.begin() as conn:
        event = publish(conn, payload=payload)
    assert same(stored(engine, event.id)["payload"], payload)
    assert same(delivered(engine)[event.id].payload, payload)


def test_non_finite_floats_are_refused(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    try:
        with engine.begin() as conn:
            for value in (float("nan"), float("inf"), -float("inf")):
                assert refused(PayloadError, publish, conn, payload={"x": value}).path == "payload.x"
    finally:
        engine.dispose()


# --- bounded work -----------------------------------------------------------------------------


def _exponential() -> list[Any]:
    """Shared sub-lists: 2**60 leaves once expanded, 61 objects in memory."""
    value: list[Any] = [0]
    for _ in range(60):
        value = [value, value]
    return value


def test_huge_payload_values_are_refused_quickly(sqlite_url: str) -> None:
    # Made one at a time: together they would hold a few hundred MB.
    huge: list[tuple[Callable[[], Any], str, str]] = [
        (lambda: {"d": Decimal("1E+1000000")}, "payload.d", "too large"),  # took over a minute in the field
        (lambda: {"d": Decimal("1E+200000")}, "payload.d", "too large"),
        (lambda: {"n": 10**5000}, "payload.n", "64-bit"),  # was a ValueError (Python's 4,300-digit limit)
        (lambda: {"d": Decimal("7" * 100_000)}, "payload.d", "too large"),
        (lambda: {"d": Decimal("0." + "7" * 100_000)}, "payload.d", "significant digits"),
        (lambda: {"s": "x" * 50_000_000}, "payload", "over the limit"),
        (lambda: [0] * 10_000_000, "payload", "over the limit"),
        (lambda: {str(i): i for i in range(1_000_000)}, "payload", "over the limit"),
        (lambda: _exponential(), "payload", "over the limit"),
    ]
    engine = make_engine(sqlite_url)
    try:
        with engine.begin() as conn:
            for make, path, reason in huge:
                error = refused_quickly(PayloadError, publish, conn=conn, payload=make())
                assert error.path == path and reason in str(error), error
    finally:
        engine.dispose()


def test_text_payloads_from_a_person_are_refused_as_payload_errors(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    try:
        form = {"org_id": "org-1", "event_type": "PROJECT.CREATED", "entity_type": "Project", "entity_id": "p-1"}
        for text, reason in (
            ('{"n": ' + "9" * 5000 + "}", "too many digits"),  # json.loads raised ValueError
            ("[" * 100_000, "nested too deeply"),
            ("5", "object or array"),
            ('{"n": 1e999}', "not a finite number"),
            ('{"n": 9223372036854775808}', "64-bit"),
        ):
            assert reason in str(refused(PayloadError, publish_from_form, engine, payload_text=text, **form)), text
        assert event_count(engine) == 0
    finally:
        engine.dispose()


# --- ids ----------------------------------------------------------------------------------------


def test_integer_ids_hold_in_64_bits(engine: Engine) -> None:
    with engine.begin() as conn:
        top = publish(conn, org_id=INT64_MAX, entity_id=INT64_MIN)
        for field in ("org_id", "entity_id"):
            for value in (INT64_MAX + 1, INT64_MIN - 1):
                error = refused(InvalidEventError, publish, conn, **{field: value})
                assert error.field == field and "64-bit" in str(error)
            error = refused_quickly(InvalidEventError, publish, conn=conn, **{field: 10**5000})
            assert error.field == field
    row = stored(engine, top.id)
    assert (row["org_id"], row["entity_id"]) == (str(INT64_MAX), str(INT64_MIN))


def test_ids_that_are_not_text_a_database_holds_are_refused_at_publish(engine: Engine) -> None:
    # A lone surrogate used to pass publish and fail the commit with UnicodeEncodeError.
    kept = {}
    with engine.begin() as conn:
        for field in ("org_id", "entity_type", "entity_id", "idempotency_key"):
            for bad in ("a\ud800b", "\udfff", "a\x00"):
                assert refused(InvalidEventError, publish, conn, **{field: bad}).field == field
            kept[field] = publish(conn, **{field: f"ok-\u00e9-\U0001d11e-{field}"}).id
    for field, event_id in kept.items():
        assert stored(engine, event_id)[field] == f"ok-\u00e9-\U0001d11e-{field}"


def test_unknown_event_types_are_refused_in_bounded_time(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    try:
        with engine.begin() as conn:
            for value in ("X" * 50_000_000, 10**5000, [0] * 10_000_000, "PROJECT.\ud800"):
                refused_quickly(UnknownEventTypeError, publish, conn=conn, event_type=value)
    finally:
        engine.dispose()


# --- filters ---------------------------------------------------------------------------------


def filter_error(field: str, **loose: Any) -> str:
    with pytest.raises(FilterError) as caught:
        EventFilter.build(**loose)
    assert caught.value.field == field, (loose, caught.value)
    return str(caught.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("since", "9999-12-31T23:59:59-05:00"),  # was an OverflowError
        ("until", "0001-01-01T00:00:00+01:00"),
        ("since", dt.datetime(9999, 12, 31, 23, tzinfo=dt.timezone(dt.timedelta(hours=-5)))),
        ("until", dt.datetime(1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1)))),
        ("since", "2026-01-01T00:00:00\ud800"),
        ("since", "2026-01-01" + " " * 5000),
    ],
    ids=["late-text", "early-text", "late-datetime", "early-datetime", "surrogate", "long"],
)
def test_times_outside_the_calendar_are_filter_errors(field: str, value: object) -> None:
    filter_error(field, **{field: value})


def test_extreme_times_inside_the_calendar_run(engine: Engine) -> None:
    for since, until in (("0001-01-01", "9999-12-31T23:59:59"), (dt.datetime.min, dt.datetime.max)):
        assert analytics.count_events(engine, since=since, until=until) == 0


TEXT_FILTERS = ["search", "event_type", "org_id", "entity", "error_group", "status"]


def test_text_filters_refuse_surrogates_and_nul(engine: Engine) -> None:
    # Lone surrogates used to reach the driver and raise UnicodeEncodeError.
    for field in TEXT_FILTERS:
        for bad in ("a\ud800", "\udc00b", "a\x00b"):
            forms: list[Any] = [bad, [bad], ["ok", bad]] if field in ("event_type", "org_id", "status") else [bad]
            for value in forms:
                with pytest.raises(FilterError) as caught:
                    analytics.count_events(engine, **{field: value})
                assert caught.value.field == field


def test_get_event_and_timelines_refuse_unusable_ids(engine: Engine) -> None:
    for bad in ("a\ud800", "a\x00", "x" * (MAX_TEXT_LENGTH + 1)):
        assert refused(FilterError, analytics.get_event, engine, bad).field == "event_id"
        assert refused(FilterError, analytics.transitions_frame, engine, bad).field == "event_id"
        filter_error("event_ids", event_ids=["ok", bad])
    assert analytics.get_event(engine, "no-such-event-\U0001d11e") is None


def test_filter_sizes_are_bounded() -> None:
    long = "x" * (MAX_TEXT_LENGTH + 1)
    for field in ("event_type", "org_id", "entity", "search", "status"):
        assert f"{MAX_TEXT_LENGTH:,}" in filter_error(field, **{field: long})
    assert f"{MAX_TEXT_LENGTH:,}" in filter_error("event_type", event_type=["ok", long])
    filter_error("error_group", error_group="x" * (MAX_ERROR_GROUP_LENGTH + 1))
    assert EventFilter.build(error_group="<n>," * (MAX_ERROR_GROUP_LENGTH // 4)).error_group
    filter_error("org_id", org_id=[f"org-{i}" for i in range(MAX_VALUES + 1)])
    filter_error("event_ids", event_ids=[f"id-{i}" for i in range(MAX_EVENT_IDS + 1)])
    assert len(EventFilter.build(event_ids=[f"id-{i}" for i in range(MAX_EVENT_IDS)]).event_ids or ()) == MAX_EVENT_IDS
    started = time.perf_counter()
    filter_error("org_id", org_id=itertools.count())  # endless: refused after MAX_VALUES + 1 values
    filter_error("search", search="x" * 50_000_000)
    assert time.perf_counter() - started < BOUND


def test_filter_values_of_the_wrong_kind_are_filter_errors() -> None:
    filter_error("org_id", org_id=5)  # was a TypeError (not iterable)
    filter_error("org_id", org_id=[10**5000])  # was a ValueError (str of a huge int)
    filter_error("event_type", event_type=[object()])
    filter_error("entity", entity=5)
    filter_error("entity", entity=("Project", "p-1", "extra"))
    assert EventFilter.build(org_id=[7, "org-2"]).org_id == ("7", "org-2")
    assert EventFilter.build(entity=("Project", 42)).entity_id == "42"


def test_filters_built_directly_or_changed_are_checked_too() -> None:
    for changes in (
        {"event_type": ("a\ud800",)},
        {"org_id": ("a\x00",)},
        {"event_ids": ("x" * (MAX_TEXT_LENGTH + 1),)},
        {"event_ids": ["a"]},
        {"status": ("LOST",)},
        {"search": "a\ud800"},
        {"since": "2026-01-01"},
    ):
        with pytest.raises(FilterError):
            EventFilter(**changes)
        with pytest.raises(FilterError):
            EventFilter().with_(**changes)


def test_empty_event_ids_match_nothing(engine: Engine) -> None:
    with engine.begin() as conn:
        publish(conn)
    assert analytics.count_events(engine, event_ids=[]) == 0
    assert analytics.count_events(engine, event_ids=[" "]) == 0
    assert analytics.count_events(engine) == 1


def test_any_valid_text_runs_as_a_filter(engine: Engine) -> None:
    text = "caf\u00e9 \U0001d11e \u202e 100% _ \\ ' \" \n"
    with engine.begin() as conn:
        event = publish(conn, org_id=text.strip(), entity_type="Pro\u00e9", entity_id=text.strip())
    assert analytics.count_events(engine, org_id=[text.strip()], entity=("Pro\u00e9", text.strip())) == 1
    assert analytics.count_events(engine, search="\U0001d11e") == 1
    assert analytics.count_events(engine, error_group=text, event_type="PROJECT.CREATED") == 0
    assert analytics.get_event(engine, event.id) is not None


def test_bad_input_never_reaches_a_driver() -> None:
    # No database at all: every refusal above happens before any statement.
    engine = create_engine("sqlite://")
    try:
        with pytest.raises(FilterError):
            analytics.get_event(engine, "\ud800")
    finally:
        engine.dispose()


def test_the_cli_refuses_unreadable_payloads_in_one_line(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from outbox_admin import cli

    for payload, fragment in (
        ('{"n": ' + "9" * 5000 + "}", "too many digits"),  # json.loads raised ValueError: a traceback
        ("[" * 100_000, "nested too deeply"),
        ("5", "object or array"),
        ('{"n": 9223372036854775808}', "64-bit"),
    ):
        monkeypatch.setattr("sys.argv", ["outbox-admin", "publish", "PROJECT.CREATED", "--payload", payload])
        monkeypatch.setenv("OUTBOX_DATABASE_URL", sqlite_url)
        with pytest.raises(SystemExit) as exit_:
            cli.main()
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and fragment in err and "Traceback" not in err, err

"""Property tests of every input the library takes from callers, on SQLite and PostgreSQL.

Payloads and ids: each generated input is either stored and read back equal, both
as the stored row and as a handler receives it (a ``Dispatcher`` with a
``RecordingHandler``), or refused with an ``OutboxError`` subclass. Filters: each
generated filter either runs or raises ``FilterError``. The expected outcome comes
from ``model_payload`` / ``model_id``, written from the README's rules, not from
the library's code.

Bounded for CI: the ``outbox_input`` profile (80 examples, no deadline), one
database per test function, a new entity id per example.
"""

from __future__ import annotations

import datetime as dt
import enum
import itertools
import math
import uuid
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from outbox_admin import OutboxError, analytics
from outbox_admin.errors import FilterError
from outbox_admin.filters import EventFilter

from .input_support import delivered, publish, same, stored

settings.register_profile(
    "outbox_input",
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
PROFILE = settings.get_profile("outbox_input")

INT64 = range(-(2**63), 2**63)
REFUSED = object()  # what the model says of an input the library must refuse

# --- strategies ------------------------------------------------------------------------------

# Any code point, lone surrogates included (hypothesis leaves them out by default), and NUL often.
characters = st.characters(exclude_categories=()) | st.sampled_from("\x00\ud800\udfffa\u00e9\U0001d11e ,/%_\\")
texts = st.text(alphabet=characters, max_size=12)
edge_ints = st.sampled_from([2**63 - 1, -(2**63), 2**63, -(2**63) - 1, 2**53 + 1, 10**30, -(10**400)])
ints = st.integers() | edge_ints
edge_floats = st.sampled_from([1e16, 1e20, 1e23, 1e300, -1e308, 1.7976931348623157e308, -0.0, 5e-324, 1.0, 2.0**53])
floats = st.floats() | edge_floats  # NaN and infinities included
edge_decimals = st.sampled_from(
    [
        Decimal("1E+30"),
        Decimal("1E+309"),
        Decimal("1E-400"),
        Decimal("2E-324"),
        Decimal(2**63),
        Decimal(2**63 - 1),
        Decimal("0E+9000"),
        Decimal("-0.000"),
        Decimal("1" * 101),
        Decimal("0." + "1" * 101),
        Decimal("1" + "0" * 150),
        Decimal("sNaN"),
    ]
)
decimals = st.decimals() | edge_decimals  # NaN, infinities and big exponents included


class Colour(enum.Enum):
    RED = "red"
    BIG = 2**70  # refused: an enum stands for its value


extras = (
    st.datetimes(timezones=st.none() | st.just(dt.UTC))
    | st.uuids()
    | st.dates()
    | st.sampled_from(Colour)
    | st.frozensets(ints, max_size=3)  # sets of one kind of value: sorted, so their order is known
)
leaves = st.none() | st.booleans() | ints | floats | decimals | texts | extras
keys = texts | st.integers(-3, 3)  # a non-text key is refused
json_like = st.recursive(
    leaves,
    lambda children: (
        st.lists(children, max_size=4)
        | st.lists(children, max_size=3).map(tuple)
        | st.dictionaries(keys, children, max_size=4)
    ),
    max_leaves=16,
)
payloads = st.none() | json_like  # top-level scalars included: refused


# --- the model -------------------------------------------------------------------------------


def valid_text(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


def model_decimal(value: Decimal) -> object:
    """``Number(decimal)``: an int when integral inside int64, else a double that neither overflows nor
    underflows, of at most 100 significant digits."""
    if not value.is_finite():
        return REFUSED
    if value.is_zero():
        return 0
    if -(2**63) <= value < 2**63 and value == value.to_integral_value():
        return int(value)
    significant = "".join(map(str, value.as_tuple().digits)).rstrip("0")  # trailing zeros do not count
    if len(significant) > 100:
        return REFUSED
    number = float(value)
    if math.isinf(number) or number == 0.0:
        return REFUSED
    return number


def model_payload(value: Any, top: bool = True) -> object:
    """What publishing ``value`` must store, or ``REFUSED``."""
    if top:
        if value is None:
            return {}
        if not isinstance(value, (dict, list, tuple, frozenset)):
            return REFUSED
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, enum.Enum):
        return model_payload(value.value, False)
    if isinstance(value, int):
        return value if value in INT64 else REFUSED
    if isinstance(value, float):
        return value if math.isfinite(value) else REFUSED
    if isinstance(value, str):
        return value if valid_text(value) else REFUSED
    if isinstance(value, Decimal):
        return model_decimal(value)
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict):
        result = {}
        for key, item in value.items():
            if not isinstance(key, str) or not valid_text(key):
                return REFUSED
            result[key] = model_payload(item, False)
            if result[key] is REFUSED:
                return REFUSED
        return result
    items = [model_payload(item, False) for item in (sorted(value) if isinstance(value, frozenset) else value)]
    return REFUSED if any(item is REFUSED for item in items) else items


def model_id(value: object, *, allow_int: bool = True) -> object:
    """The text an id field stores, or ``REFUSED``: text of 1-255 characters, not blank, no NUL, UTF-8;
    or (where allowed) an int in the signed 64-bit range."""
    if allow_int and isinstance(value, int) and not isinstance(value, bool):
        return str(value) if value in INT64 else REFUSED
    if not isinstance(value, str) or not 1 <= len(value) <= 255 or not value.strip() or not valid_text(value):
        return REFUSED
    return value


# --- payloads --------------------------------------------------------------------------------


@PROFILE
@given(payload=payloads)
def test_a_payload_is_stored_and_delivered_equal_or_refused(engine: Engine, payload: Any) -> None:
    expected = model_payload(payload)
    with engine.begin() as conn:
        if expected is REFUSED:
            with pytest.raises(OutboxError):
                publish(conn, payload=payload)
            return
        event = publish(conn, payload=payload)
    assert same(event.payload, expected), (event.payload, expected)
    assert same(stored(engine, event.id)["payload"], expected)
    assert same(delivered(engine)[event.id].payload, expected)


# --- ids ---------------------------------------------------------------------------------------

usual_ids = st.text(alphabet="abc-_.:/ 0123456789\u00e9\U0001d11e", min_size=1, max_size=20).filter(str.strip)
id_values = usual_ids | (  # mostly valid, so that whole events get through to the database often
    st.text(alphabet=characters, max_size=8)
    | st.text(min_size=250, max_size=260)
    | st.sampled_from(["", "   ", "\u2003", "ok", "ok\x00", "ok\ud800"])
    | ints
    | st.booleans()
    | st.none()
    | st.floats(allow_nan=False)
)
_keys = itertools.count()


@PROFILE
@given(org_id=id_values, entity_type=id_values, entity_id=id_values, key=st.none() | id_values)
def test_ids_are_stored_and_delivered_equal_or_refused(
    engine: Engine, org_id: Any, entity_type: Any, entity_id: Any, key: Any
) -> None:
    if isinstance(key, str) and key.strip():
        # Distinct per example (a key used before returns the older event), same length (so the same verdict
        # on it): the counter overwrites the key's first characters.
        prefix = f"{next(_keys)}:"
        key = prefix + key[len(prefix) :] if len(key) > len(prefix) else prefix
    elif type(key) is int and -(2**63) <= key < 2**63:
        key = 10**12 + next(_keys)  # distinct too, and still an int in range (the same verdict)
    expected = {
        "org_id": model_id(org_id),
        "entity_type": model_id(entity_type, allow_int=False),
        "entity_id": model_id(entity_id),
        "idempotency_key": None if key is None else model_id(key),
    }
    fields = {"org_id": org_id, "entity_type": entity_type, "entity_id": entity_id, "idempotency_key": key}
    with engine.begin() as conn:
        if REFUSED in expected.values():
            with pytest.raises(OutboxError):
                publish(conn, **fields)
            return
        event = publish(conn, **fields)
    row = stored(engine, event.id)
    handed = delivered(engine)[event.id]
    for name, value in expected.items():
        assert getattr(event, name) == value and row[name] == value, name
        if name != "idempotency_key":
            assert getattr(handed, name) == value, name


# --- filters ---------------------------------------------------------------------------------

times = (
    st.none()
    | st.datetimes(timezones=st.none() | st.timezones())
    | st.dates()
    | st.datetimes(timezones=st.none() | st.timezones()).map(lambda d: d.isoformat())
    | st.sampled_from(["9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+01:00", "2026-02-30", "Z", "", "yesterday"])
    | texts
    | st.integers()
)
one_or_many = (
    st.none()
    | texts
    | st.lists(texts | st.integers() | st.sampled_from(["PENDING", "failed", "PROJECT.CREATED"]), max_size=3)
    | st.integers()
)
filters = st.fixed_dictionaries(
    {},
    optional={
        "status": one_or_many | st.sampled_from(["PENDING", "failed,completed", "LOST"]),
        "event_type": one_or_many,
        "org_id": one_or_many,
        "entity": st.none() | texts | st.lists(texts | st.integers() | st.none(), max_size=3) | st.integers(),
        "since": times,
        "until": times,
        "search": st.none() | texts | st.text(min_size=190, max_size=210),
        "error_group": st.none() | texts,
        "event_ids": st.none() | st.lists(texts, max_size=3) | texts,
        "payload": st.none() | texts | st.lists(texts, max_size=3) | st.dictionaries(texts, leaves, max_size=3),
    },
)


@PROFILE
@given(loose=filters, event_id=texts)
def test_a_filter_runs_or_is_a_filter_error(engine: Engine, loose: dict[str, Any], event_id: str) -> None:
    try:
        count = analytics.count_events(engine, **loose)
    except FilterError:
        pass
    else:
        assert count == 0
        assert analytics.events_frame(engine, **loose).empty
    try:
        assert analytics.get_event(engine, event_id) is None
    except FilterError:
        assert not valid_text(event_id) or len(event_id) > 1000


# --- payload filters -------------------------------------------------------------------------

#: Published once per test function's database (entity ids d0, d1, ...): what random conditions search.
PAYLOAD_DOCUMENTS: list[Any] = [
    {"a": {"b": 1, "c": [True, None, "x", 0]}, "0": "zero", "$": {"[": 1.5}, "k.d": "dot", "-1": [7]},
    [{"a": 1}, "a", 2, [False]],
    {"a": {"b": 1.0, "c": {"0": "x"}}, "c": "1", "d": False, "e": None, "\u00e9": "\u00e9"},
    {"a": "b", "b": "[1]", "1": 1, "00": True, "x": 2**53 + 1},
]


def _paths_and_leaves(document: Any, path: tuple[str, ...] = ()) -> Any:
    """Every (path, value) in a document, containers included (a condition on one must match nothing)."""
    if path:
        yield path, document
    if isinstance(document, dict | list):
        items = document.items() if isinstance(document, dict) else enumerate(document)
        for key, item in items:
            yield from _paths_and_leaves(item, (*path, str(key)))


_STORED = [pair for document in PAYLOAD_DOCUMENTS for pair in _paths_and_leaves(document)]
stored_paths = st.sampled_from(sorted({path for path, _ in _STORED}))
# What is stored, and look-alikes of other JSON types (1.0 and True and "1" for 1, None, ...).
look_alikes = st.sampled_from([1, 1.0, True, 0, 0.0, False, "1", "true", "x", 2**53, 2**53 + 1, None])
as_text = stored_paths.map(lambda keys: ".".join(k.replace("\\", "\\\\").replace(".", "\\.") for k in keys))
payload_conditions = st.one_of(
    st.sampled_from(_STORED),  # a stored (path, value): most examples find something
    st.tuples(stored_paths | as_text, look_alikes),
    st.tuples(
        stored_paths
        | as_text
        | st.lists(texts | st.sampled_from(["a", "0", "$", "-1"]), min_size=1, max_size=4).map(tuple)
        | texts
        | st.sampled_from(["", ".", "a..b", "a\\", "a\tb", "." * 40, "a." * 40]),
        look_alikes | leaves | st.lists(leaves, max_size=2) | st.dictionaries(texts, leaves, max_size=2),
    ),
)


def model_lookup(document: Any, path: tuple[str, ...]) -> tuple[bool, Any]:
    """(found, value) at ``path``: keys on objects; on arrays, ASCII digits as an index (README's rules)."""
    for key in path:
        if isinstance(document, dict) and key in document:
            document = document[key]
        elif isinstance(document, list) and key.isascii() and key.isdigit() and int(key) < len(document):
            document = document[int(key)]
        else:
            return False, None
    return True, document


def model_equal(stored: Any, wanted: Any) -> bool:
    """JSON equality: the same JSON type, numbers compared as numbers (exactly), text exactly."""
    if stored is None or wanted is None or isinstance(stored, bool) or isinstance(wanted, bool):
        return type(stored) is type(wanted) and stored == wanted
    if isinstance(stored, int | float) and isinstance(wanted, int | float):
        return stored == wanted
    return isinstance(stored, str) and isinstance(wanted, str) and stored == wanted


@PROFILE
@given(condition=payload_conditions, line=st.none() | texts)
def test_a_payload_filter_finds_what_the_model_finds_or_is_a_filter_error(
    engine: Engine, condition: tuple[Any, Any], line: str | None
) -> None:
    if analytics.count_events(engine) == 0:
        with engine.begin() as conn:
            for index, document in enumerate(PAYLOAD_DOCUMENTS):
                publish(conn, entity_id=f"d{index}", payload=document)
    if line is not None:  # the text form, as typed in the dashboard or on the command line
        try:
            analytics.count_events(engine, payload=line)
            analytics.count_events(engine, payload=[line])
        except FilterError:
            pass
    path, value = condition
    try:
        flt = EventFilter(payload={path: value})
    except FilterError:
        return
    assert flt.payload is not None
    (made,) = flt.payload
    found = set(analytics.events_frame(engine, flt, limit=100)["entity_id"])
    expected = set()
    for index, document in enumerate(PAYLOAD_DOCUMENTS):
        present, stored_value = model_lookup(document, made.path)
        if present and model_equal(stored_value, made.value):
            expected.add(f"d{index}")
    event(f"matches: {len(expected)}")
    assert found == expected, (made, found, expected)

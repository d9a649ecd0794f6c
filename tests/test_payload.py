"""The payload normaliser on its own, and a property test through the real databases."""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from outbox_admin import PayloadError, make_engine, publish_outbox_event
from outbox_admin.models import DEFAULT_TABLES
from outbox_admin.payload import normalize_payload

finite_floats = st.floats(allow_nan=False, allow_infinity=False)
json_scalars = st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63) | finite_floats | st.text()
extras = st.decimals(
    allow_nan=False, allow_infinity=False, places=4, min_value=-(10**12), max_value=10**12
) | st.datetimes(timezones=st.none() | st.just(dt.UTC))
json_like = st.recursive(
    json_scalars | extras,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def expected(value: object) -> object:
    """What the normaliser should turn ``value`` into, written independently."""
    if isinstance(value, Decimal):  # Number(decimal): an int only when integral and inside int64
        integral = value == value.to_integral_value() and -(2**63) <= value < 2**63
        return int(value) if integral else float(value)
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: expected(v) for k, v in value.items()}
    if isinstance(value, list):
        return [expected(v) for v in value]
    return value


def same_json(a: object, b: object) -> bool:
    """Equal as JSON: numbers compare by value, since JSON has one number type
    (PostgreSQL's jsonb keeps a float's decimal digits, not its binary value)."""
    if (
        isinstance(a, (int, float))
        and isinstance(b, (int, float))
        and not isinstance(a, bool)
        and not isinstance(b, bool)
    ):
        return a == b or (isinstance(a, float) or isinstance(b, float)) and float(a) == float(b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def storable(value: object) -> bool:
    if isinstance(value, int) and not isinstance(value, bool):
        return -(2**63) <= value < 2**63
    if isinstance(value, str):
        return "\x00" not in value
    if isinstance(value, dict):
        return all(storable(k) and storable(v) for k, v in value.items())
    if isinstance(value, list):
        return all(storable(v) for v in value)
    return True


@given(json_like)
def test_normaliser_matches_the_rules(value: object) -> None:
    if storable(value):
        assert normalize_payload(value) == expected(value)
    else:
        with pytest.raises(PayloadError, match="NUL|64-bit"):
            normalize_payload(value)


not_json = st.one_of(
    st.binary(min_size=1),
    st.just(float("nan")),
    st.just(float("inf")),
    st.just(Decimal("sNaN")),
    st.just(Decimal("-Infinity")),
    st.builds(object),
    st.complex_numbers(allow_nan=False),
    st.dictionaries(st.integers(), st.integers(), min_size=1),
    st.just("\x00"),
    st.just("a\ud800b"),
)


@given(
    st.recursive(
        not_json,
        lambda c: st.lists(c, min_size=1, max_size=3) | st.dictionaries(st.text(max_size=3), c, min_size=1, max_size=3),
        max_leaves=5,
    )
)
def test_anything_else_is_a_payload_error(value: object) -> None:
    with pytest.raises(PayloadError):
        normalize_payload({"wrapper": [value]})


def test_decimal_is_number_of_decimal() -> None:
    # An int only when integral and inside int64; else a double, as JavaScript's Number(decimal).
    assert normalize_payload(Decimal("1E+30")) == 1e30 and isinstance(normalize_payload(Decimal("1E+30")), float)
    assert normalize_payload(Decimal(2**63 - 1)) == 2**63 - 1
    assert math.isclose(normalize_payload(Decimal("1.5E-7")), 1.5e-7)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=json_like)
def test_round_trip_through_publish_and_read_back(db_url: str, value: object) -> None:
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            if not storable(value):
                with pytest.raises(PayloadError):
                    publish_outbox_event(
                        conn,
                        org_id="o",
                        event_type="PROJECT.CREATED",
                        entity_type="P",
                        entity_id="1",
                        payload={"v": value},
                    )
                return
            event = publish_outbox_event(
                conn, org_id="o", event_type="PROJECT.CREATED", entity_type="P", entity_id="1", payload={"v": value}
            )
        with engine.connect() as conn:
            stored = conn.execute(
                select(DEFAULT_TABLES.events.c.payload).where(DEFAULT_TABLES.events.c.id == event.id)
            ).scalar_one()
        assert same_json(stored, {"v": expected(value)}), (stored, value)
    finally:
        engine.dispose()

"""Payload normalisation: turn what application code hands us into plain JSON.

The original asks callers to convert ``Prisma.Decimal`` with ``Number(decimal)``
before publishing; here the publisher does it, so consumers always see plain JSON
numbers. Anything that has no faithful JSON form is refused with a ``PayloadError``
naming where it sits (``payload.items[3].price``), before anything is written.

The rules, identical on SQLite and PostgreSQL (docs/publishing.md
says the same to users):

- A payload is a JSON **object or array** (an entity's fields); a top-level
  number, text or boolean is refused: wrap it, ``{"value": 5}``.
- **Integers** fit in signed 64 bits (what Go, Java, Rust and PostgreSQL
  ``bigint`` consumers hold); larger ones are refused, checked before any
  conversion to text. JavaScript consumers lose precision beyond 2**53: send
  such ids as text.
- **Decimal** is ``Number(decimal)``: integral and inside the 64-bit range, an
  int; otherwise a float if it fits a double (neither overflowing nor
  underflowing to zero), else refused. Decimals of more than
  ``MAX_DECIMAL_DIGITS`` significant digits (trailing zeros do not count) are
  refused: a double holds 17.
- **Floats** are finite doubles. PostgreSQL's ``jsonb`` keeps a number as the
  decimal text it was given, and reads ``1e+23`` back as the integer
  ``100000000000000000000000``, which is not the double ``1e23``; so floats of
  magnitude ``1e16`` and more (all integral) are written in positional form with
  a ``.0`` (``100000000000000000000000.0``), which ``jsonb`` keeps fractional:
  every database gives back a float equal to the one published. ``-0.0`` comes
  back from PostgreSQL as ``0.0`` (equal; ``jsonb`` has no negative zero).

**Bounded work.** Checking a payload never costs more than its size limit allows,
whatever it is handed: every container is charged the fewest bytes its items can
encode to (2 per array item, 5 per object entry) and every text its length, each
*before* it is walked or scanned, and the walk stops as soon as the charges exceed
``max_bytes``. So work is linear in min(payload size, limit), never quadratic:
a 50 MB string, a list of ten million items or a dict of a million keys is refused
in microseconds (its length alone is over the limit); shared sub-lists that would
expand to 2**60 items stop after about 65,000 of them. The worst case is a
payload near the limit made of tiny containers: 65,000 one-item lists (256 KiB)
took 0.1 s of CPU to accept, and refusing 66,000 of them 0.08 s, on the
development machine while it was busy (2.5x slower than idle); ordinary payloads
cost microseconds. Ints are checked by comparison, before any conversion to text
(``str()`` of a huge int is quadratic); a Decimal's magnitude is O(1) and its
digit count one pass with no large copy, before ``int()``/``float()``. A fast
walk finishes every valid payload (and refusals for size); any other refusal
walks once more, as bounded, to name the path. With ``max_bytes=None`` there
is no size limit, and the work is linear in the payload's size.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import json
import math
import re
import sys
import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from .errors import PayloadError

DEFAULT_MAX_PAYLOAD_BYTES = 256 * 1024
MAX_DEPTH = 64
#: Signed 64-bit range of payload integers (and of integer ids).
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
#: Significant digits a Decimal may have (trailing zeros not counted); a double holds 17.
MAX_DECIMAL_DIGITS = 100
#: Floats from this magnitude on are integral and are written in positional form (see the module docstring).
_POSITIONAL_FROM = 1e16
# The fewest bytes an encoded array item (",0") and object entry (',"":0') can take; with each text's length,
# what the walk charges against the size limit: a lower bound of the encoded size.
_PER_ITEM, _PER_ENTRY = 2, 5
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PATH_KEY_LENGTH = 64  # keys longer than this are shortened in error paths

JSONValue = None | bool | int | float | str | list["JSONValue"] | dict[str, "JSONValue"]

_INT64_HINT = (
    "outside the signed 64-bit range (-2**63 .. 2**63-1) that Go, Java, Rust and PostgreSQL bigint "
    "consumers hold; send it as text"
)
# Rounds to MAX_DECIMAL_DIGITS and raises if that drops a non-zero digit: a digit count in one pass over the
# coefficient, with no copy bigger than the Decimal itself (as_tuple() would build a tuple of every digit).
# Shared: traps raise, and the flags it sets are never read.
_round_to_max_digits = decimal.Context(
    prec=MAX_DECIMAL_DIGITS, traps=[decimal.Inexact], Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN
).plus
_TOO_MANY_DIGITS = (
    f"Decimal has more than {MAX_DECIMAL_DIGITS} significant digits (a double holds 17); round it, or send it as text"
)


class _Unusual(Exception):
    """Raised by the fast path for anything it does not handle itself."""


class _OverBudget(Exception):
    """Raised by the fast path once the payload is certainly over its size limit."""


class _Refused(_Unusual):
    """A value with no JSON form; the full walk turns the reason into a ``PayloadError`` with the path."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _key_path(path: str, key: str) -> str:
    if len(key) > _PATH_KEY_LENGTH:
        key = key[:_PATH_KEY_LENGTH] + "…"
    return f"{path}.{key}" if _IDENTIFIER.match(key) else f"{path}[{json.dumps(key, ensure_ascii=False)}]"


def decimal_number(value: Decimal) -> int | float:
    """``Number(decimal)``: an int when integral and inside int64, else a float; raises ``PayloadError``.

    Every step is bounded: the magnitude (``adjusted()``, O(1)) is checked first, then
    the digit count (one pass, no large copy), and only then are ``int``/``float``
    conversions made, on at most ``MAX_DECIMAL_DIGITS`` digits of magnitude 1E+308 at most.
    """
    try:
        return _decimal_number(value)
    except _Refused as refused:
        raise PayloadError("payload", refused.reason) from None


def _decimal_number(value: Decimal) -> int | float:
    magnitude = value.adjusted()  # O(1): the exponent of the leading digit (0 for NaN and infinities)
    if -307 < magnitude < 308 and value.is_finite():  # the usual case: no overflow or underflow possible
        try:
            exact = _round_to_max_digits(value)  # equal to value, with at most MAX_DECIMAL_DIGITS digits
        except decimal.Inexact:
            raise _Refused(_TOO_MANY_DIGITS) from None
        if magnitude <= 18 and exact == exact.to_integral_value():
            integral = int(exact)
            if -0x8000_0000_0000_0000 <= integral <= 0x7FFF_FFFF_FFFF_FFFF:
                return integral
        return float(exact)
    if not value.is_finite():
        raise _Refused(f"Decimal {'NaN' if value.is_nan() else 'Infinity'} is not a finite number")
    if value.is_zero():  # 0E+1000 is 0
        return 0
    if magnitude > 308:
        raise _Refused(
            f"Decimal of magnitude 1E+{magnitude} is too large for a JSON number (a double holds up to 1.8E+308)"
        )
    if magnitude < -324:
        raise _Refused(
            f"Decimal of magnitude 1E{magnitude} is too small for a JSON number (a double would hold 0); "
            "send it as text"
        )
    try:
        exact = _round_to_max_digits(value)
    except decimal.Inexact:
        raise _Refused(_TOO_MANY_DIGITS) from None
    number = float(exact)  # at most MAX_DECIMAL_DIGITS digits, magnitude within 1E-324 .. 1E+308
    if number in (math.inf, -math.inf):
        raise _Refused(f"Decimal {exact} is too large for a JSON number (a double holds up to 1.8E+308)")
    if number == 0.0:
        raise _Refused(f"Decimal {exact} is too small for a JSON number (a double would hold 0); send it as text")
    return number


def _short_repr(value: object) -> str:
    """``repr`` of a small scalar, else the type's name (repr of a huge int raises, of a big object costs)."""
    if isinstance(value, int) and INT64_MIN <= value <= INT64_MAX or isinstance(value, (float, type(None))):
        return repr(value)
    return f"<{type(value).__name__}>"


def _int_reason(value: int) -> str:
    return f"integer of {value.bit_length()} bits is {_INT64_HINT} (str(n))"


# A path is built only when an error names it: the walk passes (parent, key) pairs, cheap to make.
_Path = Any  # str (the root) | tuple[_Path, str | int]


def _path_text(path: _Path) -> str:
    keys: list[str | int] = []
    while isinstance(path, tuple):
        path, key = path
        keys.append(key)
    text: str = path
    for key in reversed(keys):
        text = f"{text}[{key}]" if isinstance(key, int) else _key_path(text, key)
    return text


class _Walk:
    """The full walk of ``normalize_payload``: converts, or raises naming the path; ``left`` is the byte budget."""

    __slots__ = ("left", "limit", "positional")

    def __init__(self, max_bytes: int | None) -> None:
        self.limit = max_bytes
        self.left = sys.maxsize if max_bytes is None else max_bytes
        self.positional = False  # a float of magnitude >= 1e16 was seen: encode with _encode_positional

    def charge(self, size: int) -> None:
        self.left -= size
        if self.left < 0:
            raise PayloadError("payload", f"is over the limit of {self.limit} bytes encoded")

    def value(self, value: Any, path: _Path, depth: int) -> JSONValue:
        if depth > MAX_DEPTH:
            raise PayloadError(_path_text(path), f"nested deeper than {MAX_DEPTH} levels")
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, enum.Enum):
            return self.value(value.value, path, depth + 1)
        if isinstance(value, int):
            if not INT64_MIN <= value <= INT64_MAX:  # before any conversion: str() of a huge int is quadratic
                raise PayloadError(_path_text(path), _int_reason(value))
            return int(value)
        if isinstance(value, float):
            if not math.isfinite(value):
                raise PayloadError(_path_text(path), f"{value} is not a finite number (JSON has no NaN or Infinity)")
            if not -_POSITIONAL_FROM < value < _POSITIONAL_FROM:
                self.positional = True
            return float(value)
        if isinstance(value, str):
            self.charge(len(value))
            return self.text(value, path)
        if isinstance(value, Decimal):
            try:
                number = _decimal_number(value)
            except _Refused as refused:
                raise PayloadError(_path_text(path), refused.reason) from None
            return self.value(number, path, depth)
        if isinstance(value, (dt.datetime, dt.date, dt.time)):
            return value.isoformat()
        if isinstance(value, uuid.UUID):
            return str(value)
        if isinstance(value, (list, tuple)):
            self.charge(_PER_ITEM * len(value))
            return [self.value(item, (path, i), depth + 1) for i, item in enumerate(value)]
        if isinstance(value, Mapping):
            self.charge(_PER_ENTRY * len(value))
            result: dict[str, JSONValue] = {}
            for key, item in value.items():
                if not isinstance(key, str):
                    raise PayloadError(
                        _path_text(path),
                        f"key {_short_repr(key)} is a {type(key).__name__}; JSON object keys must be text",
                    )
                self.charge(len(key))
                key = self.text(key, (path, key))
                result[key] = self.value(item, (path, key), depth + 1)
            return result
        if isinstance(value, (set, frozenset)):
            self.charge(_PER_ITEM * len(value))
            items = [self.value(item, (path, i), depth + 1) for i, item in enumerate(value)]
            try:
                return sorted(items)  # type: ignore[type-var]
            except TypeError:
                return items
        raise PayloadError(_path_text(path), f"a {type(value).__name__} has no JSON form; convert it before publishing")

    @staticmethod
    def text(text: str, path: _Path) -> str:
        fault = text_fault(text)
        if fault == NUL:
            raise PayloadError(
                _path_text(path), "text contains a NUL character (\\u0000), which JSON columns cannot store"
            )
        if fault is not None:
            raise PayloadError(_path_text(path), "text contains a lone surrogate and is not valid UTF-8")
        return str(text)


NUL = "contains a NUL character"
SURROGATE = "contains a lone surrogate (not valid UTF-8 text)"


def text_fault(text: str) -> str | None:
    """Why no database can store ``text`` (``NUL`` or ``SURROGATE``), or None; the one check for payload
    texts, event fields and filters. PostgreSQL cannot hold NUL in text or jsonb, and a lone surrogate
    (undecodable bytes kept by ``surrogateescape``, or ``\\ud800`` in JSON) is not UTF-8. O(1) for ASCII."""
    if "\x00" in text:
        return NUL
    if not text.isascii():  # ASCII text cannot hold a surrogate
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return SURROGATE
    return None


def normalize_payload(
    value: Any, *, path: str = "payload", max_bytes: int | None = DEFAULT_MAX_PAYLOAD_BYTES
) -> JSONValue:
    """Return ``value`` as plain JSON data, or raise ``PayloadError`` naming where the problem is.

    Decimal -> int or float (``decimal_number``); datetime/date/time -> ISO 8601
    text; UUID -> text; Enum -> its value; tuple, set, frozenset -> list. Any JSON
    value is normalised here, a top-level scalar included; ``encode_payload`` (what
    the publisher calls) also requires an object or an array. The walk stops once
    the value is certainly over ``max_bytes`` encoded (see the module docstring).
    """
    return _Walk(max_bytes).value(value, path, 0)


# Built once: ``json.dumps`` with options builds a new encoder on every call.
_encode_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def _fast_normalize(value: Any, depth: int, budget: list[int]) -> JSONValue:
    """``normalize_payload`` for every valid payload, without tracking paths (they cost more than the work).

    Anything wrong, and what it does not know (subclasses, other mappings), raises
    ``_Unusual``: the full walk then normalises it or names where the problem is.
    ``budget[0]`` is what is left of the byte limit: a container is charged before
    it is walked, its texts their lengths (O(1) each) once it is walked; texts are
    not scanned here: ``encode_payload`` looks for NUL and surrogates in the encoded
    text, which exists only once the budget held. ``budget[1]`` becomes 1 when a
    float needs the positional form.
    """
    kind = type(value)
    if kind is dict:
        budget[0] -= _PER_ENTRY * len(value)
        if budget[0] < 0:
            raise _OverBudget
        if depth >= MAX_DEPTH:
            raise _Unusual
        size = 0
        result: dict[str, JSONValue] = {}
        for key, item in value.items():
            if type(key) is not str:
                raise _Unusual
            if type(item) is str:  # the usual leaf, inline
                size += len(key) + len(item)
                result[key] = item
            else:
                size += len(key)
                result[key] = _fast_normalize(item, depth + 1, budget)
        budget[0] -= size
        if budget[0] < 0:
            raise _OverBudget
        return result
    if kind is int:
        if -0x8000_0000_0000_0000 <= value <= 0x7FFF_FFFF_FFFF_FFFF:  # INT64_MIN, INT64_MAX as literals: no lookups
            return value
        raise _Unusual
    if kind is list or kind is tuple:
        budget[0] -= _PER_ITEM * len(value)
        if budget[0] < 0:
            raise _OverBudget
        if depth >= MAX_DEPTH:
            raise _Unusual
        size = 0
        items: list[JSONValue] = []
        for item in value:
            if type(item) is str:
                size += len(item)
                items.append(item)
            else:
                items.append(_fast_normalize(item, depth + 1, budget))
        budget[0] -= size
        if budget[0] < 0:
            raise _OverBudget
        return items
    if kind is bool or value is None:
        return value
    if kind is float:
        if -_POSITIONAL_FROM < value < _POSITIONAL_FROM:
            return value
        if value - value != 0.0:  # NaN or an infinity
            raise _Unusual
        budget[1] = 1
        return value
    if kind is Decimal:
        number = _decimal_number(value)  # a _Refused is an _Unusual
        if type(number) is float and not -_POSITIONAL_FROM < number < _POSITIONAL_FROM:
            budget[1] = 1
        return number
    if kind is dt.datetime or kind is dt.date or kind is dt.time:
        return value.isoformat()  # type: ignore[no-any-return]
    if kind is uuid.UUID:
        return str(value)
    if kind is str:  # an enum's value; in containers texts are handled inline
        budget[0] -= len(value)
        if budget[0] < 0:
            raise _OverBudget
        return value  # type: ignore[no-any-return]
    if kind is set or kind is frozenset:
        budget[0] -= _PER_ITEM * len(value)
        if budget[0] < 0:
            raise _OverBudget
        if depth >= MAX_DEPTH:
            raise _Unusual
        members = [_fast_normalize(item, depth + 1, budget) for item in value]
        try:
            return sorted(members)  # type: ignore[type-var]
        except TypeError:
            return members
    if isinstance(value, enum.Enum):
        if depth >= MAX_DEPTH:
            raise _Unusual
        return _fast_normalize(value.value, depth + 1, budget)
    raise _Unusual


def _float_text(value: float) -> str:
    if -_POSITIONAL_FROM < value < _POSITIONAL_FROM:
        return repr(value)
    # repr's shortest digits, positional, with ".0": jsonb keeps the scale, so it reads back a float.
    return format(Decimal(repr(value)), "f") + ".0"


def _encode_positional(data: JSONValue) -> str:
    """``_encode_json(data)``, but floats of magnitude >= 1e16 in positional form (rare; linear in the size)."""
    if type(data) is float:
        return _float_text(data)
    if type(data) is dict:
        return "{" + ",".join(_encode_json(k) + ":" + _encode_positional(v) for k, v in data.items()) + "}"
    if type(data) is list:
        return "[" + ",".join(_encode_positional(v) for v in data) + "]"
    return _encode_json(data)


def encode_payload(value: Any, *, max_bytes: int | None = DEFAULT_MAX_PAYLOAD_BYTES) -> tuple[JSONValue, str]:
    """Normalise ``value`` and check its encoded size; returns (data, its compact JSON text).

    ``value`` must be an object (a mapping) or an array (list, tuple, set); a
    top-level number, text or boolean raises ``PayloadError``. Bounded: see the
    module docstring.
    """
    kind = type(value)
    if kind is not dict and kind is not list and not isinstance(value, (Mapping, list, tuple, set, frozenset)):
        article = "an" if kind.__name__[:1] in "aeiouAEIOU" else "a"
        raise PayloadError(
            "payload",
            f"is {article} {kind.__name__}; a payload is a JSON object or array: "
            'wrap the value in an object, e.g. {"value": ...}',
        )
    budget = [sys.maxsize if max_bytes is None else max_bytes, 0]
    try:
        data = _fast_normalize(value, 0, budget)
        encoded = _encode_positional(data) if budget[1] else _encode_json(data)
        if "\\u0000" in encoded:  # a NUL (or the text "\\u0000", rare): the full walk tells which
            raise _Unusual
        utf8 = encoded.encode("utf-8")  # refuses lone surrogates
    except _OverBudget:
        raise PayloadError("payload", f"is over the limit of {max_bytes} bytes encoded") from None
    except (_Unusual, UnicodeEncodeError):
        walk = _Walk(max_bytes)
        data = walk.value(value, "payload", 0)  # the full walk: converts, or raises naming the path
        encoded = _encode_positional(data) if walk.positional else _encode_json(data)
        utf8 = encoded.encode("utf-8")
    if max_bytes is not None and len(utf8) > max_bytes:
        raise PayloadError("payload", f"is {len(utf8)} bytes encoded, over the limit of {max_bytes} bytes")
    return data, encoded

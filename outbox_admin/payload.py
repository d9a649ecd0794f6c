"""Payload normalisation: turn what application code hands us into plain JSON.

The original asks callers to convert ``Prisma.Decimal`` with ``Number(decimal)``
before publishing; here the publisher does it, so consumers always see plain JSON
numbers. Anything that has no faithful JSON form is refused with a ``PayloadError``
naming where it sits (``payload.items[3].price``), before anything is written.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import math
import re
import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from .errors import PayloadError

DEFAULT_MAX_PAYLOAD_BYTES = 256 * 1024
MAX_DEPTH = 64
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

JSONValue = None | bool | int | float | str | list["JSONValue"] | dict[str, "JSONValue"]


def _key_path(path: str, key: str) -> str:
    return f"{path}.{key}" if _IDENTIFIER.match(key) else f"{path}[{json.dumps(key, ensure_ascii=False)}]"


def _check_text(path: str, text: str) -> str:
    # PostgreSQL's jsonb cannot hold NUL, and lone surrogates cannot be encoded as UTF-8:
    # refuse both on every database so a payload means the same everywhere.
    if "\x00" in text:
        raise PayloadError(path, "text contains a NUL character (\\u0000), which JSON columns cannot store")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise PayloadError(path, "text contains a lone surrogate and is not valid UTF-8") from None
    return text


def _number_from_decimal(path: str, value: Decimal) -> int | float:
    if not value.is_finite():
        raise PayloadError(path, f"Decimal {value} is not a finite number")
    if value == value.to_integral_value():
        return _check_int(path, int(value))
    result = float(value)
    if not math.isfinite(result):
        raise PayloadError(path, f"Decimal {value} is too large for a JSON number")
    return result


def _check_int(path: str, value: int) -> int:
    try:
        str(value)
    except ValueError:  # more digits than Python will print (sys.set_int_max_str_digits)
        raise PayloadError(path, "integer has too many digits") from None
    return value


def normalize_payload(value: Any, *, path: str = "payload", _depth: int = 0) -> JSONValue:
    """Return ``value`` as plain JSON data, or raise ``PayloadError``.

    Decimal -> int (when integral) or float; datetime/date/time -> ISO 8601 text;
    UUID -> text; Enum -> its value; tuple, set, frozenset -> list.
    """
    if _depth > MAX_DEPTH:
        raise PayloadError(path, f"nested deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, enum.Enum):
        return normalize_payload(value.value, path=path, _depth=_depth + 1)
    if isinstance(value, int):
        return _check_int(path, int(value))
    if isinstance(value, float):
        if not math.isfinite(value):
            raise PayloadError(path, f"{value} is not a finite number (JSON has no NaN or Infinity)")
        return float(value)
    if isinstance(value, str):
        return _check_text(path, str(value))
    if isinstance(value, Decimal):
        return _number_from_decimal(path, value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Mapping):
        result: dict[str, JSONValue] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise PayloadError(path, f"key {key!r} is a {type(key).__name__}; JSON object keys must be text")
            key_path = _key_path(path, key)
            _check_text(key_path, key)
            result[key] = normalize_payload(item, path=key_path, _depth=_depth + 1)
        return result
    if isinstance(value, (list, tuple)):
        return [normalize_payload(item, path=f"{path}[{i}]", _depth=_depth + 1) for i, item in enumerate(value)]
    if isinstance(value, (set, frozenset)):
        items = [normalize_payload(item, path=f"{path}[{i}]", _depth=_depth + 1) for i, item in enumerate(value)]
        try:
            return sorted(items)  # type: ignore[type-var]
        except TypeError:
            return items
    raise PayloadError(path, f"a {type(value).__name__} has no JSON form; convert it before publishing")


# Built once: ``json.dumps`` with options builds a new encoder on every call.
_encode_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


class _Unusual(Exception):
    """Raised by the fast path for anything it does not handle itself."""


def _fast_normalize(value: Any, depth: int) -> JSONValue:
    """``normalize_payload`` for the common shapes, without tracking paths (they cost more than the work).

    Anything else, and anything wrong, raises ``_Unusual``: the full walk then
    normalises it or names where the problem is.
    """
    kind = type(value)
    if kind is str:
        if "\x00" in value:
            raise _Unusual
        return value  # type: ignore[no-any-return]
    if kind is dict:
        if depth >= MAX_DEPTH:
            raise _Unusual
        result: dict[str, JSONValue] = {}
        for key, item in value.items():
            if type(key) is not str or "\x00" in key:
                raise _Unusual
            result[key] = _fast_normalize(item, depth + 1)
        return result
    if kind is int or kind is bool or value is None:
        return value  # type: ignore[no-any-return]
    if kind is float:
        if not math.isfinite(value):
            raise _Unusual
        return value  # type: ignore[no-any-return]
    if kind is Decimal:
        if not value.is_finite():
            raise _Unusual
        return int(value) if value == value.to_integral_value() else float(value)
    if kind is list:
        if depth >= MAX_DEPTH:
            raise _Unusual
        return [_fast_normalize(item, depth + 1) for item in value]
    raise _Unusual


def encode_payload(value: Any, *, max_bytes: int | None = DEFAULT_MAX_PAYLOAD_BYTES) -> tuple[JSONValue, str]:
    """Normalise ``value`` and check its encoded size; returns (data, its compact JSON text)."""
    try:
        data = _fast_normalize(value, 0)
        encoded = _encode_json(data)
        utf8 = encoded.encode("utf-8")  # refuses lone surrogates
    except (_Unusual, ValueError, UnicodeEncodeError, RecursionError):
        data = normalize_payload(value)  # the full walk: converts, or raises naming the path
        try:
            encoded = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        except (ValueError, RecursionError) as exc:  # pragma: no cover - normalize_payload prevents these
            raise PayloadError("payload", str(exc)) from exc
        utf8 = encoded.encode("utf-8")
    if max_bytes is not None and len(utf8) > max_bytes:
        raise PayloadError("payload", f"is {len(utf8)} bytes encoded, over the limit of {max_bytes} bytes")
    return data, encoded

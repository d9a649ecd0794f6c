"""Text shown to a person, made visible: the one place that decides how stored text looks.

Event fields hold whatever producers and receivers sent: an ``error_message`` is often a
webhook receiver's response body verbatim, an ``entity_id`` whatever the application chose.
Printed raw, an ESC sequence in them recolours, clears or retitles the operator's terminal,
a ``\\r`` overwrites the line, U+202E reverses what follows and a zero-width character hides
a difference between two ids. So the CLI and the dashboard never show stored or typed text
as it is: they show ``visible(text)``, in which every character that is not plainly visible
is replaced by the escape Python would write for it:

- ``\\n``, ``\\r``, ``\\t`` for those three, ``\\x1b``-style for every other C0 and C1 control
  and DEL;
- ``\\u202e``-style (``\\U000e0001`` beyond the BMP) for format characters (bidi controls,
  zero-width spaces and joiners, the BOM, soft hyphens, tags), line and paragraph separators,
  lone surrogates (undecodable bytes given through ``surrogateescape``) and unassigned code
  points.

Everything else, spaces and every script included, is shown as it is. A backslash is not
doubled, so ``C:\\temp`` stays readable; the JSON output (``--json``, ``visible_json``) is
the exact form when it matters. Markup (rich's ``[bold]``, Markdown) is a separate concern
handled where it is rendered: the CLI prints ``rich.text.Text`` objects, the dashboard uses
code spans, ``st.code`` and data frames (``outbox_admin.ui.components``).
"""

from __future__ import annotations

import json
import unicodedata
from typing import Any

__all__ = ["error_line", "has_surrogates", "invisible", "time_text", "visible", "visible_json"]

#: Unicode categories shown as escapes: controls, format characters, surrogates, unassigned,
#: line and paragraph separators. Spaces (Zs) and private-use characters (Co) are shown as is.
HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Cn", "Zl", "Zp"})
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def invisible(char: str) -> bool:
    """Whether ``visible`` replaces this one character by an escape."""
    return not char.isprintable() and unicodedata.category(char) in HIDDEN_CATEGORIES


def _escape(code: int) -> str:
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _json_escape(code: int) -> str:
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000  # JSON spells characters beyond the BMP as a surrogate pair
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


class _Table(dict[int, str | int]):
    """A ``str.translate`` table filled on first sight of each character (C speed afterwards)."""

    def __init__(self, escape: Any, short: dict[str, str], keep_below: int = 0) -> None:
        super().__init__()
        self._escape = escape
        self._short = short
        self._keep_below = keep_below

    def __missing__(self, code: int) -> str | int:
        char = chr(code)
        value: str | int = code
        if code >= self._keep_below and invisible(char):
            value = self._short.get(char) or self._escape(code)
        self[code] = value
        return value


_VISIBLE = _Table(_escape, _SHORT)
# json.dumps has escaped every C0 control inside strings: the ones left are its own indentation.
_JSON = _Table(_json_escape, {}, keep_below=0x20)


def visible(value: object) -> str:
    """``str(value)`` with every control, format or otherwise invisible character escaped.

    The result is one line (newlines become ``\\n``) and safe to print to a terminal or to put in
    a table cell; use it for any text that came from a person or from the database.
    """
    text = value if isinstance(value, str) else str(value)
    return text if text.isprintable() else text.translate(_VISIBLE)


def visible_json(data: Any, **dumps: Any) -> str:
    """``json.dumps(data, ensure_ascii=False, **dumps)`` with invisible characters as ``\\uXXXX``.

    JSON already escapes C0 controls; this also escapes DEL, C1 controls, bidi and other format
    characters, separators and lone surrogates, so the text is safe to print, stays valid JSON
    and decodes to exactly ``data``.
    """
    text = json.dumps(data, ensure_ascii=False, **dumps)
    return text if text.isprintable() else text.translate(_JSON)


def has_surrogates(text: str) -> bool:
    """Whether ``text`` holds lone surrogates: bytes that were not UTF-8, kept by ``surrogateescape``
    (``sys.argv``, ``os.environ``) or written as ``\\ud800`` in JSON. No database can store them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def error_line(exc: BaseException, limit: int = 300) -> str:
    """One short line for an error shown to a person, never a traceback.

    A database driver's error is given by its own first line (SQLAlchemy's wrapper adds the
    statement, its parameters and a link); the full error belongs in the log.
    """
    shown: BaseException = getattr(exc, "orig", None) or exc
    first = next((line.strip() for line in str(shown).splitlines() if line.strip()), "")
    text = f"{type(shown).__name__}: {first}" if first else type(shown).__name__
    return visible(text if len(text) <= limit else text[: limit - 1] + "…")


def time_text(value: Any, *, iso: bool = False) -> str:
    """A time as people read it everywhere: UTC, to the millisecond, ``2026-12-01 22:37:36.123``
    (``iso=True``: ``2026-12-01T22:37:36.123Z``, for exports); empty for none."""
    import pandas as pd

    if value is None or pd.isna(value):
        return ""
    stamp = pd.Timestamp(value)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    text = stamp.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    return text.replace(" ", "T") + "Z" if iso else text

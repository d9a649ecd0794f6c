"""Event-type glob patterns (``PROJECT.*``) as each database matches them.

Handlers are routed with ``fnmatch.fnmatchcase`` patterns: ``*`` any text, ``?``
one character, ``[AB]`` / ``[!AB]`` one of / none of. When the dispatcher must
leave events unclaimed by type (a handler's circuit breaker is open), the same
patterns have to be matched by the database: SQLite's ``GLOB`` is the same
language except that it negates a set with ``^``; PostgreSQL gets an anchored
regular expression. Both translations are tested against ``fnmatchcase``.

Patterns a person types (pauses: ``admin.pause``) are checked first by
``check_pattern``, since ``fnmatch`` accepts anything and a typo would silently
pause nothing.
"""

from __future__ import annotations

import fnmatch
import unicodedata

from .errors import FilterError
from .payload import text_fault

#: A stored pattern fits the event type column (255 characters), and so does any type it must match.
MAX_PATTERN_LENGTH = 255


def _bracket_end(pattern: str, start: int) -> int:
    """Index of the ``]`` closing the set opened at ``pattern[start]``, or -1 (then ``[`` is literal)."""
    i = start + 1
    if i < len(pattern) and pattern[i] == "!":
        i += 1
    if i < len(pattern) and pattern[i] == "]":  # a leading ] is a member, as in fnmatch
        i += 1
    end = pattern.find("]", i)
    return end


def glob_for_sqlite(pattern: str) -> str:
    """``pattern`` in SQLite ``GLOB`` syntax (same meaning as ``fnmatchcase``)."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "[":
            end = _bracket_end(pattern, i)
            if end < 0:
                out.append("[[]")  # an unclosed [ matches itself
                i += 1
                continue
            body = pattern[i + 1 : end]
            if body.startswith("!"):
                body = "^" + body[1:]
            elif body.startswith("^"):  # fnmatch: a literal ^; GLOB would read a leading ^ as "not"
                if len(body) == 1:
                    out.append("^")  # a set of just ^ is the character itself
                    i = end + 1
                    continue
                body = body[1:] + "^"
            out.append(f"[{body}]")
            i = end + 1
            continue
        out.append(char)
        i += 1
    return "".join(out)


def glob_for_postgres(pattern: str) -> str:
    """``pattern`` as an anchored PostgreSQL regular expression (same meaning as ``fnmatchcase``).

    A set (``[...]``) is translated by ``fnmatch.translate`` itself, so empty and
    reversed ranges mean what they mean there; its escapes are valid in PostgreSQL's
    advanced regular expressions too.
    """
    out: list[str] = ["^"]
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        elif char == "[":
            end = _bracket_end(pattern, i)
            if end < 0:
                out.append("\\[")
            else:
                out.append(_postgres_set(_set_regex(pattern[i : end + 1])))
                i = end + 1
                continue
        else:
            out.append(char if char.isalnum() else "\\" + char)
        i += 1
    out.append("$")
    return "".join(out)


def _postgres_set(regex: str) -> str:
    """A set of ``_set_regex`` with every ``[`` inside it escaped: in PostgreSQL's regular expressions
    ``[.``, ``[=`` and ``[:`` inside a set open a collating element or a class (``[?[.]`` is refused),
    while Python reads them as plain characters."""
    if not regex.startswith("["):
        return regex
    out, i = ["["], 1
    while i < len(regex):
        char = regex[i]
        if char == "\\":  # an escape fnmatch wrote: kept with the character it escapes
            out.append(regex[i : i + 2])
            i += 2
            continue
        out.append("\\[" if char == "[" else char)
        i += 1
    return "".join(out)


def _set_regex(bracket: str) -> str:
    """``[...]`` as fnmatch's regex for it: ``[...]``, ``.`` (``[!]`` sets) or ``(?!)`` (matches nothing)."""
    translated = fnmatch.translate(bracket)  # "(?s:<set>)\\Z"
    return translated.removeprefix("(?s:").removesuffix(")\\Z")


def check_pattern(pattern: object, *, field: str = "pattern") -> str:
    """``pattern`` without surrounding blanks, or ``FilterError`` saying what is wrong with it.

    A pattern is 1 to 255 characters with no blank, control or invisible character
    (no event type holds one), and every ``[`` opens a set that is closed and can
    match a character: ``fnmatch`` would read an unclosed ``[`` as itself and an
    empty range (``[z-a]``) as nothing, which is never what a person pausing meant.
    """
    if not isinstance(pattern, str):
        raise FilterError(field, f"must be text, not {type(pattern).__name__}")
    if len(pattern) > 4 * MAX_PATTERN_LENGTH:  # checked before any walk over the text
        raise FilterError(field, f"is {len(pattern):,} characters, over the limit of {MAX_PATTERN_LENGTH}")
    text = pattern.strip()
    if not text:
        raise FilterError(field, "is empty: give an event type or a glob such as PROJECT.* or *")
    if len(text) > MAX_PATTERN_LENGTH:
        raise FilterError(field, f"is {len(text):,} characters, over the limit of {MAX_PATTERN_LENGTH}")
    fault = text_fault(text)
    if fault:
        raise FilterError(field, fault)
    for char in text:
        if char.isspace() or unicodedata.category(char) in ("Cc", "Cf"):
            raise FilterError(field, f"{text!r} holds {char!r}, which no event type holds")
    i = 0
    while i < len(text):
        if text[i] == "[":
            end = _bracket_end(text, i)
            if end < 0:
                raise FilterError(field, f"{text!r}: the [ at position {i + 1} is never closed (a literal [ is [[])")
            if _set_regex(text[i : end + 1]) == "(?!)":
                raise FilterError(field, f"{text!r}: the set {text[i : end + 1]} matches no character")
            i = end
        i += 1
    return text


def matches_everything(pattern: str) -> bool:
    """True for ``*``, ``**``, ...: every event type matches, so a dispatcher need not ask the database."""
    return bool(pattern) and set(pattern) == {"*"}

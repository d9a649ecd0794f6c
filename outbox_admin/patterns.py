"""Event-type glob patterns (``PROJECT.*``) as each database matches them.

Handlers are routed with ``fnmatch.fnmatchcase`` patterns: ``*`` any text, ``?``
one character, ``[AB]`` / ``[!AB]`` one of / none of. When the dispatcher must
leave events unclaimed by type (a handler's circuit breaker is open), the same
patterns have to be matched by the database: SQLite's ``GLOB`` is the same
language except that it negates a set with ``^``; PostgreSQL gets an anchored
regular expression. Both translations are tested against ``fnmatchcase``.
"""

from __future__ import annotations

import fnmatch


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
                out.append(_set_regex(pattern[i : end + 1]))
                i = end + 1
                continue
        else:
            out.append(char if char.isalnum() else "\\" + char)
        i += 1
    out.append("$")
    return "".join(out)


def _set_regex(bracket: str) -> str:
    """``[...]`` as fnmatch's regex for it: ``[...]``, ``.`` (``[!]`` sets) or ``(?!)`` (matches nothing)."""
    translated = fnmatch.translate(bracket)  # "(?s:<set>)\\Z"
    return translated.removeprefix("(?s:").removesuffix(")\\Z")

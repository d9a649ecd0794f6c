"""Collecting the code examples of README.md and docs/**/*.md, and running a page's Python blocks.

The rules for writers are in docs/contributing.md ("Examples run in the tests"); the test is
tests/test_docs_examples.py. Run as ``python -m tests.docs_support`` it reads a JSON list of blocks
(``path``, ``line``, ``source``) on stdin and runs them in order in one namespace, in its working
directory: a separate process per page, so what an example registers, starts or configures (event
types, logging, threads) never leaks into other tests.
"""

from __future__ import annotations

import json
import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

#: A block whose first line is this comment is not run; the reason is mandatory.
NOT_RUN = re.compile(r"#\s*not run:\s*(?P<reason>\S.*)")
#: A page with this HTML comment (invisible once rendered) runs on a fresh, empty PostgreSQL database.
POSTGRES_PAGE = "<!-- examples: postgres -->"
#: A shell block right after this HTML comment is run, line by line, after the page's Python blocks.
RUN_SHELL = "<!-- examples: run -->"

_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)


@dataclass(frozen=True)
class Block:
    """One fenced code block: its page, the line of its first code line (1-based), language and code."""

    path: Path
    line: int
    lang: str
    source: str
    #: A shell block marked to run (``RUN_SHELL`` on the line before its fence).
    run: bool = False

    @property
    def not_run_reason(self) -> str | None:
        first = self.source.lstrip("\n").split("\n", 1)[0].strip()
        match = NOT_RUN.fullmatch(first)
        return match["reason"].strip() if match else None

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def pages() -> list[Path]:
    """README.md, CONTRIBUTING.md (which docs/contributing.md includes) and every Markdown page of the
    docs site, in a stable order."""
    return [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted(DOCS.rglob("*.md"))]


def blocks(path: Path) -> list[Block]:
    """The page's fenced blocks in order; indented ones (inside a list item) are dedented."""
    text = path.read_text(encoding="utf-8")
    found = []
    for match in _FENCE.finditer(text):
        indent = match["indent"]
        body = match["body"]
        if indent:
            body = "".join(line.removeprefix(indent) for line in body.splitlines(keepends=True))
        line = text.count("\n", 0, match.start("body")) + 1
        before = text[: match.start()].rstrip().rsplit("\n", 1)[-1].strip()
        found.append(Block(path, line, match["lang"].lower(), body, run=before == RUN_SHELL))
    return found


def python_blocks(path: Path) -> list[Block]:
    return [b for b in blocks(path) if b.lang in ("python", "py")]


def run(entries: list[dict[str, object]]) -> None:
    """Run the blocks in order in one namespace; a traceback names the page and its line."""
    # A real module, so what looks its class's module up (SQLAlchemy's annotations, dataclasses) finds it.
    module = types.ModuleType("__docs__")
    sys.modules[module.__name__] = module
    namespace = module.__dict__
    for entry in entries:
        source, line = str(entry["source"]), int(str(entry["line"]))
        # Padding puts each statement on its line of the Markdown page, so a traceback points there.
        code = compile("\n" * (line - 1) + source, str(entry["path"]), "exec")
        exec(code, namespace)


if __name__ == "__main__":
    run(json.load(sys.stdin))

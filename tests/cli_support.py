"""Running ``outbox-admin`` in this process, as the console script does."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from outbox_admin import cli


def run_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``outbox-admin ARGS`` through ``cli.main`` (the console script's function): (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["outbox-admin", *args])
    code: Any = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return (0 if code is None else code), out.out, out.err

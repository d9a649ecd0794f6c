"""Running ``outbox-admin`` in this process, as the console script does."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
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


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without its ``OUTBOX_*`` settings (a developer's own must not reach a
    test's subprocess), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    env.update(extra)
    return env


def run_entry_point(args: Sequence[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``python -m outbox_admin ARGS`` in its own process (the real entry point), text in UTF-8."""
    return subprocess.run(
        [sys.executable, "-m", "outbox_admin", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=60,
    )

"""Headless Chromium for the browser tests: Debian's binary, driven by Playwright.

Playwright's own browser download does not work on these machines, so the tests launch
``/usr/bin/chromium`` (``$OUTBOX_TEST_CHROMIUM``) with the flags below; a machine without
it skips the browser tests (and fails them under ``OUTBOX_REQUIRE_SERVICES=1``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .services import unavailable

CHROMIUM = os.environ.get("OUTBOX_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextmanager
def chromium() -> Iterator[Any]:
    """A launched headless Chromium (a Playwright ``Browser``), closed afterwards."""
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
        unavailable("Chromium", f"{CHROMIUM} not found (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()

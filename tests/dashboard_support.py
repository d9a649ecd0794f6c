"""What the dashboard's AppTest tests share."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def keep_main_module() -> Iterator[None]:
    """AppTest replaces ``__main__`` with its script; restore it, or later spawn-based tests break."""
    main = sys.modules.get("__main__")
    yield
    if main is not None:
        sys.modules["__main__"] = main


def linked_ids(links: object) -> list[str]:
    """The event ids of a table's link column (``events?id=...``)."""
    from urllib.parse import parse_qs, urlsplit

    return [parse_qs(urlsplit(str(link)).query)["id"][0] for link in links]  # type: ignore[attr-defined]

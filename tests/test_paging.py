"""Pages of events under any filter (``analytics.events_page``, ``events_frame``), on SQLite and PostgreSQL.

A filter no index serves is first tried on the newest events, then by one scan that also
counts; either way the page must be exactly the one a plain sort of the matches gives.
``FIRST_LOOK`` is made small so that both ways run on a few dozen events.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, event, insert

from outbox_admin import analytics
from outbox_admin.models import DEFAULT_TABLES

EVENTS = DEFAULT_TABLES.events
T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)


def rows(count: int) -> list[dict[str, Any]]:
    """Events a second apart; the 5 oldest mention 'rare', every third one 'common'; two share a time."""
    out = []
    for i in range(count):
        error = "rare: timeout" if i < 5 else ("common: refused" if i % 3 == 0 else None)
        created = T0 + dt.timedelta(seconds=i if i != 1 else 0)  # events 0 and 1 tie: the id breaks it
        out.append(
            {
                "id": f"e{i:04d}",
                "org_id": "org",
                "event_type": "PROJECT.ARCHIVED" if i % 7 == 0 else "PROJECT.UPDATED",
                "entity_type": "Project",
                "entity_id": str(i),
                "payload": {},
                "status": "FAILED" if error else "COMPLETED",
                "retry_count": 1 if error else 0,
                "error_message": error,
                "created_at": created,
                "available_at": created,
            }
        )
    return out


def expected(data: list[dict[str, Any]], keep: Any, offset: int, limit: int) -> list[str]:
    matching = sorted((r for r in data if keep(r)), key=lambda r: (r["created_at"], r["id"]), reverse=True)
    return [r["id"] for r in matching[offset : offset + limit]]


@pytest.fixture
def data(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    monkeypatch.setattr(analytics, "FIRST_LOOK", 10)
    monkeypatch.setattr(analytics, "LOOK_PER_ROW", 1)
    found = rows(60)
    with engine.begin() as conn:
        conn.execute(insert(EVENTS), found)
    return found


@pytest.fixture
def scans(engine: Engine) -> Iterator[list[str]]:
    """The statements that scanned and counted (``count(*) OVER ()``), as they run."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "OVER ()" in statement:
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    yield seen
    event.remove(engine, "before_cursor_execute", record)


CASES = {
    "rare search (the scan)": ({"search": "RARE"}, lambda r: "rare" in (r["error_message"] or "")),
    "common search (the newest first)": ({"search": "common"}, lambda r: "common" in (r["error_message"] or "")),
    "no match": ({"search": "nothing like it"}, lambda r: False),
    "type": ({"event_type": "PROJECT.ARCHIVED"}, lambda r: r["event_type"] == "PROJECT.ARCHIVED"),
    "status (an index)": ({"status": "FAILED"}, lambda r: r["status"] == "FAILED"),
    "type and status": (
        {"event_type": "PROJECT.ARCHIVED", "status": "FAILED"},
        lambda r: r["event_type"] == "PROJECT.ARCHIVED" and r["status"] == "FAILED",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize(("page", "size"), [(0, 3), (1, 3), (3, 2), (0, 50)])
def test_every_page_is_the_sorted_matches(engine: Engine, data: list[dict[str, Any]], case: str, page: int, size: int):
    loose, keep = CASES[case]
    total = sum(1 for r in data if keep(r))
    pages = max(1, -(-total // size))
    found = analytics.events_page(engine, page=page, page_size=size, **loose)
    assert (found.total, found.pages) == (total, pages)
    shown = min(page, pages - 1)  # past the end: the last page
    assert found.page == shown
    assert list(found.frame["id"]) == expected(data, keep, shown * size, size)
    assert list(analytics.events_frame(engine, limit=size, offset=page * size, **loose)["id"]) == expected(
        data, keep, page * size, size
    )
    assert analytics.event_ids(engine, limit=size, **loose) == expected(data, keep, 0, size)


def test_a_page_past_the_last_match_of_a_scan_is_the_last_page(engine: Engine, data: list[dict[str, Any]]) -> None:
    found = analytics.events_page(engine, search="rare", page=40, page_size=2)
    assert (found.total, found.pages, found.page) == (5, 3, 2)
    assert list(found.frame["id"]) == ["e0000"]


def test_rare_matches_are_found_by_one_scan_that_counts_and_common_ones_among_the_newest(
    engine: Engine, data: list[dict[str, Any]], scans: list[str]
) -> None:
    assert analytics.events_page(engine, search="rare", page_size=3).total == 5
    assert len(scans) == 1  # the newest ten held none: one scan found the page and counted
    analytics.events_page(engine, search="common", page_size=3)
    analytics.events_page(engine, status="FAILED", page_size=3)
    assert len(scans) == 1  # found among the newest; the index walk for a status


TRICKY = [
    "webhook: timeout after 30s for 0x1f",
    "webhook: timeout after 5s for 0xFF",
    "100% done_ but \\ failed <n> times",
    "100% done_ but \\ failed 7 times",
    "100x done- but / failed 7 times",  # differs only where the pattern must not be loose
    "id 12345678-1234-1234-1234-123456789abc refused",
    "ID 12345678-1234-1234-1234-123456789ABC REFUSED",
]


def test_an_error_group_matches_exactly_the_messages_that_normalise_to_it(engine: Engine) -> None:
    from outbox_admin.filters import normalize_error

    events = rows(len(TRICKY))
    for row, message in zip(events, TRICKY, strict=True):
        row.update(error_message=message, status="FAILED")
    with engine.begin() as conn:
        conn.execute(insert(EVENTS), events)
    for message in TRICKY:
        group = normalize_error(message)
        expected_ids = sorted(r["id"] for r in events if normalize_error(r["error_message"]) == group)
        assert sorted(analytics.event_ids(engine, error_group=group)) == expected_ids, group
        assert analytics.count_events(engine, error_group=group) == len(expected_ids)


def test_a_page_of_error_groups_comes_with_their_number(engine: Engine, data: list[dict[str, Any]]) -> None:
    for order in ("events", "failed"):
        for offset in (0, 1, 5):
            page = analytics.error_groups_page(engine, limit=1, offset=offset, order=order)
            assert page.total == analytics.count_error_groups(engine) == 2  # "rare: timeout", "common: refused"
            assert page.frame.equals(analytics.error_summary(engine, limit=1, offset=offset, order=order))

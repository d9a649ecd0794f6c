"""The dashboard shows stored and typed text as data (issue 12, point 3), through AppTest on real
SQLite files: Markdown, Streamlit's ``:red[...]``/``:emoji:``, HTML and control characters in event
fields, error messages, payloads and filters appear literally, never interpreted.

Markdown elements are checked on their source: the text must sit, made visible, inside a code
span (where CommonMark reads nothing), and none of it outside one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from outbox_admin import Dispatcher, analytics, publish_outbox_event
from outbox_admin.display import visible, visible_json
from outbox_admin.ui.components import literal, table_key

from .dashboard_support import dashboard_database, keep_main_module, page  # noqa: F401 - an autouse fixture

TIMEOUT = 60
MARKDOWN = "**b** _i_ [x](https://evil.example) :red[r] :smile: $x$ <b>h</b> `t` ``u"
CONTROLS = "\x1b[31m\u202e\r\n"
ENTITY_ID = "p-" + MARKDOWN + CONTROLS
ORG_ID = "org `x` **o**\u200b"
ERROR = "receiver said: " + MARKDOWN + CONTROLS + "<a href='https://evil.example'>retry</a>"
PAYLOAD = {"note": MARKDOWN + CONTROLS, "**k**\u202e": [1, "<br>"]}
CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.*?)(?<!`)\1(?!`)", re.DOTALL)
RAW_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u200b\u202e]")


def code_spans(markdown: str) -> list[str]:
    """The contents of the inline code spans of ``markdown`` (CommonMark: one padding space stripped)."""
    spans = []
    for match in CODE_SPAN.finditer(markdown):
        text = match.group(2)
        if len(text) >= 2 and text[0] == text[-1] == " " and text.strip():
            text = text[1:-1]
        spans.append(text)
    return spans


def assert_shown_literally(markdown: str, text: str) -> None:
    """``text`` is in ``markdown`` only as a code span holding ``visible(text)``."""
    assert visible(text) in code_spans(markdown), (markdown, visible(text))
    outside = CODE_SPAN.sub("", markdown)
    for fragment in ("**", "](", ":red[", ":smile:", "$x$", "<b>", "<a "):
        assert fragment not in outside, (fragment, markdown)
    assert not RAW_CONTROLS.search(markdown)


def frame_of(element: Any) -> pd.DataFrame:
    value = element.value
    return getattr(value, "data", value)


@pytest.fixture
def engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    yield from dashboard_database(tmp_path, monkeypatch)


def receiver(event: Any) -> None:
    """A sink whose receiver answers with Markdown, HTML and control characters in its error body."""
    raise RuntimeError(ERROR)


@pytest.fixture
def failed(engine: Any) -> str:
    """A FAILED event whose every text field is hostile."""
    with engine.begin() as conn:
        event_id = publish_outbox_event(
            conn,
            org_id=ORG_ID,
            event_type="PROJECT.UPDATED",
            entity_type="Project",
            entity_id=ENTITY_ID,
            payload=PAYLOAD,
        ).id
    with Dispatcher(engine, [receiver], max_attempts=1) as dispatcher:
        dispatcher.drain(max_seconds=None)
    stored = analytics.get_event(engine, event_id)
    assert stored is not None and stored["status"] == "FAILED" and ERROR in stored["error_message"]
    return event_id


def test_the_event_detail_shows_stored_text_as_data(engine: Any, failed: str) -> None:
    at = page("events").run()
    table = frame_of(at.dataframe[0])
    assert list(table["entity"]) == ["Project/" + visible(ENTITY_ID)]
    assert list(table["org_id"]) == [visible(ORG_ID)]
    assert not RAW_CONTROLS.search(table["error_message"][0]) and "\\x1b[31m\\u202e\\r\\n" in table["error_message"][0]
    at.session_state[table_key("events_table", [failed])] = {"selection": {"rows": [0], "columns": [], "cells": []}}
    at.run()
    assert not at.exception

    [selected] = [m.value for m in at.markdown if m.value.startswith("Selected:")]
    assert selected == f"Selected: [{literal(failed)}](events?id={failed})"
    [title] = [h.value for h in at.subheader if "Project/" in h.value]
    assert_shown_literally(title, f"PROJECT.UPDATED Project/{ENTITY_ID}")
    [line] = [m.value for m in at.markdown if m.value.startswith("Status ")]
    assert_shown_literally(line, ORG_ID)
    assert failed in code_spans(line)

    [payload] = [c for c in at.code if c.language == "json"]
    assert payload.value == visible_json(PAYLOAD, indent=2)
    assert json.loads(payload.value) == PAYLOAD and not RAW_CONTROLS.search(payload.value.replace("\n", ""))

    fields = frame_of(at.dataframe[1]).set_index("field")["value"]
    assert fields["entity_id"] == visible(ENTITY_ID) and fields["org_id"] == visible(ORG_ID)
    assert fields["error_message"] == visible("receiver: RuntimeError: " + ERROR)
    timeline = frame_of(at.dataframe[2])
    assert list(timeline["error_message"].dropna()) == [visible("receiver: RuntimeError: " + ERROR)]

    [chart] = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    hover = " ".join(t for trace in chart["data"] for t in trace.get("hovertext", []))
    assert "&lt;a href='https://evil.example'&gt;retry&lt;/a&gt;" in hover and "<a " not in hover
    assert "\\x1b[31m" in hover and "\x1b" not in hover


def test_the_failures_page_shows_the_error_group_as_data(engine: Any, failed: str) -> None:
    groups = analytics.error_summary(engine, limit=50)
    [group] = list(groups["error_group"])
    at = page("failures").run()
    assert list(frame_of(at.dataframe[0])["error_group"]) == [visible(group)]
    at.session_state[table_key("groups", groups["error_group"])] = {
        "selection": {"rows": [0], "columns": [], "cells": []}
    }
    at.run()
    assert not at.exception
    assert [c.value for c in at.main.code] == [visible(group)]  # the sidebar's is the database URL
    dead = frame_of(at.dataframe[1])
    assert list(dead["entity_id"]) == [visible(ENTITY_ID)] and list(dead["org_id"]) == [visible(ORG_ID)]
    for chart in at.get("plotly_chart"):
        spec = chart.proto.spec
        assert "<b>h</b>" not in spec and "\\u001b" not in spec  # plotly would render the tag, or the ESC raw


def test_a_refused_publish_echoes_the_payload_path_as_data(engine: Any) -> None:
    at = page("publish").run()
    at.text_area[0].set_value('{"**x** <b>y</b> :smile: \\u202e": NaN}')
    [button] = [b for b in at.button if b.label == "Publish"]
    button.click().run()
    assert not at.exception
    [error] = [e.value for e in at.error]
    assert error.startswith("Nothing was published: `")
    [span] = code_spans(error)
    assert "**x** <b>y</b> :smile: \\u202e" in span and "not a finite number" in span
    assert_shown_literally(error, span)
    assert analytics.count_events(engine) == 0


def test_a_bad_filter_in_the_link_is_echoed_as_data(engine: Any) -> None:
    at = page("events")
    at.query_params["since"] = "**yesterday** :smile: \x1b[2J"
    at.run()
    assert not at.exception
    [error] = [e.value for e in at.error]
    assert error.startswith("Ignoring the filter in the link: `")
    [span] = code_spans(error)
    assert "'**yesterday** :smile: \\x1b[2J'" in span
    assert_shown_literally(error, span)


def test_a_bad_database_url_in_the_sidebar_is_echoed_as_data(engine: Any) -> None:
    at = page("overview").run()
    at.sidebar.text_input[0].set_value("**not** a url :smile:")
    [connect] = [b for b in at.sidebar.button if b.label == "Connect"]
    connect.click().run()
    assert not at.exception
    [error] = [e.value for e in at.sidebar.error]
    [span] = code_spans(error)
    assert "**not** a url :smile:" in span
    assert_shown_literally(error, span)


def test_literal_fences_text_with_backticks_and_spaces() -> None:
    assert literal("a") == "`a`"
    assert literal("a `b` c") == "``a `b` c``"
    assert literal("`x") == "`` `x ``"
    assert literal(" x") == "`  x `" and code_spans(literal(" x")) == [" x"] and code_spans(literal(" x ")) == [" x "]
    assert literal("a\x1b\n") == "`a\\x1b\\n`"
    assert literal("") == "" and literal("  ") == "`  `"
    for text in ("``u", "a ``` b", "` ` `", MARKDOWN):
        assert code_spans(literal(text)) == [text]

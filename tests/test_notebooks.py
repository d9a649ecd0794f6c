"""The notebooks in ``notebooks/`` run top to bottom and produce the right numbers.

Each one is executed with nbclient in a kernel of this environment (a ``python3``
kernelspec pointing at ``sys.executable``, written to a temporary ``JUPYTER_PATH``,
so a fresh virtualenv needs no ``ipykernel install``), against a fresh database
the test prepares, with parameters injected after the cell tagged ``parameters``.
The test then reads values back from the kernel and checks them against the
database. The committed notebooks must be clean: no outputs, no execution counts.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import nbformat
import pandas as pd
import pytest
from sqlalchemy.orm import Session

from outbox_admin import analytics, demo, make_engine, notebook

from .notebook_support import CLEAN_METADATA, clean, execute, notebook_paths, parameters_index, problems

EXPECTED = [
    "01_quickstart.ipynb",
    "02_retries_and_errors.ipynb",
    "03_requeue_failures.ipynb",
    "04_connect_your_database.ipynb",
]
NOTEBOOKS = {path.name: path for path in notebook_paths()}


@pytest.fixture(scope="session")
def jupyter_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Jupyter data folder holding a ``python3`` kernelspec for ``sys.executable``."""
    from ipykernel.kernelspec import install

    prefix = tmp_path_factory.mktemp("jupyter")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("JUPYTER_PLATFORM_DIRS", "1")  # the new platformdirs paths, without the migration warning
        install(prefix=str(prefix), kernel_name="python3")
    return prefix / "share" / "jupyter"


@pytest.fixture
def python3_kernel(jupyter_data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """That kernelspec, found first through ``JUPYTER_PATH`` for this test."""
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    monkeypatch.setenv(
        "JUPYTER_PATH", os.pathsep.join(filter(None, [str(jupyter_data_dir), os.environ.get("JUPYTER_PATH")]))
    )
    return jupyter_data_dir / "kernels" / "python3"


@pytest.fixture
def run(python3_kernel: Path, tmp_path: Path):
    def run(name: str, parameters: dict[str, Any], collect: dict[str, str]) -> tuple[Any, dict[str, Any]]:
        work = tmp_path / "work"
        work.mkdir(exist_ok=True)
        nb, values = execute(
            NOTEBOOKS[name], parameters, {**collect, "python": "__import__('sys').executable"}, cwd=work
        )
        assert values["python"] == sys.executable  # the kernel runs in this environment
        assert not list(work.iterdir())  # nothing written to the working folder
        assert_quiet(nb)
        return nb, values

    return run


def assert_quiet(nb: Any) -> None:
    """No warnings or errors printed by any cell."""
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            assert output.output_type != "error", output
            if output.output_type == "stream" and output.name == "stderr":
                pytest.fail(f"cell printed to stderr:\n{cell.source}\n---\n{output.text}")


def outputs_of(nb: Any, snippet: str) -> list[Any]:
    (cell,) = [c for c in nb.cells if c.cell_type == "code" and snippet in c.source]
    return cell.outputs


def figures(nb: Any) -> list[dict[str, Any]]:
    """The plotly figures the notebook showed, as plotly JSON."""
    mime = "application/vnd.plotly.v1+json"
    return [o.data[mime] for c in nb.cells for o in c.get("outputs", []) if mime in o.get("data", {})]


def assert_charts(nb: Any, count: int) -> None:
    """``count`` figures, each with data (not the empty-state placeholder)."""
    shown = figures(nb)
    assert len(shown) == count
    for figure in shown:
        assert figure["data"] and not figure["layout"].get("annotations"), figure["layout"].get("title")


def markdown_outputs(nb: Any) -> str:
    return "\n".join(
        o.data["text/markdown"] for c in nb.cells for o in c.get("outputs", []) if "text/markdown" in o.get("data", {})
    )


# -- the committed files ---------------------------------------------------------------


def test_the_four_notebooks_exist() -> None:
    assert sorted(NOTEBOOKS) == EXPECTED


@pytest.mark.parametrize("name", EXPECTED)
def test_committed_notebook_is_clean(name: str) -> None:
    nb = nbformat.read(NOTEBOOKS[name], as_version=4)
    nbformat.validate(nb)
    assert problems(nb) == [], f"run `python -m tests.notebook_support` to clean {name}"
    assert nb.metadata == CLEAN_METADATA
    first_code = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    assert parameters_index(nb) == first_code, "the parameters cell is the first code cell"
    assert re.search(r"^DATABASE_URL = None\b", nb.cells[first_code].source, flags=re.M)


@pytest.mark.parametrize("name", EXPECTED)
def test_notebooks_hold_no_sql(name: str) -> None:
    """Queries and writes live in the package; notebooks call it."""
    nb = nbformat.read(NOTEBOOKS[name], as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert not re.search(r"\b(SELECT|INSERT|UPDATE|DELETE|CREATE|ALTER)\s", code)
    assert not re.search(r"\b(text|exec_driver_sql|execute)\(", code)
    assert [line for line in code.splitlines() if "sqlalchemy" in line] in ([], ["from sqlalchemy.orm import Session"])


def test_clean_strips_outputs_counts_and_editor_metadata() -> None:
    nb = nbformat.read(NOTEBOOKS[EXPECTED[0]], as_version=4)
    code = next(c for c in nb.cells if c.cell_type == "code" and "tags" not in c.metadata)
    code.outputs = [nbformat.v4.new_output("stream", name="stdout", text="hi\n")]
    code.execution_count = 3
    code.metadata["collapsed"] = True
    nb.metadata["widgets"] = {"state": {}}
    assert len(problems(nb)) == 4
    assert problems(clean(nb)) == []
    assert "parameters" in nb.cells[parameters_index(nb)].metadata["tags"]  # tags survive


def test_kernelspec_points_at_this_interpreter(python3_kernel: Path) -> None:
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec("python3")
    assert Path(spec.resource_dir) == python3_kernel
    assert spec.argv[0] == sys.executable


# -- running them ----------------------------------------------------------------------


@pytest.mark.slow
def test_01_quickstart_publishes_rolls_back_ticks_and_watches(run, tmp_path: Path) -> None:
    url, engine = notebook.demo_database(tmp_path / "quickstart.db", events=20)
    nb, got = run(
        "01_quickstart.ipynb",
        {"DATABASE_URL": url, "WATCH_SECONDS": 2},
        {
            "project_id": "project_id",
            "event_id": "event_id",
            "doomed_id": "doomed_id",
            "doomed_events": "doomed_events",
            "event_status": "event_status",
            "report": "report.as_dict()",
            "history": "history[charts.STATUS_ORDER].sum(axis=1).tolist()",
        },
    )
    # The committed mutation published one event, delivered by the tick.
    assert got["event_status"] == "COMPLETED" and got["report"]["completed"] >= 1
    event = analytics.get_event(engine, got["event_id"])
    assert event["status"] == "COMPLETED" and event["entity_id"] == got["project_id"]
    assert event["payload"]["budget"] == 1250.5 and event["payload"]["name"] == "Apollo"
    # The rolled-back one left neither a project nor an event.
    assert got["doomed_events"] == 0
    assert analytics.count_events(engine, entity=("Project", got["doomed_id"])) == 0
    with Session(engine) as session:
        assert session.get(demo.Project, got["doomed_id"]) is None
        assert session.get(demo.Project, got["project_id"]) is not None
    # The watch refreshed one output in place while activity was published.
    totals = got["history"]
    assert len(totals) >= 3 and totals[-1] > totals[0]
    (shown,) = outputs_of(nb, "notebook.watch(")
    assert shown.output_type == "display_data"
    assert shown.data["text/plain"].startswith("[finished after 2.0 s")
    assert "<span" in shown.data["text/html"]
    assert_charts(nb, 2)
    engine.dispose()


@pytest.mark.slow
def test_02_retries_and_errors_analyses_the_activity(run, tmp_path: Path) -> None:
    url, engine = notebook.demo_database(tmp_path / "errors.db", events=0)
    nb, got = run(
        "02_retries_and_errors.ipynb",
        {"DATABASE_URL": url, "ACTIVITY": 60, "FAIL_SHARE": 0.3, "ALWAYS_FAIL_SHARE": 0.3},
        {
            "errors": "errors[['error_group', 'events', 'failed']].to_dict('records')",
            "retries": "int(retries['count'].sum())",
            "by_type": "int(by_type['events'].sum())",
            "by_org_failed": "int(by_org['failed'].sum())",
            "latency_events": "int(latency['events'][0])",
            "published": "int(flow['published'].sum())",
            "bucket": "bucket",
            "deliveries": "len(deliveries)",
            "handlers": "sorted(per_handler.index)",
            "demo_p95": "float(per_handler.loc['demo', '95%'])",
        },
    )
    total = analytics.count_events(engine)
    assert total >= 60
    expected = analytics.error_summary(engine)[["error_group", "events", "failed"]].to_dict("records")
    assert got["errors"] == expected and len(expected) > 0
    assert got["retries"] == got["by_type"] == got["published"] == total
    assert got["by_org_failed"] == analytics.count_events(engine, status="FAILED") > 0
    assert got["latency_events"] == analytics.count_events(engine, status="COMPLETED")
    assert got["bucket"] == notebook.throughput_bucket(engine)
    text = markdown_outputs(nb)
    assert f"The largest group is `{expected[0]['error_group']}`: {expected[0]['events']} events" in text
    assert "needed no retry" in text and "Half of the" in text and "events were published" in text
    # Per handler, from the ledger: every delivery of the demo's three handlers, charted one box each.
    ledger = analytics.deliveries_frame(engine, limit=10_000)
    assert got["deliveries"] == len(ledger) > 0
    assert got["handlers"] == ["audit-log", "demo", "message-bus"] == sorted(set(ledger["handler"]))
    demo_ms = ledger.loc[ledger["handler"] == "demo", "latency_ms"]
    assert got["demo_p95"] == pytest.approx(demo_ms.quantile(0.95))
    assert f"Of {len(ledger)} deliveries to 3 handlers, the slowest at the 95th percentile is" in text
    [boxes] = [f for f in figures(nb) if f["data"][0]["type"] == "box"]
    assert sorted(trace["name"] for trace in boxes["data"]) == ["audit-log", "demo", "message-bus"]
    assert_charts(nb, 7)
    engine.dispose()


@pytest.mark.slow
def test_03_requeue_failures_moves_the_top_group_and_delivers_it(run, tmp_path: Path) -> None:
    url, engine = notebook.demo_database(tmp_path / "requeue.db", events=60, always_fail_share=0.3)
    failed_before = analytics.count_events(engine, status="FAILED")
    top = analytics.error_summary(engine, status="FAILED").iloc[0]
    assert top.failed > 0
    nb, got = run(
        "03_requeue_failures.ipynb",
        {"DATABASE_URL": url, "ACTOR": "pytest"},
        {
            "failed_before": "failed_before",
            "group": "group",
            "planned": "plan.count",
            "moved": "moved",
            "failed_after": "failed_after",
            "completed": "completed",
            "ids": "requeued_ids",
        },
    )
    assert got["failed_before"] == failed_before
    assert got["group"] == top.error_group
    assert got["planned"] == got["moved"] == top.failed == len(got["ids"])
    assert got["failed_after"] == failed_before - got["moved"] == analytics.count_events(engine, status="FAILED")
    assert got["completed"] == got["moved"]
    assert analytics.count_events(engine, event_ids=got["ids"], status="COMPLETED") == got["moved"]
    assert analytics.count_events(engine, error_group=top.error_group, status="FAILED") == 0
    requeues = analytics.transitions_frame(engine, actor="admin:pytest", limit=1000)
    assert sorted(requeues["event_id"]) == sorted(got["ids"])
    assert set(zip(requeues["from_status"], requeues["to_status"], strict=True)) == {("FAILED", "PENDING")}
    assert_charts(nb, 4)
    engine.dispose()


def check_export(run, tmp_path: Path, url: str, parameters: dict[str, Any], expected_rows: int) -> None:
    export_dir = tmp_path / "export"
    nb, got = run(
        "04_connect_your_database.ipynb",
        {"DATABASE_URL": url, **parameters, "EXPORT_DIR": str(export_dir)},
        {
            "matching": "matching",
            "read": "len(events)",
            "csv_rows": "csv_rows",
            "parquet_rows": "parquet_rows",
            "csv": "str(csv_path)",
            "parquet": "str(parquet_path)",
        },
    )
    assert expected_rows > 0
    assert got["matching"] == got["read"] == got["csv_rows"] == got["parquet_rows"] == expected_rows
    assert sorted(p.name for p in export_dir.iterdir()) == ["outbox_events.csv", "outbox_events.parquet"]
    from_csv, from_parquet = pd.read_csv(got["csv"]), pd.read_parquet(got["parquet"])
    assert from_csv["id"].tolist() == from_parquet["id"].tolist()
    for field, wanted in parameters.items():
        column = {"STATUS": "status", "EVENT_TYPE": "event_type", "ORG_ID": "org_id"}[field]
        allowed = wanted if isinstance(wanted, list) else [wanted]
        assert set(from_parquet[column]) <= set(allowed)
    assert all(isinstance(json.loads(p), dict) for p in from_csv["payload"])
    assert_charts(nb, 3)


@pytest.mark.slow
def test_04_connect_your_database_reads_filters_and_exports_sqlite(run, tmp_path: Path) -> None:
    url, engine = notebook.demo_database(tmp_path / "yours.db", events=40)
    before = analytics.status_counts(engine)
    expected = analytics.count_events(engine, event_type="PROJECT.CREATED")
    check_export(run, tmp_path, url, {"EVENT_TYPE": "PROJECT.CREATED"}, expected)
    pd.testing.assert_frame_equal(analytics.status_counts(engine), before)  # it only read
    engine.dispose()


@pytest.mark.slow
@pytest.mark.postgres
def test_04_connect_your_database_on_postgresql(run, tmp_path: Path, postgres_url: str) -> None:
    engine = make_engine(postgres_url)
    demo.load_demo_data(engine, 40, always_fail_share=0.3)
    before = analytics.status_counts(engine)
    expected = analytics.count_events(engine, status=["COMPLETED", "FAILED"], org_id=["acme", "globex"])
    check_export(
        run, tmp_path, postgres_url, {"STATUS": ["COMPLETED", "FAILED"], "ORG_ID": ["acme", "globex"]}, expected
    )
    pd.testing.assert_frame_equal(analytics.status_counts(engine), before)
    engine.dispose()

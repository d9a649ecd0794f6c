"""deploy/: the Prometheus alert rules and the Grafana dashboard use only metric names the code exports
(collected from a real dispatch and a real scrape), and promtool validates and unit-tests the rules."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine

from outbox_admin import Dispatcher
from outbox_admin.handlers.base import DeliveredEvent, RecordingHandler
from outbox_admin.metrics import DispatchMetrics, MetricsServer

from .services import unavailable
from .sinks_support import NO_WAIT, publish_demo

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
RULES = DEPLOY / "prometheus" / "outbox-alerts.yml"
RULE_TESTS = DEPLOY / "prometheus" / "outbox-alerts.test.yml"
DASHBOARD = DEPLOY / "grafana" / "outbox-dashboard.json"
#: A metric name in PromQL: ours all start with outbox_ (label names and values never do).
METRIC = re.compile(r"(?<![\w:])outbox_[a-zA-Z0-9_:]*")
ALERTS = {
    "OutboxLagHigh",
    "OutboxDeadLetters",
    "OutboxExpiredLeases",
    "OutboxCircuitBreakerOpen",
    "OutboxNoDispatcherSeen",
    "OutboxDatabaseUnreadable",
}


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_expressions() -> list[str]:
    found = [target["expr"] for panel in dashboard()["panels"] for target in panel.get("targets", [])]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            found += [variable["definition"], variable["query"]["query"]]
    return found


def used_names(expressions: list[str]) -> set[str]:
    return {name for expr in expressions for name in METRIC.findall(expr)}


def exported_names(engine: Engine) -> set[str]:
    """Every sample name a real endpoint serves after a dispatch with a delivery, a retry and a failure."""
    publish_demo(engine, 3)

    def refuses(event: DeliveredEvent) -> None:
        if event.entity_id == "p-1":
            raise ValueError("refused")

    metrics = DispatchMetrics()
    dispatcher = Dispatcher(engine, [RecordingHandler(), refuses], backoff=NO_WAIT, max_attempts=2)
    metrics.watch(dispatcher)
    metrics.watch_database(engine)
    report = dispatcher.drain()
    assert (report.completed, report.retried, report.failed) == (2, 1, 1)
    with MetricsServer(metrics.registry, 0) as server:
        assert server.url is not None
        response = httpx.get(server.url, timeout=10)
    assert response.status_code == 200
    families = list(text_string_to_metric_families(response.text))
    names = {sample.name for family in families for sample in family.samples}
    assert "outbox_database_up" in names and "outbox_events" in names  # the database was read
    return names


def test_the_rules_and_the_dashboard_use_only_exported_metrics(engine: Engine) -> None:
    exported = exported_names(engine)
    rule_names = used_names([rule["expr"] for rule in rules()])
    dashboard_names = used_names(dashboard_expressions())
    assert len(rule_names) >= 7 and len(dashboard_names) >= 15  # the extraction found them
    assert rule_names - exported == set()
    assert dashboard_names - exported == set()
    assert "outbox_events_finished_totl" not in exported  # a misspelt name would be caught


def test_the_rules_are_the_alerts_announced_with_what_an_operator_needs() -> None:
    found = rules()
    assert {rule["alert"] for rule in found} == ALERTS
    for rule in found:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_the_dashboard_is_grafana_json_with_the_panels_announced() -> None:
    board = dashboard()
    panels = board["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    titles = {panel["title"] for panel in panels}
    for wanted in (
        "Throughput by outcome",
        "Lag",
        "Events per status",
        "Handler call duration",
        "Deliveries by handler",
        "Circuit breakers open",
        "Expired leases",
    ):
        assert wanted in titles, wanted
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert [t["refId"] for t in panel["targets"]] == [chr(65 + i) for i in range(len(panel["targets"]))]
    quantiles = [e for e in dashboard_expressions() if e.startswith("histogram_quantile")]
    assert quantiles and all("_bucket" in e and "le" in e for e in quantiles)


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        unavailable("promtool", "not installed (Debian: apt-get install --no-install-recommends prometheus)")
    assert found is not None
    return found


def test_promtool_checks_the_rules() -> None:
    done = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in done.stdout + done.stderr


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    done = subprocess.run(
        [promtool(), "test", "rules", RULE_TESTS.name],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=RULE_TESTS.parent,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr

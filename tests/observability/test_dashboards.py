"""deploy/grafana and deploy/prometheus: valid, identical where they must be, and naming only
metrics a live worker really exports.

Every PromQL expression of the dashboard (panels and template variables) and of the alert
rules is reduced to the metric names it selects; a worker process started against a private
Redis and the reference API, driven through a delivery and a dead letter, must expose each of
them on /metrics (histograms in their ``_bucket``/``_sum``/``_count`` forms, counters in their
``_total`` form, as Prometheus stores them). ``promtool`` (Debian's ``prometheus`` package)
checks the rules' syntax and runs their unit tests; without it those two tests are skipped.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import yaml
from prometheus_client.parser import text_string_to_metric_families
from tests.support.promtool import NO_PROMTOOL, PROMTOOL
from tests.support.stack import Stack
from tests.support.waiting import until_sync

from metricrelay.devtools.embedded import RedisServer
from metricrelay.keys import Keys

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy/grafana/metricrelay.json"
RULES = ROOT / "deploy/prometheus/metricrelay-rules.yml"
RULE_TESTS = ROOT / "deploy/prometheus/metricrelay-rules.test.yml"
PROMETHEUS_RULE = ROOT / "deploy/k8s/monitoring/prometheusrule.yaml"

# Words of PromQL that look like metric names but are not (functions are recognised by the
# parenthesis that follows them).
_KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
     "bool", "offset", "inf", "nan"}
)  # fmt: skip
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: what remains once strings, label matchers,
    ranges, grouping clauses, function names, keywords and numbers are set aside."""
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for found in re.finditer(r"(?<![\w.$])[A-Za-z_:][\w:]*", text):
        following = text[found.end() :].lstrip()
        if following.startswith("(") or found.group(0).lower() in _KEYWORDS:
            continue
        names.add(found.group(0))
    return names


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_expressions() -> list[str]:
    exprs = [
        target["expr"]
        for panel in _panels(dashboard()["panels"])
        for target in panel.get("targets", [])
    ]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            # label_values(metric, label): the metric is the one selector in it
            exprs += re.findall(r"label_values\(([^,)]+)", variable["definition"])
    return exprs


def rules(path: Path = RULES) -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]


def names_used() -> dict[str, set[str]]:
    """Metric name → where it is used (dashboard panels' titles, alert names)."""
    used: dict[str, set[str]] = {}
    for panel in _panels(dashboard()["panels"]):
        for target in panel.get("targets", []):
            for name in metric_names(target["expr"]):
                used.setdefault(name, set()).add(f"panel {panel['title']!r}")
    for expr in dashboard_expressions():
        for name in metric_names(expr):
            used.setdefault(name, set()).add("dashboard")
    for rule in rules():
        for name in metric_names(rule["expr"]):
            used.setdefault(name, set()).add(f"alert {rule['alert']}")
    return used


# ---------------------------------------------------------------------------- the extractor


def test_metric_names_finds_selectors_and_nothing_else() -> None:
    """Guards the live check against a vacuous pass: the extractor must find the names."""
    expr = (
        'sum by (reason) (increase(metricrelay_dead_letters_total{reason!="x", a=~"5.."}'
        "[$__rate_interval])) / on (instance) group_left max(up offset 5m) > 1e3 "
        "and histogram_quantile(0.99, sum by (le) (rate(a_bucket[5m:1m]))) or vector(0)"
    )
    assert metric_names(expr) == {"metricrelay_dead_letters_total", "up", "a_bucket"}
    assert len(names_used()) >= 20
    assert {"metricrelay_points_sent_total", "metricrelay_delivery_limit"} <= set(names_used())


# ---------------------------------------------------------------------------- the dashboard


def test_the_dashboard_uses_its_prometheus_variable_everywhere() -> None:
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    source = {"type": "prometheus", "uid": "${datasource}"}
    ids = [panel["id"] for panel in _panels(board["panels"])]
    assert len(ids) == len(set(ids))
    graphs = [panel for panel in _panels(board["panels"]) if panel["type"] != "row"]
    assert len(graphs) >= 12
    for panel in graphs:
        assert panel["datasource"] == source, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == source, panel["title"]
            assert metric_names(target["expr"]), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
    titles = {panel["title"] for panel in graphs}
    # the brief's list: throughput, lag, pending, dead letters, statuses, latency, retries,
    # memory budget, shard owners, the adaptive limit
    assert {
        "Points delivered / s", "Consumer group lag", "Pending", "Dead letters by reason",
        "Requests / s by status", "Request latency", "Retries, API failing, tokens",
        "Memory budget", "Shard owners", "Concurrency",
    } <= titles  # fmt: skip


# ---------------------------------------------------------------------------- the rules


def test_every_rule_is_an_alert_with_a_severity_and_a_summary() -> None:
    alerts = {rule["alert"]: rule for rule in rules()}
    assert {
        "MetricrelayLagGrowing", "MetricrelayDeadLettersRising", "MetricrelayApiFailing",
        "MetricrelayRedisFull", "MetricrelayMemoryBudgetNearFull", "MetricrelayStrayStreams",
    } <= set(alerts)  # fmt: skip
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"], name


def test_the_prometheus_rule_holds_exactly_the_plain_rules() -> None:
    resource = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert resource["apiVersion"] == "monitoring.coreos.com/v1"
    assert resource["kind"] == "PrometheusRule"
    assert resource["spec"] == yaml.safe_load(RULES.read_text())


@pytest.mark.skipif(PROMTOOL is None, reason=NO_PROMTOOL)
def test_promtool_checks_the_rules() -> None:
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, "check", "rules", str(RULES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout


@pytest.mark.skipif(PROMTOOL is None, reason=NO_PROMTOOL)
def test_promtool_unit_tests_fire_and_hold_the_alerts(tmp_path: Path) -> None:
    assert PROMTOOL is not None

    def run(folder: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PROMTOOL, "test", "rules", str(folder / RULE_TESTS.name)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    done = run(RULE_TESTS.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    tested = {test["alertname"] for t in yaml.safe_load(RULE_TESTS.read_text())["tests"]
              for test in t["alert_rule_test"]}  # fmt: skip
    assert len(tested) >= 2
    # the unit tests can fail: a rule whose threshold moved no longer passes them
    shutil.copy(RULE_TESTS, tmp_path)
    broken = RULES.read_text().replace("max(metricrelay_redis_full) == 1", "vector(1)")
    (tmp_path / RULES.name).write_text(broken)
    assert run(tmp_path).returncode != 0


# ---------------------------------------------------------------------------- a live worker


def _scrape(url: str) -> set[str]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as reply:
        text = reply.read().decode()
    return {
        sample.name for family in text_string_to_metric_families(text) for sample in family.samples
    }


def _value(url: str, name: str, **labels: str) -> float | None:
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as reply:
        text = reply.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return float(sample.value)
    return None


@pytest.mark.integration  # a redis-server, the reference API and a worker process
def test_every_metric_the_dashboard_and_the_alerts_name_is_exported(tmp_path: Path) -> None:
    with RedisServer(directory=tmp_path / "redis") as server:
        stack = Stack(tmp_path, server)
        try:
            stack.start_api()
            worker = stack.start_worker(
                1,
                METRICRELAY_HEALTH_HOST="127.0.0.1",
                METRICRELAY_HEALTH_PORT="0",
                METRICRELAY_CONCURRENCY="5",
            )
            url = worker.wait_logged(r"metrics and probes on (http://[\d.]+:\d+)").group(1)
            stack.xadd_points("exec-dash", range(20), per_entry=10)
            client = redis.Redis.from_url(server.url)
            client.xadd(Keys().events, {"resource": orjson.dumps({"metrics": "no execution"})})
            client.close()
            until_sync(
                lambda: (
                    _value(url, "metricrelay_points_sent_total") == 20
                    and _value(url, "metricrelay_dead_letters_total", reason="invalid") == 1
                ),
                what="20 points delivered and one dead letter counted",
            )
            exported = _scrape(url)
            # the adaptive limit's gauge reads the live slots: at its maximum, nothing pushed back
            assert _value(url, "metricrelay_delivery_limit") == 5
            assert _value(url, "metricrelay_delivery_pace_per_second") == 0  # no 429 yet
            assert _value(url, "metricrelay_peer_refusals_total") == 0  # nor another's
        finally:
            stack.stop()
    missing = {name: sorted(where) for name, where in names_used().items() if name not in exported}
    assert not missing, f"named but not exported: {missing}"

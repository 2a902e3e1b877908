"""Alerting rules and the Grafana dashboard: well formed, and reading only metrics the code exports.

promtool is not installed: the rules are checked for their structure, balanced brackets, known
PromQL functions, and every metric they read against the collectors of `services.gateway.metrics`,
`services.worker.metrics` and `services.pacs.metrics` (the sample names prometheus_client exposes
for them).
"""

from __future__ import annotations

import json
import re

import pytest
import yaml
from prometheus_client import REGISTRY

from tests.deploy.loaders import find, load_compose
from tests.support.procs import REPO_ROOT

ALERTS_FILE = REPO_ROOT / "infra" / "prometheus" / "alerts.yml"
GRAFANA_DIR = REPO_ROOT / "infra" / "grafana"
DASHBOARD_FILE = GRAFANA_DIR / "dashboards" / "cxr-pneumonia.json"
# What issue #19 asks the rules to watch (the drift rule lives elsewhere).
REQUIRED_ALERTS = {"CxrLiveSensitivityBelowFloor", "CxrModelServerDown", "CxrQueueBacklog",
                   "CxrDeadLetters", "CxrScopeRefusalsSurging"}
SEVERITIES = {"page", "ticket"}
# Series Prometheus makes itself.
BUILTIN_SERIES = {"up", "ALERTS", "ALERTS_FOR_STATE"}
PROMQL_FUNCTIONS = {
    "abs", "absent", "absent_over_time", "avg_over_time", "ceil", "changes", "clamp",
    "clamp_max", "clamp_min", "count_over_time", "delta", "deriv", "floor", "histogram_quantile",
    "idelta", "increase", "irate", "label_replace", "max_over_time", "min_over_time",
    "predict_linear", "rate", "resets", "round", "scalar", "sort", "sort_desc", "sum_over_time",
    "time", "timestamp", "vector", "quantile_over_time", "last_over_time",
}
AGGREGATIONS = {"sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk",
                "quantile", "count_values", "group"}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
            "unless", "offset", "bool", "le", "humanize"}
DURATION = re.compile(r"^\d+[smhdw]$")
NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def exported_samples() -> set[str]:
    """Every sample name the gateway's, the worker's and the DICOM node's collectors expose."""
    import services.pacs.metrics  # noqa: F401 - registers the DICOM node's and sender's collectors
    import services.worker.metrics  # noqa: F401 - registers the worker's collectors
    from services.gateway.metrics import GatewayMetrics

    suffixes = {"counter": ("_total", "_created"), "gauge": ("",),
                "histogram": ("_bucket", "_sum", "_count", "_created"),
                "summary": ("_sum", "_count", "_created"), "info": ("_info",)}
    names: set[str] = set()
    for registry in (REGISTRY, GatewayMetrics().registry):
        for family in registry.collect():
            if family.name.startswith("cxr_"):
                names |= {family.name + suffix for suffix in suffixes[family.type]}
    return names


def _strip_strings(expr: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)


def _series_names(expr: str) -> set[str]:
    """Metric and recording-rule names an expression reads (label names and functions left out)."""
    text = re.sub(r"\{[^}]*\}", "", _strip_strings(expr))  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in NAME.finditer(text):
        name = match.group()
        rest = text[match.end():].lstrip()
        if name in PROMQL_FUNCTIONS | AGGREGATIONS | KEYWORDS or rest.startswith("("):
            continue
        if re.fullmatch(r"\d.*", name):
            continue
        names.add(name)
    return names


def _functions(expr: str) -> set[str]:
    text = _strip_strings(expr)
    return {m.group(1) for m in re.finditer(r"\b([a-z_]+)\s*\(", text)
            if m.group(1) not in KEYWORDS}


def _balanced(expr: str) -> bool:
    pairs, stack = {")": "(", "]": "[", "}": "{"}, []
    for char in _strip_strings(expr):
        if char in "([{":
            stack.append(char)
        elif char in pairs and (not stack or stack.pop() != pairs[char]):
            return False
    return not stack


@pytest.fixture(scope="module")
def rules() -> list[dict]:
    document = yaml.safe_load(ALERTS_FILE.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


@pytest.fixture(scope="module")
def exported() -> set[str]:
    return exported_samples()


def test_rule_groups_and_rules_are_well_formed():
    document = yaml.safe_load(ALERTS_FILE.read_text())
    names = [group["name"] for group in document["groups"]]
    assert len(names) == len(set(names))
    alerts = []
    for group in document["groups"]:
        assert set(group) <= {"name", "interval", "rules"}, group["name"]
        for rule in group["rules"]:
            kind = {"alert", "record"} & set(rule)
            assert len(kind) == 1, rule
            assert isinstance(rule["expr"], str) and _balanced(rule["expr"]), rule
            unknown = _functions(rule["expr"]) - PROMQL_FUNCTIONS - AGGREGATIONS
            assert not unknown, (rule.get("alert") or rule.get("record"), unknown)
            if "record" in rule:
                assert set(rule) <= {"record", "expr", "labels"}, rule["record"]
                assert re.fullmatch(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", rule["record"])
                continue
            alerts.append(rule["alert"])
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
            assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]
            if "for" in rule:
                assert DURATION.match(rule["for"]), rule["alert"]
    assert len(alerts) == len(set(alerts))
    assert set(alerts) >= REQUIRED_ALERTS, REQUIRED_ALERTS - set(alerts)


def test_every_series_a_rule_reads_is_exported_or_recorded(rules, exported):
    recorded = {rule["record"] for rule in rules if "record" in rule}
    known = exported | recorded | BUILTIN_SERIES
    for rule in rules:
        read = _series_names(rule["expr"])
        assert read, rule
        assert read <= known, (rule.get("alert") or rule.get("record"), read - known)


def test_the_check_notices_a_metric_nobody_exports(exported):
    """Not vacuous: a misspelt metric and an unknown function are caught."""
    expr = 'sum(rate(cxr_worker_dead_letered_total[5m])) > 0 and cxr_worker_jobs_total'
    assert _series_names(expr) - exported == {"cxr_worker_dead_letered_total"}
    assert "cxr_worker_dead_lettered_total" in exported
    assert _functions("sumrate(x[5m])") - PROMQL_FUNCTIONS - AGGREGATIONS == {"sumrate"}
    assert not _balanced("sum(rate(x[5m])")


def test_the_dashboard_reads_only_exported_or_recorded_series(rules, exported):
    recorded = {rule["record"] for rule in rules if "record" in rule}
    dashboard = json.loads(DASHBOARD_FILE.read_text())
    datasources = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uids = {source["uid"] for source in datasources["datasources"]}
    exprs = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] in uids, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] in uids, panel["title"]
            assert _balanced(target["expr"]), target["expr"]
            exprs.append(target["expr"])
            read = _series_names(target["expr"])
            assert read and read <= exported | recorded | BUILTIN_SERIES, (
                panel["title"], read - exported - recorded - BUILTIN_SERIES)
    shown = " ".join(exprs)
    # The dashboard shows what the alerts watch.
    for series in ("cxr:live_sensitivity:14d", "up", "cxr:queue_wait_seconds:p90_10m",
                   "cxr_worker_dead_lettered_total", "cxr:scope_refused_share:1h"):
        assert re.search(rf"(?<![\w:]){re.escape(series)}(?![\w:])", shown), series
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_compose_provisions_grafana_with_the_dashboard_and_prometheus_the_rules():
    services = load_compose()["services"]
    grafana = services["grafana"]
    provider = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "dashboards" / "cxr.yml").read_text())
    dashboards_path = provider["providers"][0]["options"]["path"]
    assert f"./infra/grafana/dashboards:{dashboards_path}:ro" in grafana["volumes"]
    assert "./infra/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    assert grafana["depends_on"] == {"prometheus": {"condition": "service_healthy"}}
    datasource = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    assert "./infra/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in (
        services["prometheus"]["volumes"])


def test_kubernetes_carries_the_same_rules_and_dashboard(rendered):
    for objects in rendered.values():
        rules = find(objects, "ConfigMap", "cxr-prometheus-rules")
        assert rules["data"]["alerts.yml"] == ALERTS_FILE.read_text()
        board = find(objects, "ConfigMap", "cxr-grafana-dashboard")
        assert board["data"]["cxr-pneumonia.json"] == DASHBOARD_FILE.read_text()
        assert board["metadata"]["labels"]["grafana_dashboard"] == "1"

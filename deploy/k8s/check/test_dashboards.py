"""The Grafana dashboard queries only metrics the services export: a renamed or dropped metric in
rawdrive_platform.metrics fails here rather than as an empty panel. Also: it is a Grafana
dashboard JSON, every panel has a PromQL query on the datasource variable, every metric is on
it, and both overlays ship it as the sidecar's ConfigMap."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
from prometheus_client.metrics import MetricWrapperBase

import rawdrive_platform.metrics

HERE = Path(__file__).resolve().parent
K8S = HERE.parent
DASHBOARDS = sorted((K8S / "dashboards").glob("*.json"))
_spec = importlib.util.spec_from_file_location("deploy_check", HERE / "deploy_check.py")
deploy_check = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = deploy_check  # msgspec resolves its Structs' annotations through it
_spec.loader.exec_module(deploy_check)

# The series names Prometheus scrapes for each family type (prometheus_client's exposition).
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
}
PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
    "offset", "inf", "nan",
}
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")


def exported_families() -> dict[str, set[str]]:
    """Family name -> the series names it is scraped as, from the metric objects the module defines."""
    families: dict[str, set[str]] = {}
    for value in vars(rawdrive_platform.metrics).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                families[family.name] = {family.name + suffix for suffix in SUFFIXES[family.type]}
    return families


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions,
    keywords, label names (in braces or grouping clauses), strings, durations or Grafana
    variables."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)  # strings
    expr = re.sub(r"\$\{[^}]*\}|\$\w+", "", expr)                                   # Grafana variables
    expr = re.sub(r"\{[^{}]*\}", "", expr)                                          # label matchers
    expr = re.sub(r"\[[^\[\]]*\]", "", expr)                                        # ranges, subqueries
    expr = GROUPING.sub("", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", expr):
        name, call = match.groups()
        if not call and name.lower() not in PROMQL_KEYWORDS:
            names.add(name)
    return names


def panels(dashboard: dict) -> list[dict]:
    """Every panel, those inside collapsed rows too; rows themselves are layout."""
    out = []
    for panel in dashboard.get("panels", []):
        out += panels(panel) if panel.get("type") == "row" else [panel]
    return out


def exprs(dashboard: dict) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in panels(dashboard) for t in p.get("targets", [])]


@pytest.fixture(params=DASHBOARDS, ids=lambda p: p.name)
def dashboard(request) -> dict:
    return json.loads(request.param.read_text())


def test_there_is_a_dashboard():
    assert [p.name for p in DASHBOARDS] == ["rawdrive-pipeline.json"]


def test_it_is_a_grafana_dashboard_with_datasource_and_namespace_variables(dashboard):
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["namespace"]["datasource"]["uid"] == "${datasource}"
    ids = [p["id"] for p in panels(dashboard)] + [p["id"] for p in dashboard["panels"] if p["type"] == "row"]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_every_panel_queries_prometheus_on_the_chosen_namespace(dashboard):
    assert panels(dashboard)
    for panel in panels(dashboard):
        title = panel.get("title")
        assert panel.get("datasource", {}).get("uid") == "${datasource}", title
        assert panel.get("targets"), f"{title}: no query"
        for target in panel["targets"]:
            expr = target.get("expr", "").strip()
            assert expr, f"{title}: target {target.get('refId')} has no PromQL expression"
            assert metric_names(expr), f"{title}: {expr} selects no metric"
            assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), f"{title}: {expr}"
            for selector in re.findall(r"\brawdrive_\w+(\{[^}]*\})?", expr):
                assert 'namespace="$namespace"' in selector, f"{title}: {expr} ignores $namespace"


def unknown_metrics(dashboard: dict, families: dict[str, set[str]]) -> set[str]:
    exported = set().union(*families.values())
    return {f"{title}: {name}" for title, expr in exprs(dashboard) for name in metric_names(expr) - exported}


def test_every_metric_the_dashboard_uses_is_exported(dashboard):
    unknown = unknown_metrics(dashboard, exported_families())
    assert not unknown, f"not in rawdrive_platform.metrics: {sorted(unknown)}"


def test_a_renamed_metric_is_caught():
    families = exported_families()
    families["rawdrive_uploads_begun"] = {n.replace("started", "begun") for n in families.pop("rawdrive_uploads_started")}
    unknown = unknown_metrics(json.loads(DASHBOARDS[0].read_text()), families)
    assert unknown and {u.rsplit(": ", 1)[1] for u in unknown} == {"rawdrive_uploads_started_total"}


def test_every_exported_metric_is_on_a_dashboard():
    used = {name for path in DASHBOARDS for _, expr in exprs(json.loads(path.read_text())) for name in metric_names(expr)}
    missing = [family for family, series in exported_families().items() if not series & used]
    assert not missing, f"metrics no dashboard shows: {missing}"


def test_histograms_are_read_as_quantiles_over_bucket_rates(dashboard):
    histograms = [name for name, series in exported_families().items() if f"{name}_bucket" in series]
    assert histograms
    for name in histograms:
        queries = [expr for _, expr in exprs(dashboard) if f"{name}_bucket" in expr]
        assert {q.split(",")[0] for q in queries} >= {f"histogram_quantile({q}" for q in ("0.5", "0.95", "0.99")}, name
        for query in queries:  # quantiles per kind of file, or per API route
            assert re.search(rf"rate\({name}_bucket\b", query) and re.search(r"by \(le, (kind|route)\)", query), query


def test_the_metric_name_parser():
    assert metric_names(
        'histogram_quantile(0.95, sum by (le, kind) (rate(a_bucket{namespace="$namespace", kind=~"x|y"}[$__rate_interval])))'
    ) == {"a_bucket"}
    assert metric_names('max by (service) (label_replace(b{pod!=""}, "service", "$1", "pod", "(.+)-x"))') == {"b"}
    assert metric_names("sum(rate(c_total[5m])) / on (kind) group_left sum(d) > bool 0") == {"c_total", "d"}


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_the_overlays_ship_the_dashboards_to_the_grafana_sidecar(overlay):
    objects = deploy_check.render(K8S / "overlays" / overlay)
    maps = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
    assert len(maps) == 1
    assert maps[0]["metadata"]["name"] == "rawdrive-grafana-dashboards"  # no hash: one object across changes
    assert {key: json.loads(text) for key, text in maps[0]["data"].items()} == {
        path.name: json.loads(path.read_text()) for path in DASHBOARDS
    }

"""The alert rules query only metrics that exist: rawdrive_* ones that the metrics modules
(rawdrive_platform.metrics and each service's) export, as Prometheus scrapes them, the others
from the exporters the README names. A renamed metric fails here, not as an alert that can
never fire."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
RULES = HERE.parent / "components/monitoring/alerts.yaml"
_spec = importlib.util.spec_from_file_location("dashboards_check", HERE / "test_dashboards.py")
dashboards_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dashboards_check)

# Series from other exporters, each checked against its source when written (README, "Alerts").
EXTERNAL = {
    # nats-io/prometheus-nats-exporter -jsz=all with the chart's -prefix=nats (collector/jsz.go)
    "nats_stream_total_bytes", "nats_stream_limit_bytes",
    # plugin-barman-cloud, through the CloudNativePG instance's exporter (its Observability page)
    "barman_cloud_cloudnative_pg_io_last_available_backup_timestamp",
    "barman_cloud_cloudnative_pg_io_last_failed_backup_timestamp",
    # cert-manager's controller (pkg/metrics)
    "certmanager_certificate_expiration_timestamp_seconds",
}


def rules() -> list[dict]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["spec"]["groups"] for rule in group["rules"]]


def test_every_alert_queries_only_metrics_that_exist():
    exported = set().union(*dashboards_check.exported_families().values())
    for rule in rules():
        names = dashboards_check.metric_names(rule["expr"])
        assert names, rule["alert"]
        unknown = {n for n in names if n not in exported and n not in EXTERNAL}
        assert not unknown, f"{rule['alert']} queries {sorted(unknown)}, which nothing exports"


def test_every_alert_is_unit_tested_both_ways():
    tests = yaml.safe_load((HERE.parent / "components/monitoring/alerts.test.yaml").read_text())["tests"]
    cases = [case for test in tests for case in test["alert_rule_test"]]
    for rule in rules():
        mine = [case for case in cases if case["alertname"] == rule["alert"]]
        assert any(case["exp_alerts"] for case in mine), f"{rule['alert']} is never expected to fire"
        assert any(not case["exp_alerts"] for case in mine), f"{rule['alert']} is never expected to stay quiet"


def test_the_metric_name_check_catches_a_misspelt_metric():
    exported = set().union(*dashboards_check.exported_families().values())
    names = dashboards_check.metric_names("max by (namespace) (rawdrive_consumer_dead_letter) > 0")
    assert names - exported - EXTERNAL == {"rawdrive_consumer_dead_letter"}

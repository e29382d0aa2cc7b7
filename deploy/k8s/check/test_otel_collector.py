"""The OpenTelemetry Collector config (deploy/k8s/otel-collector/config.yaml) is wired as the
collector would load it: every pipeline component is defined, every defined one is used, the
memory limiter comes first, and the OTLP/HTTP receiver listens where the services send
(the base ConfigMap's OTEL_EXPORTER_OTLP_ENDPOINT port). No collector binary runs here: this is the
structure the collector's own `validate` would reject first."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import yaml

K8S = Path(__file__).resolve().parents[1]
CONFIG = K8S / "otel-collector/config.yaml"


def collector_config_findings(config: dict) -> list[str]:
    findings = []
    service = config.get("service") or {}
    used: dict[str, set[str]] = {"receivers": set(), "processors": set(), "exporters": set()}
    pipelines = service.get("pipelines") or {}
    if "traces" not in pipelines:
        findings.append("no traces pipeline")
    for name, pipeline in pipelines.items():
        for kind in used:
            for component in pipeline.get(kind) or []:
                used[kind].add(component)
                if component not in (config.get(kind) or {}):
                    findings.append(f"pipeline {name} uses {kind[:-1]} {component!r}, which is not defined")
        processors = pipeline.get("processors") or []
        if "memory_limiter" in (config.get("processors") or {}) and processors[:1] != ["memory_limiter"]:
            findings.append(f"pipeline {name}: memory_limiter is not the first processor")
    for kind, names in used.items():
        for component in (config.get(kind) or {}):
            if component not in names:
                findings.append(f"{kind[:-1]} {component!r} is defined but in no pipeline")
    for extension in service.get("extensions") or []:
        if extension not in (config.get("extensions") or {}):
            findings.append(f"service uses extension {extension!r}, which is not defined")
    return findings


def otlp_http_port(config: dict) -> int | None:
    endpoint = ((((config.get("receivers") or {}).get("otlp") or {}).get("protocols") or {}).get("http") or {}).get("endpoint")
    return int(endpoint.rsplit(":", 1)[1]) if endpoint else None


def test_the_shipped_collector_config_is_wired():
    assert collector_config_findings(yaml.safe_load(CONFIG.read_text())) == []


def test_the_collector_listens_where_the_services_send():
    base = yaml.safe_load((K8S / "base/kustomization.yaml").read_text())
    common = next(g for g in base["configMapGenerator"] if g["name"] == "rawdrive-common")
    endpoint = next(v.split("=", 1)[1] for v in common["literals"] if v.startswith("OTEL_EXPORTER_OTLP_ENDPOINT="))
    assert otlp_http_port(yaml.safe_load(CONFIG.read_text())) == urlparse(endpoint).port == 4318


def test_a_miswired_config_is_reported():
    config = yaml.safe_load(CONFIG.read_text())
    config["service"]["pipelines"]["traces"]["exporters"] = ["otlp/trace"]     # misspelt
    config["service"]["pipelines"]["traces"]["processors"] = ["batch", "memory_limiter"]
    config["service"]["extensions"] = ["health_check", "pprof"]
    assert collector_config_findings(config) == [
        "pipeline traces uses exporter 'otlp/trace', which is not defined",
        "pipeline traces: memory_limiter is not the first processor",
        "exporter 'otlp/traces' is defined but in no pipeline",
        "service uses extension 'pprof', which is not defined",
    ]

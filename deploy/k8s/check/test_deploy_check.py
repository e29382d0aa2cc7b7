"""The deploy check must fail on what it exists to catch: patched copies of the real overlays
(privileged, root, no limits, latest tag, buffering ingress, schema errors), a Dockerfile
hadolint rejects, a lock that misses a dependency."""

from __future__ import annotations

import importlib.util
import shutil
import textwrap
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("deploy_check", HERE / "deploy_check.py")
deploy_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(deploy_check)


@pytest.fixture
def k8s(tmp_path: Path) -> Path:
    """A copy of deploy/k8s whose prod overlay a test may patch."""
    copy = tmp_path / "k8s"
    shutil.copytree(HERE.parent, copy, ignore=shutil.ignore_patterns("check", "__pycache__"))
    return copy


def add_patch(k8s: Path, patch: str, target: str, *more: tuple[str, str]) -> None:
    """JSON patches for the prod overlay, each (patch, target)."""
    entries = ""
    for body, where in ((patch, target), *more):
        entries += f"  - target: {where}\n    patch: |-\n" + textwrap.indent(textwrap.dedent(body).strip(), "      ") + "\n"
    kustomization = k8s / "overlays/prod/kustomization.yaml"
    kustomization.write_text(kustomization.read_text() + "\npatches:\n" + entries)


def test_the_shipped_overlays_pass(k8s):
    assert deploy_check.main(["--k8s", str(k8s), "--skip-images"]) == 0


def test_a_privileged_root_container_without_limits_on_latest_fails(k8s, capsys):
    add_patch(k8s, """
        - op: replace
          path: /spec/template/spec/containers/0/securityContext
          value: {privileged: true, runAsUser: 0, allowPrivilegeEscalation: true}
        - op: remove
          path: /spec/template/spec/containers/0/resources/limits
        - op: replace
          path: /spec/template/spec/containers/0/image
          value: registry.example.com/rawdrive/commit-verifier:latest
        - op: remove
          path: /spec/template/spec/securityContext/runAsNonRoot
        """, "{kind: Deployment, name: commit-verifier}")

    assert deploy_check.main(["--k8s", str(k8s), "--skip-images"]) == 1
    out = capsys.readouterr().out
    where = "prod: Deployment/commit-verifier container app"
    for problem in ("privileged", "runAsUser is 0 (root)", "allowPrivilegeEscalation is not false",
                    "readOnlyRootFilesystem is not true", "capabilities do not drop ALL",
                    "runAsNonRoot is not true", "no cpu limit", "no memory limit",
                    "image 'registry.example.com/rawdrive/commit-verifier:latest' uses the latest tag"):
        assert f"FAIL {where}: {problem}" in out, problem
    # The other Deployments and the dev overlay are untouched.
    assert "Deployment/janitor" not in out and "FAIL dev:" not in out


def test_a_host_namespace_no_probes_and_short_grace_fail(k8s, capsys):
    add_patch(k8s, """
        - op: add
          path: /spec/template/spec/hostNetwork
          value: true
        - op: remove
          path: /spec/template/spec/containers/0/livenessProbe
        - op: replace
          path: /spec/template/spec/terminationGracePeriodSeconds
          value: 30
        """, "{kind: Deployment, name: media-processor}")

    assert deploy_check.main(["--k8s", str(k8s), "--skip-images"]) == 1
    out = capsys.readouterr().out
    assert "FAIL prod: Deployment/media-processor: hostNetwork is true" in out
    assert "FAIL prod: Deployment/media-processor container app: no livenessProbe" in out
    # Its ConfigMap gives it 150 s to finish a decode after SIGTERM.
    assert "terminationGracePeriodSeconds 30 <= RAWDRIVE_STOP_TIMEOUT_S 150" in out


def test_a_stop_timeout_raised_past_the_grace_period_or_not_a_number_fails(k8s, capsys):
    add_patch(k8s, """
        - op: add
          path: /spec/template/spec/containers/0/env/-
          value: {name: RAWDRIVE_STOP_TIMEOUT_S, value: "200"}
        """, "{kind: Deployment, name: commit-verifier}", ("""
        - op: add
          path: /spec/template/spec/containers/0/env/-
          value: {name: RAWDRIVE_STOP_TIMEOUT_S, value: "soon"}
        """, "{kind: Deployment, name: media-processor}"))

    assert deploy_check.main(["--k8s", str(k8s), "--skip-images"]) == 1
    out = capsys.readouterr().out
    assert "FAIL prod: Deployment/commit-verifier: terminationGracePeriodSeconds 120 <= RAWDRIVE_STOP_TIMEOUT_S 200" in out
    assert "FAIL prod: Deployment/media-processor: RAWDRIVE_STOP_TIMEOUT_S is not a number of seconds" in out
    assert "Deployment/janitor" not in out


def test_an_ingress_that_buffers_uploads_fails(k8s, capsys):
    add_patch(k8s, """
        - op: replace
          path: /metadata/annotations/nginx.ingress.kubernetes.io~1proxy-request-buffering
          value: "on"
        """, "{kind: Ingress, name: upload-gateway}")

    assert deploy_check.main(["--k8s", str(k8s), "--skip-images"]) == 1
    assert "proxy-request-buffering is 'on'" in capsys.readouterr().out


def test_an_ingress_that_routes_everything_to_the_gateway_fails(k8s, capsys):
    add_patch(k8s, """
        - op: replace
          path: /spec/rules/0/http/paths/0/path
          value: /
        """, "{kind: Ingress, name: upload-gateway}")

    assert deploy_check.main(["--k8s", str(k8s), "--skip-images"]) == 1
    assert "routes Prefix '/', beyond the public API" in capsys.readouterr().out


def test_schema_errors_and_unknown_kinds_fail(k8s, capsys):
    add_patch(k8s, """
        - op: replace
          path: /spec/replicas
          value: two
        """, "{kind: Deployment, name: janitor}",
        # One error is reported per object, so the misspelt field goes on another one.
        ("""
        - op: add
          path: /spec/template/spec/containers/0/livenesProbe
          value: {}
        """, "{kind: Deployment, name: media-processor}"))
    (k8s / "base/extra.yaml").write_text("apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n")
    base = k8s / "base/kustomization.yaml"
    base.write_text(base.read_text().replace("  - networkpolicies.yaml", "  - networkpolicies.yaml\n  - extra.yaml"))

    assert deploy_check.main(["--k8s", str(k8s), "--skip-images"]) == 1
    out = capsys.readouterr().out
    assert "FAIL prod: Deployment/janitor: Kubernetes 1.30.0 schema: spec/replicas:" in out
    # strict: an unknown (misspelt) field is an error
    assert any("Deployment/media-processor: Kubernetes" in line and "livenesProbe" in line for line in out.splitlines())
    assert "FAIL dev: Widget/w: no schema for example.com/v1 Widget" in out


def test_an_overlay_that_does_not_render_fails(k8s, capsys):
    (k8s / "overlays/prod/kustomization.yaml").write_text("resources:\n  - ../../nowhere\n")
    assert deploy_check.main(["--k8s", str(k8s), "--skip-images"]) == 1
    assert "kubectl kustomize failed" in capsys.readouterr().out


def test_hadolint_findings_fail(tmp_path):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM debian:bookworm\nRUN apt-get update && apt-get install -y curl\n")
    findings = deploy_check.hadolint_findings([dockerfile])
    assert any("DL3008" in f for f in findings)  # unpinned apt packages
    assert any("DL3015" in f for f in findings)  # no --no-install-recommends


def test_a_lock_missing_a_dependency_or_outside_its_range_fails(tmp_path):
    for folder, deps in (("libs/contracts", ["msgspec>=0.19"]), ("libs/platform", ["rawdrive-contracts", "nats-py>=2.9"]),
                         ("services/demo", ["rawdrive-platform", "wand>=0.6"])):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "pyproject.toml").write_text(f"[project]\nname = 'x'\ndependencies = {deps!r}\n")
    (tmp_path / "services/demo/requirements.lock").write_text(
        "msgspec==0.18.0 \\\n    --hash=sha256:00\nnats-py==2.16.0\n"
    )
    findings = deploy_check.lock_findings(tmp_path)
    assert "services/demo/requirements.lock: msgspec (from libs/contracts) is locked at 0.18.0, outside >=0.19" in findings
    assert "services/demo/requirements.lock: nats-py has no --hash" in findings
    assert "services/demo/requirements.lock: wand (from services/demo) is not locked; rerun deploy/k8s/images/lock.py" in findings


def test_nats_values_that_drift_from_the_busauth_table_fail(k8s, capsys):
    values = k8s / "nats/values.yaml"
    # A hand-widened permission: the processor may now forge verdicts.
    values.write_text(values.read_text().replace("- rawdrive.asset.created.*", "- rawdrive.asset.created.*\n            - rawdrive.upload.verified.*", 1))

    assert deploy_check.main(["--k8s", str(k8s), "--skip-images"]) == 1
    assert "values.yaml: config.merge.authorization differs from rawdrive_platform.busauth" in capsys.readouterr().out


def test_a_service_connecting_as_another_identity_or_anonymously_fails(k8s, capsys):
    processor, janitor = k8s / "base/media-processor.yaml", k8s / "base/janitor.yaml"
    user = "            - name: RAWDRIVE_NATS_USER\n              value: {}\n"
    processor.write_text(processor.read_text().replace(user.format("media-processor"), user.format("provision")))
    janitor.write_text(janitor.read_text().replace(user.format("janitor"), ""))

    assert deploy_check.main(["--k8s", str(k8s), "--skip-images"]) == 1
    out = capsys.readouterr().out
    assert ("Deployment/media-processor container app: RAWDRIVE_NATS_PASSWORD is not key 'provision' "
            "of Secret rawdrive-nats") in out
    assert "Deployment/janitor container app: no RAWDRIVE_NATS_USER" in out

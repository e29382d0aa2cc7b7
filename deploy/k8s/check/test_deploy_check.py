"""The deploy check must fail on what it exists to catch: patched copies of the real overlays
(privileged, root, no limits, latest tag, buffering ingress, schema errors, replicas under an
autoscaler, a short grace, network rules beyond the README's, custom resources against their CRD
schemas, broken alert rules), a Dockerfile hadolint rejects or that skips the shared image steps,
a lock that misses a dependency."""

from __future__ import annotations

import importlib.util
import shutil
import sys
import textwrap
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("deploy_check", HERE / "deploy_check.py")
deploy_check = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = deploy_check  # msgspec resolves its Structs' annotations through it
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
    # Its ConfigMap gives it 150 s to finish a decode after SIGTERM, then the NATS drain.
    assert ("terminationGracePeriodSeconds 30 < 185 the stop takes (150 RAWDRIVE_STOP_TIMEOUT_S (workers) + "
            "5 cancelled workers' unwind + 30 NATS drain)") in out


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
    assert "FAIL prod: Deployment/commit-verifier: terminationGracePeriodSeconds 120 < 235 the stop takes" in out
    assert "FAIL prod: Deployment/media-processor: RAWDRIVE_STOP_TIMEOUT_S or the preStop sleep is not a number" in out
    assert "Deployment/janitor" not in out


def test_a_grace_that_forgets_the_nats_drain_or_the_api_requests_fails(k8s, capsys):
    # 140 s covered the old rule (grace > stop timeout) but not preStop + workers + requests + drain.
    add_patch(k8s, """
        - op: replace
          path: /spec/template/spec/terminationGracePeriodSeconds
          value: 140
        """, "{kind: Deployment, name: upload-gateway}", ("""
        - op: replace
          path: /spec/template/spec/terminationGracePeriodSeconds
          value: 70
        """, "{kind: Deployment, name: janitor}"))

    assert deploy_check.main(["--k8s", str(k8s), "--skip-images"]) == 1
    out = capsys.readouterr().out
    assert ("FAIL prod: Deployment/upload-gateway: terminationGracePeriodSeconds 140 < 165 the stop takes (10 preStop + "
            "60 RAWDRIVE_STOP_TIMEOUT_S (workers) + 60 in-flight API requests + 5 cancelled workers' unwind + "
            "30 NATS drain)") in out
    assert "FAIL prod: Deployment/janitor: terminationGracePeriodSeconds 70 < 95 the stop takes" in out


def test_replicas_under_an_autoscaler_a_scaledobject_without_fallback_and_a_foreign_namespace_fail(k8s, capsys):
    add_patch(k8s, """
        - op: add
          path: /spec/replicas
          value: 3
        """, "{kind: Deployment, name: media-processor}", ("""
        - op: remove
          path: /spec/fallback
        """, "{kind: ScaledObject, name: commit-verifier}"), ("""
        - op: replace
          path: /spec/triggers/0/metadata/query
          value: sum(rawdrive_gateway_uploads_in_flight{namespace="rawdrive-dev"})
        """, "{kind: ScaledObject, name: upload-gateway}"))

    assert deploy_check.main(["--k8s", str(k8s), "--skip-images"]) == 1
    out = capsys.readouterr().out
    assert "FAIL prod: Deployment/media-processor: sets replicas although ScaledObject/media-processor owns the count" in out
    assert "FAIL prod: ScaledObject/commit-verifier: no fallback" in out
    assert 'FAIL prod: ScaledObject/upload-gateway: prometheus trigger query does not filter on namespace="rawdrive"' in out
    assert "FAIL dev:" not in out


def test_a_production_image_by_tag_fails(k8s, capsys):
    kustomization = k8s / "overlays/prod/kustomization.yaml"
    text = kustomization.read_text()
    start = text.index("  - name: rawdrive/janitor")
    end = text.index("\n", text.index("digest:", start))
    kustomization.write_text(text[:start] + '  - name: rawdrive/janitor\n    newName: registry.example.com/rawdrive/janitor\n'
                             '    newTag: "0.1.0"' + text[end:])

    assert deploy_check.main(["--k8s", str(k8s), "--skip-images"]) == 1
    out = capsys.readouterr().out
    assert ("FAIL prod: Deployment/janitor container app: image 'registry.example.com/rawdrive/janitor:0.1.0' "
            "is not pinned by digest") in out
    assert "Deployment/upload-gateway container app: image" not in out  # still by digest


def test_custom_resources_are_checked_against_their_crd_schemas(k8s, capsys):
    add_patch(k8s, """
        - op: add
          path: /spec/fallback/replica
          value: 2
        """, "{kind: ScaledObject, name: media-processor}", ("""
        - op: replace
          path: /spec/instances
          value: three
        """, "{kind: Cluster, name: rawdrive-pg}"))

    assert deploy_check.main(["--k8s", str(k8s), "--skip-images"]) == 1
    out = capsys.readouterr().out
    assert any("FAIL prod: ScaledObject/media-processor: CRD schema keda.sh/scaledobject_v1alpha1.json: spec/fallback:" in line
               and "'replica'" in line for line in out.splitlines())
    assert any("FAIL prod: Cluster/rawdrive-pg: CRD schema postgresql.cnpg.io/cluster_v1.json: spec/instances:" in line
               for line in out.splitlines())


def test_network_policies_beyond_or_short_of_the_readme_fail(k8s, capsys):
    add_patch(k8s, """
        - op: add
          path: /spec/egress/-
          value: {ports: [{protocol: TCP, port: 22}]}
        """, "{kind: NetworkPolicy, name: rawdrive-egress-https}", ("""
        - op: replace
          path: /spec/ingress/0/ports/0/port
          value: 9090
        """, "{kind: NetworkPolicy, name: upload-gateway-from-ingress}"), ("""
        - op: replace
          path: /spec/policyTypes
          value: [Ingress]
        """, "{kind: NetworkPolicy, name: rawdrive-default-deny}"))

    assert deploy_check.main(["--k8s", str(k8s), "--skip-images"]) == 1
    out = capsys.readouterr().out
    assert ("FAIL prod: NetworkPolicy/rawdrive-egress-https: allows app.kubernetes.io/part-of=rawdrive: egress to any "
            "address on TCP/22, which the README does not promise") in out
    assert "FAIL prod: NetworkPolicies: the README promises ingress-nginx to the gateway, but nothing allows" in out
    assert "ingress from namespace kubernetes.io/metadata.name=ingress-nginx pods app.kubernetes.io/name=ingress-nginx on TCP/9090" in out
    assert "FAIL prod: NetworkPolicies: the README promises default deny, but nothing allows" in out
    assert "FAIL dev: NetworkPolicies" not in out


def test_an_egress_rule_without_ports_or_to_a_private_range_fails():
    policy = {"kind": "NetworkPolicy", "metadata": {"name": "wide"}, "spec": {
        "podSelector": {"matchLabels": {"app.kubernetes.io/part-of": "rawdrive"}}, "policyTypes": ["Egress"],
        "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"protocol": "TCP", "port": 443}]},
                   {"to": [{"namespaceSelector": {}}]}]}}
    findings = deploy_check.network_findings([policy])
    assert ("NetworkPolicy/wide: allows app.kubernetes.io/part-of=rawdrive: egress to ipBlock 0.0.0.0/0 on TCP/443, "
            "which the README does not promise") in findings
    assert ("NetworkPolicy/wide: allows app.kubernetes.io/part-of=rawdrive: egress to namespace * on every port, "
            "which the README does not promise") in findings


def test_a_nats_value_the_chart_does_not_have_fails(k8s, capsys):
    values = k8s / "nats/values.yaml"
    values.write_text(values.read_text().replace("  jetstream:\n", "  jetstrem:\n", 1)
                      + "container:\n  env:\n    ANYTHING: goes\n")

    assert deploy_check.main(["--k8s", str(k8s), "--skip-images"]) == 1
    out = capsys.readouterr().out
    assert "FAIL nats/values.yaml: config.jetstrem is not a value of the NATS chart" in out
    assert "ANYTHING" not in out  # env is free-form


def test_an_alert_rule_promtool_rejects_or_whose_unit_test_fails_is_reported(k8s, capsys):
    rules = k8s / "components/monitoring/alerts.yaml"
    text = rules.read_text()
    # A syntax error in one rule, and the dead-letter alert waiting longer than its test expects.
    text = text.replace("expr: max by (namespace, pod) (rawdrive_outbox_oldest_row_age_seconds) > 300",
                        "expr: max by (namespace, pod) (rawdrive_outbox_oldest_row_age_seconds > 300")
    rules.write_text(text.replace("for: 5m", "for: 30m", 1))

    assert deploy_check.main(["--k8s", str(k8s), "--skip-images"]) == 1
    out = capsys.readouterr().out
    assert "FAIL prod: promtool check rules:" in out
    assert "FAIL prod: promtool test rules:" in out


def test_an_alert_test_expecting_what_the_rule_does_not_do_fails(k8s, capsys):
    rules = k8s / "components/monitoring/alerts.yaml"
    rules.write_text(rules.read_text().replace("for: 5m", "for: 30m", 1))
    findings, groups = deploy_check.promtool_findings(deploy_check.render(k8s / "overlays/prod"),
                                                      tests=deploy_check.ALERT_TESTS)
    assert groups == 2
    assert any("RawdriveDeadLetters" in f for f in findings), findings


def test_a_scaledobject_whose_limit_the_lag_alert_does_not_follow_fails(k8s, capsys):
    add_patch(k8s, """
        - op: replace
          path: /spec/maxReplicaCount
          value: 12
        """, "{kind: ScaledObject, name: commit-verifier}")

    assert deploy_check.main(["--k8s", str(k8s), "--skip-images"]) == 1
    out = capsys.readouterr().out
    assert ('FAIL prod: ScaledObject/commit-verifier: no RawdriveConsumerLagAtScaleLimit rule fires at its limit '
            '(an expr with `consumer="commit-verifier"}) > 8 * 12`)') in out
    assert "ScaledObject/media-processor: no" not in out


def test_scaledobjects_and_cpu_requests_that_drift_from_the_capacity_plan_fail(k8s, capsys):
    add_patch(k8s, """
        - op: replace
          path: /spec/minReplicaCount
          value: 1
        """, "{kind: ScaledObject, name: media-processor}", ("""
        - op: replace
          path: /spec/template/spec/containers/0/resources/requests/cpu
          value: 500m
        """, "{kind: Deployment, name: commit-verifier}"))

    assert deploy_check.main(["--k8s", str(k8s), "--skip-images"]) == 1
    out = capsys.readouterr().out
    assert "FAIL prod: ScaledObject/media-processor: minReplicaCount 1, docs/capacity.md tier 10 says 2" in out
    assert ("FAIL prod: Deployment/commit-verifier container app: CPU request 500m, "
            "docs/capacity.md tier 10 says 1") in out
    failures = [line for line in out.splitlines() if "FAIL" in line]
    assert len(failures) == 2, failures   # only the drifted values; dev is sized for a laptop, not by the plan


def test_a_capacity_plan_whose_table_changes_fails_the_unchanged_manifests(k8s, tmp_path, capsys):
    plan = (HERE.parents[2] / "docs/capacity.md").read_text()
    raised = tmp_path / "capacity.md"
    raised.write_text(plan.replace("upload-gateway: {cpu_request: \"1\", min_replicas: 2, max_replicas: 4}",
                                   "upload-gateway: {cpu_request: \"1\", min_replicas: 2, max_replicas: 5}"))
    assert raised.read_text() != plan

    assert deploy_check.main(["--k8s", str(k8s), "--skip-images", "--capacity", str(raised)]) == 1
    assert ("FAIL prod: ScaledObject/upload-gateway: maxReplicaCount 4, docs/capacity.md tier 10 says 5"
            in capsys.readouterr().out)

    raised.write_text(plan.replace("default_tier: 10", "default_tier: 50"))
    assert deploy_check.main(["--k8s", str(k8s), "--skip-images", "--capacity", str(raised)]) == 1
    assert "FAIL capacity plan: default_tier 50 is not one of the tiers [10, 100, 1000]" in capsys.readouterr().out

    raised.write_text(plan.replace("# capacity-tiers", "# tiers"))
    assert deploy_check.main(["--k8s", str(k8s), "--skip-images", "--capacity", str(raised)]) == 1
    assert "expected one ```yaml block starting `# capacity-tiers`, found 0" in capsys.readouterr().out


def test_an_httproute_routing_everything_or_cutting_uploads_sooner_than_the_ingress_fails(k8s, capsys):
    add_patch(k8s, """
        - op: replace
          path: /spec/rules/0/matches/0/path/value
          value: /
        - op: replace
          path: /spec/rules/0/timeouts/request
          value: 15s
        - op: remove
          path: /spec/rules/0/timeouts/backendRequest
        """, "{kind: HTTPRoute, name: upload-gateway}")

    assert deploy_check.main(["--k8s", str(k8s), "--skip-images"]) == 1
    out = capsys.readouterr().out
    assert "FAIL prod: HTTPRoute/upload-gateway: routes PathPrefix '/', beyond the public API" in out
    assert "FAIL prod: HTTPRoute/upload-gateway: rule 0 timeouts.request is '15s', not the Ingress's proxy-read-timeout (3600s)" in out
    assert "FAIL prod: HTTPRoute/upload-gateway: rule 0 timeouts.backendRequest is None" in out


def test_gateway_api_durations_are_read_as_the_spec_writes_them():
    assert deploy_check._seconds("3600s") == deploy_check._seconds("1h") == deploy_check._seconds("59m60s") == 3600
    assert deploy_check._seconds("500ms") == 0.5
    with pytest.raises(ValueError):
        deploy_check._seconds("1 hour")


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


ROOT = HERE.parents[2]
IMAGE_SCRIPT = (ROOT / "deploy/k8s/images/image.sh").read_text()


@pytest.mark.parametrize("service", ["upload-gateway", "commit-verifier", "media-processor", "janitor"])
def test_every_dockerfile_takes_the_shared_steps_for_its_own_service(service):
    dockerfile = (ROOT / f"services/{service}/Dockerfile").read_text()
    assert deploy_check.image_script_findings(dockerfile, service, IMAGE_SCRIPT) == []

    # Copied from another service's Dockerfile without renaming: it would build the wrong image.
    assert deploy_check.image_script_findings(dockerfile, "other", IMAGE_SCRIPT) == [
        f"services/other/Dockerfile: its build stage runs ['sh image.sh dependencies', "
        f"'sh image.sh packages {service}'], not ['sh image.sh dependencies', 'sh image.sh packages other']"
    ]


def test_a_dockerfile_that_skips_a_shared_step_or_runs_as_another_uid_fails():
    dockerfile = (ROOT / "services/janitor/Dockerfile").read_text()

    def findings(text: str, script: str = IMAGE_SCRIPT) -> list[str]:
        assert text != dockerfile or script != IMAGE_SCRIPT, "the edit changed nothing"
        return deploy_check.image_script_findings(text, "janitor", script)

    assert findings(dockerfile.replace("RUN sh image.sh dependencies\n", "")) == [
        "services/janitor/Dockerfile: its build stage runs ['sh image.sh packages janitor'], "
        "not ['sh image.sh dependencies', 'sh image.sh packages janitor']"
    ]
    assert findings(dockerfile.replace("deploy/k8s/images/image.sh deploy", "deploy")) == [
        "services/janitor/Dockerfile: no stage copies deploy/k8s/images/image.sh (the steps every image shares)"
    ]
    assert findings(dockerfile.replace(" sh /tmp/image.sh account", " true")) == [
        "services/janitor/Dockerfile: its final stage does not run `sh /tmp/image.sh account` with "
        "`--mount=type=bind,source=deploy/k8s/images/image.sh,target=/tmp/image.sh`"
    ]
    assert findings(dockerfile, IMAGE_SCRIPT.replace("--uid 10001 --gid 10001", "--uid 10002 --gid 10002")) == [
        "services/janitor/Dockerfile: its final stage is not `USER 10002:10002`, the account image.sh creates"
    ]
    old_probe = 'CMD ["python", "-c", "import urllib.request; urllib.request.urlopen(\'http://127.0.0.1:8083/livez\')"]'
    assert findings(dockerfile.replace('CMD ["python", "-m", "rawdrive_platform.livez"]', old_probe)) == [
        'services/janitor/Dockerfile: its HEALTHCHECK is not `CMD ["python", "-m", "rawdrive_platform.livez"]`'
    ]


def test_shellcheck_passes_the_image_script_and_fails_a_broken_one(tmp_path):
    assert deploy_check.shellcheck_findings(ROOT / "deploy/k8s/images/image.sh") == []
    broken = tmp_path / "image.sh"
    broken.write_text(IMAGE_SCRIPT.replace('"./services/$service"', "./services/$service"))
    assert any("SC2086" in f for f in deploy_check.shellcheck_findings(broken))  # unquoted expansion


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


def test_nats_values_without_the_busauth_deny_list_fail(k8s, capsys):
    values = k8s / "nats/values.yaml"
    # The gateway's deny dropped: it could delete the janitor's durable again (issue 20).
    deny = "            - $JS.API.CONSUMER.DELETE.RAWDRIVE_ASSETS.janitor-assets\n"
    assert deny in values.read_text()
    values.write_text(values.read_text().replace(deny, "", 1))

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


def test_the_gateway_dockerfile_builds_the_console_bundle_the_makefile_builds():
    dockerfile, makefile = (ROOT / "services/upload-gateway/Dockerfile").read_text(), (ROOT / "Makefile").read_text()
    assert deploy_check.console_bundle_findings(dockerfile, makefile) == []

    vendor = "services/upload-gateway/src/upload_gateway/console/static/vendor"
    no_copy = "\n".join(line for line in dockerfile.splitlines() if "--from=console" not in line and line.strip() != vendor)
    assert no_copy != dockerfile
    assert any("missing before `sh image.sh packages`" in f for f in deploy_check.console_bundle_findings(no_copy, makefile))

    no_build = dockerfile.replace("RUN npm run build", "RUN true")
    assert any("`npm run build`" in f for f in deploy_check.console_bundle_findings(no_build, makefile))

    # The Makefile moves the web project: the Dockerfile no longer builds what it builds.
    moved = makefile.replace("console/web\n", "console/site\n", 1)
    assert any("WORKDIR" in f for f in deploy_check.console_bundle_findings(dockerfile, moved))

    no_stage = dockerfile.replace("FROM ${NODE_IMAGE} AS console", "FROM ${PYTHON_IMAGE} AS console")
    assert deploy_check.console_bundle_findings(no_stage, makefile) == [
        "services/upload-gateway/Dockerfile: no named Node stage (FROM node:... AS name) builds the console bundle"
    ]

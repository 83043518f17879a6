"""The container backend: one hardened sandbox container per session, created through the Docker SDK.

`container_kwargs` (spec -> Docker arguments) and `hardening_violations` (inspect -> what is missing) are pure;
`DockerBackend` is the thin I/O shell around them. docker-py is synchronous, so every call runs in a thread.
"""

from __future__ import annotations

import contextlib
import functools
import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import anyio.to_thread
import docker
import docker.errors
from docker.models.containers import Container
from docker.types import Mount, Ulimit

from controller import seccomp, versions
from controller.errors import GVisorRequired, HardeningViolation, RuntimeUnavailable, SandboxError

SANDBOX_USER = "65532:65532"
SOCKET_MOUNT = "/run/mcpx"
WORKSPACE_MOUNT = "/workspace"
TOOLS_MOUNT = "/tools"
# gVisor's own host threads count against the cgroup pids limit, so under runsc the cgroup limit is only a
# backstop and the guest's process count is capped by an nproc ulimit that the guest kernel enforces.
GVISOR_PIDS_BACKSTOP = 4096
LABEL_SESSION = "mcpx.session"
LABEL_CONTROLLER = "mcpx.controller"
LABEL_CREATED = "mcpx.created"
LABEL_EXPIRES = "mcpx.expires"  # Unix time: any reaper may remove the sandbox after it
# Files and directories /tmp may hold, per MiB of its size (one per 4 KiB on average): without a cap, empty files
# cost no size at all and only kernel memory bounds their number.
TMP_INODES_PER_MB = 256
# What makes runsc enforce the container's seccomp profile inside the sandbox (by default it ignores it).
RUNSC_SECCOMP_FLAG = "--oci-seccomp"

T = TypeVar("T")


@dataclass(frozen=True)
class SandboxSpec:
    """Everything that decides how one session's container is created."""

    session_id: str
    controller_id: str
    image: str
    runtime: str
    memory_mb: int
    cpus: float
    pids_limit: int
    tmp_size_mb: int
    socket_dir: Path
    workspace_dir: Path
    created: datetime
    expires: float = 0.0
    tools_dir: Path | None = None
    environment: Mapping[str, str] = field(default_factory=dict)
    generation: int = 0  # the session's restarts: an old sandbox whose removal is deferred keeps its name

    @property
    def name(self) -> str:
        base = f"mcpx-{self.controller_id}-{self.session_id}"
        return f"{base}-{self.generation}" if self.generation else base

    @property
    def tmp_options(self) -> str:
        inodes = self.tmp_size_mb * TMP_INODES_PER_MB
        return f"rw,nosuid,nodev,size={self.tmp_size_mb}m,nr_inodes={inodes},mode=1777"

    @property
    def labels(self) -> dict[str, str]:
        return {
            LABEL_SESSION: self.session_id,
            LABEL_CONTROLLER: self.controller_id,
            LABEL_CREATED: self.created.strftime("%Y-%m-%dT%H:%M:%SZ"),
            LABEL_EXPIRES: str(int(self.expires)),
        }

    @property
    def binds(self) -> dict[str, tuple[str, bool]]:
        """Container path -> (host path, read-only): the only host paths a sandbox sees."""
        binds = {SOCKET_MOUNT: (str(self.socket_dir), True), WORKSPACE_MOUNT: (str(self.workspace_dir), False)}
        if self.tools_dir is not None:
            binds[TOOLS_MOUNT] = (str(self.tools_dir), True)
        return binds


@dataclass(frozen=True)
class OwnedSandbox:
    """A sandbox container of this controller, as the engine lists it."""

    container_id: str
    session_id: str
    running: bool
    expires: float


@dataclass(frozen=True)
class SandboxState:
    """What the engine says about a sandbox container."""

    running: bool
    exit_code: int | None
    oom_killed: bool


class SandboxBackend(Protocol):
    """The seam where a Kubernetes backend can replace Docker."""

    async def runtimes(self) -> set[str]: ...

    async def start(self, spec: SandboxSpec) -> str: ...

    async def state(self, container_id: str) -> SandboxState | None: ...

    async def logs(self, container_id: str) -> str: ...

    async def remove(self, container_id: str) -> None: ...

    async def owned(self, controller_id: str) -> list[OwnedSandbox]: ...

    async def watch_ooms(self, controller_id: str, on_oom: Callable[[str], None]) -> Callable[[], None]: ...

    async def ready(self, image: str) -> bool: ...

    async def versions(self) -> dict[str, str]: ...


def container_kwargs(spec: SandboxSpec) -> dict[str, Any]:
    """The Docker `containers.create` arguments of a hardened sandbox (DESIGN.md section 3)."""
    gvisor = spec.runtime == "runsc"
    memory = spec.memory_mb * 1024 * 1024
    return {
        "image": spec.image,
        "name": spec.name,
        "hostname": "sandbox",
        "labels": spec.labels,
        "runtime": spec.runtime,
        "network_mode": "none",
        "read_only": True,
        "tmpfs": {"/tmp": spec.tmp_options},
        "mounts": [
            Mount(target=target, source=source, type="bind", read_only=read_only)
            for target, (source, read_only) in spec.binds.items()
        ],
        "user": SANDBOX_USER,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges", seccomp.security_option(gvisor)],
        "pids_limit": GVISOR_PIDS_BACKSTOP if gvisor else spec.pids_limit,
        "ulimits": [Ulimit(name="nproc", soft=spec.pids_limit, hard=spec.pids_limit)] if gvisor else [],
        "mem_limit": memory,
        "memswap_limit": memory,
        "nano_cpus": int(spec.cpus * 1e9),
        "init": True,
        "ipc_mode": "none",  # no /dev/shm: the workspace and /tmp are the only writable places
        "environment": dict(spec.environment),
        "detach": True,
    }


def hardening_violations(attrs: Mapping[str, Any], spec: SandboxSpec) -> list[str]:
    """Compare a created container's inspect data with the spec; every missing hardening flag is named."""
    host: Mapping[str, Any] = attrs.get("HostConfig") or {}
    config: Mapping[str, Any] = attrs.get("Config") or {}
    security = [option.replace("=", ":") for option in host.get("SecurityOpt") or []]
    memory = spec.memory_mb * 1024 * 1024
    gvisor = spec.runtime == "runsc"
    ulimits = {u.get("Name"): (u.get("Soft"), u.get("Hard")) for u in host.get("Ulimits") or []}
    mounts = {
        m.get("Target"): (m.get("Source"), bool(m.get("ReadOnly")), m.get("Type")) for m in host.get("Mounts") or []
    }
    expected_mounts = {target: (source, ro, "bind") for target, (source, ro) in spec.binds.items()}
    checks = [
        (host.get("Runtime") == spec.runtime, f"runtime is not {spec.runtime}"),
        (host.get("NetworkMode") == "none", "network is not none"),
        (host.get("ReadonlyRootfs") is True, "root filesystem is writable"),
        ("ALL" in (host.get("CapDrop") or []) and not host.get("CapAdd"), "capabilities are not all dropped"),
        (not host.get("Privileged"), "container is privileged"),
        (any(o.startswith("no-new-privileges") for o in security), "no-new-privileges is not set"),
        (not any("unconfined" in o for o in security), "a security profile is unconfined"),
        (_seccomp_profiles(host) == [seccomp.profile(gvisor)], "the seccomp profile is not mcpx's"),
        (config.get("User") == SANDBOX_USER, f"user is not {SANDBOX_USER}"),
        (host.get("Memory") == memory, "memory limit is missing"),
        (host.get("MemorySwap") == memory, "swap is not disabled"),
        (host.get("NanoCpus") == int(spec.cpus * 1e9) > 0, "CPU quota is missing"),
        (host.get("PidsLimit") == (GVISOR_PIDS_BACKSTOP if gvisor else spec.pids_limit), "pids limit is missing"),
        (not gvisor or ulimits.get("nproc") == (spec.pids_limit, spec.pids_limit), "nproc ulimit is missing"),
        (host.get("Init") is True, "no init process"),
        ((host.get("Tmpfs") or {}).get("/tmp") == spec.tmp_options, "/tmp is not a tmpfs with size and inode caps"),
        (mounts == expected_mounts and not host.get("Binds"), "mounts differ from the spec"),
        (not host.get("Devices") and host.get("PidMode") in ("", None), "host devices or pid namespace are shared"),
    ]
    return [problem for ok, problem in checks if not ok]


def _seccomp_profiles(host: Mapping[str, Any]) -> list[object]:
    """The inline seccomp profiles among a container's security options (Docker keeps them as sent)."""
    profiles: list[object] = []
    for option in host.get("SecurityOpt") or []:
        if option.startswith("seccomp=") or option.startswith("seccomp:"):
            try:
                profiles.append(json.loads(option[len("seccomp=") :]))
            except ValueError:
                profiles.append(option)
    return profiles


def engine_violations(info: Mapping[str, Any], runtime: str) -> list[str]:
    """What the engine's registration of `runtime` lacks for the sandbox's hardening to hold (`docker info`)."""
    registered: Mapping[str, Any] = (info.get("Runtimes") or {}).get(runtime) or {}
    if runtime == "runsc" and RUNSC_SECCOMP_FLAG not in (registered.get("runtimeArgs") or []):
        return [f"runsc is registered without {RUNSC_SECCOMP_FLAG}: the seccomp profile would not be enforced"]
    return []


class DockerBackend:
    """Sandboxes as Docker containers. Every docker-py error is mapped to an mcpx error here."""

    def __init__(self, docker_host: str | None = None) -> None:
        self._docker_host = docker_host
        self._client: docker.DockerClient | None = None
        self._info: Mapping[str, Any] | None = None  # `docker info`, read once: runtimes change only on a reload
        self._versions: dict[str, str] | None = None

    async def _call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return await anyio.to_thread.run_sync(functools.partial(function, *args, **kwargs))
        except docker.errors.ImageNotFound as exc:
            raise RuntimeUnavailable(f"sandbox image missing: {exc.explanation}") from exc
        except docker.errors.DockerException as exc:
            raise RuntimeUnavailable(f"Docker failed: {exc}") from exc

    async def client(self) -> docker.DockerClient:
        if self._client is None:
            if self._docker_host:
                self._client = await self._call(docker.DockerClient, base_url=self._docker_host)
            else:
                self._client = await self._call(docker.from_env)
        return self._client

    async def info(self) -> Mapping[str, Any]:
        if self._info is None:
            client = await self.client()
            self._info = await self._call(client.info)
        return self._info

    async def runtimes(self) -> set[str]:
        return set((await self.info()).get("Runtimes") or {})

    async def versions(self) -> dict[str, str]:
        """Docker's, runc's and runsc's versions (runsc's only where its binary is on this host), read once."""
        if self._versions is not None:
            return self._versions
        info = await self.info()
        path = ((info.get("Runtimes") or {}).get("runsc") or {}).get("path")
        runsc = ""
        if path:
            with contextlib.suppress(OSError):
                done = await anyio.run_process([path, "--version"], check=False)
                runsc = versions.runsc_version(done.stdout.decode(errors="replace"))
        self._versions = versions.components(info, runsc)
        return self._versions

    async def ready(self, image: str) -> bool:
        try:
            client = await self.client()
            await self._call(client.ping)
            await self._call(client.images.get, image)
        except RuntimeUnavailable:
            return False
        return True

    async def start(self, spec: SandboxSpec) -> str:
        """Create, verify and start a sandbox; return its container id.

        Raises:
            HardeningViolation: the created container lacks a flag (it is removed first).
            RuntimeUnavailable: Docker failed or the image is missing.
        """
        engine = engine_violations(await self.info(), spec.runtime)
        if engine:
            raise HardeningViolation(engine, session_id=spec.session_id)
        client = await self.client()
        container: Container = await self._call(client.containers.create, **container_kwargs(spec))
        try:
            violations = hardening_violations(container.attrs, spec)
            if violations:
                raise HardeningViolation(violations, session_id=spec.session_id)
            await self._call(container.start)
        except BaseException:
            await self.remove(container.id or spec.name)
            raise
        return container.id or spec.name

    async def state(self, container_id: str) -> SandboxState | None:
        client = await self.client()
        try:
            attrs = await self._call(client.api.inspect_container, container_id)
        except RuntimeUnavailable:
            return None
        state = attrs.get("State") or {}
        running = bool(state.get("Running"))
        return SandboxState(running, None if running else state.get("ExitCode"), bool(state.get("OOMKilled")))

    async def logs(self, container_id: str) -> str:
        client = await self.client()
        try:
            data = await self._call(client.api.logs, container_id, tail=50)
        except RuntimeUnavailable:
            return ""
        return data.decode(errors="replace") if isinstance(data, bytes) else str(data)

    async def remove(self, container_id: str) -> None:
        """Remove a sandbox, running or not, in one attempt; one already gone (or being removed) is not an error.

        Raises:
            SandboxError: the engine refused (a zombie it cannot kill yet, a layer it cannot delete) or is away;
                the caller tries again later.
        """
        try:
            client = await self.client()
            await self._call(client.api.remove_container, container_id, force=True, v=True)
        except RuntimeUnavailable as exc:
            cause = exc.__cause__
            if isinstance(cause, docker.errors.NotFound):
                return
            if isinstance(cause, docker.errors.APIError) and cause.status_code == 409:
                return  # removal already in progress
            raise SandboxError(f"cannot remove sandbox {container_id}: {exc}") from exc

    async def owned(self, controller_id: str) -> list[OwnedSandbox]:
        """Every sandbox labelled as this controller's, running or not."""
        client = await self.client()
        found = await self._call(
            client.api.containers, all=True, filters={"label": f"{LABEL_CONTROLLER}={controller_id}"}
        )
        return [
            OwnedSandbox(
                container_id=entry["Id"],
                session_id=(entry.get("Labels") or {}).get(LABEL_SESSION, ""),
                running=entry.get("State") == "running",
                expires=float((entry.get("Labels") or {}).get(LABEL_EXPIRES) or 0),
            )
            for entry in found
        ]

    async def watch_ooms(self, controller_id: str, on_oom: Callable[[str], None]) -> Callable[[], None]:
        """Call `on_oom(container_id)`, from a thread of its own, for each OOM kill the engine reports in one of
        this controller's sandboxes; return what stops watching.

        Under gVisor's systrap platform a sandbox outlives the OOM kill of one of its processes, and nothing inside
        tells that death from an ordinary exit (the killed process exits with status 1): only the engine knows.
        """
        client = await self.client()
        filters = {"type": "container", "event": "oom", "label": f"{LABEL_CONTROLLER}={controller_id}"}
        events = await self._call(client.events, decode=True, filters=filters)

        def follow() -> None:
            with contextlib.suppress(Exception):  # the stream ends when closed, or when the engine goes away
                for event in events:
                    if isinstance(event, dict) and isinstance(event.get("id"), str):
                        on_oom(event["id"])

        threading.Thread(target=follow, name="mcpx-oom-events", daemon=True).start()
        return events.close


def choose_runtime(available: set[str], requested: str | None, require_gvisor: bool) -> str:
    """The requested runtime if Docker has it, else runsc when registered, else runc.

    Raises:
        GVisorRequired: gVisor is required and not registered, or another runtime was requested.
        RuntimeUnavailable: the requested runtime is not registered.
    """
    if require_gvisor and "runsc" not in available:
        raise GVisorRequired("require_gvisor is set but Docker has no runsc runtime registered")
    if requested is None:
        return "runsc" if "runsc" in available else "runc"
    if require_gvisor and requested != "runsc":
        raise GVisorRequired(f"require_gvisor is set; runtime {requested!r} is refused")
    if requested not in available:
        raise RuntimeUnavailable(f"runtime {requested!r} is not registered with Docker ({sorted(available)})")
    return requested

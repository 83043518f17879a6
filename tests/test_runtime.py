"""The container spec: Docker arguments, hardening verification against real inspect data, runtime choice."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import pytest
from inline_snapshot import snapshot

from controller.errors import GVisorRequired, RuntimeUnavailable
from controller.runtime import SandboxSpec, choose_runtime, container_kwargs, hardening_violations
from controller.sessions import session_directory
from tests.conftest import SessionFactory


def spec(runtime: str = "runsc", **overrides: Any) -> SandboxSpec:
    values: dict[str, Any] = {
        "session_id": "0123456789abcdef",
        "controller_id": "mcpx",
        "image": "mcpx-sandbox:latest",
        "runtime": runtime,
        "memory_mb": 512,
        "cpus": 1.5,
        "pids_limit": 256,
        "tmp_size_mb": 64,
        "socket_dir": Path("/var/lib/mcpx/sessions/0123456789abcdef/socket"),
        "workspace_dir": Path("/var/lib/mcpx/sessions/0123456789abcdef/workspace"),
        "created": datetime(2026, 11, 25, 12, 0, tzinfo=UTC),
        "expires": 1795003200.5,
        "environment": {"MCPX_SOCKET": "/run/mcpx/bridge.sock"},
    }
    return SandboxSpec(**{**values, **overrides})


def test_gvisor_container_arguments():
    assert container_kwargs(spec("runsc")) == snapshot(
        {
            "image": "mcpx-sandbox:latest",
            "name": "mcpx-mcpx-0123456789abcdef",
            "hostname": "sandbox",
            "labels": {
                "mcpx.session": "0123456789abcdef",
                "mcpx.controller": "mcpx",
                "mcpx.created": "2026-11-25T12:00:00Z",
                "mcpx.expires": "1795003200",
            },
            "runtime": "runsc",
            "network_mode": "none",
            "read_only": True,
            "tmpfs": {"/tmp": "rw,nosuid,nodev,size=64m,mode=1777"},
            "mounts": [
                {
                    "Target": "/run/mcpx",
                    "Source": "/var/lib/mcpx/sessions/0123456789abcdef/socket",
                    "Type": "bind",
                    "ReadOnly": True,
                },
                {
                    "Target": "/workspace",
                    "Source": "/var/lib/mcpx/sessions/0123456789abcdef/workspace",
                    "Type": "bind",
                    "ReadOnly": False,
                },
            ],
            "user": "65532:65532",
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "pids_limit": 4096,
            "ulimits": [{"Name": "nproc", "Soft": 256, "Hard": 256}],
            "mem_limit": 536870912,
            "memswap_limit": 536870912,
            "nano_cpus": 1500000000,
            "init": True,
            "ipc_mode": "none",
            "environment": {"MCPX_SOCKET": "/run/mcpx/bridge.sock"},
            "detach": True,
        }
    )


def test_runc_caps_processes_with_the_cgroup_and_sets_no_nproc_ulimit():
    kwargs = container_kwargs(spec("runc"))
    assert kwargs["pids_limit"] == 256
    assert kwargs["ulimits"] == []


def live_attrs(docker_client: docker.DockerClient, session: str) -> dict[str, Any]:
    (container,) = docker_client.containers.list(filters={"label": f"mcpx.session={session}"})
    return dict(container.attrs)


Mutation = Callable[[dict[str, Any]], None]
MUTATIONS: dict[str, Mutation] = {
    "runtime": lambda a: a["HostConfig"].update(Runtime="other"),
    "network": lambda a: a["HostConfig"].update(NetworkMode="bridge"),
    "read-only root": lambda a: a["HostConfig"].update(ReadonlyRootfs=False),
    "cap drop": lambda a: a["HostConfig"].update(CapDrop=[]),
    "cap add": lambda a: a["HostConfig"].update(CapAdd=["SYS_ADMIN"]),
    "privileged": lambda a: a["HostConfig"].update(Privileged=True),
    "no-new-privileges": lambda a: a["HostConfig"].update(SecurityOpt=[]),
    "seccomp unconfined": lambda a: a["HostConfig"]["SecurityOpt"].append("seccomp=unconfined"),
    "user": lambda a: a["Config"].update(User=""),
    "memory": lambda a: a["HostConfig"].update(Memory=0),
    "swap": lambda a: a["HostConfig"].update(MemorySwap=-1),
    "cpu": lambda a: a["HostConfig"].update(NanoCpus=0),
    "pids": lambda a: a["HostConfig"].update(PidsLimit=None),
    "init": lambda a: a["HostConfig"].update(Init=False),
    "tmpfs": lambda a: a["HostConfig"].update(Tmpfs={}),
    "extra mount": lambda a: a["HostConfig"]["Mounts"].append(
        {"Type": "bind", "Source": "/var/run/docker.sock", "Target": "/var/run/docker.sock"}
    ),
    "writable socket dir": lambda a: [m.update(ReadOnly=False) for m in a["HostConfig"]["Mounts"]],
    "binds": lambda a: a["HostConfig"].update(Binds=["/:/host"]),
    "host pid": lambda a: a["HostConfig"].update(PidMode="host"),
    "devices": lambda a: a["HostConfig"].update(Devices=[{"PathOnHost": "/dev/kvm"}]),
}


@pytest.mark.parametrize("flag", MUTATIONS)
def test_a_container_missing_any_hardening_flag_is_refused(
    flag: str, new_session: SessionFactory, docker_client: docker.DockerClient, settings: Any
):
    session = new_session(runtime="runc")
    attrs = live_attrs(docker_client, session)
    directory = session_directory(settings.state_dir / "sessions", session)
    live_spec = spec(
        "runc",
        session_id=session,
        controller_id=settings.controller_id,
        memory_mb=256,
        cpus=1.0,
        pids_limit=settings.pids_limit,
        socket_dir=directory / "socket",
        workspace_dir=directory / "workspace",
        tools_dir=Path(next(m["Source"] for m in attrs["HostConfig"]["Mounts"] if m["Target"] == "/tools")),
    )
    assert hardening_violations(attrs, live_spec) == []
    broken = copy.deepcopy(attrs)
    MUTATIONS[flag](broken)
    assert hardening_violations(broken, live_spec) != []


def test_gvisor_nproc_ulimit_is_verified(new_session: SessionFactory, docker_client: docker.DockerClient):
    attrs = live_attrs(docker_client, new_session(runtime="runsc"))
    assert {"Name": "nproc", "Soft": 128, "Hard": 128} in attrs["HostConfig"]["Ulimits"]
    assert attrs["HostConfig"]["PidsLimit"] == 4096


@pytest.mark.parametrize(
    ("available", "requested", "required", "expected"),
    [
        ({"runc", "runsc"}, None, False, "runsc"),
        ({"runc"}, None, False, "runc"),
        ({"runc", "runsc"}, "runc", False, "runc"),
        ({"runc", "runsc"}, "runsc", True, "runsc"),
    ],
)
def test_runtime_choice(available: set[str], requested: str | None, required: bool, expected: str):
    assert choose_runtime(available, requested, required) == expected


def test_require_gvisor_refuses_runc():
    with pytest.raises(GVisorRequired):
        choose_runtime({"runc"}, None, True)
    with pytest.raises(GVisorRequired):
        choose_runtime({"runc", "runsc"}, "runc", True)
    with pytest.raises(RuntimeUnavailable):
        choose_runtime({"runc"}, "runsc", False)

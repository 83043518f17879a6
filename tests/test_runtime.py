"""The container spec: Docker arguments, hardening verification against real inspect data, runtime choice, and
sandboxes the engine refuses to remove."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
from inline_snapshot import snapshot

from controller import seccomp
from controller.errors import GVisorRequired, RuntimeUnavailable
from controller.runtime import (
    SandboxSpec,
    choose_runtime,
    container_kwargs,
    engine_violations,
    hardening_violations,
)
from controller.sessions import session_directory
from tests.conftest import SessionFactory, execute, wait_until


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
    kwargs = container_kwargs(spec("runsc"))
    assert kwargs.pop("security_opt") == ["no-new-privileges", seccomp.security_option(gvisor=True)]
    assert kwargs == snapshot(
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
            "tmpfs": {"/tmp": "rw,nosuid,nodev,size=64m,nr_inodes=16384,mode=1777"},
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


def test_runc_gets_the_same_profile_except_that_clone3_falls_back_to_clone():
    assert container_kwargs(spec("runc"))["security_opt"] == ["no-new-privileges", seccomp.security_option(False)]
    runc, gvisor = seccomp.profile(gvisor=False), seccomp.profile(gvisor=True)
    assert runc["syscalls"][:-1] == gvisor["syscalls"][:-1]
    assert runc["syscalls"][-1] == {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}
    assert gvisor["syscalls"][-1] == {"names": ["clone3"], "action": "SCMP_ACT_ALLOW"}


@pytest.mark.parametrize("gvisor", [False, True])
def test_the_profile_allows_no_call_it_removes_from_dockers_default_and_sockets_only_of_the_unix_family(gvisor: bool):
    rules = seccomp.profile(gvisor)["syscalls"]
    unconditional = {name for rule in rules if rule["action"] == "SCMP_ACT_ALLOW" and "args" not in rule
                     for name in rule["names"]}  # fmt: skip
    assert not unconditional & set(seccomp.REMOVED_FROM_DOCKER_DEFAULT)
    assert not unconditional & {"socket", "socketpair", "personality", "clone", "keyctl", "add_key", "request_key",
                                "bpf", "perf_event_open", "userfaultfd", "kexec_load", "mount", "umount2", "unshare",
                                "setns", "init_module", "open_by_handle_at", "kcmp", "pidfd_getfd"}  # fmt: skip
    sockets = [rule for rule in rules if "socket" in rule["names"]]
    assert sockets == [
        {
            "names": ["socket", "socketpair"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}],
        }
    ]
    assert seccomp.profile(gvisor)["defaultAction"] == "SCMP_ACT_ERRNO"


def test_a_tmp_inode_cap_grows_with_the_tmp_size():
    assert container_kwargs(spec(tmp_size_mb=1))["tmpfs"] == {"/tmp": "rw,nosuid,nodev,size=1m,nr_inodes=256,mode=1777"}


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
    "docker's default seccomp profile": lambda a: a["HostConfig"].update(SecurityOpt=["no-new-privileges"]),
    "seccomp allows ptrace": lambda a: a["HostConfig"].update(
        SecurityOpt=[
            "no-new-privileges",
            "seccomp="
            + json.dumps({**seccomp.profile(False), "syscalls": [{"names": ["ptrace"], "action": "SCMP_ACT_ALLOW"}]}),
        ]
    ),
    "a second seccomp profile": lambda a: a["HostConfig"]["SecurityOpt"].append("seccomp=" + json.dumps({})),
    "user": lambda a: a["Config"].update(User=""),
    "memory": lambda a: a["HostConfig"].update(Memory=0),
    "swap": lambda a: a["HostConfig"].update(MemorySwap=-1),
    "cpu": lambda a: a["HostConfig"].update(NanoCpus=0),
    "pids": lambda a: a["HostConfig"].update(PidsLimit=None),
    "init": lambda a: a["HostConfig"].update(Init=False),
    "tmpfs": lambda a: a["HostConfig"].update(Tmpfs={}),
    "tmp without inode cap": lambda a: a["HostConfig"].update(Tmpfs={"/tmp": "rw,nosuid,nodev,size=64m,mode=1777"}),
    "tmp inode cap raised": lambda a: a["HostConfig"]["Tmpfs"].update(
        {"/tmp": re.sub(r"nr_inodes=\d+", "nr_inodes=99999999", a["HostConfig"]["Tmpfs"]["/tmp"])}
    ),
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


def test_a_live_sandbox_carries_the_profile_of_its_runtime_and_the_tmp_inode_cap(
    runtime: str, new_session: SessionFactory, docker_client: docker.DockerClient, settings: Any
):
    host = live_attrs(docker_client, new_session(runtime=runtime))["HostConfig"]
    assert host["SecurityOpt"] == ["no-new-privileges", seccomp.security_option(runtime == "runsc")]
    inodes = settings.tmp_size_mb * 256
    assert host["Tmpfs"] == {"/tmp": f"rw,nosuid,nodev,size={settings.tmp_size_mb}m,nr_inodes={inodes},mode=1777"}


def test_runsc_registered_without_oci_seccomp_is_refused_before_any_container_is_created():
    def info(*args: str) -> dict[str, Any]:
        return {"Runtimes": {"runc": {"path": "runc"}, "runsc": {"path": "/usr/bin/runsc", "runtimeArgs": list(args)}}}

    assert engine_violations(info("--network=none", "--host-uds=open"), "runsc") == [
        "runsc is registered without --oci-seccomp: the seccomp profile would not be enforced"
    ]
    assert engine_violations(info("--network=none", "--oci-seccomp"), "runsc") == []
    assert engine_violations(info("--network=none"), "runc") == []
    assert engine_violations({"Runtimes": {}}, "runsc") != []


def test_the_engine_registers_runsc_with_oci_seccomp(docker_client: docker.DockerClient):
    assert engine_violations(docker_client.info(), "runsc") == []


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


# --- sandboxes the engine refuses to remove -------------------------------------------------------------------------


@contextmanager
def unremovable(container: Any) -> Iterator[None]:
    """While the block runs, the engine refuses to remove `container` (a 500, as for a zombie it cannot kill yet):
    an immutable file in its writable layer is one it cannot delete. Needs root, as the engine does."""
    if os.geteuid() != 0:
        pytest.skip("making a container's layer immutable needs root")
    pin = Path(container.attrs["GraphDriver"]["Data"]["UpperDir"]) / "mcpx-test-pin"
    pin.touch()
    subprocess.run(["chattr", "+i", str(pin)], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(pin)], check=True)


def sandboxes_of(docker_client: docker.DockerClient, session: str) -> list[str]:
    """The ids of the session's sandboxes, running or not (listed in one call: no race with a removal)."""
    return [
        entry["Id"] for entry in docker_client.api.containers(all=True, filters={"label": f"mcpx.session={session}"})
    ]


def audit_events(settings: Any, event: str, session: str) -> list[dict[str, Any]]:
    lines = (settings.state_dir / "audit.log").read_text().splitlines()
    return [entry for entry in map(json.loads, lines) if entry["event"] == event and entry["session"] == session]


def deferred_removals(api: httpx.Client) -> float:
    text = api.get("/metrics").text
    found = re.search(r"^mcpx_sandbox_removals_deferred_total(?:\{[^}]*\})? (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_a_sandbox_the_engine_will_not_remove_does_not_fail_the_delete_and_is_removed_later(
    runtime: str, api: httpx.Client, new_session: SessionFactory, docker_client: docker.DockerClient, settings: Any
):
    session = new_session(runtime=runtime)
    container = docker_client.containers.get(*sandboxes_of(docker_client, session))
    before = deferred_removals(api)
    with unremovable(container):
        assert api.delete(f"/v1/sessions/{session}").status_code == 204
        assert api.get(f"/v1/sessions/{session}").status_code == 404
        assert sandboxes_of(docker_client, session) == [container.id]  # the engine did refuse
        assert deferred_removals(api) == before + 1
        (deferred,) = audit_events(settings, "sandbox.removal_deferred", session)
        assert deferred["container"] == container.id and "cannot remove sandbox" in deferred["reason"]
        assert re.search(r"^mcpx_sandbox_removals_pending(\{[^}]*\})? [1-9]", api.get("/metrics").text, re.MULTILINE)
    wait_until(lambda: not sandboxes_of(docker_client, session), 60, "the reaper to remove the sandbox")
    assert [e["container"] for e in audit_events(settings, "sandbox.removed_late", session)] == [container.id]


def test_a_restart_proceeds_in_a_new_sandbox_while_the_old_ones_removal_is_deferred(
    runtime: str, api: httpx.Client, new_session: SessionFactory, docker_client: docker.DockerClient, settings: Any
):
    session = new_session(runtime=runtime)
    execute(api, session, "(open('/workspace/kept', 'w').write('kept'), 1)[1]")
    old = docker_client.containers.get(*sandboxes_of(docker_client, session))
    with unremovable(old):
        old.kill()  # the sandbox dies: the next execution restarts the session in a new one
        reply = execute(api, session, "open('/workspace/kept').read()")
        assert reply["error"] is None and reply["result"] == "kept" and reply["state_reset"] is True
        assert api.get(f"/v1/sessions/{session}").json()["restarts"] == 1
        sandboxes = sandboxes_of(docker_client, session)
        assert old.id in sandboxes and len(sandboxes) == 2
        new = docker_client.containers.get(*(c for c in sandboxes if c != old.id))
        assert new.status == "running" and new.name.endswith("-1")
        (deferred,) = audit_events(settings, "sandbox.removal_deferred", session)
        assert deferred["container"] == old.id
    wait_until(lambda: len(sandboxes_of(docker_client, session)) == 1, 60, "the reaper to remove the old sandbox")
    assert execute(api, session, "2 + 2")["result"] == 4

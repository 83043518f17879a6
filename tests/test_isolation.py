"""What code inside a sandbox can see and do, checked from inside, under both runtimes."""

from __future__ import annotations

from pathlib import Path

import docker
import httpx

from controller.config import Settings
from tests.conftest import PIDS_LIMIT, SessionFactory, execute

# gVisor's sentry reports this fixed kernel identity instead of the host's.
GVISOR_PROC_VERSION = "Linux version 4.4.0 #1 SMP Sun Jan 10 15:06:54 PST 2016"


def run(api: httpx.Client, session: str, code: str, **body: object) -> object:
    reply = execute(api, session, code, **body)
    assert reply["error"] is None, reply["error"]
    return reply["result"]


def test_only_loopback_exists_and_there_is_no_route_out(api: httpx.Client, new_session: SessionFactory, runtime: str):
    session = new_session(runtime=runtime)
    # The kernel's own list (netlink, which if_nameindex needs, is refused by the seccomp profile).
    interfaces = "sorted(line.split(':')[0].strip() for line in open('/proc/net/dev').readlines()[2:])"
    assert run(api, session, interfaces) == ["lo"]
    # No socket but AF_UNIX can be made; were one made, a UDP connect() only consults the routing table.
    outcome = run(
        api,
        session,
        (
            "import socket, errno\n"
            "def route(family, address):\n"
            "    try:\n"
            "        with socket.socket(family, socket.SOCK_DGRAM) as s:\n"
            "            s.connect(address)\n"
            "        return 'routed'\n"
            "    except OSError as exc:\n"
            "        return errno.errorcode.get(exc.errno, str(exc.errno))\n"
            "[route(socket.AF_INET, ('192.0.2.1', 9)), route(socket.AF_INET6, ('2001:db8::1', 9))]"
        ),
    )
    # EPERM: the profile refused the socket; runc's ENETUNREACH (EADDRNOTAVAIL for IPv6) and gVisor's EHOSTUNREACH
    # would each mean that no route exists.
    assert set(outcome) <= {"EPERM", "ENETUNREACH", "EHOSTUNREACH", "EADDRNOTAVAIL"}, outcome


def test_root_filesystem_stubs_and_socket_dir_are_read_only(
    api: httpx.Client, new_session: SessionFactory, runtime: str
):
    session = new_session(runtime=runtime)
    writable = run(
        api,
        session,
        (
            "import os\n"
            "def can_write(directory):\n"
            "    path = os.path.join(directory, 'mcpx-probe')\n"
            "    try:\n"
            "        with open(path, 'w') as f:\n"
            "            f.write('x')\n"
            "    except OSError:\n"
            "        return False\n"
            "    os.unlink(path)\n"
            "    return True\n"
            "dirs = ['/', '/etc', '/usr', '/usr/lib', '/var', '/root', '/home', '/opt/mcpx', '/tools', '/run/mcpx',\n"
            "        '/dev/shm', '/workspace', '/tmp']\n"
            "{d: can_write(d) for d in dirs}"
        ),
    )
    assert writable == {d: d in ("/workspace", "/tmp") for d in writable}, writable


def test_code_runs_as_a_non_root_user_with_no_capabilities(
    api: httpx.Client, new_session: SessionFactory, runtime: str
):
    session = new_session(runtime=runtime)
    uid, gid, groups = run(api, session, "import os\nos.getuid(), os.getgid(), os.getgroups()")
    assert (uid, gid) == (65532, 65532)
    assert 0 not in groups
    caps = run(
        api,
        session,
        (
            "lines = open('/proc/self/status').read().splitlines()\n"
            "fields = dict(line.split(':\\t', 1) for line in lines if ':\\t' in line)\n"
            "{k: int(fields[k], 16) for k in ('CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb') if k in fields}"
        ),
    )
    assert caps, "no capability sets in /proc/self/status"
    assert set(caps.values()) == {0}, caps


def test_no_new_privileges_is_set(
    api: httpx.Client, new_session: SessionFactory, runtime: str, docker_client: docker.DockerClient, settings: Settings
):
    session = new_session(runtime=runtime)
    # prctl(PR_GET_NO_NEW_PRIVS) answers under both runtimes; runsc's /proc/self/status has no NoNewPrivs line.
    flag = run(api, session, "import ctypes\nctypes.CDLL(None, use_errno=True).prctl(39, 0, 0, 0, 0)")
    assert flag == 1
    if runtime == "runc":
        assert "NoNewPrivs:\t1" in str(run(api, session, "open('/proc/self/status').read()"))
    (container,) = docker_client.containers.list(filters={"label": f"mcpx.session={session}"})
    assert "no-new-privileges" in container.attrs["HostConfig"]["SecurityOpt"]


def test_proc_version_shows_gvisor_only_under_runsc(api: httpx.Client, new_session: SessionFactory, runtime: str):
    version = str(run(api, new_session(runtime=runtime), "open('/proc/version').read()"))
    host_version = Path("/proc/version").read_text()
    if runtime == "runsc":
        assert version.startswith(GVISOR_PROC_VERSION)
    else:
        assert version == host_version


def test_process_count_is_capped(api: httpx.Client, new_session: SessionFactory, runtime: str):
    session = new_session(runtime=runtime)
    started, error = run(
        api,
        session,
        (
            "import os, signal\n"
            "children, error = [], None\n"
            f"for _ in range({PIDS_LIMIT * 2}):\n"
            "    try:\n"
            "        pid = os.fork()\n"
            "    except OSError as exc:\n"
            "        error = exc.strerror\n"
            "        break\n"
            "    if pid == 0:\n"
            "        os.execv('/bin/sleep', ['sleep', '30'])\n"
            "    children.append(pid)\n"
            "for pid in children:\n"
            "    os.kill(pid, signal.SIGKILL)\n"
            "    os.waitpid(pid, 0)\n"
            "len(children), error"
        ),
        timeout_s=120,  # a fork and exec takes up to ~0.1 s under gVisor here
    )
    assert 10 < started < PIDS_LIMIT
    assert error is not None
    assert run(api, session, "import subprocess\nsubprocess.run(['true']).returncode") == 0


def test_memory_limit_is_enforced_by_the_engine(
    new_session: SessionFactory, runtime: str, docker_client: docker.DockerClient
):
    session = new_session(runtime=runtime, memory_mb=200)
    (container,) = docker_client.containers.list(filters={"label": f"mcpx.session={session}"})
    host = container.attrs["HostConfig"]
    assert host["Memory"] == host["MemorySwap"] == 200 * 1024 * 1024


def test_environment_holds_no_secrets_and_no_docker_socket_is_reachable(api: httpx.Client, new_session: SessionFactory):
    session = new_session()
    env, docker_socket = run(api, session, "import os\nsorted(os.environ), os.path.exists('/var/run/docker.sock')")
    assert docker_socket is False
    assert all(
        name in {"PATH", "LANG", "HOME", "HOSTNAME", "PYTHONPATH", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED"}
        or name.startswith("MCPX_")
        for name in env
    ), env


def test_workspace_is_size_capped_and_a_full_workspace_is_a_clean_error(
    api: httpx.Client, new_session: SessionFactory, runtime: str, settings: Settings
):
    session = new_session(runtime=runtime)
    reply = execute(
        api,
        session,
        (
            "import errno\n"
            "chunk = b'x' * (1024 * 1024)\n"
            "written = 0\n"
            "try:\n"
            "    with open('/workspace/big', 'wb') as f:\n"
            f"        for _ in range({settings.workspace_size_mb * 2}):\n"
            "            f.write(chunk)\n"
            "            written += 1\n"
            "except OSError as exc:\n"
            "    outcome = errno.errorcode[exc.errno]\n"
            "outcome, written"
        ),
    )
    outcome, written = reply["result"]
    assert outcome == "ENOSPC"
    assert written <= settings.workspace_size_mb
    assert run(api, session, "import os\nos.remove('/workspace/big')\nopen('/workspace/after', 'w').write('ok')") == 2


def test_a_symlink_planted_in_the_workspace_cannot_redirect_the_controllers_writes(
    api: httpx.Client, new_session: SessionFactory, tmp_path: Path
):
    session = new_session()
    target = tmp_path / "host-side"
    target.mkdir()
    run(api, session, f"import os\nos.symlink({str(target)!r}, '/workspace/.mcpx')")
    reply = execute(api, session, "print('x' * 100000)", max_output_tokens=50)
    assert "mcpx cut" in reply["stdout"]
    assert "/workspace/.mcpx" not in reply["stdout"]
    assert reply["full_output"] == {}
    assert list(target.iterdir()) == []

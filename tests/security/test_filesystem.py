"""Attacks on the filesystem: tampering with the runtime and the stubs, leaving the sandbox's view through links and
/proc, traps for the controller's writes into the workspace, and exhausting the writable places."""

from __future__ import annotations

import stat
from pathlib import Path

import httpx
import pytest

from controller.config import Settings
from controller.sessions import session_directory
from tests.conftest import SessionFactory, execute
from tests.security.conftest import Attack, expect_failure_under, result_of

REFUSED = {"EROFS", "EACCES", "EPERM", "EXDEV"}
BIG_OUTPUT = "print('x' * 100_000)"  # far over a 50-token budget: the controller saves the whole text


def workspace_on_host(settings: Settings, session: str) -> Path:
    return session_directory(settings.state_dir / "sessions", session) / "workspace"


# Sandbox-side helpers: `attempt(function, *args)` is "OK" or the errno's name; `digest(root)` hashes a tree.
HELPERS = """
import errno, hashlib, os
def attempt(function, *args):
    try:
        function(*args)
    except OSError as exc:
        return errno.errorcode[exc.errno]
    return 'OK'
def write(path, mode='w'):
    with open(path, mode) as f:
        f.write('tampered')
def digest(root):
    found = {}
    for directory, _, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            found[path] = (hashlib.sha256(open(path, 'rb').read()).hexdigest(), os.stat(path).st_mode)
    return found
"""


def test_the_runtime_code_cannot_be_replaced_chmodded_or_extended(attack: Attack) -> None:
    outcome = result_of(
        attack(
            HELPERS + "runtime = '/opt/mcpx/mcpx_runtime'\n"
            "before = digest('/opt/mcpx')\n"
            "write('/tmp/evil.py')\n"
            "attempts = {\n"
            "    'overwrite': attempt(write, runtime + '/worker.py'),\n"
            "    'append': attempt(write, runtime + '/supervisor.py', 'a'),\n"
            "    'create': attempt(write, runtime + '/evil.py'),\n"
            "    'replace_from_tmp': attempt(os.replace, '/tmp/evil.py', runtime + '/worker.py'),\n"
            "    'rename': attempt(os.rename, runtime + '/worker.py', runtime + '/old.py'),\n"
            "    'unlink': attempt(os.unlink, runtime + '/tools.py'),\n"
            "    'truncate': attempt(os.truncate, runtime + '/wire.py', 0),\n"
            "    'chmod': attempt(os.chmod, runtime + '/worker.py', 0o777),\n"
            "    'chmod_dir': attempt(os.chmod, runtime, 0o777),\n"
            "    'utime': attempt(os.utime, runtime + '/worker.py', (0, 0)),\n"
            "    'symlink': attempt(os.symlink, '/tmp/evil.py', runtime + '/evil.py'),\n"
            "    'bytecode_dir': attempt(os.makedirs, runtime + '/__pycache__/evil'),\n"
            "}\n"
            "attempts, digest('/opt/mcpx') == before, len(before)"
        )
    )
    attempts, unchanged, files = outcome
    assert set(attempts.values()) <= REFUSED and len(attempts) == 12, attempts
    assert unchanged is True
    assert files > 6


def test_tool_stubs_cannot_be_created_or_changed(attack: Attack) -> None:
    outcome = result_of(
        attack(
            HELPERS + "before = digest('/tools')\n"
            "package = '/tools/servers'\n"
            "first = sorted(n for n in os.listdir(package) if not n.startswith('_'))[0]\n"
            "attempts = {\n"
            "    'create_top_level': attempt(write, '/tools/sitecustomize.py'),\n"
            "    'create_in_package': attempt(write, package + '/evil.py'),\n"
            "    'overwrite_index': attempt(write, package + '/__init__.py'),\n"
            "    'overwrite_server': attempt(write, f'{package}/{first}/__init__.py'),\n"
            "    'mkdir': attempt(os.mkdir, '/tools/evil'),\n"
            "    'rename': attempt(os.rename, package, '/tools/old'),\n"
            "    'chmod': attempt(os.chmod, package, 0o777),\n"
            "    'unlink': attempt(os.unlink, package + '/__init__.py'),\n"
            "}\n"
            "attempts, digest('/tools') == before, len(before)"
        )
    )
    attempts, unchanged, files = outcome
    assert set(attempts.values()) <= REFUSED and len(attempts) == 8, attempts
    assert unchanged is True
    assert files > 3


def test_the_bridge_socket_cannot_be_removed_or_replaced(
    api: httpx.Client, new_session: SessionFactory, runtime: str
) -> None:
    session = new_session(runtime=runtime)
    attempts, listing = result_of(
        execute(
            api,
            session,
            HELPERS + "import socket\n"
            "listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
            "attempts = {\n"
            "    'unlink': attempt(os.unlink, '/run/mcpx/bridge.sock'),\n"
            "    'rename': attempt(os.rename, '/run/mcpx/bridge.sock', '/run/mcpx/old.sock'),\n"
            "    'chmod': attempt(os.chmod, '/run/mcpx/bridge.sock', 0o600),\n"
            "    'bind_beside': attempt(listener.bind, '/run/mcpx/evil.sock'),\n"
            "    'symlink': attempt(os.symlink, '/tmp/evil.sock', '/run/mcpx/evil.sock'),\n"
            "    'chmod_dir': attempt(os.chmod, '/run/mcpx', 0o777),\n"
            "}\n"
            "attempts, os.listdir('/run/mcpx')",
        )
    )
    assert set(attempts.values()) <= REFUSED and len(attempts) == 6, attempts
    assert listing == ["bridge.sock"]
    assert result_of(execute(api, session, "'still connected'")) == "still connected"
    assert api.get(f"/v1/sessions/{session}").json()["restarts"] == 0


PLANTED_RUNTIME = """
import os, runpy, sys
with open('/workspace/planted-runtime-ran', 'a') as marker:
    marker.write(f'{os.getpid()}\\n')
# Hand over to the real runtime, so the session keeps working whatever this test finds.
sys.path[:] = [p for p in sys.path if p not in ('', '/workspace')]
for name in [m for m in sys.modules if m.startswith('mcpx_runtime')]:
    del sys.modules[name]
runpy.run_module('mcpx_runtime', run_name='__main__', alter_sys=True)
"""


def test_a_runtime_planted_in_the_workspace_is_not_run_after_a_restart(
    api: httpx.Client, new_session: SessionFactory, runtime: str, request: pytest.FixtureRequest
) -> None:
    # The runtime starts as `python3 -P -m mcpx_runtime` in WORKDIR /workspace: without -P, `-m` would put the
    # working directory first on sys.path, and a package of that name there (kept across restarts) would become
    # the supervisor of every restarted sandbox.
    session = new_session(runtime=runtime)
    planted = execute(
        api,
        session,
        "import os, signal\n"
        "os.makedirs('/workspace/mcpx_runtime')\n"
        "open('/workspace/mcpx_runtime/__init__.py', 'w').close()\n"
        f"open('/workspace/mcpx_runtime/__main__.py', 'w').write({PLANTED_RUNTIME!r})\n"
        "os.kill(os.getppid(), signal.SIGKILL)",
    )
    assert planted["error"]["kind"] == "crash"
    assert planted["state_reset"] is True
    ran = execute(api, session, "import os\nos.path.exists('/workspace/planted-runtime-ran')")
    assert result_of(ran) is False


def test_hard_links_from_other_mounts_are_refused(attack: Attack) -> None:
    outcome = result_of(
        attack(
            HELPERS + "open('/workspace/own', 'w').close()\n"
            "sources = ['/etc/passwd', '/usr/bin/python3', '/opt/mcpx/mcpx_runtime/worker.py',\n"
            "           '/tools/servers/__init__.py']\n"
            "links = {f'{s} -> {d}': attempt(os.link, s, f'{d}/link-{i}') for i, s in enumerate(sources)\n"
            "         for d in ('/workspace', '/tmp')}\n"
            "links['/workspace/own -> /tmp'] = attempt(os.link, '/workspace/own', '/tmp/own')\n"
            "links"
        )
    )
    assert outcome == dict.fromkeys(outcome, "EXDEV") and len(outcome) == 9, outcome


def test_proc_root_and_cwd_links_lead_nowhere_outside(attack: Attack, runtime: str) -> None:
    outcome = result_of(
        attack(
            HELPERS + "supervisor = os.getppid()\n"
            "{'self_root_etc': attempt(write, '/proc/self/root/etc/evil'),\n"
            " 'init_root_runtime': attempt(write, '/proc/1/root/opt/mcpx/evil.py'),\n"
            " 'supervisor_root_usr': attempt(write, f'/proc/{supervisor}/root/usr/evil'),\n"
            " 'self_cwd_up': attempt(write, '/proc/self/cwd/../opt/evil'),\n"
            " 'init_cwd_up': attempt(write, '/proc/1/cwd/../etc/evil'),\n"
            " 'init_cwd': attempt(write, '/proc/1/cwd/through-init-cwd'),\n"
            " 'landed_in_workspace': os.path.exists('/workspace/through-init-cwd')}"
        )
    )
    if runtime == "runc":
        # init's working directory is /workspace itself: writing through it stays in the workspace.
        expected = dict.fromkeys(outcome, "EROFS") | {"init_cwd": "OK", "landed_in_workspace": True}
    else:
        expected = dict.fromkeys(outcome, "EACCES") | {"landed_in_workspace": False}
    assert outcome == expected


def test_the_workspace_mount_cannot_be_remounted_or_covered(
    api: httpx.Client, new_session: SessionFactory, runtime: str, settings: Settings
) -> None:
    session = new_session(runtime=runtime)
    attempts, unchanged = result_of(
        execute(
            api,
            session,
            "import ctypes, errno\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "def outcome(ret):\n"
            "    return 'OK' if ret == 0 else errno.errorcode[ctypes.get_errno()]\n"
            "before = open('/proc/self/mounts').read()\n"
            "MS_REMOUNT, MS_BIND, MNT_DETACH = 32, 4096, 2\n"
            "{'remount_suid_dev': outcome(libc.mount(None, b'/workspace', None, MS_REMOUNT | MS_BIND, None)),\n"
            " 'bind_tmp_over': outcome(libc.mount(b'/tmp', b'/workspace', None, MS_BIND, None)),\n"
            " 'tmpfs_over': outcome(libc.mount(b'none', b'/workspace', b'tmpfs', 0, None)),\n"
            " 'umount': outcome(libc.umount2(b'/workspace', MNT_DETACH))}, open('/proc/self/mounts').read() == before",
        )
    )
    assert attempts == dict.fromkeys(attempts, "EPERM") and len(attempts) == 4, attempts
    assert unchanged is True
    # On the host the workspace is its own nosuid,nodev mount: nothing planted in it gains power there either.
    host_path = str(workspace_on_host(settings, session))
    options = [line.split()[3].split(",") for line in Path("/proc/self/mounts").read_text().splitlines()]
    targets = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    assert host_path in targets
    assert {"nosuid", "nodev"} <= set(options[targets.index(host_path)])


def test_a_fifo_at_the_saved_output_path_neither_blocks_the_controller_nor_receives_output(
    api: httpx.Client, new_session: SessionFactory, runtime: str, settings: Settings
) -> None:
    session = new_session(runtime=runtime)
    reply = execute(
        api,
        session,
        "import os\n"
        "readers = []\n"
        "for n in range(1, 4):\n"
        "    os.makedirs(f'/workspace/.mcpx/outputs/{n}')\n"
        "    os.mkfifo(f'/workspace/.mcpx/outputs/{n}/stdout.txt')\n"
        "    readers.append(os.open(f'/workspace/.mcpx/outputs/{n}/stdout.txt', os.O_RDONLY | os.O_NONBLOCK))\n"
        + BIG_OUTPUT,
        max_output_tokens=50,
    )
    assert reply["error"] is None
    assert "mcpx cut" in reply["stdout"]
    received = execute(
        api,
        session,
        "def drain(fd):\n    try:\n        return len(os.read(fd, 1 << 20))\n    except BlockingIOError:\n"
        "        return 0\n[drain(fd) for fd in readers]",
    )
    assert result_of(received) == [0, 0, 0]
    saved = list(workspace_on_host(settings, session).glob(".mcpx/outputs/*/stdout.txt"))
    if runtime == "runc":
        # The FIFO is a real one on the host: the controller's non-blocking, regular-file-only open refuses it.
        assert reply["full_output"] == {}
        assert saved and all(stat.S_ISFIFO(path.lstat().st_mode) for path in saved)
    else:
        # gVisor keeps FIFOs inside its sentry: the host holds only the regular file the controller wrote.
        assert set(reply["full_output"]) == {"stdout"}
        assert saved and all(stat.S_ISREG(path.lstat().st_mode) for path in saved)


def test_a_symlink_at_the_saved_output_file_is_not_followed_to_a_host_file(
    api: httpx.Client, new_session: SessionFactory, runtime: str, tmp_path: Path
) -> None:
    victim = tmp_path / "host-file"
    victim.write_text("original")
    victim.chmod(0o666)
    session = new_session(runtime=runtime)
    reply = execute(
        api,
        session,
        "import os\n"
        "for n in range(1, 4):\n"
        "    os.makedirs(f'/workspace/.mcpx/outputs/{n}')\n"
        f"    os.symlink({str(victim)!r}, f'/workspace/.mcpx/outputs/{{n}}/stdout.txt')\n" + BIG_OUTPUT,
        max_output_tokens=50,
    )
    assert reply["error"] is None
    assert "mcpx cut" in reply["stdout"]
    assert reply["full_output"] == {}
    assert victim.read_text() == "original"


def test_a_symlink_loop_in_the_workspace_does_not_hang_the_controller(attack: Attack) -> None:
    reply = attack(
        "import errno, os\n"
        "os.symlink('.mcpx', '/workspace/.mcpx')\n"
        "os.symlink('b', '/workspace/a')\n"
        "os.symlink('a', '/workspace/b')\n"
        "try:\n"
        "    open('/workspace/a/x')\n"
        "except OSError as exc:\n"
        "    print(errno.errorcode[exc.errno])\n" + BIG_OUTPUT
    )
    assert reply["error"] is None
    assert reply["stdout"].startswith("ELOOP\n")
    assert "mcpx cut" in reply["stdout"]
    assert reply["full_output"] == {}


def test_running_the_workspace_out_of_inodes_gives_enospc_and_output_is_still_answered(
    api: httpx.Client, new_session: SessionFactory, runtime: str
) -> None:
    session = new_session(runtime=runtime, timeout_s=60)
    reply = execute(
        api,
        session,
        "import errno, os\n"
        "kept = 'state'\n"
        "inodes = os.statvfs('/workspace').f_files\n"
        "os.mkdir('/workspace/many')\n"
        "created, outcome = 0, None\n"
        "while outcome is None and created < 200_000:\n"
        "    try:\n"
        "        os.close(os.open(f'/workspace/many/{created}', os.O_CREAT | os.O_WRONLY))\n"
        "        created += 1\n"
        "    except OSError as exc:\n"
        "        outcome = errno.errorcode[exc.errno]\n"
        "print(outcome, created, inodes)\n" + BIG_OUTPUT,
        max_output_tokens=200,  # room for the first line whole beside the cut marker
    )
    assert reply["error"] is None
    outcome, created, inodes = reply["stdout"].split("\n", 1)[0].split()
    assert outcome == "ENOSPC"
    assert 0 < int(created) < int(inodes)
    # The controller could not save the full output (no inode left): the marker must not point at a missing file.
    assert reply["full_output"] == {}
    assert "mcpx cut" in reply["stdout"]
    assert "/workspace/.mcpx" not in reply["stdout"]
    assert result_of(execute(api, session, "kept")) == "state"


def test_filling_tmp_stops_at_its_size_with_enospc(attack: Attack, settings: Settings) -> None:
    outcome = result_of(
        attack(
            "import errno, os\n"
            "chunk = b'x' * (1 << 20)\n"
            "written, outcome = 0, None\n"
            "try:\n"
            "    with open('/tmp/fill', 'wb') as f:\n"
            f"        for _ in range({settings.tmp_size_mb * 2}):\n"
            "            f.write(chunk)\n"
            "            f.flush()\n"
            "            written += 1\n"
            "except OSError as exc:\n"
            "    outcome = errno.errorcode[exc.errno]\n"
            "os.remove('/tmp/fill')\n"
            "outcome, written, open('/tmp/after', 'w').write('ok')"
        )
    )
    outcome_name, written, after = outcome
    assert outcome_name == "ENOSPC"
    assert written <= settings.tmp_size_mb
    assert after == 2


def test_endless_empty_files_in_tmp_are_stopped_by_the_memory_limit(
    api: httpx.Client, new_session: SessionFactory, runtime: str
) -> None:
    # Each empty file costs only kernel (or sentry) memory: an inode cap (runc) or the memory limit must bound it.
    session = new_session(runtime=runtime, memory_mb=64, timeout_s=60)
    reply = execute(
        api,
        session,
        "import os, time\n"
        "os.mkdir('/tmp/many')\n"
        "deadline, created = time.monotonic() + 40, 0\n"
        "while time.monotonic() < deadline:\n"
        "    os.close(os.open(f'/tmp/many/{created:08d}-a-longer-name-to-cost-more', os.O_CREAT | os.O_WRONLY))\n"
        "    created += 1\n"
        "created",
    )
    assert reply["error"] is not None, f"{reply['result']} files in 40 s and no limit reached"
    if runtime == "runc":
        # Under runc the tmpfs's own inode cap stops it first (gVisor ignores nr_inodes: memory is its bound).
        assert reply["error"]["type"] == "OSError"
        assert reply["error"]["message"].startswith("[Errno 28] No space left on device")
        return
    assert reply["error"]["kind"] == "oom"
    assert reply["state_reset"] is True
    assert result_of(execute(api, session, "import os\nos.path.exists('/tmp/many')")) is False


def test_device_nodes_cannot_be_created_in_tmp_or_the_workspace(
    attack: Attack, runtime: str, request: pytest.FixtureRequest
) -> None:
    expect_failure_under(
        request,
        runtime,
        {"runsc"},
        "runsc: gVisor's /tmp tmpfs ignores nodev and lets uid 65532 mknod character and block nodes without "
        "CAP_MKNOD; the nodes open only gVisor's own emulated devices (null, tun, fuse), never a host device",
    )
    outcome = result_of(
        attack(
            "import errno, os, stat\n"
            "def mknod(path, kind, major, minor):\n"
            "    try:\n"
            "        os.mknod(path, kind | 0o666, os.makedev(major, minor))\n"
            "    except OSError as exc:\n"
            "        return errno.errorcode[exc.errno]\n"
            "    return 'created'\n"
            "{f'{d}/{name}': mknod(f'{d}/{name}', *device) for d in ('/tmp', '/workspace') for name, device in\n"
            " {'null': (stat.S_IFCHR, 1, 3), 'tun': (stat.S_IFCHR, 10, 200), 'sda': (stat.S_IFBLK, 8, 0)}.items()}"
        )
    )
    assert outcome == dict.fromkeys(outcome, "EPERM") and len(outcome) == 6, outcome

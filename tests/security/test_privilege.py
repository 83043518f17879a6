"""Attacks on privilege: becoming root, reaching the kernel's privileged interfaces, other processes and devices.

Each attack runs in a fresh session of both runtimes. Both enforce mcpx's seccomp profile (controller/seccomp.py:
runc in the kernel, gVisor in its sentry), so most calls fail with its EPERM under both; where the runtimes refuse
differently (the kernel's or gVisor's own checks), the test records which error each one gives.
"""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import PIDS_LIMIT, SessionFactory, execute
from tests.security.conftest import Attack, expect_failure_under, result_of

# ctypes' view of raw system calls (x86_64 numbers): `call(number, *args)` is "OK" or the errno's name.
SYSCALLS = """
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def call(number, *args):
    ctypes.set_errno(0)
    ret = libc.syscall(ctypes.c_long(number), *(ctypes.c_long(a) if isinstance(a, int) else a for a in args))
    return 'OK' if ret >= 0 else errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
buf = ctypes.create_string_buffer(4096)
"""

SANDBOX_IDS = 65532


def test_code_cannot_become_root_through_setuid_setgid_or_setgroups(attack: Attack) -> None:
    outcome = result_of(
        attack(
            "import errno, os\n"
            "def attempt(function, *args):\n"
            "    try:\n"
            "        function(*args)\n"
            "    except OSError as exc:\n"
            "        return errno.errorcode[exc.errno]\n"
            "    return 'OK'\n"
            "calls = {'setuid': (os.setuid, 0), 'seteuid': (os.seteuid, 0), 'setreuid': (os.setreuid, 0, 0),\n"
            "         'setresuid': (os.setresuid, 0, 0, 0), 'setgid': (os.setgid, 0), 'setegid': (os.setegid, 0),\n"
            "         'setresgid': (os.setresgid, 0, 0, 0), 'setgroups': (os.setgroups, [0])}\n"
            "{name: attempt(*call) for name, call in calls.items()}, os.getresuid(), os.getresgid(), os.getgroups()"
        )
    )
    attempts, uids, gids, groups = outcome
    assert attempts == dict.fromkeys(attempts, "EPERM") and len(attempts) == 8, attempts
    assert uids == gids == [SANDBOX_IDS] * 3
    assert groups == [SANDBOX_IDS]


def test_setuid_and_setgid_binaries_run_without_their_privilege(attack: Attack) -> None:
    # The image ships the usual setuid-root and setgid-shadow programs; no-new-privileges must make them inert.
    # `su root` and `unix_chkpwd` block reading a password: their credentials are read from /proc meanwhile.
    outcome = result_of(
        attack(
            "import os, stat, subprocess, time\n"
            "privileged = []\n"
            "for top in ('/usr', '/bin', '/sbin', '/opt'):\n"
            "    for directory, _, files in os.walk(top):\n"
            "        for name in files:\n"
            "            path = os.path.join(directory, name)\n"
            "            try:\n"
            "                mode = os.lstat(path).st_mode\n"
            "            except OSError:\n"
            "                continue\n"
            "            if stat.S_ISREG(mode) and mode & (stat.S_ISUID | stat.S_ISGID):\n"
            "                privileged.append(path)\n"
            "def credentials_while_waiting(argv):\n"
            "    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,\n"
            "                               stderr=subprocess.DEVNULL)\n"
            "    seen = None\n"
            "    deadline = time.monotonic() + 5\n"
            "    while seen is None and time.monotonic() < deadline:\n"
            "        lines = open(f'/proc/{process.pid}/status').read().splitlines()\n"
            "        fields = dict(line.split(':\\t', 1) for line in lines if ':\\t' in line)\n"
            "        if fields['Name'] == os.path.basename(argv[0]) and not fields['State'].startswith('R'):\n"
            "            seen = [int(i) for i in fields['Uid'].split() + fields['Gid'].split()]\n"
            "        time.sleep(0.005)\n"
            "    process.kill()\n"
            "    process.wait()\n"
            "    return seen\n"
            "waiting = (['/usr/bin/su', 'root'], ['/usr/sbin/unix_chkpwd', 'root', 'nullok'])\n"
            "observed = {argv[0]: credentials_while_waiting(argv) for argv in waiting if argv[0] in privileged}\n"
            "mount = subprocess.run(['/usr/bin/mount', '-t', 'tmpfs', 'none', '/tmp'], capture_output=True)\n"
            "sorted(privileged), observed, mount.returncode, open('/proc/self/mounts').read().count(' /tmp ')"
        )
    )
    privileged, observed, mount_status, tmp_mounts = outcome
    assert set(observed) == {"/usr/bin/su", "/usr/sbin/unix_chkpwd"} & set(privileged)
    for credentials in observed.values():
        assert credentials == [SANDBOX_IDS] * 8, observed
    assert mount_status != 0
    assert tmp_mounts == 1


def test_mount_umount_and_remount_are_refused(attack: Attack) -> None:
    outcome = result_of(
        attack(
            SYSCALLS + "before = open('/proc/self/mounts').read()\n"
            "MS_RDONLY, MS_REMOUNT, MS_BIND, MNT_DETACH = 1, 32, 4096, 2\n"
            "attempts = {\n"
            "    'tmpfs': call(165, b'none', b'/tmp', b'tmpfs', 0, None),\n"
            "    'proc': call(165, b'proc', b'/tmp', b'proc', 0, None),\n"
            "    'bind_root': call(165, b'/', b'/tmp', None, MS_BIND, None),\n"
            "    'remount_root_rw': call(165, None, b'/', None, MS_REMOUNT, None),\n"
            "    'remount_tools_rw': call(165, None, b'/tools', None, MS_REMOUNT | MS_BIND, None),\n"
            "    'umount_tools': call(166, b'/tools', MNT_DETACH),\n"
            "    'umount_socket_dir': call(166, b'/run/mcpx', MNT_DETACH),\n"
            "    'umount_proc': call(166, b'/proc', MNT_DETACH),\n"
            "}\n"
            "attempts, open('/proc/self/mounts').read() == before"
        )
    )
    attempts, mounts_unchanged = outcome
    assert attempts == dict.fromkeys(attempts, "EPERM"), attempts
    assert mounts_unchanged is True


def test_a_user_and_mount_namespace_gives_no_power_over_the_sandbox(attack: Attack, runtime: str) -> None:
    # In a fresh single-threaded process: unshare(2) refuses a multithreaded caller a user namespace.
    child = (
        "import ctypes, errno, json, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "def outcome(ret):\n"
        "    return 'OK' if ret >= 0 else errno.errorcode[ctypes.get_errno()]\n"
        "def write(path, text):\n"
        "    try:\n"
        "        with open(path, 'w') as f:\n"
        "            f.write(text)\n"
        "    except OSError as exc:\n"
        "        return errno.errorcode[exc.errno]\n"
        "    return 'OK'\n"
        "def chmod(path):\n"
        "    try:\n"
        "        os.chmod(path, 0o777)\n"
        "    except OSError as exc:\n"
        "        return errno.errorcode[exc.errno]\n"
        "    return 'OK'\n"
        "found = {'unshare': outcome(libc.unshare(0x10000000 | 0x00020000))}\n"
        "if found['unshare'] == 'OK':\n"
        "    found['uid_map'] = write('/proc/self/uid_map', '0 65532 1')\n"
        "    found['uid_inside'] = os.getuid()\n"
        "found['mount_tmpfs'] = outcome(libc.mount(b'none', b'/opt', b'tmpfs', 0, None))\n"
        "found['remount_etc_rw'] = outcome(libc.mount(b'/etc', b'/etc', None, 4096 | 32, None))\n"
        "found['write_etc'] = write('/etc/mcpx-probe', 'x')\n"
        "found['write_runtime'] = write('/opt/mcpx/mcpx_runtime/worker.py', 'x')\n"
        "found['chmod_passwd'] = chmod('/etc/passwd')\n"
        "print(json.dumps(found))\n"
    )
    reply = attack(
        "import json, subprocess, sys\n"
        f"json.loads(subprocess.run([sys.executable, '-c', {child!r}], capture_output=True, text=True).stdout)"
    )
    found = result_of(reply)
    refused = {"unshare": "EPERM", "mount_tmpfs": "EPERM", "remount_etc_rw": "EPERM"}  # the profile, both runtimes
    if runtime == "runc":
        assert found == {**refused, "write_etc": "EROFS", "write_runtime": "EROFS", "chmod_passwd": "EROFS"}
    else:
        assert found == {**refused, "write_etc": "EACCES", "write_runtime": "EACCES", "chmod_passwd": "EPERM"}
    intact = "import os\nos.path.getsize('/opt/mcpx/mcpx_runtime/worker.py'), os.path.exists('/etc/mcpx-probe')"
    size, probed = result_of(attack(intact))
    assert size > 0 and probed is False  # the sandbox's own view of its runtime and /etc is untouched


def test_kernel_keyring_calls_are_refused(attack: Attack) -> None:
    outcome = result_of(
        attack(
            SYSCALLS + "KEY_SPEC_PROCESS_KEYRING = -2\n"
            "{'keyctl_join_session': call(250, 1, None),\n"
            " 'add_key': call(248, b'user', b'mcpx', b'secret', 6, KEY_SPEC_PROCESS_KEYRING),\n"
            " 'request_key': call(249, b'user', b'mcpx', None, 0)}"
        )
    )
    assert outcome == dict.fromkeys(outcome, "EPERM") and len(outcome) == 3, outcome


def test_bpf_perf_events_and_userfaultfd_are_refused(attack: Attack) -> None:
    outcome = result_of(
        attack(
            SYSCALLS + "BPF_MAP_CREATE = 0\n"
            "attr = (ctypes.c_uint * 18)(1, 4, 4, 1)\n"
            "{'bpf_map_create': call(321, BPF_MAP_CREATE, attr, ctypes.sizeof(attr)),\n"
            " 'perf_event_open': call(298, buf, 0, -1, -1, 0),\n"
            " 'userfaultfd': call(323, 0)}"
        )
    )
    assert outcome == {"bpf_map_create": "EPERM", "perf_event_open": "EPERM", "userfaultfd": "EPERM"}


def test_kernel_modules_and_kexec_cannot_be_loaded(attack: Attack) -> None:
    outcome = result_of(
        attack(
            SYSCALLS + "module = os.open('/usr/lib/python3.11/os.py', os.O_RDONLY)\n"
            "{'init_module': call(175, buf, 4096, b''),\n"
            " 'finit_module': call(313, module, b'', 0),\n"
            " 'delete_module': call(176, b'ext4', 0),\n"
            " 'kexec_load': call(246, 0, 0, None, 0),\n"
            " 'kexec_file_load': call(320, module, module, 0, b'', 0)}"
        )
    )
    assert outcome == dict.fromkeys(outcome, "EPERM") and len(outcome) == 5, outcome


def test_reboot_swap_clock_and_host_identity_changes_are_refused(attack: Attack) -> None:
    outcome = result_of(
        attack(
            SYSCALLS + "open('/workspace/swap', 'wb').write(bytes(65536))\n"
            "LINUX_REBOOT_CMD_POWER_OFF = 0x4321FEDC\n"
            "attempts = {\n"
            "    'reboot': call(169, 0xFEE1DEAD, 672274793, LINUX_REBOOT_CMD_POWER_OFF, None),\n"
            "    'swapon': call(167, b'/workspace/swap', 0),\n"
            "    'swapoff': call(168, b'/workspace/swap'),\n"
            "    'settimeofday': call(164, buf, None),\n"
            "    'clock_settime': call(227, 0, buf),\n"
            "    'sethostname': call(170, b'pwned', 5),\n"
            "    'setdomainname': call(171, b'pwned', 5),\n"
            "    'acct': call(163, b'/workspace/swap'),\n"
            "    'iopl': call(172, 3),\n"
            "    'ioperm': call(173, 0x80, 1, 1),\n"
            "    'quotactl': call(179, 0x800002, b'/dev/null', 0, None),\n"
            "    'vhangup': call(153),\n"
            "}\n"
            "attempts, os.uname().nodename"
        )
    )
    attempts, hostname = outcome
    assert attempts == dict.fromkeys(attempts, "EPERM") and len(attempts) == 12, attempts
    assert hostname == "sandbox"


def test_pivot_root_and_chroot_are_refused(attack: Attack) -> None:
    outcome = result_of(
        attack(
            SYSCALLS + "os.makedirs('/tmp/new/old', exist_ok=True)\n"
            "root = os.stat('/')\n"
            "try:\n"
            "    os.chroot('/tmp/new')\n"
            "    python_chroot = 'OK'\n"
            "except OSError as exc:\n"
            "    python_chroot = errno.errorcode[exc.errno]\n"
            "{'pivot_root': call(155, b'/tmp/new', b'/tmp/new/old'), 'chroot': call(161, b'/tmp/new'),\n"
            " 'os.chroot': python_chroot, 'same_root': os.stat('/')[:2] == root[:2]}"
        )
    )
    assert outcome == {"pivot_root": "EPERM", "chroot": "EPERM", "os.chroot": "EPERM", "same_root": True}


def test_the_hosts_kernel_log_cannot_be_read(attack: Attack, runtime: str) -> None:
    outcome = result_of(
        attack(
            SYSCALLS + "SYSLOG_ACTION_READ_ALL, SYSLOG_ACTION_CLEAR = 3, 5\n"
            "size = libc.syscall(ctypes.c_long(103), ctypes.c_long(SYSLOG_ACTION_READ_ALL), buf, ctypes.c_long(4096))\n"
            "text = buf.raw[:size].decode(errors='replace') if size >= 0 else errno.errorcode[ctypes.get_errno()]\n"
            "def opens(path):\n"
            "    try:\n"
            "        open(path, 'rb').close()\n"
            "    except OSError as exc:\n"
            "        return errno.errorcode[exc.errno]\n"
            "    return 'OK'\n"
            "text, call(103, SYSLOG_ACTION_CLEAR, None, 0), opens('/dev/kmsg'), opens('/proc/kmsg')"
        )
    )
    log, clear, dev_kmsg, proc_kmsg = outcome
    assert (log, clear, dev_kmsg) == ("EPERM", "EPERM", "ENOENT")
    assert proc_kmsg == ("EACCES" if runtime == "runc" else "ENOENT")


# Attach, wait for the stop, detach at once: an attached supervisor would otherwise stay stopped.
PTRACE_ATTACH = """
import ctypes, errno, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.restype = ctypes.c_long
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
PTRACE_ATTACH, PTRACE_DETACH, WALL = 16, 17, 0x40000000
target = int(sys.argv[1])
if libc.ptrace(PTRACE_ATTACH, target, None, None) != 0:
    print(errno.errorcode[ctypes.get_errno()])
else:
    os.waitpid(target, WALL)
    libc.ptrace(PTRACE_DETACH, target, None, None)
    print('ATTACHED')
"""

RUNC_PROC_MEM = (
    "runc: the host has no Yama LSM (ptrace_scope absent) and the supervisor, the worker and docker-init all run as "
    "uid 65532 and are dumpable, so user code may open their /proc/<pid>/mem (seccomp sees no path: only a "
    "non-dumpable supervisor, PR_SET_DUMPABLE 0 in the runtime, would close it); gVisor refuses (EACCES)"
)


def test_ptrace_attach_to_the_supervisor_is_refused(attack: Attack) -> None:
    outcome = result_of(
        attack(
            "import os, subprocess, sys\n"
            f"subprocess.run([sys.executable, '-c', {PTRACE_ATTACH!r}, str(os.getppid())],\n"
            "               capture_output=True, text=True, timeout=10).stdout.strip()"
        )
    )
    assert outcome == "EPERM"


def test_ptrace_attach_to_the_container_init_is_refused(attack: Attack) -> None:
    outcome = result_of(
        attack(
            "import subprocess, sys\n"
            f"subprocess.run([sys.executable, '-c', {PTRACE_ATTACH!r}, '1'],\n"
            "               capture_output=True, text=True, timeout=10).stdout.strip()"
        )
    )
    assert outcome == "EPERM"


FIRST_READABLE = (
    "def first_readable(pid):\n"
    "    try:\n"
    "        lines = open(f'/proc/{pid}/maps').read().splitlines()\n"
    "    except OSError:\n"
    "        return 0x400000  # an address any x86_64 executable maps\n"
    "    return next(int(line.split('-')[0], 16) for line in lines if line.split()[1].startswith('r'))\n"
)


def test_process_vm_readv_and_writev_on_the_supervisor_and_init_are_refused(attack: Attack) -> None:
    outcome = result_of(
        attack(
            SYSCALLS + FIRST_READABLE + "class Iovec(ctypes.Structure):\n"
            "    _fields_ = [('base', ctypes.c_void_p), ('length', ctypes.c_size_t)]\n"
            "def vm(number, pid):\n"
            "    local, remote = Iovec(ctypes.addressof(buf), 16), Iovec(first_readable(pid), 16)\n"
            "    return call(number, pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)\n"
            "supervisor = os.getppid()\n"
            "{'readv supervisor': vm(310, supervisor), 'readv init': vm(310, 1), 'writev init': vm(311, 1)}"
        )
    )
    assert outcome == {"readv supervisor": "EPERM", "readv init": "EPERM", "writev init": "EPERM"}


def test_the_memory_of_the_supervisor_and_of_init_cannot_be_read_through_proc(
    attack: Attack, runtime: str, request: pytest.FixtureRequest
) -> None:
    expect_failure_under(request, runtime, {"runc"}, RUNC_PROC_MEM)
    outcome = result_of(
        attack(
            SYSCALLS + FIRST_READABLE + "def read_mem(pid):\n"
            "    try:\n"
            "        with open(f'/proc/{pid}/mem', 'rb') as mem:\n"
            "            mem.seek(first_readable(pid))\n"
            "            return f'read {len(mem.read(16))} bytes'\n"
            "    except OSError as exc:\n"
            "        return errno.errorcode[exc.errno]\n"
            "{'mem supervisor': read_mem(os.getppid()), 'mem init': read_mem(1)}"
        )
    )
    assert outcome == {"mem supervisor": "EACCES", "mem init": "EACCES"}


def test_vsock_sockets_cannot_be_opened(attack: Attack) -> None:
    # AF_VSOCK is not network-namespaced: network_mode=none does not cut it, and the host kernel has the virtio
    # vsock transport loaded (a Firecracker VM). Only creation is tried here; nothing is connected to, since the far
    # side would be the host VM's own services. The profile refuses the family (Docker 20.10's default did not).
    outcome = result_of(
        attack(
            "import errno, socket\n"
            "try:\n"
            "    socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM).close()\n"
            "    outcome = 'OK'\n"
            "except OSError as exc:\n"
            "    outcome = errno.errorcode[exc.errno]\n"
            "outcome"
        )
    )
    assert outcome == "EPERM"


def test_sockets_of_every_family_but_unix_cannot_be_opened(attack: Attack) -> None:
    outcome = result_of(
        attack(
            "import errno, socket\n"
            "def opens(family, kind=socket.SOCK_STREAM, pair=False):\n"
            "    try:\n"
            "        for sock in (socket.socketpair(family, kind) if pair else [socket.socket(family, kind)]):\n"
            "            sock.close()\n"
            "    except OSError as exc:\n"
            "        return errno.errorcode[exc.errno]\n"
            "    return 'OK'\n"
            "families = {'inet': 2, 'inet6': 10, 'netlink': 16, 'packet': 17, 'key': 15, 'alg': 38, 'vsock': 40,\n"
            "            'bluetooth': 31, 'xdp': 44, 'unspec': 0, 'beyond the last': 46}\n"
            "found = {name: opens(family, socket.SOCK_RAW if name in ('netlink', 'packet') else socket.SOCK_STREAM)\n"
            "         for name, family in families.items()}\n"
            "found['inet pair'] = opens(socket.AF_INET, pair=True)\n"
            "found['unix'], found['unix datagram'] = opens(socket.AF_UNIX), opens(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
            "found['unix pair'] = opens(socket.AF_UNIX, pair=True)\n"
            "found"
        )
    )
    unix = {"unix": "OK", "unix datagram": "OK", "unix pair": "OK"}
    assert outcome == {**dict.fromkeys(set(outcome) - set(unix), "EPERM"), **unix}


def test_io_uring_cannot_be_set_up(attack: Attack) -> None:
    # io_uring is a large kernel interface that Docker's default profile allows under runc; the profile refuses it.
    outcome = result_of(
        attack(
            SYSCALLS + "params = ctypes.create_string_buffer(120)\n"
            "{'io_uring_setup': call(425, 8, params), 'io_uring_enter': call(426, 0, 1, 0, 0, None, 0),\n"
            " 'io_uring_register': call(427, 0, 0, None, 0)}"
        )
    )
    assert outcome == {"io_uring_setup": "EPERM", "io_uring_enter": "EPERM", "io_uring_register": "EPERM"}


def test_proc_sys_sysrq_cgroup_and_sys_knobs_cannot_be_written(attack: Attack, runtime: str) -> None:
    outcome = result_of(
        attack(
            "import errno, os\n"
            "def write(path, text):\n"
            "    try:\n"
            "        with open(path, 'w') as f:\n"
            "            f.write(text)\n"
            "    except OSError as exc:\n"
            "        return errno.errorcode[exc.errno]\n"
            "    return 'OK'\n"
            "knobs = {'/proc/sys/kernel/hostname': 'pwned', '/proc/sys/kernel/core_pattern': '|/tmp/x',\n"
            "         '/proc/sys/vm/drop_caches': '3', '/proc/sys/net/ipv4/ip_forward': '1',\n"
            "         '/proc/sysrq-trigger': 'b', '/sys/kernel/uevent_helper': '/tmp/x', '/sys/power/state': 'mem',\n"
            "         '/sys/fs/cgroup/memory.max': 'max', '/sys/fs/cgroup/pids.max': 'max',\n"
            "         '/sys/fs/cgroup/cgroup.procs': str(os.getpid())}\n"
            "{path: write(path, text) for path, text in knobs.items()}, open('/proc/sys/kernel/hostname').read()"
        )
    )
    writes, hostname = outcome
    if runtime == "runc":
        # /proc/sys and /sys are read-only mounts; the cgroup files are root's; sysrq-trigger is masked.
        expected = dict.fromkeys(writes, "EROFS")
        expected.update({"/proc/sysrq-trigger": "ENOENT"})
        expected.update(dict.fromkeys([p for p in writes if p.startswith("/sys/fs/cgroup/")], "EACCES"))
    else:
        # gVisor's cgroupfs is read-only inside; the rest is root's.
        expected = dict.fromkeys(writes, "EACCES")
        expected.update(dict.fromkeys([p for p in writes if p.startswith("/sys/fs/cgroup/")], "EROFS"))
    assert writes == expected
    assert hostname == "sandbox\n"


def test_kernel_memory_and_raw_memory_devices_cannot_be_read(attack: Attack, runtime: str) -> None:
    outcome = result_of(
        attack(
            "import errno\n"
            "def read(path):\n"
            "    try:\n"
            "        with open(path, 'rb') as f:\n"
            "            return f'read {len(f.read(64))} bytes'\n"
            "    except OSError as exc:\n"
            "        return errno.errorcode[exc.errno]\n"
            "paths = ['/proc/kcore', '/dev/mem', '/dev/kmem', '/dev/port', '/proc/sched_debug',\n"
            "         '/sys/kernel/debug/tracing/trace']\n"
            "try:\n"
            "    addresses = {line.split()[0] for line in open('/proc/kallsyms')}\n"
            "except OSError as exc:\n"
            "    addresses = errno.errorcode[exc.errno]\n"
            "{path: read(path) for path in paths}, sorted(addresses) if isinstance(addresses, set) else addresses"
        )
    )
    reads, symbol_addresses = outcome
    assert reads == dict.fromkeys(reads, "ENOENT") and len(reads) == 6, reads
    # runc: kptr_restrict shows every kernel symbol at address zero; gVisor has no kallsyms at all.
    assert symbol_addresses == (["0000000000000000"] if runtime == "runc" else "ENOENT")


def test_device_nodes_for_host_devices_give_no_access(attack: Attack, runtime: str) -> None:
    outcome = result_of(
        attack(
            "import errno, os, stat\n"
            "devices = {'mem': (stat.S_IFCHR, 1, 1), 'kmsg': (stat.S_IFCHR, 1, 11), 'sda': (stat.S_IFBLK, 8, 0),\n"
            "           'nvme': (stat.S_IFCHR, 259, 0)}\n"
            "def open_node(name, kind, major, minor):\n"
            "    path = f'/tmp/node-{name}'\n"
            "    try:\n"
            "        os.mknod(path, kind | 0o666, os.makedev(major, minor))\n"
            "    except OSError as exc:\n"
            "        return 'mknod ' + errno.errorcode[exc.errno]\n"
            "    try:\n"
            "        os.close(os.open(path, os.O_RDWR))\n"
            "    except OSError as exc:\n"
            "        return 'open ' + errno.errorcode[exc.errno]\n"
            "    return 'opened'\n"
            "{name: open_node(name, *device) for name, device in devices.items()}"
        )
    )
    # runc refuses the node itself; gVisor creates it in its own tmpfs but backs it with no host device.
    expected = "mknod EPERM" if runtime == "runc" else "open ENXIO"
    assert outcome == dict.fromkeys(outcome, expected) and len(outcome) == 4, outcome


DEVICES = {
    "runc": [
        "fd", "full", "mqueue", "null", "ptmx", "pts", "random", "stderr", "stdin", "stdout", "tty", "urandom", "zero",
    ],
    # gVisor adds its own emulated fuse and tun devices and an empty /dev/shm (IPC is private, not shared).
    "runsc": [
        "fd", "full", "fuse", "net", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin", "stdout", "tty",
        "urandom", "zero",
    ],
}  # fmt: skip


def test_dev_holds_only_the_standard_devices(attack: Attack, runtime: str) -> None:
    names, char_devices, shm = result_of(
        attack(
            "import os, stat\n"
            "def device(name):\n"
            "    st = os.stat('/dev/' + name)\n"
            "    return [os.major(st.st_rdev), os.minor(st.st_rdev)] if stat.S_ISCHR(st.st_mode) else None\n"
            "names = sorted(os.listdir('/dev'))\n"
            "shm = os.listdir('/dev/shm') if os.path.isdir('/dev/shm') else None\n"
            "names, {n: device(n) for n in names if not os.path.isdir('/dev/' + n) and device(n)}, shm"
        )
    )
    assert names == DEVICES[runtime]
    standard = {"null": [1, 3], "zero": [1, 5], "full": [1, 7], "random": [1, 8], "urandom": [1, 9]}
    standard |= {"tty": [5, 0], "ptmx": [5, 2]}
    # stdin is the worker's /dev/null; stdout and stderr are the capture pipes.
    standard |= {"stdin": [1, 3]}
    assert char_devices == (standard if runtime == "runc" else standard | {"fuse": [10, 229]})
    assert shm == ([] if runtime == "runsc" else None)


def test_gvisor_fuse_and_tun_devices_give_no_privilege(attack: Attack, runtime: str) -> None:
    outcome = result_of(
        attack(
            "import ctypes, errno, fcntl, os, struct\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "def tun():\n"
            "    try:\n"
            "        fd = os.open('/dev/net/tun', os.O_RDWR)\n"
            "    except OSError as exc:\n"
            "        return 'open ' + errno.errorcode[exc.errno]\n"
            "    IFF_TUN, IFF_NO_PI, TUNSETIFF = 0x0001, 0x1000, 0x400454CA\n"
            "    try:\n"
            "        fcntl.ioctl(fd, TUNSETIFF, struct.pack('16sH', b'mcpx0', IFF_TUN | IFF_NO_PI))\n"
            "    except OSError as exc:\n"
            "        return 'TUNSETIFF ' + errno.errorcode[exc.errno]\n"
            "    return 'interface created'\n"
            "def fuse():\n"
            "    try:\n"
            "        fd = os.open('/dev/fuse', os.O_RDWR)\n"
            "    except OSError as exc:\n"
            "        return 'open ' + errno.errorcode[exc.errno]\n"
            "    os.makedirs('/tmp/fuse', exist_ok=True)\n"
            "    options = f'fd={fd},rootmode=40000,user_id=65532,group_id=65532'.encode()\n"
            "    if libc.mount(b'mcpx', b'/tmp/fuse', b'fuse', 0, options) != 0:\n"
            "        return 'mount ' + errno.errorcode[ctypes.get_errno()]\n"
            "    return 'mounted'\n"
            "{'tun': tun(), 'fuse': fuse()}"
        )
    )
    if runtime == "runc":
        assert outcome == {"tun": "open ENOENT", "fuse": "open ENOENT"}
    else:
        assert outcome == {"tun": "TUNSETIFF EPERM", "fuse": "mount EPERM"}


def test_signals_to_the_container_init_have_no_effect(
    api: httpx.Client, new_session: SessionFactory, runtime: str, request: pytest.FixtureRequest
) -> None:
    expect_failure_under(
        request,
        runtime,
        {"runsc"},
        "runsc: gVisor delivers SIGKILL from inside the pid namespace to its init (Linux ignores it), so the "
        "sandbox dies and is restarted: the same self-inflicted reset as killing the supervisor, state lost",
    )
    session = new_session(runtime=runtime)
    init_start = result_of(
        execute(api, session, "kept = 'state'\nopen('/proc/1/stat').read().rsplit(')', 1)[1].split()[19]")
    )
    sent = execute(
        api,
        session,
        "import os, signal, time\n"
        "for sig in (signal.SIGKILL, signal.SIGSTOP):\n"
        "    os.kill(1, sig)\n"
        "time.sleep(0.5)\n"
        "open('/proc/1/stat').read().rsplit(')', 1)[1].split()[0]",
    )
    assert sent["error"] is None, sent["error"]
    assert sent["result"] == "S"
    after = execute(api, session, "kept, open('/proc/1/stat').read().rsplit(')', 1)[1].split()[19]")
    assert result_of(after) == ["state", init_start]
    assert api.get(f"/v1/sessions/{session}").json()["restarts"] == 0


def test_resource_limits_and_priorities_cannot_be_raised(attack: Attack, runtime: str) -> None:
    outcome = result_of(
        attack(
            "import errno, os, resource\n"
            "def raise_hard(name):\n"
            "    limit = getattr(resource, name)\n"
            "    soft, hard = resource.getrlimit(limit)\n"
            "    try:\n"
            "        resource.setrlimit(limit, (hard + 1, hard + 1) if hard != resource.RLIM_INFINITY else (-1, -1))\n"
            "    except ValueError as exc:\n"
            "        return str(exc)\n"
            "    return 'raised' if hard != resource.RLIM_INFINITY else 'unlimited already'\n"
            "def attempt(function):\n"
            "    try:\n"
            "        function()\n"
            "    except OSError as exc:\n"
            "        return errno.errorcode[exc.errno]\n"
            "    return 'OK'\n"
            "def oom_immune():\n"
            "    with open('/proc/self/oom_score_adj', 'w') as f:\n"
            "        f.write('-1000')\n"
            "limits = {name: raise_hard(name) for name in ('RLIMIT_NPROC', 'RLIMIT_NOFILE', 'RLIMIT_MEMLOCK')}\n"
            "renice = attempt(lambda: os.setpriority(os.PRIO_PROCESS, 0, -20))\n"
            "limits, renice, attempt(oom_immune), resource.getrlimit(resource.RLIMIT_NPROC)[1]"
        )
    )
    limits, renice, oom_adjust, nproc = outcome
    assert limits == dict.fromkeys(limits, "not allowed to raise maximum limit") and len(limits) == 3, limits
    if runtime == "runc":
        assert (renice, oom_adjust) == ("EACCES", "EACCES")
    else:
        # gVisor keeps nice values and OOM scores inside its sentry (the host sees neither), and enforces the
        # process cap as this nproc limit.
        assert (renice, oom_adjust, nproc) == ("OK", "OK", PIDS_LIMIT)


def test_open_by_handle_at_cannot_reach_files_by_handle(attack: Attack) -> None:
    # The "shocker" escape: a file handle opened relative to a mount bypasses the container's path view.
    outcome = result_of(
        attack(
            SYSCALLS + "class Handle(ctypes.Structure):\n"
            "    _fields_ = [('size', ctypes.c_uint), ('kind', ctypes.c_int), ('data', ctypes.c_ubyte * 128)]\n"
            "handle, mount_id = Handle(128, 0), ctypes.c_int()\n"
            "AT_FDCWD = -100\n"
            "named = call(303, AT_FDCWD, b'/etc/passwd', ctypes.byref(handle), ctypes.byref(mount_id), 0)\n"
            "root = os.open('/', os.O_RDONLY | os.O_DIRECTORY)\n"
            "named, call(304, root, ctypes.byref(handle), os.O_RDONLY)"
        )
    )
    assert outcome == ["EPERM", "EPERM"]


def test_other_namespaces_cannot_be_entered(attack: Attack, runtime: str) -> None:
    outcome = result_of(
        attack(
            SYSCALLS + "def enter(kind):\n"
            "    try:\n"
            "        fd = os.open(f'/proc/1/ns/{kind}', os.O_RDONLY)\n"
            "    except OSError as exc:\n"
            "        return 'open ' + errno.errorcode[exc.errno]\n"
            "    return call(308, fd, 0)\n"
            "{kind: enter(kind) for kind in ('mnt', 'pid', 'net', 'user', 'uts', 'ipc', 'cgroup')}"
        )
    )
    # gVisor has no cgroup namespace to open.
    cgroup = "EPERM" if runtime == "runc" else "open ENOENT"
    assert outcome == {**dict.fromkeys(["mnt", "pid", "net", "user", "uts", "ipc"], "EPERM"), "cgroup": cgroup}

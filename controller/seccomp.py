"""The sandbox's seccomp profile: Docker's default, narrowed to what the sandbox's code ever needs.

Derived from the syscall list of moby's `profiles/seccomp/default.json` for an unprivileged container (every
capability dropped, so each of its capability-gated rules is left out) and then narrowed further:
- no `ptrace`, `process_vm_readv`/`writev`, `kcmp`, `pidfd_getfd`: user code runs as the same uid as the
  supervisor and docker-init, and under runc nothing else keeps it out of their memory;
- sockets of the `AF_UNIX` family only: the sandbox has no network, and `AF_VSOCK` (not network-namespaced) would
  reach the VM host; `AF_NETLINK`, `AF_PACKET` and the inet families have nothing to talk to;
- no `io_uring_*` (a large kernel surface, the source of many escapes, that Docker's default allows), no
  `name_to_handle_at`, `fanotify_mark`, `socketcall`, and none of the key, bpf, perf, userfaultfd, kexec, module
  or mount families (also absent from Docker's default without capabilities).
Denied calls fail with EPERM, as under Docker's default. Under runc `clone3` fails with ENOSYS so that libc falls
back to `clone`, whose namespace flags stay refused (a filter cannot read clone3's flags, which are behind a
pointer). gVisor, which enforces the profile inside the sandbox (`--oci-seccomp`), answers every refusal with EPERM
whatever the rule asks, so libc could not start a thread: there `clone3` is allowed, and its namespaces are
gVisor's own.
"""

from __future__ import annotations

import json
from typing import Any, Final

AF_UNIX: Final = 1
ENOSYS: Final = 38
# CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET: a plain clone carries none of them.
CLONE_NAMESPACE_FLAGS: Final = 0x7E020000
# personality(2) values that change nothing a sandbox relies on (Docker's default allows the same).
PERSONALITIES: Final = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)

_ALLOWED = (
    "accept accept4 access adjtimex alarm bind brk capget capset chdir chmod chown clock_adjtime clock_getres "
    "clock_gettime clock_nanosleep close close_range connect copy_file_range creat dup dup2 dup3 epoll_create "
    "epoll_create1 epoll_ctl epoll_pwait epoll_pwait2 epoll_wait eventfd eventfd2 execve execveat exit exit_group "
    "faccessat faccessat2 fadvise64 fallocate fchdir fchmod fchmodat fchown fchownat fcntl fdatasync fgetxattr "
    "flistxattr flock fork fremovexattr fsetxattr fstat fstatfs fsync ftruncate futex futex_waitv futimesat getcpu "
    "getcwd getdents getdents64 getegid geteuid getgid getgroups getitimer getpeername getpgid getpgrp getpid "
    "getppid getpriority getrandom getresgid getresuid getrlimit get_robust_list getrusage getsid getsockname "
    "getsockopt gettid gettimeofday getuid getxattr inotify_add_watch inotify_init inotify_init1 inotify_rm_watch "
    "io_cancel ioctl io_destroy io_getevents io_pgetevents ioprio_get ioprio_set io_setup io_submit kill "
    "landlock_add_rule landlock_create_ruleset landlock_restrict_self lchown lgetxattr link linkat listen "
    "listxattr llistxattr lremovexattr lseek lsetxattr lstat madvise membarrier memfd_create mincore mkdir mkdirat "
    "mknod mknodat mlock mlock2 mlockall mmap mprotect mq_getsetattr mq_notify mq_open mq_timedreceive "
    "mq_timedsend mq_unlink mremap msgctl msgget msgrcv msgsnd msync munlock munlockall munmap nanosleep "
    "newfstatat open openat openat2 pause pidfd_open pidfd_send_signal pipe pipe2 pkey_alloc pkey_free "
    "pkey_mprotect poll ppoll prctl pread64 preadv preadv2 prlimit64 process_mrelease pselect6 pwrite64 pwritev "
    "pwritev2 read readahead readlink readlinkat readv recvfrom recvmmsg recvmsg remap_file_pages removexattr "
    "rename renameat renameat2 restart_syscall rmdir rseq rt_sigaction rt_sigpending rt_sigprocmask "
    "rt_sigqueueinfo rt_sigreturn rt_sigsuspend rt_sigtimedwait rt_tgsigqueueinfo sched_getaffinity "
    "sched_getattr sched_getparam sched_get_priority_max sched_get_priority_min sched_getscheduler "
    "sched_rr_get_interval sched_setaffinity sched_setattr sched_setparam sched_setscheduler sched_yield seccomp "
    "select semctl semget semop semtimedop sendfile sendmmsg sendmsg sendto setfsgid setfsuid setgid setgroups "
    "setitimer setpgid setpriority setregid setresgid setresuid setreuid setrlimit set_robust_list setsid "
    "setsockopt set_tid_address setuid setxattr shmat shmctl shmdt shmget shutdown sigaltstack signalfd "
    "signalfd4 splice stat statfs statx symlink symlinkat sync sync_file_range syncfs sysinfo tee tgkill time "
    "timer_create timer_delete timer_getoverrun timer_gettime timer_settime timerfd_create timerfd_gettime "
    "timerfd_settime times tkill truncate umask uname unlink unlinkat utime utimensat utimes vfork vmsplice wait4 "
    "waitid write writev arch_prctl"
)
ALLOWED: Final = tuple(_ALLOWED.split())

# What the profile refuses that Docker's default allows an unprivileged container: each is tested from inside.
REMOVED_FROM_DOCKER_DEFAULT: Final = (
    "ptrace", "process_vm_readv", "process_vm_writev", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "name_to_handle_at", "fanotify_mark", "socketcall", "memfd_secret",
)  # fmt: skip


def _only_when_first_argument(names: list[str], op: str, *values: int) -> list[dict[str, Any]]:
    return [
        {"names": names, "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": value, "op": op}]}
        for value in values
    ]


def profile(gvisor: bool) -> dict[str, Any]:
    """The profile as Docker's seccomp JSON (x86_64 and arm64 only: no 32-bit system call entry points)."""
    clone3: dict[str, Any] = (
        {"names": ["clone3"], "action": "SCMP_ACT_ALLOW"}
        if gvisor
        else {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS}
    )
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64"],
        "syscalls": [
            {"names": list(ALLOWED), "action": "SCMP_ACT_ALLOW"},
            *_only_when_first_argument(["socket", "socketpair"], "SCMP_CMP_EQ", AF_UNIX),
            *_only_when_first_argument(["personality"], "SCMP_CMP_EQ", *PERSONALITIES),
            {
                "names": ["clone"],
                "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 0, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
            },
            clone3,
        ],
    }


def security_option(gvisor: bool) -> str:
    """The profile as Docker takes it in `security_opt`, inline (the CLI sends a profile file's content the same
    way), so the controller needs no file on the engine's host."""
    return "seccomp=" + json.dumps(profile(gvisor), separators=(",", ":"))

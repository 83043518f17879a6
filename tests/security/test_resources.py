"""Attacks on resources: processes, threads, memory, CPU time, signals, output and file descriptors. Each must end
bounded, reported as what it was, and leave the session usable."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import httpx
import pytest

from controller.config import Settings
from tests.conftest import PIDS_LIMIT, SessionFactory, execute
from tests.security.conftest import Attack, expect_failure_under, result_of

TIMEOUT_S = 2
# The controller presumes a sandbox hung this long after an execution's timeout and kill grace.
HUNG_MARGIN_S = 5.0
RESPONSE_BOUND = 64 * 1024  # a shaped response at the default 4000-token budget is far below this

# Live (non-zombie) processes other than init, the supervisor and the worker; polled for up to `patience` seconds
# so that processes already killed but still exiting are not counted.
STRAYS = """
import os, time
def strays(patience):
    mine = {1, os.getpid(), os.getppid()}
    deadline = time.monotonic() + patience
    while True:
        live = []
        for entry in os.listdir('/proc'):
            if entry.isdigit() and int(entry) not in mine:
                try:
                    state = open(f'/proc/{entry}/stat').read().rsplit(')', 1)[1].split()[0]
                except OSError:
                    continue
                if state != 'Z':
                    live.append(int(entry))
        if not live or time.monotonic() > deadline:
            return live
        time.sleep(0.1)
"""


REFORK_RACE = (
    "the end-of-execution kill (supervisor.kill_strays) is one pass over /proc: a process that forks between the "
    "listing and its own SIGKILL leaves a child the pass never sees, which outlives the execution and keeps running "
    "(and forking) between and across executions; worker threads outlive executions by design, so a thread can also "
    "start processes after the pass"
)


def timed(api: httpx.Client, session: str, code: str, **body: Any) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    reply = execute(api, session, code, **body)
    return reply, time.monotonic() - started


def test_a_fork_bomb_is_capped_and_the_session_works_afterwards(
    api: httpx.Client, new_session: SessionFactory, runtime: str
) -> None:
    # Enough memory that the process cap, not the memory limit, is what stops it.
    session = new_session(runtime=runtime, memory_mb=2048, timeout_s=60)
    # Every process forks as long as it can, then holds its slot until the end-of-execution kill; the cell ends
    # once the bomb has filled the cap and every process has given up.
    reply = execute(
        api,
        session,
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    while True:\n"
        "        try:\n"
        "            os.fork()\n"
        "        except OSError:\n"
        "            time.sleep(60)\n"
        "            os._exit(0)\n"
        "deadline, most = time.monotonic() + 45, 0\n"
        f"while most < {PIDS_LIMIT - 8} and time.monotonic() < deadline:\n"
        "    most = max(most, len([p for p in os.listdir('/proc') if p.isdigit()]))\n"
        "    time.sleep(0.1)\n"
        "time.sleep(1)\n"
        "most",
    )
    assert PIDS_LIMIT - 8 <= result_of(reply) <= PIDS_LIMIT
    after = execute(api, session, STRAYS + "import subprocess\nstrays(3), subprocess.run(['true']).returncode")
    assert result_of(after) == [[], 0]


def test_a_thread_bomb_stops_below_the_process_cap(
    api: httpx.Client, new_session: SessionFactory, runtime: str
) -> None:
    session = new_session(runtime=runtime)
    started, error = result_of(
        execute(
            api,
            session,
            "import threading\n"
            "release = threading.Event()\n"
            "threads, error = [], None\n"
            "for _ in range(100_000):\n"
            "    thread = threading.Thread(target=release.wait, daemon=True)\n"
            "    try:\n"
            "        thread.start()\n"
            "    except RuntimeError as exc:\n"
            "        error = str(exc)\n"
            "        break\n"
            "    threads.append(thread)\n"
            "release.set()\n"
            "for thread in threads:\n"
            "    thread.join()\n"
            "len(threads), error",
        )
    )
    assert error == "can't start new thread"
    assert PIDS_LIMIT // 2 < started < PIDS_LIMIT
    assert result_of(execute(api, session, "import threading\nthreading.active_count()")) == 1


def test_a_memory_bomb_in_a_child_process_is_contained(
    api: httpx.Client, new_session: SessionFactory, runtime: str
) -> None:
    session = new_session(runtime=runtime, memory_mb=256)
    execute(api, session, "kept = 'state'")
    reply = execute(
        api,
        session,
        "import subprocess, sys\n"
        "bomb = 'hog = []\\nwhile True:\\n    hog.append(bytearray(10 * 1024 * 1024))'\n"
        "subprocess.run([sys.executable, '-c', bomb]).returncode",
    )
    if runtime == "runc":
        # The kernel kills the greedy child only; the interpreter sees it die of SIGKILL and carries on.
        assert result_of(reply) == -9
        assert reply["state_reset"] is False
        assert result_of(execute(api, session, "kept")) == "state"
    elif reply["error"] is None:
        # Under gVisor (systrap) the host's OOM killer usually picks the greedy child's own process: it ends (with
        # status 1, as gVisor reports the loss of its stub) and the interpreter carries on.
        assert result_of(reply) != 0
        assert reply["state_reset"] is False
        assert result_of(execute(api, session, "kept")) == "state"
    else:
        # When it picks gVisor's kernel instead, the whole sandbox dies and the session starts a new one.
        assert reply["error"]["kind"] == "oom"
        assert reply["state_reset"] is True
        assert result_of(execute(api, session, "'kept' in globals()")) is False


def test_files_in_tmp_count_against_the_memory_limit(
    api: httpx.Client, new_session: SessionFactory, runtime: str
) -> None:
    session = new_session(runtime=runtime, memory_mb=128)
    # The same 70 MB child fits before /tmp holds 60 MB and no longer fits after.
    reply = execute(
        api,
        session,
        "import subprocess, sys\n"
        "child = 'b = bytearray(70 << 20)\\nfor i in range(0, len(b), 4096):\\n    b[i] = 1'\n"
        "before = subprocess.run([sys.executable, '-c', child]).returncode\n"
        "open('/workspace/before', 'w').write(str(before))\n"
        "with open('/tmp/fill', 'wb') as f:\n"
        "    for _ in range(60):\n"
        "        f.write(b'x' * (1 << 20))\n"
        "open('/workspace/filled', 'w').write('yes')\n"
        "before, subprocess.run([sys.executable, '-c', child]).returncode",
    )
    if runtime == "runc":
        assert result_of(reply) == [0, -9]
    else:
        assert reply["error"]["kind"] == "oom"
        assert reply["state_reset"] is True
        markers = execute(api, session, "open('/workspace/before').read(), open('/workspace/filled').read()")
        assert result_of(markers) == ["0", "yes"]


# Files past the inode cap of /tmp (its size in MiB x 256), counting from what /tmp already holds.
FILL_TMP = """
import errno, os
def fill(limit, prefix='f'):
    made = 0
    try:
        while made < limit:
            os.close(os.open(f'/tmp/{prefix}{made}', os.O_CREAT | os.O_WRONLY, 0o600))
            made += 1
    except OSError as exc:
        return made, errno.errorcode[exc.errno]
    return made, 'no limit'
"""


def test_empty_files_in_tmp_stop_at_its_inode_cap(
    api: httpx.Client, new_session: SessionFactory, runtime: str, settings: Settings, request: pytest.FixtureRequest
) -> None:
    expect_failure_under(
        request,
        runtime,
        {"runsc"},
        "runsc: gVisor's tmpfs ignores nr_inodes (the option is accepted and the create verified, but not enforced); "
        "there empty files are bounded only by the sandbox's memory limit, as the sentry's own memory",
    )
    cap = settings.tmp_size_mb * 256
    session = new_session(runtime=runtime)
    made, stopped = result_of(execute(api, session, FILL_TMP + f"fill({cap + 100})"))
    assert (made, stopped) == (cap - 1, "ENOSPC")  # the root directory of /tmp is one of the inodes
    assert result_of(execute(api, session, "import os\nos.remove('/tmp/f0')\nfill(10, prefix='g')")) == [1, "ENOSPC"]


def test_a_c_level_loop_that_never_checks_signals_is_killed_at_the_timeout(
    api: httpx.Client, new_session: SessionFactory, runtime: str
) -> None:
    session = new_session(runtime=runtime)
    # sum() over a range runs in C without ever running Python signal handlers: SIGINT cannot stop it.
    reply = execute(api, session, "sum(range(10**15))", timeout_s=TIMEOUT_S)
    assert reply["error"]["kind"] == "timeout"
    assert reply["state_reset"] is True
    assert result_of(execute(api, session, "'alive'")) == "alive"


def test_a_loop_ignoring_and_blocking_every_signal_is_killed_at_the_timeout(
    api: httpx.Client, new_session: SessionFactory, runtime: str
) -> None:
    session = new_session(runtime=runtime)
    reply = execute(
        api,
        session,
        "import signal\n"
        "for sig in signal.valid_signals():\n"
        "    try:\n"
        "        signal.signal(sig, signal.SIG_IGN)\n"
        "    except (OSError, ValueError):\n"
        "        pass  # SIGKILL and SIGSTOP\n"
        "signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())\n"
        "while True:\n"
        "    pass",
        timeout_s=TIMEOUT_S,
    )
    assert reply["error"]["kind"] == "timeout"
    assert reply["state_reset"] is True
    restored = "import signal\n[signal.getsignal(signal.SIGTERM) == signal.SIG_DFL, len(signal.pthread_sigmask(0, []))]"
    assert result_of(execute(api, session, restored)) == [True, 0]


def test_a_loop_that_swallows_keyboard_interrupt_is_killed_at_the_timeout(
    api: httpx.Client, new_session: SessionFactory, runtime: str
) -> None:
    session = new_session(runtime=runtime)
    reply = execute(
        api,
        session,
        "caught = 0\n"
        "while True:\n"
        "    try:\n"
        "        while True:\n"
        "            pass\n"
        "    except BaseException:\n"
        "        caught += 1",
        timeout_s=TIMEOUT_S,
    )
    assert reply["error"]["kind"] == "timeout"
    assert reply["state_reset"] is True
    assert result_of(execute(api, session, "'caught' in globals()")) is False


def test_a_process_started_by_a_thread_after_its_execution_does_not_outlive_it(
    api: httpx.Client, new_session: SessionFactory, runtime: str, request: pytest.FixtureRequest
) -> None:
    expect_failure_under(request, runtime, {"runc", "runsc"}, f"both runtimes, deterministic: {REFORK_RACE}")
    session = new_session(runtime=runtime)
    # The cell returns at once; its thread starts the process after the end-of-execution kill has run.
    execute(
        api,
        session,
        "import subprocess, threading, time\n"
        "def later():\n"
        "    time.sleep(0.5)\n"
        "    subprocess.Popen(['sleep', '300'])\n"
        "threading.Thread(target=later, daemon=True).start()",
    )
    assert result_of(execute(api, session, STRAYS + "time.sleep(1)\nstrays(1)")) == []


def test_stopping_the_supervisor_is_caught_by_the_controllers_deadline(
    api: httpx.Client, new_session: SessionFactory, runtime: str, settings: Settings
) -> None:
    session = new_session(runtime=runtime)
    # With the supervisor stopped nothing inside enforces the timeout: the controller's own deadline must.
    reply, elapsed = timed(
        api,
        session,
        "import os, signal\nos.kill(os.getppid(), signal.SIGSTOP)\nwhile True:\n    pass",
        timeout_s=1,
    )
    assert reply["error"]["kind"] == "timeout"
    assert reply["error"]["message"] == "the sandbox stopped responding and was restarted"
    assert reply["state_reset"] is True
    assert elapsed >= 1 + settings.kill_grace_s + HUNG_MARGIN_S  # not presumed hung before its margin
    assert result_of(execute(api, session, "'alive'")) == "alive"
    assert api.get(f"/v1/sessions/{session}").json()["restarts"] == 1


def test_a_50_mb_output_flood_is_capped(attack: Attack, settings: Settings) -> None:
    flood = 50 * 1024 * 1024
    reply = attack(
        "import os\n"
        "line = b'y' * 1023 + b'\\n'\n"
        f"for _ in range({flood} // (64 * 1024)):\n"
        "    os.write(1, line * 64)\n"
        "'done'"
    )
    assert result_of(reply) == "done"
    dropped = re.search(r"\[mcpx: (\d+) more bytes of output were dropped\]", reply["stdout"])
    assert dropped is not None
    # The sandbox keeps at most max_output_bytes (less when a frame could not hold that much escaped).
    assert flood - settings.max_output_bytes <= int(dropped.group(1)) < flood
    assert len(json.dumps(reply)) < RESPONSE_BOUND


def test_a_gigabyte_on_one_line_is_capped(api: httpx.Client, new_session: SessionFactory, runtime: str) -> None:
    session = new_session(runtime=runtime)
    execute(api, session, "kept = 'state'")
    # 1 GiB without a newline, as fast as the pipe takes it; gVisor may not get through it before the timeout.
    reply = execute(
        api,
        session,
        "import os\nchunk = b'z' * (1 << 20)\nfor _ in range(1024):\n    os.write(1, chunk)\n'done'",
        timeout_s=4,
    )
    if reply["error"] is None:
        assert reply["result"] == "done"
    else:
        assert reply["error"]["kind"] == "timeout"
        assert reply["state_reset"] is False
    assert "more bytes of output were dropped]" in reply["stdout"]
    assert len(json.dumps(reply)) < RESPONSE_BOUND
    assert result_of(execute(api, session, "kept")) == "state"


def test_a_flood_of_control_characters_is_capped_without_losing_the_session(
    api: httpx.Client, new_session: SessionFactory, runtime: str, settings: Settings
) -> None:
    # JSON escapes a control byte as six (\u0001): output at its cap must still fit in one reply frame.
    session = new_session(runtime=runtime)
    execute(api, session, "kept = 'state'")
    reply = execute(
        api,
        session,
        "import os\n"
        f"for _ in range({settings.max_output_bytes + 1024 * 1024} // 65536):\n"
        "    os.write(1, b'\\x01' * 65536)\n"
        "'done'",
    )
    assert reply["error"] is None, reply["error"]
    assert reply["result"] == "done"
    assert "more bytes of output were dropped]" in reply["stdout"]
    assert result_of(execute(api, session, "kept")) == "state"


def test_a_huge_trailing_result_is_bounded_or_an_oom(
    api: httpx.Client, new_session: SessionFactory, runtime: str
) -> None:
    session = new_session(runtime=runtime, memory_mb=256)
    reply = execute(api, session, "'x' * 200_000_000")
    if reply["error"] is None:
        assert len(json.dumps(reply)) < RESPONSE_BOUND
    else:
        # 200 MB of string and its JSON copy do not fit in 256 MB.
        assert reply["error"]["kind"] == "oom"
        assert reply["state_reset"] is True
    assert result_of(execute(api, session, "'alive'")) == "alive"


def test_unbounded_recursion_with_a_raised_limit_is_survivable(
    api: httpx.Client, new_session: SessionFactory, runtime: str
) -> None:
    session = new_session(runtime=runtime, memory_mb=128)
    code = "import sys\nsys.setrecursionlimit(10**6)\ndef deeper(n):\n    return deeper(n + 1) + 1\ndeeper(0)"
    reply = execute(api, session, code)
    error = reply["error"]
    # Frames live on the heap since Python 3.11: the stack of a million calls exhausts memory before the limit.
    if error["kind"] == "exception":
        assert error["type"] in ("RecursionError", "MemoryError")
    else:
        # Or memory runs out (under gVisor on systrap the interpreter may also stall there until its timeout).
        assert error["kind"] in ("oom", "crash", "timeout")
        assert reply["state_reset"] is True
    assert result_of(execute(api, session, "'alive'")) == "alive"


def test_closing_every_descriptor_including_the_runtime_pipes_is_survivable(
    api: httpx.Client, new_session: SessionFactory, runtime: str
) -> None:
    session = new_session(runtime=runtime)
    reply = execute(api, session, "import os\nos.closerange(0, 65536)\nprint('unreachable')")
    # The worker has lost its command and event pipes: it ends, and the supervisor starts a fresh one.
    assert reply["error"]["kind"] == "crash"
    assert reply["state_reset"] is True
    assert "unreachable" not in reply["stdout"]
    again = execute(api, session, "print('back')\n'alive'")
    assert (again["stdout"], result_of(again), again["state_reset"]) == ("back\n", "alive", False)


def test_pointing_stdio_at_dev_null_is_undone_for_the_next_execution(
    api: httpx.Client, new_session: SessionFactory, runtime: str
) -> None:
    session = new_session(runtime=runtime)
    hidden = execute(
        api,
        session,
        "import os, sys\n"
        "kept = 'state'\n"
        "sink = os.open('/dev/null', os.O_RDWR)\n"
        "for fd in (0, 1, 2):\n"
        "    os.dup2(sink, fd)\n"
        "print('swallowed')\n"
        "print('swallowed too', file=sys.stderr)",
    )
    assert (hidden["stdout"], hidden["stderr"], hidden["error"]) == ("", "", None)
    seen = execute(api, session, "import sys\nprint('seen')\nprint('err', file=sys.stderr)\nkept")
    assert (seen["stdout"], seen["stderr"], result_of(seen), seen["state_reset"]) == ("seen\n", "err\n", "state", False)


def test_exhausting_file_descriptors_leaves_the_session_usable(
    api: httpx.Client, new_session: SessionFactory, runtime: str
) -> None:
    session = new_session(runtime=runtime)
    opened, outcome, limit = result_of(
        execute(
            api,
            session,
            "import errno, os, resource\n"
            "held, outcome = [], None\n"
            "limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]\n"
            "while outcome is None and len(held) <= limit:\n"
            "    try:\n"
            "        held.append(os.open('/dev/null', os.O_RDONLY))\n"
            "    except OSError as exc:\n"
            "        outcome = errno.errorcode[exc.errno]\n"
            "len(held), outcome, limit",
        )
    )
    assert outcome == "EMFILE"
    assert limit - 32 < opened < limit
    # Every descriptor is still held by the interpreter: the next execution must still be served and answered.
    still = execute(api, session, "print('served')\nlen(held)")
    assert (still["stdout"], result_of(still), still["state_reset"]) == ("served\n", opened, False)

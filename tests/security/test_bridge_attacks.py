"""Attacks on the session socket from inside the sandbox: connections of its own, the supervisor's connection
taken over, hostile frames written straight to the controller, floods, and reaching for another session.

The worker cannot open or duplicate the supervisor's connection, nor take it over: the raw peer below would ptrace its
parent and make it run system calls on that connection, and our seccomp profile (like gVisor) refuses the attach, so
under both runtimes these attacks end at the first step. How the controller answers hostile frames on a connection is
tested against the bridge itself, from a peer on the host (tests/test_bridge.py).
"""

from __future__ import annotations

import collections
import json
import platform
import textwrap
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller.bridge import MAX_CALL_CONNECTIONS
from controller.config import Settings
from controller.sessions import session_directory
from tests.conftest import LiveServer, SessionFactory, execute, wait_until
from tests.security.conftest import Attack, result_of

raw_peer = pytest.mark.skipif(platform.machine() != "x86_64", reason="the raw peer injects x86-64 system calls")

# Sandbox-side: the supervisor, stopped under ptrace, made to write frames on its bridge connection and to read what
# the controller answers. What was read is also saved in the workspace, which outlives a sandbox the attack kills.
RAW_PEER = textwrap.dedent(
    """
    import ctypes, errno, json, os, time

    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.restype = ctypes.c_long
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    MASK, WALL = 2**64 - 1, 0x40000000
    ATTACH, DETACH, GETREGS, SETREGS, SINGLESTEP = 16, 17, 12, 13, 9
    MMAP, MUNMAP, SENDTO, RECVFROM, MSG_DONTWAIT, MSG_NOSIGNAL, EAGAIN = 9, 11, 44, 45, 0x40, 0x4000, 11
    REGISTERS = "r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi orig_rax rip cs eflags rsp ss fs_base"
    REGISTERS += " gs_base ds es fs gs"


    class Regs(ctypes.Structure):
        _fields_ = [(name, ctypes.c_ulonglong) for name in REGISTERS.split()]


    class Supervisor:
        def __init__(self):
            self.pid = os.getppid()
            if libc.ptrace(ATTACH, self.pid, None, None) != 0:
                raise OSError(ctypes.get_errno(), "ptrace attach")
            os.waitpid(self.pid, WALL)
            self.saved = self.registers()
            self.mem = os.open(f"/proc/{self.pid}/mem", os.O_RDWR)
            self.at = self.saved.rip - 2  # it sleeps in epoll_wait: a syscall instruction lies just behind
            assert os.pread(self.mem, 2, self.at) == b"\\x0f\\x05"
            fds = os.listdir(f"/proc/{self.pid}/fd")
            self.fd = next(int(fd) for fd in fds if os.readlink(f"/proc/{self.pid}/fd/{fd}").startswith("socket:"))
            self.size = 1 << 16
            self.buf = self.syscall(MMAP, 0, self.size, 3, 0x22, MASK, 0)

        def registers(self):
            regs = Regs()
            libc.ptrace(GETREGS, self.pid, None, ctypes.byref(regs))
            return regs

        def syscall(self, number, *args):
            regs = Regs.from_buffer_copy(self.saved)
            regs.rax, regs.orig_rax, regs.rip = number, MASK, self.at
            for name, value in zip(("rdi", "rsi", "rdx", "r10", "r8", "r9"), args):
                setattr(regs, name, value & MASK)
            libc.ptrace(SETREGS, self.pid, None, ctypes.byref(regs))
            libc.ptrace(SINGLESTEP, self.pid, None, None)
            _, status = os.waitpid(self.pid, WALL)
            assert os.WSTOPSIG(status) == 5, status  # only the step's SIGTRAP: a signal would skew the results
            result = self.registers().rax
            return result - (1 << 64) if result >= 1 << 63 else result

        def send(self, data):
            if len(data) > self.size:
                self.syscall(MUNMAP, self.buf, self.size)
                self.size = (len(data) + 4095) & ~4095
                self.buf = self.syscall(MMAP, 0, self.size, 3, 0x22, MASK, 0)
            os.pwrite(self.mem, data, self.buf)
            sent = 0
            while sent < len(data):
                written = self.syscall(SENDTO, self.fd, self.buf + sent, len(data) - sent, MSG_NOSIGNAL, 0, 0)
                if written <= 0:
                    break
                sent += written
            return sent

        def receive(self, until, timeout_s):
            data, deadline = b"", time.monotonic() + timeout_s
            while not until(data) and time.monotonic() < deadline:
                count = self.syscall(RECVFROM, self.fd, self.buf, min(self.size, 1 << 16), MSG_DONTWAIT, 0, 0)
                if count == -EAGAIN:
                    time.sleep(0.01)
                elif count <= 0:
                    return data, True
                else:
                    data += os.pread(self.mem, count, self.buf)
            return data, False

        def detach(self):
            self.syscall(MUNMAP, self.buf, self.size)
            libc.ptrace(SETREGS, self.pid, None, ctypes.byref(self.saved))
            libc.ptrace(DETACH, self.pid, None, None)
            os.close(self.mem)


    def frame(**message):
        return json.dumps({"jsonrpc": "2.0", **message}).encode() + b"\\n"


    PROBE_ID = 424242
    PROBE = frame(id=PROBE_ID, method="tools/search", params={"query": "time", "detail": "name", "limit": 1})


    def answered(data):
        return b'"id":%d' % PROBE_ID in data


    def never(data):
        return False


    def exchange(frames, until=answered, timeout_s=5.0):
        try:
            peer = Supervisor()
        except OSError as exc:
            return {"attach": errno.errorcode[exc.errno]}
        try:
            sent = peer.send(frames)
            data, closed = peer.receive(until, timeout_s)
            replies = [json.loads(line) for line in data.split(b"\\n")[:-1]]
            outcome = {"sent": sent == len(frames), "replies": replies, "closed": closed}
            with open("/workspace/raw-outcome.json", "w") as saved:
                json.dump(outcome, saved)
        finally:
            peer.detach()
        return outcome
    """
)


def raw(frames: str, then: str = "outcome", **options: str) -> str:
    """Sandbox code that writes `frames` (a Python expression, evaluated inside) as the supervisor; its value is
    `then`, an expression of the `outcome`."""
    extra = "".join(f", {name}={value}" for name, value in options.items())
    return f"{RAW_PEER}\noutcome = exchange({frames}{extra})\n{then}"


def violations(settings: Settings, session: str) -> list[str]:
    """The bridge violations the audit log recorded for one session."""
    found = []
    for event in violation_lines(settings, session):
        found += [str(event["what"])] * int(event["count"])
    return found


def violation_lines(settings: Settings, session: str) -> list[dict[str, Any]]:
    """The audit lines of one session's bridge violations (each with the `count` of violations it stands for)."""
    path = settings.audit_log or settings.state_dir / "audit.log"
    events = [json.loads(line) for line in path.read_text().splitlines()]
    return [e for e in events if e["event"] == "bridge.violation" and e["session"] == session]


def ok(api: httpx.Client, session: str, code: str, **body: Any) -> Any:
    reply = execute(api, session, code, **body)
    assert reply["error"] is None, reply["error"]
    return reply["result"]


def hostile_calls(log: Path) -> list[str]:
    return log.read_text().splitlines()


def test_connections_opened_from_inside_get_no_more_than_the_stubs_do(
    api: httpx.Client, new_session: SessionFactory, runtime: str, settings: Settings
):
    session = new_session(runtime=runtime, servers=["time"])
    ok(api, session, "mine = 'intact'")
    outcome = ok(
        api,
        session,
        textwrap.dedent(
            f"""
            import json, socket

            def connect():
                peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                peer.settimeout(5)
                peer.connect("/run/mcpx/bridge.sock")
                return peer

            def ask(peer, message):
                try:
                    peer.sendall(json.dumps({{"jsonrpc": "2.0", **message}}).encode() + b"\\n")
                    answer = peer.recv(65536)
                except (BrokenPipeError, ConnectionResetError):
                    answer = b""
                return json.loads(answer) if answer else "closed"

            peer = connect()
            outside = ask(peer, {{"id": 1, "method": "tools/call",
                                 "params": {{"server": "crm", "tool": "get_record", "arguments": {{}}}}}})
            forged = ask(peer, {{"id": 1, "result": {{"stdout": "forged"}}}})
            crowd = [connect() for _ in range({MAX_CALL_CONNECTIONS + 2})]
            search = {{"id": 2, "method": "tools/search", "params": {{"query": "time"}}}}
            answers = [ask(extra, search) for extra in crowd]
            [outside["error"]["data"]["kind"], forged["error"]["code"], answers.count("closed")]
            """
        ),
    )
    assert outcome[:2] == ["refused", -32600]
    assert outcome[2] >= 1
    found = violations(settings, session)
    assert "a response or notification on a call connection" in found
    assert any("over the limit" in what for what in found)
    assert ok(api, session, "mine") == "intact"


def test_the_worker_cannot_duplicate_the_supervisors_connection(attack: Attack, runtime: str):
    outcome = attack(
        textwrap.dedent(
            """
            import ctypes, errno, os
            parent = os.getppid()
            libc = ctypes.CDLL(None, use_errno=True)
            found = {}
            for fd in os.listdir(f"/proc/{parent}/fd"):
                if os.readlink(f"/proc/{parent}/fd/{fd}").startswith("socket:"):
                    try:
                        os.close(os.open(f"/proc/{parent}/fd/{fd}", os.O_RDWR))
                        found["open"] = "opened"
                    except OSError as exc:
                        found["open"] = errno.errorcode[exc.errno]
                    pidfd = libc.syscall(434, parent, 0)  # pidfd_open
                    if pidfd < 0:
                        found["pidfd_getfd"] = errno.errorcode[ctypes.get_errno()]
                    else:
                        stolen = libc.syscall(438, pidfd, int(fd), 0)  # pidfd_getfd
                        found["pidfd_getfd"] = "stolen" if stolen >= 0 else errno.errorcode[ctypes.get_errno()]
            found
            """
        )
    )
    assert outcome["error"] is None, outcome["error"]
    # runc: seccomp keeps pidfd_getfd for CAP_SYS_PTRACE; gVisor has no pidfd_open at all.
    expected = {"runc": "EPERM", "runsc": "ENOSYS"}[runtime]
    assert outcome["result"] == {"open": "ENXIO", "pidfd_getfd": expected}


PARSE_ERROR = {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "parse error"}}
NOT_AN_OBJECT = "a frame that is not a JSON object"
BAD_REQUEST = "a request with a bad method or params"


@raw_peer
@pytest.mark.parametrize(
    ("frames", "answers", "violation"),
    [
        pytest.param('b"{not json\\n"', [PARSE_ERROR], NOT_AN_OBJECT, id="malformed-json"),
        pytest.param('b"[1, 2, 3]\\n"', [PARSE_ERROR], NOT_AN_OBJECT, id="an-array"),
        pytest.param('b"\\"just a string\\"\\n"', [PARSE_ERROR], NOT_AN_OBJECT, id="a-string"),
        pytest.param('b"\\xff\\xfe\\x00\\x01{}\\n"', [PARSE_ERROR], NOT_AN_OBJECT, id="invalid-utf8"),
        pytest.param(
            "frame(id=1, method=42)",
            [{"jsonrpc": "2.0", "id": 1, "error": {"code": -32600, "message": "invalid request"}}],
            BAD_REQUEST,
            id="method-not-a-string",
        ),
        pytest.param(
            'frame(id=2, method="tools/call", params=["hostile", "die"])',
            [{"jsonrpc": "2.0", "id": 2, "error": {"code": -32600, "message": "invalid request"}}],
            BAD_REQUEST,
            id="params-not-an-object",
        ),
        pytest.param(
            'frame(id=3, method="rm -rf /", params={})',
            [{"jsonrpc": "2.0", "id": 3, "error": {"code": -32601, "message": "unknown method 'rm -rf /'"}}],
            None,
            id="unknown-method",
        ),
        pytest.param(
            'frame(id=999, result={"stdout": "forged"})',
            [],
            "a response to an unknown request id",
            id="response-to-a-forged-id",
        ),
    ],
)
def test_a_hostile_frame_on_the_supervisors_connection_gets_an_error_and_the_connection_survives(
    api: httpx.Client,
    new_session: SessionFactory,
    runtime: str,
    settings: Settings,
    frames: str,
    answers: list[dict[str, Any]],
    violation: str | None,
):
    session = new_session(runtime=runtime)
    outcome = ok(api, session, raw(f"{frames} + PROBE"))
    assert outcome == {"attach": "EPERM"}


@raw_peer
@pytest.mark.parametrize(
    "runtime",
    [
        "runsc",
        pytest.param(
            "runc",
        ),
    ],
)
def test_a_deeply_nested_frame_gets_a_parse_error_and_the_connection_survives(
    api: httpx.Client, new_session: SessionFactory, runtime: str
):
    session = new_session(runtime=runtime)
    reply = execute(api, session, raw('b"[" * 100_000 + b"\\n" + PROBE'))
    assert reply["error"] is None, reply["error"]
    outcome = reply["result"]
    assert outcome == {"attach": "EPERM"}


@raw_peer
def test_a_17_mib_frame_closes_only_this_sessions_connection(
    api: httpx.Client, new_session: SessionFactory, runtime: str, settings: Settings
):
    session = new_session(runtime=runtime)
    reply = execute(api, session, raw("frame(id=5, method='tools/search', params={'query': 'x' * (17 << 20)})"))
    assert reply["result"] == {"attach": "EPERM"}


@raw_peer
def test_a_flood_of_10k_raw_requests_is_answered_one_by_one(
    api: httpx.Client, new_session: SessionFactory, runtime: str
):
    session = new_session(runtime=runtime)
    # The controller's keepalive notifications may come in between: only responses count.
    replies = "[r for r in outcome.get('replies', []) if 'method' not in r]"
    code = raw(
        "b''.join(frame(id=i, method='flood', params={}) for i in range(10_000))",
        then=f"{{'attach': outcome.get('attach'), 'answers': len({replies}),"
        f" 'ids': sorted(r['id'] for r in {replies}) == list(range(10_000)),"
        f" 'codes': sorted({{r['error']['code'] for r in {replies}}})}}",
        until="lambda data: data.count(b'\"id\":') >= 10_000",
        timeout_s="60",
    )
    outcome = ok(api, session, code, timeout_s=90)
    assert outcome == {"attach": "EPERM", "answers": 0, "ids": False, "codes": []}


@raw_peer
def test_half_a_frame_then_silence_costs_only_this_session_its_sandbox(
    api: httpx.Client, new_session: SessionFactory, runtime: str, settings: Settings
):
    session = new_session(runtime=runtime)
    half_a_frame = """b'{"jsonrpc":"2.0","id":5,"method":"tools/se'"""
    reply = execute(api, session, raw(half_a_frame, until="never", timeout_s="0.5"), timeout_s=1)
    assert reply["result"] == {"attach": "EPERM"}


@raw_peer
@pytest.mark.parametrize(
    "runtime",
    [
        "runsc",
        pytest.param(
            "runc",
        ),
    ],
)
def test_a_lone_surrogate_in_raw_tool_arguments_does_not_break_other_sessions_calls(
    api: httpx.Client, new_session: SessionFactory, runtime: str, hostile_log: Path, server: LiveServer
):
    victim = new_session(runtime="runc")
    attacker = new_session(runtime=runtime)
    victim_reply: dict[str, Any] = {}

    def victim_calls() -> None:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            victim_reply.update(execute(client, victim, "from servers.hostile import sleep\nsleep(s=3)", timeout_s=30))

    before = len(hostile_calls(hostile_log))
    thread = threading.Thread(target=victim_calls)
    thread.start()
    wait_until(lambda: "'sleep'" in hostile_calls(hostile_log)[before:], 15, "the victim's call to reach the server")
    arguments = "{'server': 'hostile', 'tool': 'my-tool', 'arguments': {'x': '\\ud800'}}"
    try:
        outcome = ok(api, attacker, raw(f"frame(id=PROBE_ID, method='tools/call', params={arguments})"))
        thread.join(timeout=60)
        assert not thread.is_alive()
        assert outcome == {"attach": "EPERM"}
        assert victim_reply["error"] is None, victim_reply["error"]
        assert victim_reply["result"] == {"tool": "sleep", "arguments": {"s": 3}}
    finally:
        # Leave the shared server connection usable for whatever runs next.
        again = "from servers.hostile import my_tool\nmy_tool()"
        wait_until(lambda: execute(api, victim, again)["error"] is None, 30, "the hostile server to serve again")


def test_a_flood_of_10k_tool_calls_is_refused_call_by_call(
    api: httpx.Client, new_session: SessionFactory, runtime: str
):
    reply = execute(
        api,
        new_session(runtime=runtime, servers=["time"]),
        textwrap.dedent(
            """
            from concurrent.futures import Future
            from mcpx_runtime import tools
            connection = tools._connection
            futures = [Future() for _ in range(10_000)]
            for future in futures:
                connection.request("tools/call", {"server": "nope", "tool": "x", "arguments": {}}, future)
            outcomes = {}
            for future in futures:
                connection.wait(future)
                error = future.exception()
                name = type(error).__name__ if error is not None else "answered"
                outcomes[name] = outcomes.get(name, 0) + 1
            outcomes
            """
        ),
        timeout_s=120,  # every refusal is audited: on a busy host 10k of them outlast the default time limit
    )
    assert reply["error"] is None, reply["error"]
    assert reply["result"] == {"ToolNotAllowed": 10_000}


def test_a_tool_call_with_non_object_params_gets_an_invalid_request_error(attack: Attack):
    reply = attack(
        textwrap.dedent(
            """
            from concurrent.futures import Future
            from mcpx_runtime import tools
            connection, future = tools._connection, Future()
            connection.request("tools/call", ["hostile", "die"], future)
            connection.wait(future)
            error = future.exception()
            type(error).__name__, str(error)
            """
        )
    )
    assert reply["error"] is None, reply["error"]
    assert reply["result"] == ["ToolError", "invalid request"]


def test_deeply_nested_tool_arguments_are_refused_without_reaching_the_server(
    attack: Attack, api: httpx.Client, new_session: SessionFactory, hostile_log: Path
):
    before = hostile_calls(hostile_log)
    reply = attack(
        textwrap.dedent(
            """
            from servers import ToolError
            from mcpx_runtime.tools import call_tool
            nested = "x"
            for _ in range(300):
                nested = [nested]
            try:
                call_tool("hostile", "my-tool", {"x": nested})
                outcome = "called"
            except ToolError as exc:
                outcome = "refused"
            outcome
            """
        )
    )
    assert reply["error"] is None, reply["error"]
    assert reply["result"] == "refused"
    assert hostile_calls(hostile_log) == before
    other = new_session(runtime="runc", servers=["hostile"])
    assert ok(api, other, "from servers.hostile import my_tool\nmy_tool()") == {"tool": "my_tool", "arguments": {}}


def test_a_session_cannot_reach_another_sessions_socket_or_servers(
    api: httpx.Client, new_session: SessionFactory, runtime: str, settings: Settings, hostile_log: Path
):
    other = new_session(runtime=runtime, servers=["hostile"])
    session = new_session(runtime=runtime, servers=["time"])
    other_socket = session_directory(settings.state_dir / "sessions", other) / "socket" / "bridge.sock"
    assert other_socket.exists()
    before = hostile_calls(hostile_log)
    outcome = ok(
        api,
        session,
        textwrap.dedent(
            f"""
            import errno, os, socket
            from servers import ToolError
            from mcpx_runtime.tools import call_tool

            def reach(path):
                probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    probe.connect(path)
                    return "connected"
                except OSError as exc:
                    return errno.errorcode[exc.errno]
                finally:
                    probe.close()

            paths = [{str(other_socket)!r}, "/run/mcpx/../mcpx-{other}/bridge.sock", "/run/{other}/bridge.sock",
                     "/proc/1/root{other_socket}"]
            seen = " ".join(open(p).read() for p in ("/proc/self/mountinfo", "/proc/self/environ"))
            try:
                call_tool("hostile", "my-tool", {{}})
                refusal = "called"
            except ToolError as exc:
                refusal = type(exc).__name__, str(exc)
            {{"run": sorted(os.listdir("/run/mcpx")), "reach": [reach(p) for p in paths],
             "named": {other!r} in seen, "refusal": refusal}}
            """
        ),
    )
    # /proc/1/root is the sandbox's own root (EACCES under gVisor, whose init is root's): the host path is not there.
    assert outcome["reach"][3] in ("ENOENT", "EACCES")
    outcome["reach"][3] = "ENOENT"
    assert outcome == {
        "run": ["bridge.sock"],
        "reach": ["ENOENT"] * 4,
        "named": False,
        "refusal": ["ToolNotAllowed", "server 'hostile' is not allowed in this session"],
    }
    assert hostile_calls(hostile_log) == before


# Sandbox-side: a connection of its own to the session socket, speaking raw frames.
OWN_CONNECTION = textwrap.dedent(
    """
    import json, socket

    def connect():
        peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        peer.settimeout(60)
        peer.connect("/run/mcpx/bridge.sock")
        return peer

    def call(request_id, tool, arguments):
        message = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
                   "params": {"server": "hostile", "tool": tool, "arguments": arguments}}
        return json.dumps(message).encode() + b"\\n"

    def replies(peer, count):
        data = b""
        while data.count(b"\\n") < count:
            chunk = peer.recv(65536)
            if not chunk:
                break
            data += chunk
        return [json.loads(line) for line in data.splitlines()]
    """
)


def test_a_replayed_call_id_is_refused_and_the_server_sees_the_call_once(attack: Attack, hostile_log: Path):
    before = len(hostile_calls(hostile_log))
    reply = attack(
        OWN_CONNECTION
        + textwrap.dedent(
            """
            peer = connect()
            peer.sendall(call(1, "my-tool", {}))
            first = replies(peer, 1)
            peer.sendall(call(1, "my-tool", {}))  # answered already
            answered = replies(peer, 1)
            peer.sendall(call(2, "sleep", {"s": 1}) + call(2, "sleep", {"s": 1}))  # the second while in flight
            in_flight = replies(peer, 2)
            [first, answered, in_flight]
            """
        ),
        servers=["hostile"],
    )
    first, answered, in_flight = result_of(reply)
    used = {"code": -32600, "message": "request id already used"}
    assert first == [{"jsonrpc": "2.0", "id": 1, "result": {"tool": "my-tool", "arguments": {}}}]
    assert answered == [{"jsonrpc": "2.0", "id": 1, "error": used}]
    assert in_flight == [
        {"jsonrpc": "2.0", "id": 2, "error": used},
        {"jsonrpc": "2.0", "id": 2, "result": {"tool": "sleep", "arguments": {"s": 1}}},
    ]
    assert hostile_calls(hostile_log)[before:] == ["'my-tool'", "'sleep'"]


def test_a_silent_call_connection_and_an_unfinished_frame_are_closed_and_audited(
    api: httpx.Client, new_session: SessionFactory, runtime: str, settings: Settings
):
    session = new_session(runtime=runtime)
    code = OWN_CONNECTION + textwrap.dedent(
        """
        silent, unfinished = connect(), connect()
        unfinished.sendall(call(1, "my-tool", {})[:25])
        [silent.recv(1).decode(), unfinished.recv(1).decode()]
        """
    )
    assert ok(api, session, code, timeout_s=60) == ["", ""]  # both closed by the controller (EOF)
    found = violations(settings, session)
    timeout = settings.bridge_idle_timeout_s
    assert sorted(found) == [
        f"a call connection that sent no frame for {timeout:g} s; connection closed",
        f"a frame left unfinished for {timeout:g} s; connection closed",
    ]
    assert ok(api, session, "'still served'") == "still served"


def test_a_flood_of_malformed_frames_costs_a_few_audit_lines_that_count_it_all_and_closes_connections(
    api: httpx.Client, new_session: SessionFactory, runtime: str, settings: Settings, server: LiveServer
):
    victim = new_session(runtime="runc", servers=["time"])
    attacker = new_session(runtime=runtime)
    total, limit = 20_000, settings.bridge_max_violations
    code = OWN_CONNECTION + textwrap.dedent(
        f"""
        left, per_connection = {total}, []
        while left:
            peer, got = connect(), 0
            try:
                while left - got:
                    batch = min(left - got, 50)
                    peer.sendall(b"{{not json\\n" * batch)
                    answers = replies(peer, batch)
                    got += len(answers)
                    if len(answers) < batch:
                        break  # closed by the controller
                else:
                    peer.recv(1)  # the last answer may also be the last word
            except OSError:
                pass
            peer.close()
            per_connection.append(got)
            left -= got
        per_connection
        """
    )
    victim_reply: dict[str, Any] = {}

    def victim_calls() -> None:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            loop = (
                "from servers.time import get_current_time\n[get_current_time(timezone='UTC') for _ in range(30)][-1]"
            )
            victim_reply.update(execute(client, victim, loop))

    thread = threading.Thread(target=victim_calls)
    thread.start()
    per_connection = ok(api, attacker, code, timeout_s=240)
    thread.join(timeout=120)
    assert victim_reply["error"] is None, victim_reply["error"]
    api.delete(f"/v1/sessions/{attacker}")  # ends its audit windows: the counts are all written
    assert sum(per_connection) == total
    answered = [got for got in per_connection if got]
    assert set(answered[:-1]) == {limit}  # every connection was closed at the limit, the last maybe short of it
    lines = violation_lines(settings, attacker)
    counts = collections.Counter[str]()
    for line in lines:
        counts[line["what"]] += line["count"]
    assert counts[NOT_AN_OBJECT] == total
    assert counts[f"a connection closed after {limit} protocol violations"] == total // limit
    # Each kind: one line at once, one per window with the rest; the flood takes a few windows at most.
    assert len(lines) <= 30, len(lines)
    assert violation_lines(settings, victim) == []

"""The sandbox's main process: the one bridge connection to the controller, and the keeper of the worker.

It owns no user state. It relays `execute` to the worker, enforces the timeout (SIGINT, then SIGKILL of the
worker's process group after a grace period), captures fd-level stdout/stderr (sent to the controller in `output`
notifications ahead of the reply), and restarts the worker whenever it dies, reporting `state_reset`. Workers call
tools on connections of their own (tools.py, mcpx_node/runtime.js), so a call never waits for this process.

TypeScript executions run in a second worker, Node.js (`/opt/mcpx/node/worker.js`), started on the first of them
and speaking the same pipe protocol: the same timeout, output capture, crash and OOM handling apply to both.
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import os
import selectors
import signal
import socket
import time
from typing import Any

from mcpx_runtime import worker
from mcpx_runtime.wire import FrameTooLarge, LineReader, Message, encode

MAX_FRAME = int(os.environ.get("MCPX_MAX_FRAME", str(16 * 1024 * 1024)))
MAX_OUTPUT = int(os.environ.get("MCPX_MAX_OUTPUT", str(4 * 1024 * 1024)))
KILL_GRACE_S = float(os.environ.get("MCPX_KILL_GRACE_S", "1.0"))
# A lost controller connection is retried this long (a restarted controller re-adopts the sandbox), then it exits;
# so does a connection that carries nothing for this long (the controller sends keepalives: it is frozen).
RECONNECT_S = float(os.environ.get("MCPX_RECONNECT_S", "30"))
RECONNECT_EVERY_S = 0.1
# The sandbox's end of life (Unix time), whatever happens to the controller; 0: none.
EXPIRES_AT = float(os.environ.get("MCPX_EXPIRES_AT", "0"))
READ_SIZE = 65536
# Output goes to the controller in `output` notifications of at most this many characters (a frame stays small
# whatever the cap); output that is not streamed is batched up to this size.
CHUNK = 65536
# Past the output cap this share of it is kept for the end of the stream.
TAIL_SHARE = 4
NODE = os.environ.get("MCPX_NODE", "/usr/bin/node")
NODE_WORKER = os.environ.get("MCPX_NODE_WORKER", "/opt/mcpx/node/worker.js")
# V8's own heap limit would end a greedy cell with an abort before the container's memory limit is reached; past
# it, running out of memory is an OOM kill, as in Python.
NODE_FLAGS = ("--max-old-space-size=65536", "--stack-size=984")
NO_TYPESCRIPT = -32010
STOPS = {"timeout": ("TimeoutError", "time limit exceeded"), "interrupted": ("KeyboardInterrupt", "interrupted")}


class Capture:
    """One stream of one execution, capped at `limit` bytes. Past the cap the middle is dropped: the start (passed
    on as it comes) and the last `limit // TAIL_SHARE` bytes (passed on at the end) are kept, so the real end of the
    output, where errors and summaries are, survives. UTF-8 is decoded incrementally and never split at a cut."""

    def __init__(self, limit: int = MAX_OUTPUT) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._tail_room = limit // TAIL_SHARE
        self._head_room = limit - self._tail_room
        self._tail = bytearray()
        self.dropped = 0

    def add(self, data: bytes) -> str:
        """Take what the stream wrote; return the text to pass on now (the start of the stream)."""
        head = data[: self._head_room]
        self._head_room -= len(head)
        text = self._decoder.decode(head)
        if len(head) < len(data):
            # The start is full: a character it began and could not finish goes, whole, to the end.
            pending = self._decoder.getstate()[0]
            self._decoder.reset()
            self._tail_room += len(pending)
            self._tail += pending + data[len(head) :]
            excess = len(self._tail) - self._tail_room
            if excess > 0:
                del self._tail[:excess]
                self.dropped += excess
        return text

    def finish(self) -> tuple[str, int, str]:
        """What remains to pass on: the rest of the start, how many bytes were dropped after it, and the end."""
        if not self.dropped:
            return self._decoder.decode(bytes(self._tail), final=True), 0, ""
        skip = 0  # the end starts with a whole character
        while skip < min(3, len(self._tail)) and self._tail[skip] & 0xC0 == 0x80:
            skip += 1
        self.dropped += skip
        return self._decoder.decode(b"", final=True), self.dropped, self._tail[skip:].decode(errors="replace")


class Execution:
    """The one execution in flight: its deadline, how it was stopped, and what it printed."""

    def __init__(self, request_id: Any, deadline: float, stream: bool, worker: Worker) -> None:
        self.request_id = request_id
        self.worker = worker
        self.deadline = deadline
        self.stream = stream
        self.started = time.monotonic()
        self.stop_reason: str | None = None
        self.orphaned = False  # asked for on a connection since lost: nobody waits for its reply
        self.kill_at: float | None = None
        self.stdout = Capture()
        self.stderr = Capture()
        self.unsent: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self.unsent_chars = {"stdout": 0, "stderr": 0}


class Worker:
    """A worker process and the four pipes to it: forked from this one for Python (its modules are already
    imported), Node.js executed in the fork for TypeScript."""

    def __init__(self, language: str = "python") -> None:
        self.language = language
        cmd_r, self.cmd_w = os.pipe()
        self.evt_r, evt_w = os.pipe()
        self.out_r, out_w = os.pipe()
        self.err_r, err_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            serve_in_child(cmd_r, evt_w, out_w, err_w, language)
        for fd in (cmd_r, evt_w, out_w, err_w):
            os.close(fd)
        for fd in (self.out_r, self.err_r):
            os.set_blocking(fd, False)
        self.events = LineReader(MAX_FRAME)
        self.ready = False
        self.oom_kills = oom_kill_count()

    def send(self, message: Message) -> None:
        # A dead worker's EPIPE is ignored here: its death is noticed on the event pipe.
        with contextlib.suppress(OSError):
            os.write(self.cmd_w, encode(message))

    def kill(self) -> int:
        """Kill the worker and everything it started; return its exit status."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        try:
            return os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        except ChildProcessError:
            return -signal.SIGKILL

    def close(self) -> None:
        for fd in (self.cmd_w, self.evt_r, self.out_r, self.err_r):
            os.close(fd)


def serve_in_child(cmd_r: int, evt_w: int, out_w: int, err_w: int, language: str) -> None:
    """In the forked child: a new session, fd 1/2 on the capture pipes, nothing else of the supervisor's open."""
    status = 0
    try:
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDONLY)
        for source, target in ((devnull, 0), (out_w, 1), (err_w, 2)):
            os.dup2(source, target)
        keep = sorted({cmd_r, evt_w})
        os.closerange(3, keep[0])
        os.closerange(keep[0] + 1, keep[1])
        os.closerange(keep[1] + 1, 65536)
        if language == "typescript":
            status = 127  # what remains if exec fails
            for fd in keep:
                os.set_inheritable(fd, True)
            os.execv(NODE, [NODE, *NODE_FLAGS, NODE_WORKER, str(cmd_r), str(evt_w)])  # noqa: S606 - fixed argv
        worker.main(cmd_r, evt_w, MAX_FRAME)
    finally:
        os._exit(status)


def typescript_available() -> bool:
    """Whether this image has the TypeScript runtime (it is left out of a Python-only build)."""
    return os.access(NODE, os.X_OK) and os.path.isfile(NODE_WORKER)


def kill_strays(keep: set[int]) -> None:
    """Kill every process in the sandbox except `keep`: whatever an execution started ends with it, double-forked
    daemons included (they leave the worker's process group, not the sandbox's pid namespace). Passes repeat until
    one finds nothing, so a process that forked between a listing and its kill is caught by the next pass."""
    for _ in range(200):
        strays = [int(entry) for entry in os.listdir("/proc") if entry.isdigit() and int(entry) not in keep]
        alive = [pid for pid in strays if running(pid)]
        for pid in alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if not alive:
            return


def running(pid: int) -> bool:
    """Whether a process still runs: a killed one lingers as a zombie until its parent reaps it."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def oom_kill_count() -> int:
    """The cgroup's OOM-kill counter, to tell an OOM kill from any other SIGKILL (cgroup v2, then v1)."""
    for path in ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"):
        try:
            with open(path) as events:
                for line in events:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            continue
    return 0


class Supervisor:
    def __init__(self, sock: socket.socket, path: str) -> None:
        self.sock: socket.socket | None = sock
        self.path = path
        self.lost_at = 0.0
        self.heard = time.monotonic()
        self.selector = selectors.DefaultSelector()
        self.inbox = LineReader(MAX_FRAME)
        self.execution: Execution | None = None
        self.pending: Message | None = None
        self.running = True
        self.worker = self._start_worker("python")
        self.node: Worker | None = None  # started by the first TypeScript execution
        self.selector.register(sock, selectors.EVENT_READ, self._on_controller)

    # --- the controller side -------------------------------------------------------------------------------------

    def send(self, message: Message) -> None:
        """Send to the controller; while it is away, what would have been sent is lost (it asks again)."""
        if self.sock is None:
            return
        try:
            self.sock.sendall(encode({"jsonrpc": "2.0", **message}))
        except OSError:
            self._disconnected()

    def reply(self, request_id: Any, result: Any) -> None:
        self.send({"id": request_id, "result": result})

    def reply_error(self, request_id: Any, code: int, message: str) -> None:
        self.send({"id": request_id, "error": {"code": code, "message": message}})

    def _on_controller(self, _fd: int) -> None:
        assert self.sock is not None
        try:
            data = self.sock.recv(READ_SIZE)
        except OSError:
            data = b""
        if not data:
            self._disconnected()
            return
        self.heard = time.monotonic()
        try:
            messages = self.inbox.feed(data)
        except FrameTooLarge:
            self.reply_error(None, -32600, "frame too large")
            self.running = False
            return
        for message in messages:
            if message is None:
                self.reply_error(None, -32700, "parse error")
            elif isinstance(message.get("method"), str):
                self._on_request(message)

    def _on_request(self, message: Message) -> None:
        method, request_id = message["method"], message.get("id")
        params: Message = message["params"] if isinstance(message.get("params"), dict) else {}
        if method == "execute":
            if self.execution is not None or self.pending is not None:
                self.reply_error(request_id, -32002, "an execution is already running")
            elif params.get("language", "python") not in ("python", "typescript"):
                self.reply_error(request_id, -32602, f"unknown language {params.get('language')!r}")
            elif params.get("language") == "typescript" and not typescript_available():
                self.reply_error(request_id, NO_TYPESCRIPT, "this sandbox image has no TypeScript runtime")
            else:
                self.pending = {"id": request_id, **params}
                self._dispatch()
        elif method == "interrupt":
            if self.execution is not None:
                self._stop(self.execution, "interrupted")
            self.reply(request_id, {"interrupted": self.execution is not None})
        elif method == "reset":
            self._replace_worker(self.worker)
            if self.node is not None:
                self._replace_worker(self.node)
            self.reply(request_id, {"reset": True})
        elif method == "ping":
            self.reply(request_id, {"pid": os.getpid(), "worker_ready": self.worker.ready})
        elif request_id is not None:
            self.reply_error(request_id, -32601, f"unknown method {method!r}")

    # --- executions ----------------------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        if self.pending is None:
            return
        worker = self.worker
        if self.pending.get("language") == "typescript":
            worker = self.node = self.node or self._start_worker("typescript")
        if not worker.ready:
            return
        request, self.pending = self.pending, None
        timeout = float(request.get("timeout_s") or 30.0)
        self.execution = Execution(request["id"], time.monotonic() + timeout, bool(request.get("stream")), worker)
        traceparent = request.get("traceparent")
        worker.send(
            {
                "type": "execute",
                "id": request["id"],
                "code": str(request.get("code", "")),
                "traceparent": traceparent if isinstance(traceparent, str) else "",
            }
        )

    def _stop(self, execution: Execution, reason: str) -> None:
        if execution.kill_at is not None:
            return
        execution.stop_reason = reason
        execution.kill_at = time.monotonic() + KILL_GRACE_S
        with contextlib.suppress(ProcessLookupError):
            os.kill(execution.worker.pid, signal.SIGINT)

    def _finish(self, error: Message | None, result: Any, state_reset: bool) -> None:
        if self.execution is None:
            return
        self._drain()
        execution, self.execution = self.execution, None
        self._flush_output(execution)
        if execution.stop_reason is not None:
            error_type, message = STOPS[execution.stop_reason]
            traceback = (error or {}).get("traceback", "")
            error = {"kind": execution.stop_reason, "type": error_type, "message": message, "traceback": traceback}
        kill_strays({1, os.getpid(), *(worker.pid for worker in (self.worker, self.node) if worker is not None)})
        if execution.orphaned:
            return
        # stdout and stderr went ahead in `output` notifications, so this frame's size does not depend on them.
        self.reply(
            execution.request_id,
            {
                "result": result,
                "error": error,
                "duration_ms": round((time.monotonic() - execution.started) * 1000, 3),
                "state_reset": state_reset,
            },
        )

    def tick(self) -> float | None:
        """Enforce deadlines; return how long the loop may sleep."""
        execution = self.execution
        if execution is None:
            return None
        now = time.monotonic()
        if execution.kill_at is not None:
            if now >= execution.kill_at:
                self._on_worker_death(execution.worker, killed=True)
                return None
            return execution.kill_at - now
        if now >= execution.deadline:
            self._stop(execution, "timeout")
            return KILL_GRACE_S
        return execution.deadline - now

    # --- the worker side -----------------------------------------------------------------------------------------

    def _start_worker(self, language: str) -> Worker:
        worker = Worker(language)
        self.selector.register(worker.evt_r, selectors.EVENT_READ, functools.partial(self._on_worker_event, worker))
        for fd, name in ((worker.out_r, "stdout"), (worker.err_r, "stderr")):
            self.selector.register(fd, selectors.EVENT_READ, functools.partial(self._on_output, worker, name))
        return worker

    def _replace_worker(self, worker: Worker) -> None:
        worker.kill()
        for fd in (worker.evt_r, worker.out_r, worker.err_r):
            if fd in self.selector.get_map():
                self.selector.unregister(fd)
        worker.close()
        if worker is self.worker:
            self.worker = self._start_worker("python")
        else:
            self.node = self._start_worker("typescript")

    def _on_worker_event(self, worker: Worker, fd: int) -> None:
        data = os.read(fd, READ_SIZE)
        if not data:
            self._on_worker_death(worker, killed=False)
            return
        try:
            events = worker.events.feed(data)
        except FrameTooLarge:
            self._on_worker_death(worker, killed=True)
            return
        for event in events:
            if event is not None:
                self._on_event(worker, event)

    def _on_event(self, worker: Worker, event: Message) -> None:
        kind = event.get("type")
        execution = self.execution
        if kind == "ready":
            worker.ready = True
            self._dispatch()
        elif (
            kind == "done"
            and execution is not None
            and execution.worker is worker
            and event.get("id") == execution.request_id
        ):
            error = event.get("error")
            if error is not None:
                error = {"kind": "exception", **error}
            self._finish(error, event.get("result"), state_reset=False)

    def _on_worker_death(self, worker: Worker, *, killed: bool) -> None:
        status = worker.kill()
        if not worker.ready and worker is self.worker:
            raise SystemExit(f"mcpx runtime: the interpreter failed to start ({describe_status(status)})")
        if not worker.ready:
            self._discard_node(f"the TypeScript runtime failed to start ({describe_status(status)})")
            return
        if self.execution is not None and self.execution.worker is worker:
            if killed:
                error = None  # _finish describes a stop it caused itself
            elif oom_kill_count() > worker.oom_kills:
                error = {
                    "kind": "oom",
                    "type": "MemoryError",
                    "message": "the interpreter ran out of memory and was killed",
                    "traceback": "",
                }
            else:
                error = {
                    "kind": "crash",
                    "type": "InterpreterExit",
                    "message": describe_status(status),
                    "traceback": "",
                }
            self._finish(error, None, state_reset=True)
        self._replace_worker(worker)

    def _discard_node(self, message: str) -> None:
        """Give up on a Node worker that never became ready: its pending execution fails, the next one retries."""
        node, self.node = self.node, None
        if node is not None:
            for fd in (node.evt_r, node.out_r, node.err_r):
                if fd in self.selector.get_map():
                    self.selector.unregister(fd)
            node.close()
        if self.pending is not None and self.pending.get("language") == "typescript":
            request, self.pending = self.pending, None
            self.reply_error(request["id"], NO_TYPESCRIPT, message)

    def _on_output(self, worker: Worker, name: str, fd: int) -> None:
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return
        if not data:
            self.selector.unregister(fd)
            return
        execution = self.execution
        if execution is None or execution.worker is not worker:
            return  # output of a background process between executions (or of the other worker) belongs to nobody
        self._capture(execution, name, data)

    def _capture(self, execution: Execution, name: str, data: bytes) -> None:
        self._pass_on(execution, name, getattr(execution, name).add(data))

    def _pass_on(self, execution: Execution, name: str, text: str) -> None:
        """Send output to the controller: at once when streamed, else in chunks of CHUNK characters."""
        unsent = execution.unsent[name]
        if text:
            unsent.append(text)
            execution.unsent_chars[name] += len(text)
        if unsent and (execution.stream or execution.unsent_chars[name] >= CHUNK):
            self._send_output(execution, name, "".join(unsent))
            unsent.clear()
            execution.unsent_chars[name] = 0

    def _send_output(self, execution: Execution, name: str, text: str) -> None:
        for start in range(0, len(text), CHUNK):
            self._notify_output(execution, {"stream": name, "text": text[start : start + CHUNK]})

    def _notify_output(self, execution: Execution, params: Message) -> None:
        if not execution.orphaned:
            self.send({"method": "output", "params": {"id": execution.request_id, **params}})

    def _flush_output(self, execution: Execution) -> None:
        """Send what is left of each stream: the rest of its start, how much was dropped, then its end."""
        for name in ("stdout", "stderr"):
            rest, dropped, end = getattr(execution, name).finish()
            self._send_output(execution, name, "".join([*execution.unsent[name], rest]))
            if dropped:
                self._notify_output(execution, {"stream": name, "dropped": dropped})
                self._send_output(execution, name, end)

    def _drain(self) -> None:
        """Collect (and stream) what the worker wrote before it reported, so no output moves to the next execution
        and a stream sees all of it before the result."""
        execution = self.execution
        if execution is None:
            return
        for fd, name in ((execution.worker.out_r, "stdout"), (execution.worker.err_r, "stderr")):
            while True:
                try:
                    data = os.read(fd, READ_SIZE)
                except (BlockingIOError, OSError):
                    break
                if not data:
                    break
                self._capture(execution, name, data)

    def _disconnected(self) -> None:
        """The controller went away (a restart, or the end): keep the interpreter and wait for it to return."""
        if self.sock is not None:
            self.selector.unregister(self.sock)
            self.sock.close()
            self.sock = None
            self.lost_at = time.monotonic()
            self.inbox = LineReader(MAX_FRAME)
            self.pending = None
            if self.execution is not None:
                self.execution.orphaned, self.execution.stream = True, False

    def _reconnect(self) -> float | None:
        """One attempt; how long until the next one (None: connected)."""
        if time.monotonic() - self.lost_at > RECONNECT_S:
            self.running = False
            return None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            return RECONNECT_EVERY_S
        self.sock, self.heard = sock, time.monotonic()
        self.selector.register(sock, selectors.EVENT_READ, self._on_controller)
        return None

    def serve(self) -> None:
        while self.running:
            if EXPIRES_AT and time.time() >= EXPIRES_AT:
                break
            silence = time.monotonic() - self.heard
            if self.sock is not None and silence > RECONNECT_S:
                break
            waits = [self.tick(), EXPIRES_AT - time.time() if EXPIRES_AT else None]
            if self.sock is not None:
                waits.append(RECONNECT_S - silence)
            if self.sock is None:
                waits.append(self._reconnect())
                if not self.running:
                    break
            timeout = min((wait for wait in waits if wait is not None), default=None)
            for key, _ in self.selector.select(timeout):
                key.data(key.fd)
                if not self.running:
                    break
        for each in (self.worker, self.node):
            if each is not None:
                each.kill()


def describe_status(status: int) -> str:
    if status < 0:
        name = signal.Signals(-status).name if -status in signal.valid_signals() else str(-status)
        return f"the interpreter was killed by {name}"
    return f"the interpreter exited with status {status}"


def main(sock: socket.socket, path: str) -> None:
    Supervisor(sock, path).serve()

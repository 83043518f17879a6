"""The persistent interpreter: runs cells in one namespace, like a notebook kernel.

The supervisor starts it with two pipe descriptors (commands in, events out); fd 1 and 2 are pipes the supervisor
reads, so output of subprocesses and C extensions is captured too. Anything the user's code does to this process
is survivable: the supervisor restarts it and reports `state_reset`.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import io
import itertools
import json
import linecache
import os
import signal
import sys
import traceback
from types import CodeType
from typing import TYPE_CHECKING, Any

from mcpx_runtime import cells, tools
from mcpx_runtime.wire import LineReader, Message, encode

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Iterator

# A returned value travels in one frame (JSON may escape a character as six bytes); the controller shapes it to the
# token budget. Output does not share that frame: it goes ahead in notifications of its own.
MAX_RESULT_CHARS = min(
    int(os.environ.get("MCPX_MAX_OUTPUT", str(4 * 1024 * 1024))),
    int(os.environ.get("MCPX_MAX_FRAME", str(16 * 1024 * 1024))) // 14,
)
_cell_numbers = itertools.count(1)
# The runtime's own frames (this loop, the tool-call plumbing) are none of the agent's business in a traceback.
RUNTIME_DIR = os.path.dirname(__file__) + os.sep


class Channel:
    """The worker's side of the command/event pipes, used by its main thread only."""

    def __init__(self, cmd_fd: int, evt_fd: int, limit: int) -> None:
        self._cmd_fd = cmd_fd
        self._evt = os.fdopen(evt_fd, "wb", buffering=0)
        self._reader = LineReader(limit)

    def send(self, message: Message) -> None:
        self._evt.write(encode(message))

    def commands(self) -> Iterator[Message]:
        """The supervisor's commands, read as they come; the iteration ends when it closes the pipe."""
        while data := os.read(self._cmd_fd, 65536):
            yield from (message for message in self._reader.feed(data) if message is not None)


class Interpreter:
    """One namespace and one event loop that persist across cells."""

    def __init__(self) -> None:
        self.namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stdout, self._stderr = text_stream(1), text_stream(2)
        # Private copies of the capture pipes, so a cell that closes or redirects fd 1/2 cannot blind later ones.
        self._out_fd, self._err_fd = os.dup(1), os.dup(2)
        self.executing = False

    def run_cell(self, code: str) -> Message:
        reap_children()
        self._restore_process()
        self.executing = True
        try:
            value = self._run(code)
        except BaseException as exc:  # noqa: BLE001 - whatever the cell raises is its result
            return {"error": describe(exc)}
        finally:
            self.executing = False
            for stream in (sys.stdout, sys.stderr):
                # A stream the cell broke must not break the reply.
                with contextlib.suppress(Exception):
                    stream.flush()
            self._restore_process()
        return {"result": to_json(value)} if value is not None else {"result": None}

    def _run(self, code: str) -> Any:
        filename = f"<cell-{next(_cell_numbers)}>"
        linecache.cache[filename] = (len(code), None, code.splitlines(keepends=True), filename)
        tree = cells.rewrite(ast.parse(code, filename, "exec"))
        self.namespace[cells.AWAITED] = tools.awaited
        tail: ast.expr | None = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            tail = tree.body.pop().value  # type: ignore[attr-defined]
        self._evaluate(compile(tree, filename, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT))
        if tail is None:
            return None
        expression = ast.Expression(tail)
        value = self._evaluate(compile(expression, filename, "eval", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT))
        if value is not None:
            self.namespace["_"] = value
        return value

    def _evaluate(self, code: CodeType) -> Any:
        outcome = eval(code, self.namespace)  # noqa: S307 - running the agent's code is this process's purpose
        if code.co_flags & 0x80:  # CO_COROUTINE: the cell used top-level await
            loop = self._event_loop()
            task = loop.create_task(outcome)
            try:
                return loop.run_until_complete(task)
            except BaseException:
                task.cancel()
                raise
        return outcome

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        """The cells' one event loop, created on first use: importing asyncio costs ~0.4 s under gVisor."""
        import asyncio

        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        return self._loop

    def _restore_process(self) -> None:
        os.dup2(self._out_fd, 1)
        os.dup2(self._err_fd, 2)
        if self._stdout.closed:
            self._stdout = text_stream(1)
        if self._stderr.closed:
            self._stderr = text_stream(2)
        sys.stdout, sys.stderr = self._stdout, self._stderr
        if self._loop is not None:
            self._event_loop()
        signal.signal(signal.SIGINT, self._on_interrupt)

    def _on_interrupt(self, signum: int, frame: object) -> None:
        # Interrupts land only while a cell runs, never inside the reply path.
        if self.executing:
            raise KeyboardInterrupt


def reap_children() -> None:
    """Collect the exit status of children the supervisor killed when the last cell ended (they hold pids)."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def text_stream(fd: int) -> io.TextIOWrapper:
    # Unbuffered, as `python -u` does it: output interleaves with subprocesses' in the order it was written.
    raw = io.FileIO(fd, "w", closefd=False)
    return io.TextIOWrapper(raw, encoding="utf-8", errors="backslashreplace", write_through=True)


def describe(exc: BaseException) -> Message:
    """The exception as the agent should see it: only frames of its own cells and the code they called."""
    frames = [
        (frame, lineno)
        for frame, lineno in traceback.walk_tb(exc.__traceback__)
        if not frame.f_code.co_filename.startswith(RUNTIME_DIR) and not isinstance(exc, SyntaxError)
    ]
    lines = [] if not frames else ["Traceback (most recent call last):\n"]
    lines += traceback.StackSummary.extract(iter(frames)).format()
    lines += traceback.format_exception_only(type(exc), exc)
    return {"type": type(exc).__name__, "message": str(exc), "traceback": "".join(lines)}


def to_json(value: Any) -> Any:
    """The value itself when it is plain JSON, else its repr (bounded)."""
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return safe_repr(value)
    return value if len(text) <= MAX_RESULT_CHARS else safe_repr(value)


def safe_repr(value: Any) -> str:
    try:
        text = repr(value)
    except Exception as exc:  # noqa: BLE001 - a hostile __repr__ must not break the reply
        text = f"<unrepresentable {type(value).__name__}: {exc!r}>"
    return text if len(text) <= MAX_RESULT_CHARS else text[:MAX_RESULT_CHARS] + "...<truncated>"


def main(cmd_fd: int, evt_fd: int, limit: int) -> None:
    """Serve cells until the supervisor closes the command pipe."""
    for fd in (cmd_fd, evt_fd):
        os.set_inheritable(fd, False)  # programs the cell starts must not hold the supervisor's pipes open
    sys.path.append("/workspace")  # last: the agent's modules import, but shadow nothing
    channel = Channel(cmd_fd, evt_fd, limit)
    tools.connect(os.environ.get("MCPX_SOCKET", "/run/mcpx/bridge.sock"), limit)
    interpreter = Interpreter()
    channel.send({"type": "ready", "pid": os.getpid()})
    pid = os.getpid()
    for command in channel.commands():
        if command.get("type") == "execute":
            tools.traceparent = str(command.get("traceparent") or "")
            reply = interpreter.run_cell(str(command.get("code", "")))
            if os.getpid() != pid:
                os._exit(0)  # a child the cell forked fell through to here: only the worker itself may reply
            channel.send({"type": "done", "id": command.get("id"), **reply})

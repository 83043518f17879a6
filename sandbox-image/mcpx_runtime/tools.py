"""What generated stubs call: MCP tools, reached through the controller on the interpreter's own connection.

A stub call returns the tool's result, always: in plain code, in a cell that uses `await`, inside `async def`. A
call the cell awaits, gathers or schedules as a task (`await get(...)`, `asyncio.gather(a(...), b(...))`; the rule
is in `cells`) returns an awaitable instead, its request already on its way, so those calls run concurrently.
`parallel` runs many plain calls at once from plain code; threads may call stubs concurrently too.

There is no reader thread: under gVisor every thread hand-off costs as much as the socket round trip itself. A
caller that waits reads the connection itself and hands other callers their replies (leader and followers); an
awaitable waits in the event loop's executor the same way.
"""

from __future__ import annotations

import itertools
import os
import socket
import sys
import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from mcpx_runtime.wire import FrameTooLarge, LineReader, Message, encode

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable, Coroutine, Iterable, Mapping

T = TypeVar("T")

CO_COROUTINE, CO_ASYNC_GENERATOR = 0x80, 0x200
TRANSPARENT = frozenset({"<genexpr>", "<listcomp>", "<dictcomp>", "<setcomp>", "<lambda>"})
READ_SIZE = 65536
# The W3C trace context of the running execution, set by the worker; each tool call carries it back.
traceparent = ""


class ToolError(Exception):
    """A tool call failed; `kind` says how, `str()` is the server's (or the controller's) message."""

    kind = "tool_error"

    def __init__(self, message: str, *, server: str = "", tool: str = "") -> None:
        super().__init__(message)
        self.server = server
        self.tool = tool


class ToolNotAllowed(ToolError):
    """The session may not use this server or tool, or it does not exist; nothing was sent to the server."""

    kind = "refused"


class InvalidArguments(ToolError):
    """The arguments do not match the tool's input schema; nothing was sent to the server."""

    kind = "invalid_arguments"


class ToolTimeout(ToolError):
    """The server did not answer in time; the call was cancelled."""

    kind = "timeout"


class ServerUnavailable(ToolError):
    """The server is down or restarting; a later call may succeed."""

    kind = "unavailable"


class QuotaExceeded(ToolError):
    """The session's policy allows no more calls (or result bytes) now; nothing was sent to the server."""

    kind = "quota"


class InvalidResult(ToolError):
    """The server answered with a result that breaks its own schema or the protocol."""

    kind = "invalid_result"


ERRORS: dict[str, type[ToolError]] = {
    error.kind: error
    for error in (
        ToolError,
        ToolNotAllowed,
        InvalidArguments,
        ToolTimeout,
        ServerUnavailable,
        QuotaExceeded,
        InvalidResult,
    )
}


# Named where the agent imports them from (`from servers import ToolError`), in tracebacks too.
for _error in ERRORS.values():
    _error.__module__ = "servers"


def error_from_reply(error: Any) -> ToolError:
    """The exception a JSON-RPC error reply stands for."""
    if not isinstance(error, dict):
        return ToolError(str(error))
    data: dict[str, Any] = error["data"] if isinstance(error.get("data"), dict) else {}
    cls = ERRORS.get(str(data.get("kind")), ToolError)
    return cls(
        str(error.get("message", "tool call failed")),
        server=str(data.get("server", "")),
        tool=str(data.get("tool", "")),
    )


class Reply(Protocol):
    """Where a call's reply goes: a `Slot` for a caller that waits in its own thread, a `Future` for an awaitable."""

    def done(self) -> bool: ...
    def set_result(self, result: Any) -> None: ...
    def set_exception(self, exception: BaseException) -> None: ...
    def result(self) -> Any: ...


class Slot:
    """The reply to a plain (blocking) call. Its caller waits on the connection's condition, so, unlike a
    `Future`, a slot needs no lock of its own: under gVisor each object less on the path shows."""

    __slots__ = ("_done", "_error", "_value")

    def __init__(self) -> None:
        self._done = False
        self._value: Any = None
        self._error: BaseException | None = None

    def done(self) -> bool:
        return self._done

    def set_result(self, result: Any) -> None:
        self._value, self._done = result, True

    def set_exception(self, exception: BaseException) -> None:
        self._error, self._done = exception, True

    def result(self) -> Any:
        if self._error is not None:
            raise self._error
        return self._value


class Connection:
    """This process's connection to the controller, opened at the first call (and again in a forked child)."""

    def __init__(self, path: str, limit: int) -> None:
        self._path = path
        self._limit = limit
        self._ids = itertools.count(1)
        self._forget()

    def _forget(self) -> None:
        """Start afresh: at creation, and in a forked child, which needs a connection of its own (replies would go
        to whoever reads first) and must not inherit its parent's calls or locks, held or not."""
        self._sock: socket.socket | None = None
        self._inbox = LineReader(self._limit)
        self._pending: dict[int, Reply] = {}
        self._sending = threading.Lock()
        self._reading = threading.Lock()
        self._changed = threading.Condition()
        self._pumping = False

    def request(self, method: str, params: dict[str, Any], future: Reply) -> None:
        """Send a request now; its reply resolves `future` once somebody waits (`result`).

        Raises:
            ToolError: the request is larger than a frame, or the controller cannot be reached.
        """
        with self._sending:
            request_id = next(self._ids)
            frame = encode({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
            if len(frame) > self._limit:
                raise ToolError(f"the request is {len(frame)} bytes, over the {self._limit}-byte frame limit")
            try:
                sock = self._socket()
                self._pending[request_id] = future
                sock.sendall(frame)
            except OSError as exc:
                self._pending[request_id] = future
                self._lost(f"cannot reach the controller: {exc}")

    def result(self, future: Reply) -> Any:
        self.wait(future)
        return future.result()

    def awaitable(self, future: Future[Any]) -> Coroutine[Any, Any, Any]:
        """The reply as a coroutine of the running event loop (what `await`, `gather` and `create_task` all take);
        one executor thread reads replies while any are due."""
        import asyncio

        loop = asyncio.get_running_loop()
        with self._sending:
            start, self._pumping = not self._pumping, True
        if start:
            loop.run_in_executor(None, self._pump)
        return _settled(asyncio.wrap_future(future, loop=loop))

    def _pump(self) -> None:
        while True:
            with self._sending:
                due = next(iter(list(self._pending.values())), None)
                if due is None:
                    self._pumping = False
                    return
            self.wait(due)

    def wait(self, future: Reply) -> None:
        """Wait for a reply: read the connection while no other caller does, else wait for the one who does."""
        while not future.done():
            if self._reading.acquire(blocking=False):
                try:
                    while not future.done():
                        self._read()
                finally:
                    self._reading.release()
                    with self._changed:
                        self._changed.notify_all()
            else:
                with self._changed:
                    self._changed.wait_for(lambda: future.done() or not self._reading.locked())

    def _socket(self) -> socket.socket:
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._inbox = LineReader(self._limit)
            self._sock.connect(self._path)
        return self._sock

    def _read(self) -> None:
        sock = self._sock
        try:
            data = sock.recv(READ_SIZE) if sock is not None else b""
            messages = self._inbox.feed(data) if data else None
        except (OSError, FrameTooLarge) as exc:
            self._lost(f"the connection to the controller failed: {exc}")
            return
        if messages is None:
            self._lost("the controller closed the connection")
            return
        for message in messages:
            if message is not None:
                self._resolve(message)
        with self._changed:
            self._changed.notify_all()

    def _resolve(self, message: Message) -> None:
        request_id = message.get("id")
        future = self._pending.pop(request_id, None) if isinstance(request_id, int) else None
        if future is None:
            return
        if message.get("error") is not None:
            future.set_exception(error_from_reply(message["error"]))
        else:
            future.set_result(message.get("result"))

    def _lost(self, reason: str) -> None:
        """Fail every waiting call; the next one reconnects."""
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(ToolError(reason))


async def _settled(reply: asyncio.Future[Any]) -> Any:
    return await reply


_connection: Connection | None = None


def connect(path: str, limit: int) -> None:
    """Called once by the worker: where the controller listens."""
    global _connection
    _connection = Connection(path, limit)


def _after_fork() -> None:
    # A hook rather than a pid check per call: under gVisor one getpid() costs as much as the socket round trip.
    if _connection is not None:
        _connection._forget()


os.register_at_fork(after_in_child=_after_fork)


def _connected() -> Connection:
    if _connection is None:
        raise ToolError("tools are only callable inside an mcpx sandbox")
    return _connection


def awaited(function: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """`function(*args, **kwargs)` at a call site the cell hands to the event loop (see `cells`): a stub called
    from here returns an awaitable."""
    return function(*args, **kwargs)


_AWAITED = awaited.__code__


def _wants_awaitable() -> bool:
    """Whether the stub's caller hands the call to the running event loop.

    A rewritten cell (and every function it defines) says so through `awaited`; its other calls are plain. Code the
    cell did not write, such as a module of the workspace, keeps the rule of Python's own coroutines: a call from a
    coroutine, or from a comprehension, generator expression or lambda inside one, gets an awaitable.
    """
    asyncio = sys.modules.get("asyncio")
    if asyncio is None or asyncio._get_running_loop() is None:
        return False
    frame = sys._getframe(2)
    while frame is not None and frame.f_globals.get("__name__", "").startswith("servers."):
        frame = frame.f_back  # type: ignore[assignment]
    if frame is None or frame.f_code is _AWAITED:
        return frame is not None
    if frame.f_code.co_filename.startswith("<cell-"):
        return False
    while frame is not None and frame.f_code.co_name in TRANSPARENT:
        frame = frame.f_back  # type: ignore[assignment]
    return frame is not None and bool(frame.f_code.co_flags & (CO_COROUTINE | CO_ASYNC_GENERATOR))


def call_tool(server: str, tool: str, arguments: dict[str, Any], omit_none: tuple[str, ...] = ()) -> Any:
    """Call `tool` of `server`; optional arguments left at None are not sent.

    Raises:
        ToolError: (or a subclass) the call was refused or failed; the message says why.
    """
    sent = {name: value for name, value in arguments.items() if not (value is None and name in omit_none)}
    params: dict[str, Any] = {"server": server, "tool": tool, "arguments": sent}
    if traceparent:
        params["_meta"] = {"traceparent": traceparent}
    connection = _connected()
    if _wants_awaitable():
        future: Future[Any] = Future()
        connection.request("tools/call", params, future)
        return connection.awaitable(future)
    slot = Slot()
    connection.request("tools/call", params, slot)
    return connection.result(slot)


def search_tools(
    query: str, detail: Literal["name", "description", "full"] = "description", limit: int = 10
) -> list[dict[str, Any]]:
    """Find tools by what they do, without reading every stub: best matches first.

    detail="name" gives where each tool lives (`servers.<server>.<tool>`), "description" adds its one-line
    description and its Python signature, "full" adds the wire names and the input schema.
    """
    connection, slot = _connected(), Slot()
    connection.request("tools/search", {"query": query, "detail": detail, "limit": limit}, slot)
    result: list[dict[str, Any]] = connection.result(slot)
    return result


def parallel(function: Callable[..., T], calls: Iterable[Mapping[str, Any]], *, limit: int = 8) -> list[T]:
    """`function(**arguments)` for each of `calls`, up to `limit` at once, from plain code: the results in order.

    `parallel(get_document, [{"document_id": d} for d in ids])`. Every call runs to its end; the first one that
    failed (in order) is then raised.

    Raises:
        ToolError: (or a subclass, or whatever `function` raised) one of the calls failed.
    """
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max(1, min(limit, 32))) as pool:
        futures = [pool.submit(function, **arguments) for arguments in calls]
    return [future.result() for future in futures]

"""What generated stubs call: MCP tools, reached through the controller over the sandbox's one connection.

A stub called from plain code blocks and returns the tool's result. Called from a coroutine (a cell that uses
`await`, or an `async def`), it returns an awaitable instead, and the request is already on its way, so
`await asyncio.gather(a(), b())` runs tools concurrently. Threads may call stubs concurrently too.
"""

from __future__ import annotations

import sys
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable

CO_COROUTINE, CO_ASYNC_GENERATOR = 0x80, 0x200
TRANSPARENT = frozenset({"<genexpr>", "<listcomp>", "<dictcomp>", "<setcomp>", "<lambda>"})
_request: Callable[[str, dict[str, Any]], Future[Any]] | None = None
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


def connect(request: Callable[[str, dict[str, Any]], Future[Any]]) -> None:
    """Called once by the worker: how requests reach the controller."""
    global _request
    _request = request


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


def _send(method: str, params: dict[str, Any]) -> Future[Any]:
    if _request is None:
        raise ToolError("tools are only callable inside an mcpx sandbox")
    return _request(method, params)


def _in_coroutine() -> bool:
    """Whether the code that called the stub is a coroutine running in this thread's event loop.

    Stub and runtime frames are skipped, and so are comprehensions, generator expressions and lambdas, which
    belong to the code around them: `gather(*(tool(x) for x in xs))` in a coroutine gets awaitables.
    """
    asyncio = sys.modules.get("asyncio")
    if asyncio is None or asyncio._get_running_loop() is None:
        return False
    frame = sys._getframe(1)
    while frame is not None and (
        frame.f_globals.get("__name__", "").startswith("servers.")
        or frame.f_globals.get("__name__") == __name__
        or frame.f_code.co_name in TRANSPARENT
    ):
        frame = frame.f_back  # type: ignore[assignment]
    return frame is not None and bool(frame.f_code.co_flags & (CO_COROUTINE | CO_ASYNC_GENERATOR))


def _awaitable(future: Future[Any]) -> asyncio.Future[Any]:
    import asyncio

    return asyncio.wrap_future(future)


def call_tool(server: str, tool: str, arguments: dict[str, Any], omit_none: tuple[str, ...] = ()) -> Any:
    """Call `tool` of `server`; optional arguments left at None are not sent.

    Raises:
        ToolError: (or a subclass) the call was refused or failed; the message says why.
    """
    sent = {name: value for name, value in arguments.items() if not (value is None and name in omit_none)}
    params: dict[str, Any] = {"server": server, "tool": tool, "arguments": sent}
    if traceparent:
        params["_meta"] = {"traceparent": traceparent}
    future = _send("tools/call", params)
    return _awaitable(future) if _in_coroutine() else future.result()


def search_tools(
    query: str, detail: Literal["name", "description", "full"] = "description", limit: int = 10
) -> list[dict[str, Any]]:
    """Find tools by what they do, without reading every stub: best matches first.

    detail="name" gives where each tool lives (`servers.<server>.<tool>`), "description" adds its one-line
    description, "full" adds its Python signature and input schema.
    """
    result: list[dict[str, Any]] = _send("tools/search", {"query": query, "detail": detail, "limit": limit}).result()
    return result

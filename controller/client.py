"""An async client of the mcpx HTTP API, for agent services and the `mcpx` CLI.

It mirrors the API's JSON in its own models and imports nothing else from mcpx, so a service can use it without
FastAPI, Docker or the MCP SDK installed:

    async with MCPXClient("http://127.0.0.1:8080", api_key=key) as mcpx:
        session = await mcpx.create_session(memory_mb=512)
        result = await mcpx.execute(session.id, "print(6 * 7)")
        await mcpx.delete_session(session.id)

Every failure is one exception, `MCPXClientError`: a non-2xx answer (carrying the server's `error` and `detail`),
an unreachable server or a timeout (status 0), or an answer that does not match the API (`invalid_response`).
A failure of the submitted code is not an exception: it is `ExecutionResult.error`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, Self, TypedDict, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

Detail = Literal["name", "description", "full"]
Language = Literal["python", "typescript"]
Strategy = Literal["truncate", "summarize", "sample"]

# How long to wait for an execution whose time limit the client does not know (the session's default): the
# server's largest time limit by default (600 s) plus a margin. A known limit waits that long plus the margin,
# which covers the kill grace and a sandbox restart after a timeout or an OOM.
EXECUTION_WAIT_S = 660.0
EXECUTION_MARGIN_S = 60.0
# Creating a session starts a sandbox, which may take the server's start timeout (30 s by default) and more.
SESSION_START_WAIT_S = 120.0
# An idle connection is reused for this long only: well within any server's keep-alive (uvicorn's default is 5 s,
# mcpx's 75 s), so a request never goes out on a connection the server is closing at that moment.
KEEPALIVE_S = 2.0


class MCPXClientError(Exception):
    """A request that did not succeed.

    `status` is the HTTP status, or 0 when no answer came (`error` is then `unreachable`, `timeout` or
    `transport`); `error` is the server's machine-readable code (`session_not_found`, `unauthorized`, ...) and
    `detail` its reason. `body` is the parsed error body when there was one (a 503 from /readyz lists the MCP
    servers' states there).
    """

    def __init__(self, status: int, error: str, detail: str, body: Any = None) -> None:
        super().__init__(f"{status} {error}: {detail}" if status else f"{error}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail
        self.body = body


class _Model(BaseModel):
    # Unknown fields are ignored, so a newer server does not break an older client.
    model_config = ConfigDict(frozen=True, populate_by_name=True)


class Health(_Model):
    status: str


class ServerState(_Model):
    """One configured MCP server: `state` is `connecting`, `ready`, `reconnecting` or `failed`."""

    name: str
    state: str
    tools: int = 0
    error: str | None = None
    protocol: str | None = None
    list_changes: int = 0


class Readiness(_Model):
    """`GET /readyz`: the container runtime sessions get by default and every MCP server's state."""

    status: str
    runtime: str | None = None
    servers: list[ServerState] = []


class Limits(_Model):
    timeout_s: float
    memory_mb: int
    cpus: float
    ttl_s: float


class Policy(_Model):
    """What a session's code may do beyond its server allowlist (as the server applies it)."""

    tools: list[str] | None = None
    read_only: bool = False
    max_tool_calls_per_execution: int
    max_tool_calls: int
    max_concurrent_tool_calls: int
    max_result_bytes_per_execution: int
    denied_imports: list[str] = []


class PolicyRequest(TypedDict, total=False):
    """A stricter policy for a new session; each field omitted takes the server's."""

    tools: list[str]
    read_only: bool
    max_tool_calls_per_execution: int
    max_tool_calls: int
    max_concurrent_tool_calls: int
    max_result_bytes_per_execution: int
    denied_imports: list[str]


class TokenReport(_Model):
    """Tokens through the model with mcpx (`returned`, `code`) against a direct-tool-calling agent."""

    returned: int = 0
    code: int = 0
    tool_results: int = 0
    tool_calls: int = 0
    direct_estimate: int = 0
    saved: int = 0


class SessionInfo(_Model):
    """A session: `state` is `ready`, `busy` or `restarting`; `servers` None means every configured one."""

    id: str
    runtime: str
    created_at: datetime
    servers: list[str] | None = None
    policy: Policy
    state: str
    limits: Limits
    executions: int = 0
    restarts: int = 0
    idle_s: float = 0.0
    tokens: TokenReport = TokenReport()


class ExecutionError(_Model):
    """Why code did not complete: `kind` is `exception`, `timeout`, `interrupted`, `oom`, `crash` or `policy`."""

    kind: str
    type: str
    message: str
    traceback: str = ""


class ToolCall(_Model):
    """One tool call made by the code; `tokens` is the size of its result, which stayed in the sandbox."""

    server: str
    tool: str
    ok: bool
    ms: float
    bytes: int
    tokens: int


class ExecutionResult(_Model):
    """The outcome of one execution; `full_output` maps each part cut to fit the budget to its workspace path."""

    stdout: str = ""
    stderr: str = ""
    result: Any = None
    error: ExecutionError | None = None
    duration_ms: float = 0.0
    state_reset: bool = False
    tool_calls: list[ToolCall] = []
    tokens: TokenReport = TokenReport()
    full_output: dict[str, str] = {}


class OutputEvent(_Model):
    """Text the code wrote, as it wrote it; `stream` is `stdout` or `stderr`."""

    stream: str
    text: str


class ToolCallEvent(_Model):
    """A tool call the code made, when it completed."""

    call: ToolCall


class ResultEvent(_Model):
    """The end of an execution: the same result a non-streaming execution returns."""

    result: ExecutionResult


Event = OutputEvent | ToolCallEvent | ResultEvent


class FileInfo(_Model):
    """A file in a session's workspace; `path` is relative to the workspace (/workspace in the sandbox)."""

    path: str
    size: int


class ToolSummary(_Model):
    name: str
    description: str


class ServerListing(_Model):
    name: str
    description: str
    state: str
    tools: list[ToolSummary]


class ToolListing(_Model):
    """`GET /v1/tools`: reachable servers with one line per tool, and configured servers with no tools."""

    digest: str
    servers: list[ServerListing]
    unavailable: list[ServerState] = []
    tokens: dict[str, int] = {}


class ToolHit(_Model):
    """One search result: `import_path` is what sandbox code imports (`servers.<server>.<tool>`, as identifiers);
    `description` and the one-line `signature` come with detail `description` and `full`, which also gives the
    wire names (`server`, `tool`) and the `input_schema`."""

    import_path: str = Field(alias="import")
    server: str | None = None
    tool: str | None = None
    description: str | None = None
    signature: str | None = None
    input_schema: dict[str, Any] | None = None


class ToolDetail(_Model):
    """One tool: the stub sandbox code imports (`path`, `signature`, `source`) and its schemas."""

    server: str
    tool: str
    description: str
    path: str
    signature: str
    source: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None = None
    annotations: dict[str, Any] = {}


class _SessionList(_Model):
    sessions: list[SessionInfo]


class _FileList(_Model):
    files: list[FileInfo]


_HITS = TypeAdapter(list[ToolHit])
M = TypeVar("M")


@dataclass
class ServerSentEvent:
    event: str
    data: str
    id: str | None = None


@dataclass
class SSEDecoder:
    """Server-sent events from lines of a `text/event-stream` body (the WHATWG parsing rules, minus `retry`)."""

    _event: str = ""
    _data: list[str] = field(default_factory=list)
    _id: str | None = None

    def feed(self, line: str) -> ServerSentEvent | None:
        """Take one line (without its line ending); a blank line completes the event, which is returned."""
        if not line:
            if not self._data:
                self._event = ""
                return None
            event = ServerSentEvent(self._event or "message", "\n".join(self._data), self._id)
            self._event, self._data = "", []
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        return None


def error_of(response: httpx.Response) -> MCPXClientError:
    """The error a non-2xx response carries; a body that is not mcpx's `{error, detail}` is described."""
    try:
        body = json.loads(response.content)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        detail = body.get("detail")
        return MCPXClientError(response.status_code, body["error"], _text(detail), body)
    if isinstance(body, dict) and "detail" in body:  # a framework error that bypassed mcpx's error handler
        code = "invalid_request" if response.status_code == 422 else f"http_{response.status_code}"
        return MCPXClientError(response.status_code, code, _text(body["detail"]), body)
    text = response.text.strip()[:500] if response.content else ""
    return MCPXClientError(response.status_code, f"http_{response.status_code}", text or response.reason_phrase)


def _text(detail: Any) -> str:
    return detail if isinstance(detail, str) else json.dumps(detail)


def event_of(sse: ServerSentEvent, status: int) -> Event | None:
    """The typed event an SSE carries; None for an event this client does not know (ignored, as SSE intends).

    Raises:
        MCPXClientError: an `error` event, or data that does not match the API.
    """
    try:
        if sse.event == "output":
            return OutputEvent.model_validate_json(sse.data)
        if sse.event == "tool_call":
            return ToolCallEvent(call=ToolCall.model_validate_json(sse.data))
        if sse.event == "result":
            return ResultEvent(result=ExecutionResult.model_validate_json(sse.data))
    except ValidationError as exc:
        raise MCPXClientError(status, "invalid_response", f"a {sse.event!r} event that does not parse: {exc}") from exc
    if sse.event != "error":
        return None
    try:
        body = json.loads(sse.data)
    except ValueError:
        body = {"detail": sse.data}
    if not isinstance(body, dict):
        body = {"detail": body}
    raise MCPXClientError(status, str(body.get("error", "stream_error")), _text(body.get("detail", "")), body)


class MCPXClient:
    """An async client of one mcpx server; use it as `async with MCPXClient(url) as mcpx: ...`.

    `timeout` bounds every request except executions, which wait for their time limit plus a margin, and session
    creation, which waits at least `SESSION_START_WAIT_S`.

    Raises:
        ValueError: `base_url` is not a URL.
    """

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        try:
            self._http = httpx.AsyncClient(
                base_url=base_url.rstrip("/"),
                headers=headers,
                timeout=timeout,
                limits=httpx.Limits(keepalive_expiry=KEEPALIVE_S),
            )
        except httpx.InvalidURL as exc:
            raise ValueError(f"not a URL: {base_url!r}") from exc
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # Health

    async def health(self) -> Health:
        """`GET /healthz`: the process serves. Raises: MCPXClientError."""
        return _parse(Health.model_validate_json, await self._request("GET", "/healthz"))

    async def ready(self) -> Readiness:
        """`GET /readyz`: Docker answers and the image exists.

        Raises:
            MCPXClientError: 503 `not_ready` when it does not; `body["servers"]` still lists the MCP servers.
        """
        return _parse(Readiness.model_validate_json, await self._request("GET", "/readyz"))

    # Sessions

    async def create_session(
        self,
        *,
        timeout_s: float | None = None,
        memory_mb: int | None = None,
        cpus: float | None = None,
        ttl_s: float | None = None,
        runtime: Literal["runsc", "runc"] | None = None,
        servers: list[str] | None = None,
        policy: PolicyRequest | None = None,
    ) -> SessionInfo:
        """Start a session; each limit omitted takes the server's default. Raises: MCPXClientError."""
        given = {
            "timeout_s": timeout_s,
            "memory_mb": memory_mb,
            "cpus": cpus,
            "ttl_s": ttl_s,
            "runtime": runtime,
            "servers": servers,
            "policy": policy,
        }
        body = {key: value for key, value in given.items() if value is not None}
        wait = httpx.Timeout(self.timeout, read=max(self.timeout, SESSION_START_WAIT_S))
        return _parse(
            SessionInfo.model_validate_json, await self._request("POST", "/v1/sessions", json=body, wait=wait)
        )

    async def get_session(self, session_id: str) -> SessionInfo:
        """Raises: MCPXClientError (404 `session_not_found`)."""
        return _parse(SessionInfo.model_validate_json, await self._request("GET", _session(session_id)))

    async def list_sessions(self) -> list[SessionInfo]:
        """The sessions of the caller's tenant. Raises: MCPXClientError."""
        return _parse(_SessionList.model_validate_json, await self._request("GET", "/v1/sessions")).sessions

    async def delete_session(self, session_id: str) -> None:
        """Delete a session: its sandbox and workspace are gone. Raises: MCPXClientError (404)."""
        await self._request("DELETE", _session(session_id))

    # Executions

    async def execute(
        self,
        session_id: str,
        code: str,
        timeout_s: float | None = None,
        max_output_tokens: int | None = None,
        strategy: Strategy | None = None,
        language: Language = "python",
    ) -> ExecutionResult:
        """Run code in the session and wait for its result.

        Raises:
            MCPXClientError: the request failed (a failure of the code is `ExecutionResult.error`).
        """
        response = await self._request(
            "POST",
            f"{_session(session_id)}/executions",
            json=_execution(code, timeout_s, max_output_tokens, strategy, language),
            wait=self._execution_timeout(timeout_s),
        )
        return _parse(ExecutionResult.model_validate_json, response)

    async def stream(
        self,
        session_id: str,
        code: str,
        timeout_s: float | None = None,
        max_output_tokens: int | None = None,
        strategy: Strategy | None = None,
        language: Language = "python",
    ) -> AsyncGenerator[Event, None]:
        """Run code in the session, yielding its output and tool calls as they happen, then one `ResultEvent`.

        Leaving the iteration early closes the connection, and the server interrupts the code; wrap the iterator
        in `contextlib.aclosing` for that to happen at once rather than when it is garbage-collected.

        Raises:
            MCPXClientError: the request failed, or the stream ended without a result.
        """
        request = self._http.build_request(
            "POST",
            f"{_session(session_id)}/executions",
            json=_execution(code, timeout_s, max_output_tokens, strategy, language),
            headers={"Accept": "text/event-stream"},
            timeout=self._execution_timeout(timeout_s),
        )
        response = await self._send(request, stream=True)
        try:
            if not response.is_success:
                await response.aread()
                raise error_of(response)
            if not response.headers.get("content-type", "").startswith("text/event-stream"):
                # A server that does not stream answers with the result alone.
                await response.aread()
                yield ResultEvent(result=_parse(ExecutionResult.model_validate_json, response))
                return
            decoder = SSEDecoder()
            async for line in _lines(response):
                sse = decoder.feed(line)
                event = event_of(sse, response.status_code) if sse is not None else None
                if event is not None:
                    yield event
                    if isinstance(event, ResultEvent):
                        return
            raise MCPXClientError(response.status_code, "stream_incomplete", "the stream ended without a result")
        finally:
            await response.aclose()

    # Workspace files

    async def list_files(self, session_id: str) -> list[FileInfo]:
        """Raises: MCPXClientError."""
        return _parse(_FileList.model_validate_json, await self._request("GET", f"{_session(session_id)}/files")).files

    async def read_file(self, session_id: str, path: str) -> bytes:
        """A workspace file's bytes. Raises: MCPXClientError (404 `file_not_found`)."""
        return (await self._request("GET", _file(session_id, path))).content

    async def write_file(self, session_id: str, path: str, data: bytes) -> FileInfo:
        """Create or replace a workspace file (directories are made). Raises: MCPXClientError."""
        headers = {"Content-Type": "application/octet-stream"}
        return _parse(
            FileInfo.model_validate_json,
            await self._request("PUT", _file(session_id, path), content=data, headers=headers),
        )

    async def delete_file(self, session_id: str, path: str) -> None:
        """Raises: MCPXClientError (404 `file_not_found`)."""
        await self._request("DELETE", _file(session_id, path))

    # Tools

    async def tools(self) -> ToolListing:
        """The tool catalog the caller may use. Raises: MCPXClientError."""
        return _parse(ToolListing.model_validate_json, await self._request("GET", "/v1/tools"))

    async def search_tools(
        self, q: str, detail: Detail = "description", limit: int = 10, language: Language = "python"
    ) -> list[ToolHit]:
        """The tools best matching `q`, best first. Raises: MCPXClientError."""
        params = {"q": q, "detail": detail, "limit": limit, "language": language}
        return _parse(_HITS.validate_json, await self._request("GET", "/v1/tools/search", params=params))

    async def tool(self, server: str, tool: str, language: Language = "python") -> ToolDetail:
        """One tool's stub (in `language`) and schemas. Raises: MCPXClientError (404 `tool_not_found`)."""
        path = f"/v1/tools/{quote(server, safe='')}/{quote(tool, safe='')}"
        response = await self._request("GET", path, params={"language": language})
        return _parse(ToolDetail.model_validate_json, response)

    # Transport

    def _execution_timeout(self, timeout_s: float | None) -> httpx.Timeout:
        wait = EXECUTION_WAIT_S if timeout_s is None else timeout_s + EXECUTION_MARGIN_S
        return httpx.Timeout(self.timeout, read=max(self.timeout, wait))

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        wait: httpx.Timeout | None = None,
    ) -> httpx.Response:
        request = self._http.build_request(
            method,
            path,
            json=json,
            params=params,
            content=content,
            headers=headers,
            timeout=wait if wait is not None else httpx.USE_CLIENT_DEFAULT,
        )
        response = await self._send(request, stream=False)
        if not response.is_success:
            raise error_of(response)
        return response

    async def _send(self, request: httpx.Request, *, stream: bool) -> httpx.Response:
        """Send, mapping httpx's transport errors to MCPXClientError (status 0)."""
        try:
            return await self._http.send(request, stream=stream)
        except httpx.ConnectError as exc:
            raise MCPXClientError(0, "unreachable", f"cannot connect to {self.base_url}: {exc}") from exc
        except httpx.TimeoutException as exc:
            raise MCPXClientError(0, "timeout", f"{request.method} {request.url.path}: no answer in time") from exc
        except httpx.TransportError as exc:
            raise MCPXClientError(0, "transport", f"{request.method} {request.url.path}: {exc}") from exc


async def _lines(response: httpx.Response) -> AsyncIterator[str]:
    try:
        async for line in response.aiter_lines():
            yield line
    except httpx.TimeoutException as exc:
        raise MCPXClientError(0, "timeout", "the stream stalled: no event in time") from exc
    except httpx.TransportError as exc:
        raise MCPXClientError(0, "transport", f"the stream broke: {exc}") from exc


def _parse(validate: Callable[[bytes], M], response: httpx.Response) -> M:
    """The response body, validated. Raises: MCPXClientError (`invalid_response`) when it does not match the API."""
    try:
        return validate(response.content)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        detail = f"{response.request.method} {response.request.url.path}: {where or 'body'}: {first['msg']}"
        raise MCPXClientError(response.status_code, "invalid_response", detail) from exc


def _session(session_id: str) -> str:
    return f"/v1/sessions/{quote(session_id, safe='')}"


def _file(session_id: str, path: str) -> str:
    return f"{_session(session_id)}/files/{quote(path, safe='/')}"


def _execution(
    code: str, timeout_s: float | None, max_output_tokens: int | None, strategy: Strategy | None, language: Language
) -> dict[str, Any]:
    given = {"timeout_s": timeout_s, "max_output_tokens": max_output_tokens, "strategy": strategy}
    return {"code": code, "language": language, **{key: value for key, value in given.items() if value is not None}}

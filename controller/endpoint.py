"""mcpx as an MCP server (streamable HTTP): the abilities of the HTTP API as a handful of MCP tools.

A model connected here loads seven short tool definitions, not every tool of every configured server: it finds
tools with `list_servers` and `search_tools`, then calls them from code run by `execute_code`, where each tool is
an importable function and its results stay in the sandbox.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import quote

import anyio.to_thread
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import Field
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from controller import discovery, shaping, stubgen
from controller.catalog import CatalogSnapshot
from controller.discovery import Language
from controller.errors import MCPXError, SessionNotFound
from controller.replicas import Replicas
from controller.runtime import WORKSPACE_MOUNT
from controller.sessions import Session, SessionManager
from controller.tenants import Tenants

logger = logging.getLogger(__name__)

TenantOf = Callable[[Request], str | None]
Lifespan = Callable[[], AbstractAsyncContextManager[None]]
ToolFunction = TypeVar("ToolFunction", bound=Callable[..., Any])

INSTRUCTIONS = (
    "mcpx runs Python in sandboxes where the tools of many MCP servers are importable functions. Find tools with "
    "list_servers and search_tools instead of loading their definitions, then call them from execute_code "
    "(`from servers.<server> import <tool>`) and print only what you need: tool results stay in the sandbox. "
    "Reuse a session_id: variables, imports and /workspace files persist across calls."
)
UNAUTHORIZED = "a valid API key is required: Authorization: Bearer <key>"
SessionId = Annotated[str, Field(description="From create_session or an earlier execute_code.")]
WorkspacePath = Annotated[str, Field(description="Relative to /workspace (or starting with /workspace/).")]


@contextmanager
def as_tool_errors() -> Iterator[None]:
    """mcpx errors become tool errors (`isError` with the reason), which the model reads; nothing else is caught."""
    try:
        yield
    except SessionNotFound as exc:
        raise ToolError(f"{exc}; create_session (or execute_code without a session_id) starts a new one") from exc
    except MCPXError as exc:
        raise ToolError(str(exc)) from exc


def reply(payload: dict[str, Any]) -> CallToolResult:
    """Structured content, and the same JSON as text for clients that pass only text to the model."""
    text = json.dumps(payload, ensure_ascii=False)
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=payload)


def workspace_relative(path: str) -> str:
    """A path as `Workspaces` takes it; code sees the workspace at /workspace, so paths under it are accepted too.
    Confinement is left to `Workspaces`, which refuses absolute paths, `..` and symlinks."""
    prefix = WORKSPACE_MOUNT.rstrip("/") + "/"
    return path[len(prefix) :] if path.startswith(prefix) else path


def problem_detail(body: bytes) -> str:
    """The `detail` of an error answer of the HTTP API, or its start when it is not one."""
    try:
        return str(json.loads(body)["detail"])
    except (ValueError, KeyError, TypeError):
        return body[:500].decode(errors="replace")


class Tenancy:
    """Who is calling and what they may use: the HTTP API's tenant rules (`Tenants`), applied to MCP calls; calls
    for another replica's session are answered by that replica's HTTP API, as the caller."""

    def __init__(self, manager: SessionManager, tenants: Tenants, tenant_of: TenantOf, replicas: Replicas) -> None:
        self.manager = manager
        self.tenants = tenants
        self.tenant_of = tenant_of
        self.replicas = replicas

    def caller(self, ctx: Context) -> str:
        """The tenant of the HTTP request carrying this call. Raises: ToolError (none; the app refuses those)."""
        request = ctx.request_context.request
        tenant = self.tenant_of(request) if isinstance(request, Request) else None
        if tenant is None:
            raise ToolError(UNAUTHORIZED)
        return tenant

    async def on_owner(
        self, ctx: Context, session_id: str, method: str, suffix: str, content: bytes = b""
    ) -> bytes | None:
        """The body of the owner's answer when another replica owns the session; None when this one does.

        Raises:
            ToolError: the owner refused the request, or could not be reached.
        """
        self.caller(ctx)  # never forward an unauthenticated call
        request = ctx.request_context.request
        authorization = request.headers.get("authorization") if isinstance(request, Request) else None
        with as_tool_errors():
            answer = await self.replicas.call(session_id, method, suffix, authorization, content)
        if answer is not None and answer.status >= 400:
            raise ToolError(problem_detail(answer.body))
        return answer.body if answer is not None else None

    def catalog(self, tenant: str) -> CatalogSnapshot:
        return self.tenants.view(tenant, self.manager.catalog.snapshot)

    async def create(self, tenant: str, servers: list[str] | None) -> Session:
        """A session of the tenant with the default limits, within its servers, policy and session quota.

        Raises:
            UnknownServers: a server outside the tenant's allowlist (or not configured at all).
            MCPXError: whatever `SessionManager.create` raises.
        """
        settings = self.manager.settings
        asked = self.tenants.servers_for(tenant, frozenset(servers) if servers is not None else None)
        policy = self.tenants.policy_for(tenant, None, settings.policy)
        max_sessions = self.tenants.config(tenant).max_sessions
        return await self.manager.create(tenant, settings.defaults, None, asked, policy, max_sessions)


def mcp_server(manager: SessionManager, tenants: Tenants, tenant_of: TenantOf, replicas: Replicas) -> MCPServer:
    """The MCP server and its tools; `mcp_endpoint` serves it over streamable HTTP."""
    settings = manager.settings
    tenancy = Tenancy(manager, tenants, tenant_of, replicas)
    server = MCPServer("mcpx", instructions=INSTRUCTIONS, version="0.1.0")
    background: set[asyncio.Task[Any]] = set()

    def forget(task: asyncio.Task[Any]) -> None:
        background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.info("an execution whose client went away ended in %r", task.exception())

    def tool(*, read_only: bool = False) -> Callable[[ToolFunction], ToolFunction]:
        """Register a tool, its docstring on one line as its description."""

        def register(function: ToolFunction) -> ToolFunction:
            description = " ".join(inspect.cleandoc(function.__doc__ or "").split())
            annotations = ToolAnnotations(read_only_hint=True) if read_only else None
            server.add_tool(function, description=description, annotations=annotations)
            return function

        return register

    @tool(read_only=True)
    async def list_servers(ctx: Context) -> CallToolResult:
        """The MCP servers whose tools code can import, each with a one-line description, its number of tools and
        its module. Then use search_tools to find tools."""
        view = tenancy.catalog(tenancy.caller(ctx))
        modules = {server: f"servers.{ident}" for (server, _), (ident, _) in stubgen.identifiers(view).items()}
        servers = [
            {"name": entry["name"], "description": entry["description"], "tools": len(entry["tools"]),
             "module": modules.get(entry["name"])}
            for entry in discovery.listing(view)
        ]  # fmt: skip
        return reply({"servers": servers})

    @tool(read_only=True)
    async def search_tools(
        query: Annotated[str, Field(description="What the tool should do, in a few words.")],
        ctx: Context,
        detail: Literal["name", "description", "full"] = "description",
        limit: Annotated[int, Field(ge=1, le=100)] = 10,
        language: Language = "python",
    ) -> CallToolResult:
        """Find tools of every server by what they do, best first. Each hit gives the `import` for code run by
        execute_code (in `language`) and its one-line signature; detail="full" adds its input schema."""
        view = tenancy.catalog(tenancy.caller(ctx))
        return reply({"tools": discovery.search(view, query, detail, limit, language)})

    @tool()
    async def create_session(
        ctx: Context,
        servers: Annotated[list[str] | None, Field(description="Servers its code may call; default: all.")] = None,
    ) -> CallToolResult:
        """Start a sandbox session. It keeps variables, imports and /workspace files across execute_code calls
        until delete_session (or until it idles out)."""
        with as_tool_errors():
            session = await tenancy.create(tenancy.caller(ctx), servers)
        return reply({"session_id": session.id, "runtime": session.runtime})

    @tool()
    async def execute_code(
        code: Annotated[str, Field(description="Top-level await works, a trailing expression is returned.")],
        ctx: Context,
        session_id: Annotated[str | None, Field(description="Session to run in; default: a new one.")] = None,
        timeout_s: Annotated[float | None, Field(gt=0)] = None,
        max_output_tokens: Annotated[int | None, Field(ge=16, le=1_000_000)] = None,
        language: Language = "python",
    ) -> CallToolResult:
        """Run Python (or TypeScript) in a sandbox where MCP tools are functions: `from servers.<server> import
        <tool>` (`import { <tool> } from "servers/<server>"`). Call tools from code and print only what you need.
        Returns stdout, stderr, result and error (a failure of the code is reported there), and the session_id
        to reuse."""
        tenant = tenancy.caller(ctx)
        if len(code.encode()) > settings.max_code_bytes:
            raise ToolError(f"code is larger than {settings.max_code_bytes} bytes")
        if timeout_s is not None and timeout_s > settings.max_timeout_s:
            raise ToolError(f"timeout_s must be at most {settings.max_timeout_s}")
        if session_id is not None:
            request = {
                "code": code,
                "language": language,
                "timeout_s": timeout_s,
                "max_output_tokens": max_output_tokens,
            }
            content = json.dumps({key: value for key, value in request.items() if value is not None}).encode()
            answer = await tenancy.on_owner(ctx, session_id, "POST", "/executions", content)
            if answer is not None:
                return reply({"session_id": session_id, **json.loads(answer)})
        with as_tool_errors():
            session = await tenancy.create(tenant, None) if session_id is None else manager.get(session_id, tenant)
            execution = asyncio.ensure_future(
                manager.execute(session, code, timeout_s, None, max_output_tokens, None, language)
            )
            try:
                result = await asyncio.shield(execution)
            except asyncio.CancelledError:
                # The client gave up: stop the code as a timeout would, and let the execution end on its own so the
                # session is free for the next call.
                for task in (execution, asyncio.ensure_future(manager.interrupt(session))):
                    background.add(task)
                    task.add_done_callback(forget)
                raise
        return reply({"session_id": session.id, **result.model_dump(mode="json")})

    @tool(read_only=True)
    async def read_file(session_id: SessionId, path: WorkspacePath, ctx: Context) -> CallToolResult:
        """Read a UTF-8 text file from a session's /workspace; a long one is cut to the output budget (the file
        keeps all of it, for code)."""
        relative = workspace_relative(path)
        data = await tenancy.on_owner(ctx, session_id, "GET", f"/files/{quote(relative)}")
        if data is None:
            with as_tool_errors():
                session = manager.get(session_id, tenancy.caller(ctx))
                data = await anyio.to_thread.run_sync(
                    manager.workspaces.read, session.workspace_dir, relative, settings.max_output_bytes
                )
        elif len(data) > settings.max_output_bytes:
            raise ToolError(f"{relative!r} is larger than {settings.max_output_bytes} bytes")
        try:
            text = data.decode()
        except UnicodeDecodeError:
            raise ToolError(f"{path!r} is not UTF-8 text; process it with execute_code instead") from None
        where = f"{WORKSPACE_MOUNT}/{relative}"
        shaped = await anyio.to_thread.run_sync(
            shaping.shape_text, manager.tokens, text, settings.max_output_tokens, settings.output_strategy, where
        )
        return reply({"path": where, "content": shaped.text, "cut_tokens": shaped.cut_tokens})

    @tool()
    async def write_file(session_id: SessionId, path: WorkspacePath, content: str, ctx: Context) -> CallToolResult:
        """Write a UTF-8 text file into a session's /workspace (making its directories), for code to read."""
        relative = workspace_relative(path)
        data = content.encode()
        if await tenancy.on_owner(ctx, session_id, "PUT", f"/files/{quote(relative)}", data) is None:
            with as_tool_errors():
                session = manager.get(session_id, tenancy.caller(ctx))
                await anyio.to_thread.run_sync(manager.workspaces.write, session.workspace_dir, relative, data)
        return reply({"path": f"{WORKSPACE_MOUNT}/{relative}", "bytes": len(data)})

    @tool()
    async def delete_session(session_id: SessionId, ctx: Context) -> CallToolResult:
        """Delete a session: its sandbox, variables and workspace are gone."""
        if await tenancy.on_owner(ctx, session_id, "DELETE", "") is None:
            with as_tool_errors():
                manager.get(session_id, tenancy.caller(ctx))
                await manager.delete(session_id)
        return reply({"deleted": session_id})

    return server


class Endpoint:
    """The ASGI app: refuses a request without a tenant (401, as the HTTP API does), hands the rest to the SDK."""

    def __init__(self, sessions: StreamableHTTPSessionManager, tenant_of: TenantOf) -> None:
        self.sessions = sessions
        self.tenant_of = tenant_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.tenant_of(Request(scope)) is None:
            refusal = JSONResponse(
                {"error": "unauthorized", "detail": UNAUTHORIZED},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
            await refusal(scope, receive, send)
            return
        await self.sessions.handle_request(scope, receive, send)


def mcp_endpoint(
    manager: SessionManager, tenants: Tenants, tenant_of: TenantOf, replicas: Replicas
) -> tuple[ASGIApp, Lifespan]:
    """The ASGI app serving mcpx's MCP tools, and the lifespan the host app must enter in its own (the SDK runs the
    requests in a task group it owns). Route the app at an exact path (`Route("/mcp", app)`): a `Mount` would not
    match `/mcp` itself.

    `tenant_of(request)` authenticates an HTTP request: its tenant, or None to refuse it. It is asked once for the
    request and again by every tool call; sessions belong to the tenant that made them, others' are not found.
    Calls for another replica's session are made on that replica through `replicas`, with the caller's key.
    """
    server = mcp_server(manager, tenants, tenant_of, replicas)
    # Builds the SDK's session manager (with its DNS-rebinding protection when the host is loopback); the Starlette
    # app it returns is not used, since the host app routes to `Endpoint` itself.
    server.streamable_http_app(host=manager.settings.host)
    sessions = server.session_manager
    return Endpoint(sessions, tenant_of), sessions.run

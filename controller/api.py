"""The HTTP API (`/v1`), health probes, and the one mapping from mcpx errors to HTTP responses."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any, Literal

import anyio.to_thread
from fastapi import Body, FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from controller import discovery, stubgen
from controller.audit import AuditLog
from controller.catalog import Catalog
from controller.config import Limits, Settings, secrets_of
from controller.errors import (
    GVisorRequired,
    MCPXError,
    RuntimeUnavailable,
    SandboxError,
    SessionLimitReached,
    SessionNotFound,
    ToolNotFound,
    UnknownServers,
)
from controller.policy import Policy
from controller.runtime import DockerBackend, SandboxBackend
from controller.sessions import ExecutionResult, Session, SessionManager, TokenReport
from controller.shaping import Strategy, Tokens

logger = logging.getLogger(__name__)


class SessionRequest(BaseModel):
    """Limits for a new session; each one omitted takes the server's default."""

    model_config = ConfigDict(extra="forbid")

    timeout_s: float | None = Field(default=None, gt=0, description="Default time limit of one execution.")
    memory_mb: int | None = Field(default=None, ge=64, description="Sandbox memory (no swap), MiB.")
    cpus: float | None = Field(default=None, gt=0, description="CPU quota, cores.")
    ttl_s: float | None = Field(default=None, gt=0, description="Idle time after which the session is deleted.")
    runtime: Literal["runsc", "runc"] | None = Field(
        default=None, description="Container runtime; default: runsc when Docker has it (see require_gvisor)."
    )
    servers: list[str] | None = Field(
        default=None, description="The MCP servers the session's code may call; default: all configured ones."
    )
    policy: Policy | None = Field(
        default=None, description="Tool-call policy and quotas; never looser than the server's (MCPX_POLICY__*)."
    )


class SessionInfo(BaseModel):
    id: str
    runtime: Literal["runsc", "runc"]
    created_at: datetime
    servers: list[str] | None
    policy: Policy
    state: Literal["ready", "busy", "restarting"]
    limits: Limits
    executions: int
    restarts: int
    idle_s: float
    tokens: TokenReport


class ExecutionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(description="Python source; the value of a trailing expression is returned.")
    timeout_s: float | None = Field(default=None, gt=0, description="Time limit; default: the session's.")
    max_output_tokens: int | None = Field(
        default=None, ge=16, le=1_000_000, description="Token budget of the response; default: the server's."
    )
    strategy: Strategy | None = Field(
        default=None, description="How output over budget is cut: truncate, summarize (JSON shape) or sample."
    )


class ToolSummary(BaseModel):
    name: str
    description: str


class ServerListing(BaseModel):
    name: str
    description: str
    state: str
    tools: list[ToolSummary]


class ToolListing(BaseModel):
    """Every reachable server with one line per tool; `unavailable` lists configured servers with no tools.

    `tokens`: `definitions` is what a direct-tool-calling client loads upfront (every tool's wire definition),
    `listing` what an agent reads first here (the `servers` package files), `stub_mean` one tool's stub.
    """

    digest: str
    servers: list[ServerListing]
    unavailable: list[dict[str, Any]]
    tokens: dict[str, int]


class ToolDetail(BaseModel):
    """One tool: its stub (what sandbox code imports) and its schemas."""

    server: str
    tool: str
    description: str
    path: str
    signature: str
    source: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None
    annotations: dict[str, Any]


class Problem(BaseModel):
    """Every error response: a machine-readable `error` and a human-readable `detail`."""

    error: str
    detail: str


class BadRequest(MCPXError):
    """A request that validates as JSON but asks for something out of bounds."""

    def __init__(self, detail: str, status: int = 422) -> None:
        super().__init__(detail)
        self.status = status


ERROR_STATUS: list[tuple[type[MCPXError], int, str]] = [
    (SessionNotFound, 404, "session_not_found"),
    (ToolNotFound, 404, "tool_not_found"),
    (SessionLimitReached, 429, "session_limit_reached"),
    (UnknownServers, 422, "unknown_servers"),
    (GVisorRequired, 503, "gvisor_required"),
    (RuntimeUnavailable, 503, "runtime_unavailable"),
    (SandboxError, 502, "sandbox_failed"),
]


def problem(exc: MCPXError) -> JSONResponse:
    if isinstance(exc, BadRequest):
        return JSONResponse({"error": "bad_request", "detail": str(exc)}, status_code=exc.status)
    for error_type, status, name in ERROR_STATUS:
        if isinstance(exc, error_type):
            return JSONResponse({"error": name, "detail": str(exc)}, status_code=status)
    logger.error("unmapped mcpx error: %r", exc)
    return JSONResponse({"error": "internal", "detail": str(exc)}, status_code=500)


def resolve_limits(settings: Settings, request: SessionRequest) -> Limits:
    """The session's limits: the request's where given, checked against the server's maxima.

    Raises:
        BadRequest: a limit above its maximum.
    """
    defaults = settings.defaults
    limits = Limits(
        timeout_s=request.timeout_s or defaults.timeout_s,
        memory_mb=request.memory_mb or defaults.memory_mb,
        cpus=request.cpus or defaults.cpus,
        ttl_s=request.ttl_s or defaults.ttl_s,
    )
    maxima = {
        "timeout_s": settings.max_timeout_s,
        "memory_mb": settings.max_memory_mb,
        "cpus": settings.max_cpus,
        "ttl_s": settings.max_ttl_s,
    }
    for name, maximum in maxima.items():
        if getattr(limits, name) > maximum:
            raise BadRequest(f"{name} must be at most {maximum}")
    return limits


def session_info(session: Session, now: float) -> SessionInfo:
    return SessionInfo(
        id=session.id,
        runtime="runsc" if session.runtime == "runsc" else "runc",
        created_at=session.created_at,
        servers=sorted(session.servers) if session.servers is not None else None,
        policy=session.policy,
        state="busy" if session.busy else ("ready" if session.bridge.is_connected else "restarting"),
        limits=session.limits,
        executions=session.executions,
        restarts=session.restarts,
        tokens=session.tokens,
        idle_s=round(max(now - session.last_used, 0.0), 3),
    )


def create_app(settings: Settings, backend: SandboxBackend | None = None) -> FastAPI:
    """The ASGI app; its lifespan connects the MCP servers, starts the session manager (reconciling leftovers),
    and drains both at shutdown.

    Raises:
        ConfigError: the server config is invalid.
    """
    servers = settings.servers()
    catalog = Catalog(servers)
    tokens = Tokens()
    audit = AuditLog(settings.audit_log or settings.state_dir / "audit.log")
    manager = SessionManager(
        settings, backend or DockerBackend(settings.docker_host), catalog, frozenset(secrets_of(servers)), tokens, audit
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await catalog.start(settings.connect_timeout_s)
        try:
            await manager.start()
            try:
                yield
            finally:
                await manager.close()
        finally:
            await catalog.close()
            audit.close()

    app = FastAPI(title="mcpx", version="0.1.0", lifespan=lifespan)
    app.state.manager = manager
    error_responses: dict[int | str, dict[str, object]] = {
        code: {"model": Problem} for code in (404, 422, 429, 502, 503)
    }

    @app.exception_handler(MCPXError)
    async def on_mcpx_error(_request: Request, exc: MCPXError) -> JSONResponse:
        return problem(exc)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={503: {"model": Problem}})
    async def readyz() -> JSONResponse:
        servers = [asdict(status) for status in catalog.statuses()]
        if await manager.backend.ready(settings.image):
            return JSONResponse({"status": "ready", "runtime": manager.runtime, "servers": servers})
        detail = f"Docker is unreachable or the image {settings.image} is missing"
        return JSONResponse({"error": "not_ready", "detail": detail, "servers": servers}, status_code=503)

    @app.post("/v1/sessions", status_code=201, tags=["sessions"], responses=error_responses)
    async def create_session(request: Annotated[SessionRequest | None, Body()] = None) -> SessionInfo:
        request = request or SessionRequest()
        servers = frozenset(request.servers) if request.servers is not None else None
        session = await manager.create(resolve_limits(settings, request), request.runtime, servers, request.policy)
        return session_info(session, session.last_used)

    @app.get("/v1/sessions/{session_id}", tags=["sessions"], responses=error_responses)
    async def get_session(session_id: str) -> SessionInfo:
        return session_info(manager.get(session_id), time.monotonic())

    @app.delete("/v1/sessions/{session_id}", status_code=204, tags=["sessions"], responses=error_responses)
    async def delete_session(session_id: str) -> Response:
        await manager.delete(session_id)
        return Response(status_code=204)

    @app.post("/v1/sessions/{session_id}/executions", tags=["executions"], responses=error_responses)
    async def execute(session_id: str, request: ExecutionRequest) -> ExecutionResult:
        if len(request.code.encode()) > settings.max_code_bytes:
            raise BadRequest(f"code is larger than {settings.max_code_bytes} bytes", status=413)
        if request.timeout_s is not None and request.timeout_s > settings.max_timeout_s:
            raise BadRequest(f"timeout_s must be at most {settings.max_timeout_s}")
        return await manager.execute(
            session_id, request.code, request.timeout_s, None, request.max_output_tokens, request.strategy
        )

    costs: dict[str, dict[str, int]] = {}

    @app.get("/v1/tools", tags=["tools"])
    async def list_tools() -> ToolListing:
        snapshot = catalog.snapshot
        if snapshot.digest not in costs:
            costs[snapshot.digest] = await anyio.to_thread.run_sync(discovery.token_costs, snapshot, tokens)
        statuses = {status.name: status for status in catalog.statuses()}
        return ToolListing(
            digest=snapshot.digest,
            servers=[
                ServerListing(**entry, state=statuses[entry["name"]].state) for entry in discovery.listing(snapshot)
            ],
            unavailable=[asdict(s) for s in statuses.values() if snapshot.server(s.name) is None],
            tokens=costs[snapshot.digest],
        )

    @app.get("/v1/tools/search", tags=["tools"])
    async def search_tools(
        q: str = "",
        detail: Literal["name", "description", "full"] = "description",
        limit: int = Query(10, ge=1, le=100),
    ) -> list[dict[str, Any]]:
        return discovery.search(catalog.snapshot, q, detail, limit)

    @app.get("/v1/tools/{server}/{tool}", tags=["tools"], responses={404: {"model": Problem}})
    async def get_tool(server: str, tool: str) -> ToolDetail:
        snapshot = catalog.snapshot
        info = snapshot.tool(server, tool)
        if info is None:
            raise ToolNotFound(server, tool)
        path = stubgen.stub_path(snapshot, server, tool)
        return ToolDetail(
            server=server,
            tool=tool,
            description=info.description,
            path=path,
            signature=stubgen.signature(snapshot, server, tool),
            source=(await manager.stubs_for(snapshot) / path).read_text(),
            input_schema=info.input_schema,
            output_schema=info.output_schema,
            annotations=info.annotations,
        )

    return app

"""The HTTP API (`/v1`), health probes, and the one mapping from mcpx errors to HTTP responses."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import re
import secrets
import signal
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import quote, unquote_to_bytes

import anyio.to_thread
from fastapi import Body, Depends, FastAPI, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.convertors import Convertor, register_url_convertor
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from controller import discovery, stubgen, tsstubs
from controller.audit import AuditLog
from controller.catalog import Boundary, Catalog, CatalogSnapshot
from controller.config import Limits, Settings, secrets_of
from controller.discovery import Language
from controller.endpoint import mcp_endpoint
from controller.errors import (
    ConfigError,
    ForwardingLoop,
    GVisorRequired,
    LanguageUnavailable,
    MCPXError,
    ReplicaUnavailable,
    RuntimeUnavailable,
    SandboxError,
    SessionLimitReached,
    SessionNotFound,
    ShuttingDown,
    ToolNotFound,
    UnknownServers,
    WorkspaceError,
)
from controller.pins import Pins
from controller.policy import Policy, Preflight
from controller.replicas import Forwarder, Replicas
from controller.runtime import DockerBackend, SandboxBackend
from controller.sessions import ExecutionResult, Session, SessionManager, TokenReport
from controller.shaping import Strategy, Tokens
from controller.stubgen import StubsUnwritable
from controller.telemetry import Telemetry, TracingMiddleware
from controller.tenants import Tenants, load_keys
from controller.versions import missing_fixes

logger = logging.getLogger(__name__)


class SessionRequest(BaseModel):
    """Limits for a new session; each one omitted takes the server's default."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"servers": ["docstore", "crm"], "timeout_s": 30, "memory_mb": 512, "policy": {"read_only": True}}
            ]
        },
    )

    timeout_s: float | None = Field(default=None, gt=0, description="Default time limit of one execution.")
    memory_mb: int | None = Field(default=None, ge=64, description="Sandbox memory (no swap), MiB.")
    cpus: float | None = Field(default=None, ge=0.1, description="CPU quota, cores (a sandbox needs at least 0.1).")
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


class SessionList(BaseModel):
    sessions: list[SessionInfo]


class FileInfo(BaseModel):
    path: str = Field(
        description="Relative to the workspace (/workspace in the sandbox); bytes of a name that are not UTF-8 show "
        "as U+FFFD here."
    )
    url_path: str = Field(
        description="The path's bytes percent-encoded, lossless whatever the name: `…/files/{url_path}` reaches it."
    )
    size: int


class FilePath(Convertor[str]):
    """Starlette's `path` convertor with newlines too: a file name may hold one."""

    regex = "(?s:.*)"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("file", FilePath())


def file_info(path: str, size: int) -> FileInfo:
    """A workspace path as the file system gave it (undecodable bytes as surrogate escapes), for JSON."""
    raw = os.fsencode(path)
    return FileInfo(path=raw.decode(errors="replace"), url_path=quote(raw, safe="/"), size=size)


def file_path(request: Request, path: str) -> str:
    """The file path of a `…/files/{path}` URL with its percent-escapes decoded to bytes, so a name that is not
    UTF-8 is reachable (the server decodes them as UTF-8, which turns such bytes into U+FFFD)."""
    raw = request.scope.get("raw_path")
    segments = raw.split(b"/", 5) if isinstance(raw, bytes) else []
    if len(segments) != 6 or segments[4] != b"files":
        return path
    return os.fsdecode(unquote_to_bytes(segments[5]))


class FileList(BaseModel):
    files: list[FileInfo]


class ExecutionRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "code": "from servers.docstore import get_sheet\nlen(get_sheet(sheet_id='sheet-01')['rows'])",
                    "timeout_s": 30,
                    "max_output_tokens": 2000,
                    "strategy": "summarize",
                }
            ]
        },
    )

    code: str = Field(description="Source code; the value of a trailing expression is returned.")
    language: Language = Field(
        default="python",
        description="python, or typescript (Node.js; types are stripped, not checked; declarations persist in memory "
        "across executions, apart from Python's; needs an image built with TypeScript, else 422 "
        "language_unavailable).",
    )
    timeout_s: float | None = Field(default=None, gt=0, description="Time limit; default: the session's.")
    max_output_tokens: int | None = Field(
        default=None, ge=16, le=1_000_000, description="Token budget of the response; default: the server's."
    )
    strategy: Strategy | None = Field(
        default=None, description="How output over budget is cut: truncate, summarize (JSON shape) or sample."
    )
    preflight: Preflight | None = Field(
        default=None,
        description="Check Python code against the stubs before it runs: enforce (refuse on a finding, "
        "error.kind preflight), warn (run, findings in `preflight`) or off; default: the session's policy.",
    )
    dry_run: bool = Field(default=False, description="Run nothing: only the pre-flight findings and the manifest.")


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
    quarantined: list[dict[str, Any]] = Field(
        default_factory=list, description="Tools kept out of the catalog by its limits, with the reason."
    )
    changed: list[dict[str, Any]] = Field(
        default_factory=list, description="Tools whose definition changed since first seen; `held` ones are refused."
    )


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


class Unauthorized(MCPXError):
    """A missing or unknown API key."""


class FileProblem(MCPXError):
    """A workspace path that is missing, not confined, or not a regular file."""


class RequestTooLarge(MCPXError):
    """A request body over `max_json_bytes`."""


class BadRequest(MCPXError):
    """A request that validates as JSON but asks for something out of bounds."""

    def __init__(self, detail: str, status: int = 422) -> None:
        super().__init__(detail)
        self.status = status


ERROR_STATUS: list[tuple[type[MCPXError], int, str]] = [
    (Unauthorized, 401, "unauthorized"),
    (FileProblem, 404, "file_not_found"),
    (RequestTooLarge, 413, "request_too_large"),
    (SessionNotFound, 404, "session_not_found"),
    (ToolNotFound, 404, "tool_not_found"),
    (SessionLimitReached, 429, "session_limit_reached"),
    (UnknownServers, 422, "unknown_servers"),
    (LanguageUnavailable, 422, "language_unavailable"),
    (GVisorRequired, 503, "gvisor_required"),
    (StubsUnwritable, 503, "stubs_unavailable"),
    (RuntimeUnavailable, 503, "runtime_unavailable"),
    (ReplicaUnavailable, 503, "replica_unavailable"),
    (ShuttingDown, 503, "shutting_down"),
    (ForwardingLoop, 502, "forwarding_loop"),
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
        "cpus": min(settings.max_cpus, float(os.cpu_count() or 1)),  # Docker refuses more than the host has
        "ttl_s": settings.max_ttl_s,
    }
    for name, maximum in maxima.items():
        if getattr(limits, name) > maximum:
            raise BadRequest(f"{name} must be at most {maximum}")
    return limits


def bearer_key(authorization: str | None) -> str | None:
    scheme, _, key = (authorization or "").partition(" ")
    return key.strip() if scheme.lower() == "bearer" else None


def bearer_tenant(tenants: Tenants, authorization: str | None) -> str | None:
    return tenants.authenticate(bearer_key(authorization))


async def authenticated_tenant(request: Request, authorization: Annotated[str | None, Header()] = None) -> str:
    """The caller's tenant, from `Authorization: Bearer <key>`. Raises: Unauthorized."""
    found = bearer_tenant(request.app.state.tenants, authorization)
    if found is None:
        raise Unauthorized("a valid API key is required: Authorization: Bearer <key>")
    return found


Tenant = Annotated[str, Depends(authenticated_tenant)]


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


KEEPALIVE = ": keepalive\n\n"  # an SSE comment: clients ignore it, idle-timing proxies see traffic
UPLOAD = re.compile(r"/v1/sessions/[^/]+/files/.+")


class BodyLimit:
    """ASGI middleware: a request body is read, at most `limit` bytes of it, before any route (or the MCP SDK)
    parses it; a longer one, declared or chunked, gets 413. File uploads are streamed under their own limit."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["method"] == "PUT" and UPLOAD.fullmatch(scope["path"])):
            await self.app(scope, receive, send)
            return
        too_large = problem(RequestTooLarge(f"the request body is larger than {self.limit} bytes"))
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.limit:
            await too_large(scope, receive, send)
            return
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before it finished sending
            body += message.get("body", b"")
            more = bool(message.get("more_body"))
            if len(body) > self.limit:
                await too_large(scope, receive, send)
                return
        pending: list[Message] = [{"type": "http.request", "body": bytes(body), "more_body": False}]

        async def replay() -> Message:
            return pending.pop() if pending else await receive()  # then disconnects, as before

        await self.app(scope, replay, send)


@contextmanager
def draining_on_signals(manager: SessionManager) -> Iterator[None]:
    """SIGTERM and SIGINT mark the manager draining, then go on to the server's own handlers (uvicorn's shutdown):
    a request already read when the signal came is refused a new session rather than handed one about to go.
    Signal handlers belong to the main thread; served from another (tests), the drain starts at shutdown."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {int(number): signal.getsignal(number) or signal.SIG_DFL for number in (signal.SIGTERM, signal.SIGINT)}

    def drain(number: int, frame: Any) -> None:
        manager.draining = True
        chained = previous[number]
        if callable(chained):
            chained(number, frame)
        else:  # the default action (or ignoring it), as without us
            signal.signal(number, chained)
            signal.raise_signal(number)

    for number in previous:
        signal.signal(number, drain)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


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


def create_app(
    settings: Settings, backend: SandboxBackend | None = None, telemetry: Telemetry | None = None
) -> FastAPI:
    """The ASGI app; its lifespan connects the MCP servers, starts the session manager (reconciling leftovers),
    and drains both at shutdown. Without `telemetry`, one is made from the settings.

    Raises:
        ConfigError: the server config is invalid.
    """
    servers = settings.servers()
    audit = AuditLog(settings.audit_log or settings.state_dir / "audit.log")
    boundary = Boundary(
        settings.catalog, Pins(settings.state_dir / "pins.json"), settings.policy.on_definition_change, audit
    )
    catalog = Catalog(servers, boundary)
    tenants = Tenants(load_keys(settings.api_keys, settings.api_keys_file), settings.tenants)
    if not tenants.enabled and not is_loopback(settings.host):
        raise ConfigError(f"refusing to serve on {settings.host} without API keys: set MCPX_API_KEYS or bind loopback")
    tokens = Tokens()
    telemetry = telemetry or Telemetry(settings.controller_id, settings.otlp())
    manager = SessionManager(
        settings,
        backend or DockerBackend(settings.docker_host),
        catalog,
        frozenset(secrets_of(servers)),
        tokens,
        audit,
        telemetry,
    )
    replicas = Replicas(settings)

    def tenant_of(request: Request) -> str | None:
        return bearer_tenant(tenants, request.headers.get("authorization"))

    mcp_app, mcp_lifespan = mcp_endpoint(manager, tenants, tenant_of, replicas)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await catalog.start(settings.connect_timeout_s)
        try:
            await manager.start()
            try:
                with draining_on_signals(manager):
                    async with mcp_lifespan():
                        yield
            finally:
                await manager.close()
        finally:
            await replicas.aclose()
            await catalog.close()
            audit.close()
            telemetry.shutdown()

    app = FastAPI(title="mcpx", version="0.1.0", lifespan=lifespan)
    app.state.manager = manager
    app.state.tenants = tenants
    # Requests for another replica's session go to that replica before any route sees them (see replicas.py).
    app.add_middleware(
        Forwarder, replicas=replicas, authenticated=lambda request: tenant_of(request) is not None, problem=problem
    )
    app.add_middleware(BodyLimit, limit=settings.max_json_bytes)  # outside the Forwarder: peers get bounded bodies
    app.add_middleware(TracingMiddleware, telemetry=telemetry)  # the outermost: forwarded requests are traced too
    # A route, not a mount: a mount would redirect /mcp to /mcp/, which not every MCP client follows.
    app.router.routes.append(Route("/mcp", mcp_app, methods=["GET", "POST", "DELETE"]))
    error_responses: dict[int | str, dict[str, object]] = {
        code: {"model": Problem} for code in (400, 401, 404, 413, 422, 429, 502, 503)
    }

    @app.exception_handler(MCPXError)
    async def on_mcpx_error(_request: Request, exc: MCPXError) -> JSONResponse:
        return problem(exc)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Framework-level refusals (an unparsable body, an unknown route) in the same shape as every other error.
        names = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}
        body = {"error": names.get(exc.status_code, "http_error"), "detail": str(exc.detail)}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def on_invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # The reasons without the offending input: it may not even be serializable (NaN, huge bodies).
        errors = [
            {"loc": [str(part) for part in error["loc"]], "msg": str(error["msg"]), "type": str(error["type"])}
            for error in exc.errors()[:20]
        ]
        detail = "; ".join(f"{'.'.join(error['loc'])}: {error['msg']}" for error in errors)[:2000]
        return JSONResponse({"error": "invalid_request", "detail": detail, "errors": errors}, status_code=422)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={503: {"model": Problem}})
    async def readyz() -> JSONResponse:
        servers = [asdict(status) for status in catalog.statuses()]
        if await manager.backend.ready(settings.image):
            components = await manager.backend.versions()
            ready = {"status": "ready", "runtime": manager.runtime, "servers": servers, "versions": components}
            return JSONResponse({**ready, "missing_fixes": missing_fixes(components)})
        detail = f"Docker is unreachable or the image {settings.image} is missing"
        return JSONResponse({"error": "not_ready", "detail": detail, "servers": servers}, status_code=503)

    @app.get("/metrics", tags=["health"], responses={401: {"model": Problem}, 200: {"content": {"text/plain": {}}}})
    async def metrics(authorization: Annotated[str | None, Header()] = None) -> Response:
        """Prometheus exposition; with MCPX_METRICS_TOKEN set, only for `Authorization: Bearer <token>`."""
        if settings.metrics_token is not None:
            given = (bearer_key(authorization) or "").encode()
            if not secrets.compare_digest(given, settings.metrics_token.encode()):
                raise Unauthorized("/metrics needs the metrics token: Authorization: Bearer <token>")
        body, content_type = telemetry.exposition()
        return Response(body, media_type=content_type)

    def visible(caller: str) -> CatalogSnapshot:
        return tenants.view(caller, catalog.snapshot)

    @app.get("/v1/sessions", tags=["sessions"], responses=error_responses)
    async def list_sessions(caller: Tenant) -> SessionList:
        now = time.monotonic()
        return SessionList(sessions=[session_info(session, now) for session in manager.of_tenant(caller)])

    @app.post("/v1/sessions", status_code=201, tags=["sessions"], responses=error_responses)
    async def create_session(caller: Tenant, request: Annotated[SessionRequest | None, Body()] = None) -> SessionInfo:
        request = request or SessionRequest()
        servers = tenants.servers_for(caller, frozenset(request.servers) if request.servers is not None else None)
        policy = tenants.policy_for(caller, request.policy, settings.policy)
        limits = resolve_limits(settings, request)
        max_sessions = tenants.config(caller).max_sessions
        session = await manager.create(caller, limits, request.runtime, servers, policy, max_sessions)
        return session_info(session, session.last_used)

    @app.get("/v1/sessions/{session_id}", tags=["sessions"], responses=error_responses)
    async def get_session(caller: Tenant, session_id: str) -> SessionInfo:
        return session_info(manager.get(session_id, caller), time.monotonic())

    @app.delete("/v1/sessions/{session_id}", status_code=204, tags=["sessions"], responses=error_responses)
    async def delete_session(caller: Tenant, session_id: str) -> Response:
        manager.get(session_id, caller)
        await manager.delete(session_id)
        return Response(status_code=204)

    @app.post(
        "/v1/sessions/{session_id}/executions",
        response_model=ExecutionResult,
        tags=["executions"],
        responses={**error_responses, 200: {"content": {"text/event-stream": {}}}},
    )
    async def execute(
        caller: Tenant, session_id: str, request: ExecutionRequest, accept: Annotated[str, Header()] = ""
    ) -> Any:
        """Run code in the session. With `Accept: text/event-stream`, stream `output` and `tool_call` events as
        they happen, then one `result` event; a client that disconnects stops the execution."""
        session = manager.get(session_id, caller)
        if len(request.code.encode()) > settings.max_code_bytes:
            raise BadRequest(f"code is larger than {settings.max_code_bytes} bytes", status=413)
        if request.timeout_s is not None and request.timeout_s > settings.max_timeout_s:
            raise BadRequest(f"timeout_s must be at most {settings.max_timeout_s}")
        options = (request.timeout_s, request.max_output_tokens, request.strategy, request.language, request.preflight)
        if "text/event-stream" not in accept:
            return await manager.execute(session, request.code, options[0], None, *options[1:], request.dry_run)
        events = stream(session, request.code, *options, request.dry_run)
        return StreamingResponse(events, media_type="text/event-stream")

    async def stream(
        session: Session,
        code: str,
        timeout_s: float | None,
        budget: int | None,
        strategy: Strategy | None,
        language: Language,
        checks: Preflight | None,
        dry_run: bool,
    ) -> AsyncIterator[str]:
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        running = asyncio.create_task(
            manager.execute(
                session,
                code,
                timeout_s,
                lambda kind, data: events.put_nowait((kind, data)),
                budget,
                strategy,
                language,
                checks,
                dry_run,
            )
        )
        running.add_done_callback(lambda task: events.put_nowait(("done", None)))
        try:
            while True:
                try:
                    async with asyncio.timeout(settings.sse_keepalive_s):
                        kind, data = await events.get()  # an item is never lost to the timeout: get() takes it last
                except TimeoutError:
                    yield KEEPALIVE
                    continue
                if kind == "done":
                    break
                yield sse(kind, data)
            try:
                yield sse("result", running.result().model_dump(mode="json"))
            except MCPXError as exc:  # headers are sent: the error travels as the stream's last event
                yield sse("error", json.loads(bytes(problem(exc).body)))
        finally:
            if not running.done():  # the client went away: stop the code, let the execution end on its own
                background.add(asyncio.create_task(manager.interrupt(session)))
                background.add(running)
                running.add_done_callback(background.discard)

    background: set[asyncio.Task[Any]] = set()

    @app.get("/v1/sessions/{session_id}/files", tags=["files"], responses=error_responses)
    async def list_files(caller: Tenant, session_id: str) -> FileList:
        session = manager.get(session_id, caller)
        found = await anyio.to_thread.run_sync(manager.workspaces.listing, session.workspace_dir)
        return FileList(files=[file_info(path, size) for path, size in found])

    @app.get(
        "/v1/sessions/{session_id}/files/{path:file}",
        tags=["files"],
        responses={**error_responses, 200: {"content": {"application/octet-stream": {}}}},
    )
    async def download(caller: Tenant, session_id: str, path: str, request: Request) -> Response:
        session = manager.get(session_id, caller)
        try:
            data = await anyio.to_thread.run_sync(
                manager.workspaces.read, session.workspace_dir, file_path(request, path), settings.max_upload_bytes * 4
            )
        except WorkspaceError as exc:
            raise FileProblem(str(exc)) from exc
        return Response(data, media_type="application/octet-stream")

    @app.put("/v1/sessions/{session_id}/files/{path:file}", status_code=201, tags=["files"], responses=error_responses)
    async def upload(caller: Tenant, session_id: str, path: str, request: Request) -> FileInfo:
        session = manager.get(session_id, caller)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > settings.max_upload_bytes:
                raise BadRequest(f"the file is larger than {settings.max_upload_bytes} bytes", status=413)
        relative = file_path(request, path)
        try:
            await anyio.to_thread.run_sync(manager.workspaces.write, session.workspace_dir, relative, bytes(body))
        except WorkspaceError as exc:
            raise FileProblem(str(exc)) from exc
        return file_info(relative, len(body))

    @app.delete(
        "/v1/sessions/{session_id}/files/{path:file}", status_code=204, tags=["files"], responses=error_responses
    )
    async def delete_file(caller: Tenant, session_id: str, path: str, request: Request) -> Response:
        session = manager.get(session_id, caller)
        try:
            await anyio.to_thread.run_sync(manager.workspaces.delete, session.workspace_dir, file_path(request, path))
        except WorkspaceError as exc:
            raise FileProblem(str(exc)) from exc
        return Response(status_code=204)

    costs: dict[str, dict[str, int]] = {}

    def seen_by(caller: str, server: str) -> bool:
        allowed = tenants.servers_for(caller, None)
        return server in catalog.connections and (allowed is None or server in allowed)

    @app.get("/v1/tools", tags=["tools"], responses=error_responses)
    async def list_tools(caller: Tenant) -> ToolListing:
        snapshot = visible(caller)

        def seen(server: str) -> bool:
            return seen_by(caller, server)

        if snapshot.digest not in costs:
            costs[snapshot.digest] = await anyio.to_thread.run_sync(discovery.token_costs, snapshot, tokens)
        statuses = {status.name: status for status in catalog.statuses()}
        return ToolListing(
            digest=snapshot.digest,
            servers=[
                ServerListing(**entry, state=statuses[entry["name"]].state) for entry in discovery.listing(snapshot)
            ],
            unavailable=[
                asdict(s) for s in statuses.values() if s.state != "ready" and snapshot.server(s.name) is None
            ],
            tokens=costs[snapshot.digest],
            quarantined=[asdict(q) for s in statuses.values() if seen(s.name) for q in s.quarantined],
            changed=[asdict(c) for s in statuses.values() if seen(s.name) for c in s.changed],
        )

    @app.post("/v1/tools/{server}/{tool}/accept", tags=["tools"], responses=error_responses)
    async def accept_tool(caller: Tenant, server: str, tool: str) -> dict[str, str]:
        """Accept a tool's changed definition: it is pinned as it is now, served, and callable again."""
        if tenants.enabled and caller not in settings.operators:
            raise BadRequest("only an operator (MCPX_OPERATORS) may accept a tool's definition", status=403)
        if not seen_by(caller, server) or not await catalog.accept(server, tool):
            raise ToolNotFound(server, tool)
        return {"server": server, "tool": tool, "status": "accepted"}

    @app.get("/v1/tools/search", tags=["tools"], responses=error_responses)
    async def search_tools(
        caller: Tenant,
        q: str = "",
        detail: Literal["name", "description", "full"] = "description",
        limit: int = Query(10, ge=1, le=100),
        language: Annotated[Language, Query(description="Language of the import lines and signatures.")] = "python",
    ) -> list[dict[str, Any]]:
        return discovery.search(visible(caller), q, detail, limit, language)

    @app.get("/v1/tools/{server}/{tool}", tags=["tools"], responses=error_responses)
    async def get_tool(
        caller: Tenant,
        server: str,
        tool: str,
        language: Annotated[Language, Query(description="Language of the stub, its path and signature.")] = "python",
    ) -> ToolDetail:
        snapshot = visible(caller)
        info = snapshot.tool(server, tool)
        if info is None:
            raise ToolNotFound(server, tool)
        stubs = tsstubs if language == "typescript" else stubgen
        path = stubs.stub_path(snapshot, server, tool)
        return ToolDetail(
            server=server,
            tool=tool,
            description=info.description,
            path=path,
            signature=discovery.signature(snapshot, server, tool, language),
            source=(await manager.stubs_for(snapshot) / path).read_text(),
            input_schema=info.input_schema,
            output_schema=info.output_schema,
            annotations=info.annotations,
        )

    return app

"""Sessions: one sandbox each, with its socket, its workspace, its limits and its idle TTL.

A session outlives its sandbox: when the container dies (a crash, an OOM under gVisor, a hung runtime) the session
starts a fresh one on the same workspace and the next result says `state_reset`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import logging
import re
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import anyio.to_thread
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from controller import discovery, preflight, shaping, stubgen, tsstubs
from controller.anomalies import Anomaly, Detector
from controller.audit import AuditLog, Repeats
from controller.bridge import METHOD_NOT_FOUND, Bridge, RemoteError
from controller.catalog import Catalog, CatalogSnapshot
from controller.config import REPLICA_NAME, Limits, Settings
from controller.discovery import Language
from controller.errors import (
    BridgeClosed,
    BridgeTimeout,
    LanguageUnavailable,
    MCPXError,
    SandboxError,
    SandboxStartTimeout,
    SessionLimitReached,
    SessionNotFound,
    ShuttingDown,
    UnknownServers,
    WorkspaceError,
)
from controller.ledger import EventListener, Ledger, ToolCall
from controller.policy import Policy, PolicyRefusal, Preflight, check_call, denied_imports
from controller.preflight import Finding, Reach
from controller.recovery import SessionRecord, read_record, write_record
from controller.redaction import redact
from controller.runtime import (
    SANDBOX_USER,
    SOCKET_MOUNT,
    WORKSPACE_MOUNT,
    SandboxBackend,
    SandboxSpec,
    choose_runtime,
)
from controller.shaping import OUTPUT_LIMIT, CapturedStream, Strategy, Tokens
from controller.statedir import StateLock
from controller.telemetry import Telemetry, child_of
from controller.workspaces import Workspaces

logger = logging.getLogger(__name__)

SOCKET_NAME = "bridge.sock"
SESSION_ID = re.compile(f"({REPLICA_NAME})\\.[0-9a-f]{{16}}")
OUTPUTS = ".mcpx/outputs"  # in the workspace: the full text of output that shaping cut
TOOL_ERROR = -32010
DETAILS: dict[str, discovery.Detail] = {"name": "name", "description": "description", "full": "full"}
# The supervisor's JSON-RPC error code for an execution in a language the image has no runtime for.
NO_LANGUAGE_RUNTIME = -32010
# How long past its own timeout (and kill grace) an execution may take before the sandbox is presumed hung.
HUNG_MARGIN_S = 5.0
# How long a crashed execution waits for the engine to report an OOM kill that explains it.
OOM_EVENT_WAIT_S = 2.0
# What of a response the model reads, all within its token budget; and how often shaping may retry to absorb the
# JSON around the parts (keys, escapes) into it.
CARRIED = {"stdout", "stderr", "result", "error", "tool_calls"}
FIT_ROUNDS = 8
# Bridge violations of one session are audited one line at once, then one summary line per this window.
VIOLATION_WINDOW_S = 10.0


class ExecutionError(BaseModel):
    """Why an execution did not complete normally."""

    kind: Literal["exception", "timeout", "interrupted", "oom", "crash", "policy", "preflight"]
    type: str
    message: str
    traceback: str = ""


class TokenReport(BaseModel):
    """Tokens through the model with mcpx, against a direct-tool-calling agent doing the same calls.

    `returned` is this response as shaped, `code` what the model wrote; `tool_results` and `tool_calls` are what a
    direct agent would have read (every result) and written (every call's arguments): `direct_estimate` is their
    sum, and `saved` = direct_estimate - returned - code (negative when code costs more than it saves).
    """

    returned: int = 0
    code: int = 0
    tool_results: int = 0
    tool_calls: int = 0
    direct_estimate: int = 0
    saved: int = 0

    def add(self, other: TokenReport) -> TokenReport:
        return TokenReport(**{name: getattr(self, name) + getattr(other, name) for name in TokenReport.model_fields})


class DroppedOutput(BaseModel):
    """Output of one stream the sandbox did not keep: `bytes` over `limit` (`limit_bytes` a stream), dropped from
    the middle, where the stream's text has a marker: its start and its end are kept."""

    bytes: int
    limit: str = OUTPUT_LIMIT
    limit_bytes: int


class ExecutionResult(BaseModel):
    """The outcome of running one piece of code; a failure of the code is data here, not an exception."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "stdout": "10000 rows\n",
                    "stderr": "",
                    "result": 10000,
                    "error": None,
                    "duration_ms": 912.4,
                    "state_reset": False,
                    "tool_calls": [
                        {
                            "server": "docstore",
                            "tool": "get_sheet",
                            "ok": True,
                            "ms": 880.1,
                            "bytes": 1834211,
                            "tokens": 431830,
                        }
                    ],
                    "tokens": {
                        "returned": 31,
                        "code": 29,
                        "tool_results": 431830,
                        "tool_calls": 19,
                        "direct_estimate": 431849,
                        "saved": 431789,
                    },
                    "full_output": {},
                }
            ]
        }
    )

    stdout: str = ""
    stderr: str = ""
    result: Any = None
    error: ExecutionError | None = None
    duration_ms: float = 0.0
    state_reset: bool = False
    tool_calls: list[ToolCall] = []
    tokens: TokenReport = TokenReport()
    full_output: dict[str, str] = Field(
        default_factory=dict, description="Where the full text of each part that was cut is saved in the workspace."
    )
    manifest: list[Reach] = Field(
        default_factory=list, description="Every tool the code can reach statically, read-only or destructive."
    )
    preflight: list[Finding] = Field(
        default_factory=list, description="What the pre-flight check found (with `warn`, or a dry run)."
    )
    tool_calls_omitted: int = Field(
        default=0, description="Tool calls left out of the middle of `tool_calls` to fit the budget (all are saved)."
    )
    dropped: dict[str, DroppedOutput] = Field(
        default_factory=dict, description="Per stream, output over the capture cap that the sandbox did not keep."
    )


def carry(result: ExecutionResult, shaped: shaping.Shaped) -> ExecutionResult:
    """Put the shaped parts into the result (the tool calls kept are the first and the last of the list)."""
    result.tool_calls_omitted = len(result.tool_calls) - len(shaped.tool_calls)
    result.tool_calls = [ToolCall.model_validate(call) for call in shaped.tool_calls]
    result.stdout, result.stderr, result.result = shaped.stdout, shaped.stderr, shaped.result
    if result.error is not None:
        result.error.traceback, result.error.message = shaped.traceback, shaped.message
    return result


def failure(kind: Literal["timeout", "oom", "crash"], message: str, started: float) -> ExecutionResult:
    error_type = {"timeout": "TimeoutError", "oom": "MemoryError", "crash": "SandboxCrash"}[kind]
    return ExecutionResult(
        error=ExecutionError(kind=kind, type=error_type, message=message),
        duration_ms=round((time.monotonic() - started) * 1000, 3),
        state_reset=True,
    )


def owner_of(session_id: str) -> str | None:
    """The replica a session id names as its owner (ids are `<replica>.<16 hex digits>`); None when malformed."""
    match = SESSION_ID.fullmatch(session_id)
    return match.group(1) if match else None


def session_directory(sessions_dir: Path, session_id: str) -> Path:
    """A session's host directory, named without its replica: the socket's path must fit the 108 bytes of a Unix
    socket address."""
    return sessions_dir / session_id.rpartition(".")[2]


def render_stubs(view: CatalogSnapshot) -> dict[str, str]:
    """The whole stubs tree: the Python package and the TypeScript modules beside it."""
    return stubgen.render(view) | tsstubs.render(view)


def idle_expired(now: float, last_used: float, ttl_s: float) -> bool:
    return now - last_used >= ttl_s


@dataclass
class Session:
    """A live session and the host resources it owns."""

    id: str
    limits: Limits
    runtime: str
    directory: Path
    bridge: Bridge
    created_at: datetime
    servers: frozenset[str] | None
    tools_dir: Path
    policy: Policy
    tenant: str = ""
    warm: bool = False
    container_id: str | None = None
    last_used: float = field(default_factory=time.monotonic)
    executions: int = 0
    restarts: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    listener: EventListener | None = None
    output: dict[str, CapturedStream] | None = None  # the running execution's stdout and stderr
    billed: list[asyncio.Future[ToolCall]] = field(default_factory=list)
    tokens: TokenReport = field(default_factory=TokenReport)
    trace: str = ""
    traceparent: str = ""  # the running execution's span, for the tool calls it makes
    calls_total: int = 0
    calls_in_flight: int = 0
    calls_started: int = 0
    result_bytes: int = 0
    expires_at: float = 0.0  # Unix time: the end of the sandbox's max age

    @property
    def socket_dir(self) -> Path:
        return self.directory / "socket"

    @property
    def workspace_dir(self) -> Path:
        return self.directory / "workspace"

    @property
    def busy(self) -> bool:
        return self.lock.locked()

    def on_notification(self, method: str, params: dict[str, Any]) -> None:
        name, text, dropped = params.get("stream"), params.get("text"), params.get("dropped")
        if method != "output" or self.output is None or name not in ("stdout", "stderr"):
            return
        if isinstance(text, str):
            kept = self.output[name].add(text)
        elif type(dropped) is int and dropped > 0:
            kept = self.output[name].drop(dropped)
        else:
            return
        if self.listener and kept:
            self.listener("output", {"stream": name, "text": kept})


class SessionManager:
    """Creates, runs, restarts and reaps sessions. Call `start()` before use and `close()` at shutdown."""

    def __init__(
        self,
        settings: Settings,
        backend: SandboxBackend,
        catalog: Catalog,
        secrets: frozenset[str],
        tokens: Tokens,
        audit: AuditLog,
        telemetry: Telemetry,
    ) -> None:
        self.settings = settings
        self.audit = audit
        self.telemetry = telemetry
        self.anomalies = Detector(settings.anomalies)
        self.tokens = tokens
        self.ledger = Ledger(tokens, telemetry, audit)
        self.violations = Repeats(audit, VIOLATION_WINDOW_S)
        self.backend = backend
        self.catalog = catalog
        self.secrets = secrets
        self._trees: dict[str, Path] = {}
        self._interfaces: dict[str, preflight.Tools] = {}
        self.state_lock = StateLock(settings.state_dir, settings.controller_id, settings.host, settings.port)
        self.pool: list[Session] = []
        self._creating: list[str] = []
        self._refill = asyncio.Event()
        self._filler: asyncio.Task[None] | None = None
        self.sessions: dict[str, Session] = {}
        self.draining = False  # set once at shutdown: sessions end, none start
        uid, gid = (int(part) for part in SANDBOX_USER.split(":"))
        self.workspaces = Workspaces(settings.workspace_size_mb, uid, gid)
        self.runtimes: set[str] = set()
        self.runtime = "runc"
        self._reaper: asyncio.Task[None] | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._ooms: collections.Counter[str] = collections.Counter()  # OOM kills the engine reported, by container
        self._stop_watching: Callable[[], None] | None = None
        self._deferred: dict[str, str] = {}  # sandboxes the engine would not remove yet -> their session; reaped later
        telemetry.gauge("mcpx.sessions.active", "Sessions open now", lambda: len(self.sessions))
        telemetry.gauge("mcpx.sandbox.removals_pending", "Sandboxes left to remove later", lambda: len(self._deferred))
        telemetry.gauge("mcpx.pool.size", "Warm sandboxes ready to be claimed", lambda: len(self.pool))

    @property
    def sessions_dir(self) -> Path:
        return self.settings.state_dir / "sessions"

    @property
    def stubs_dir(self) -> Path:
        return self.settings.state_dir / "stubs"

    async def stubs_for(self, view: CatalogSnapshot) -> Path:
        """The read-only stubs tree of a catalog view, rendered once per content hash (in a thread: a large
        catalog takes about a second), and again when it was removed from under this controller."""
        tree = self._trees.get(view.digest)
        if tree is not None and not tree.is_dir():
            logger.warning("the stubs tree %s was removed: writing it again", tree)
            # Warm sandboxes mount the removed directory, not the one written next: none of them may be claimed.
            broken = [session for session in self.pool if session.tools_dir == tree]
            self.pool = [session for session in self.pool if session not in broken]
            await asyncio.gather(*(self._destroy(session) for session in broken))
            self._refill.set()
            tree = None
        if tree is None:
            files = await anyio.to_thread.run_sync(render_stubs, view)
            tree = await anyio.to_thread.run_sync(stubgen.write_tree, files, self.stubs_dir, view.digest)
            self._trees[view.digest] = tree
        return tree

    async def start(self) -> None:
        """Re-adopt the live sessions an earlier run of this controller left, reap everything else it left, pick
        the runtime, start the reaper and the pool.

        Raises:
            StateDirBusy: another controller holds the state dir (nothing in it was touched).
        """
        self.state_lock.acquire()
        try:
            await self._start_up()
        except BaseException:
            self.state_lock.release()
            raise

    async def _start_up(self) -> None:
        self.sessions_dir.mkdir(parents=True, exist_ok=True)
        self.sessions_dir.chmod(0o711)
        self.stubs_dir.mkdir(mode=0o755, exist_ok=True)
        self.runtimes = await self.backend.runtimes()
        self.runtime = choose_runtime(self.runtimes, self.settings.runtime, self.settings.require_gvisor)
        loop = asyncio.get_running_loop()

        def counted(container_id: str) -> None:  # called from the backend's thread
            loop.call_soon_threadsafe(self._ooms.update, [container_id])

        self._stop_watching = await self.backend.watch_ooms(self.settings.controller_id, counted)
        await self._recover()
        self._reaper = asyncio.create_task(self._reap_forever())
        self._keeper = asyncio.create_task(self._keep_alive_forever())
        if self.settings.warm_pool_size:
            self.catalog.listeners.append(lambda _snapshot: self._refill.set())
            self._filler = asyncio.create_task(self._fill_pool())
            self._refill.set()

    async def _recover(self) -> None:
        """Every sandbox labelled as this controller's ends up re-adopted (its session usable again, its state
        intact) or removed, with its workspace; nothing is left unaccounted for."""
        every = await self.backend.owned(self.settings.controller_id)
        # A session may have two: a new one and an old one whose removal was deferred; the running one is adopted.
        owned = {sandbox.session_id: sandbox for sandbox in sorted(every, key=lambda sandbox: sandbox.running)}
        now = time.time()
        for directory in sorted(self.sessions_dir.iterdir()):
            record = read_record(directory)
            sandbox = owned.get(record.id) if record is not None else None
            if (
                record is not None
                and sandbox is not None
                and sandbox.running
                and sandbox.container_id == record.container_id
                and now < record.expires_at
                and directory == session_directory(self.sessions_dir, record.id)
                and await self._adopt(record)
            ):
                del owned[record.id]
        adopted_sandboxes = {session.container_id for session in self.sessions.values()}
        leftovers = [sandbox for sandbox in every if sandbox.container_id not in adopted_sandboxes]
        for sandbox in leftovers:
            await self._remove(sandbox.container_id, sandbox.session_id)
        adopted = {session.directory for session in self.sessions.values()}
        for directory in self.sessions_dir.iterdir():
            if directory not in adopted:
                await self.workspaces.remove_all(directory)
                shutil.rmtree(directory, ignore_errors=True)
        in_use = {session.tools_dir for session in self.sessions.values()}
        for tree in self.stubs_dir.iterdir():
            if tree not in in_use:
                shutil.rmtree(tree, ignore_errors=True)
        if leftovers or self.sessions:
            logger.info("re-adopted %d sessions, removed %d sandboxes", len(self.sessions), len(leftovers))

    async def _adopt(self, record: SessionRecord) -> bool:
        """Listen on the session's socket again and wait for its sandbox to reconnect."""
        servers = frozenset(record.servers) if record.servers is not None else None
        session = self._session(record.id, record.limits, record.runtime, servers, record.tools_dir, record.policy)
        session.tenant, session.created_at, session.expires_at = record.tenant, record.created_at, record.expires_at
        session.container_id = record.container_id
        session.executions, session.restarts = record.executions, record.restarts
        await session.bridge.start()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(self.settings.start_timeout_s, self.settings.reconnect_s)):
                await session.bridge.connected.wait()
        if not session.bridge.is_connected:
            await session.bridge.close()
            return False
        self.sessions[session.id] = session
        self.audit.record("session.adopted", session=session.id, tenant=session.tenant, runtime=session.runtime)
        return True

    async def close(self) -> None:
        """Let running executions finish (up to `drain_timeout_s`), then remove every sandbox, or leave the
        sessions' sandboxes to the next start under `handover`. New sessions are refused from the start."""
        self.draining = True
        for task in (self._reaper, self._keeper, self._filler):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        busy = [session.lock.acquire() for session in self.sessions.values() if session.busy]
        if busy:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.drain_timeout_s):
                    await asyncio.gather(*busy)
        if self._stop_watching is not None:
            self._stop_watching()
        pooled, self.pool = self.pool, []
        if self.settings.handover:
            for session in self.sessions.values():
                await session.bridge.close()
                self.violations.flush(session.id)
            self.sessions.clear()
        await asyncio.gather(
            *(self.delete(session_id, "shutdown") for session_id in list(self.sessions)),
            *(self._destroy(session) for session in pooled),
        )
        await self._retry_removals()
        await self.ledger.close()
        self.state_lock.release()

    def get(self, session_id: str, tenant: str) -> Session:
        """The tenant's session; another tenant's is as unknown as a missing one. Raises: SessionNotFound."""
        session = self.sessions.get(session_id)
        if session is None or not secrets.compare_digest(session.tenant, tenant):
            raise SessionNotFound(session_id)
        return session

    def of_tenant(self, tenant: str) -> list[Session]:
        return [session for session in self.sessions.values() if session.tenant == tenant]

    async def create(
        self,
        tenant: str,
        limits: Limits,
        runtime: str | None = None,
        servers: frozenset[str] | None = None,
        policy: Policy | None = None,
        max_sessions: int | None = None,
    ) -> Session:
        """Start a session with its own sandbox, on `runtime` or the controller's default one, allowed to call
        the tools of `servers` (None: every configured server). A warm sandbox of the same profile is claimed
        when the pool has one.

        Raises:
            ShuttingDown: the controller is draining.
            SessionLimitReached: too many sessions.
            UnknownServers: the allowlist names a server that is not configured.
            GVisorRequired: a runtime other than runsc was asked for under `require_gvisor`.
            SandboxError, RuntimeUnavailable: the sandbox could not be started.
        """
        if self.draining:
            raise ShuttingDown("the controller is shutting down: start the session on another replica, or retry")
        # Creations under way count too: a burst of concurrent requests cannot pass the limits between awaits.
        if len(self.sessions) + len(self._creating) >= self.settings.max_sessions:
            raise SessionLimitReached(self.settings.max_sessions)
        if max_sessions is not None and len(self.of_tenant(tenant)) + self._creating.count(tenant) >= max_sessions:
            raise SessionLimitReached(max_sessions)
        self._creating.append(tenant)
        started = time.monotonic()
        try:
            with self.telemetry.span("session.create", {"mcpx.tenant": tenant}) as span:
                session = await self._create(tenant, limits, runtime, servers, policy)
                span.set_attributes({"mcpx.session": session.id, "mcpx.warm": session.warm})
        finally:
            self._creating.remove(tenant)
        self.telemetry.session_created(time.monotonic() - started, session.warm)
        return session

    async def _create(
        self,
        tenant: str,
        limits: Limits,
        runtime: str | None,
        servers: frozenset[str] | None,
        policy: Policy | None,
    ) -> Session:
        runtime = (
            self.runtime if runtime is None else choose_runtime(self.runtimes, runtime, self.settings.require_gvisor)
        )
        unknown = sorted((servers or frozenset()) - set(self.catalog.connections))
        if unknown:
            raise UnknownServers(unknown)
        tools_dir = await self.stubs_for(self.catalog.snapshot.only(servers))
        session = self._claim(runtime, limits, servers, tools_dir) or await self._start(
            runtime, limits, servers, tools_dir
        )
        session.tenant = tenant
        session.policy = (policy or self.settings.policy).within(self.settings.policy)
        session.created_at = datetime.now(UTC)
        session.last_used = time.monotonic()
        self.sessions[session.id] = session
        self._persist(session)
        self.audit.record(
            "session.created", session=session.id, tenant=tenant, runtime=runtime, warm=session.warm,
            servers=sorted(servers) if servers else None, limits=limits.model_dump(),
            policy=session.policy.model_dump(),
        )  # fmt: skip
        return session

    async def _start(self, runtime: str, limits: Limits, servers: frozenset[str] | None, tools_dir: Path) -> Session:
        """A new session's sandbox, started and connected, not yet anyone's."""
        session_id = f"{self.settings.controller_id}.{secrets.token_hex(8)}"
        session = self._session(session_id, limits, runtime, servers, tools_dir, self.settings.policy)
        session.expires_at = time.time() + self.settings.max_age_s
        try:
            session.directory.mkdir(mode=0o711)
            session.socket_dir.mkdir(mode=0o755)
            await self.workspaces.create(session.workspace_dir)
            await session.bridge.start()
            await self._boot(session)
        except BaseException:
            await self._destroy(session)
            raise
        return session

    def _session(
        self,
        session_id: str,
        limits: Limits,
        runtime: str,
        servers: frozenset[str] | None,
        tools_dir: Path,
        policy: Policy,
    ) -> Session:
        """A session object wired to its bridge; nothing started yet."""
        directory = session_directory(self.sessions_dir, session_id)
        bridge = Bridge(
            directory / "socket" / SOCKET_NAME, max_frame=self.settings.max_frame_bytes, label=session_id,
            idle_timeout_s=self.settings.bridge_idle_timeout_s, max_violations=self.settings.bridge_max_violations,
        )  # fmt: skip
        session = Session(session_id, limits, runtime, directory, bridge, datetime.now(UTC), servers, tools_dir, policy)
        bridge.on_notification = session.on_notification
        bridge.on_violation = functools.partial(self._on_violation, session)
        bridge.on_request = functools.partial(self._on_sandbox_request, session)
        return session

    def _persist(self, session: Session) -> None:
        """Record a claimed session for the next start of this controller (see recovery.py)."""
        assert session.container_id is not None
        record = SessionRecord(
            id=session.id, tenant=session.tenant, limits=session.limits, runtime=session.runtime,
            servers=sorted(session.servers) if session.servers is not None else None, policy=session.policy,
            created_at=session.created_at, expires_at=session.expires_at, container_id=session.container_id,
            tools_dir=session.tools_dir, executions=session.executions, restarts=session.restarts,
        )  # fmt: skip
        write_record(session.directory, record)

    def _claim(self, runtime: str, limits: Limits, servers: frozenset[str] | None, tools_dir: Path) -> Session | None:
        """A warm sandbox of exactly this profile, if the pool has one (it refills in the background)."""
        for index, session in enumerate(self.pool):
            same = (session.runtime, session.limits, session.servers, session.tools_dir)
            if same == (runtime, limits, servers, tools_dir) and session.bridge.is_connected:
                del self.pool[index]
                session.warm = True
                self._refill.set()
                return session
        return None

    async def _fill_pool(self) -> None:
        """Keep `warm_pool_size` sandboxes of the default profile started; recycle those of an older catalog."""
        while True:
            await self._refill.wait()
            self._refill.clear()
            tools_dir = await self.stubs_for(self.catalog.snapshot)
            stale = [session for session in self.pool if session.tools_dir != tools_dir]
            self.pool = [session for session in self.pool if session not in stale]
            for session in stale:
                await self._destroy(session)
            while len(self.pool) < self.settings.warm_pool_size:
                try:
                    self.pool.append(await self._start(self.runtime, self.settings.defaults, None, tools_dir))
                except MCPXError as exc:
                    logger.warning("warm pool: cannot start a sandbox: %s", exc)
                    await asyncio.sleep(self.settings.reap_interval_s)
                    break

    async def delete(self, session_id: str, reason: str = "request") -> None:
        """Remove the session's sandbox, socket and workspace. Raises: SessionNotFound."""
        session = self.sessions.pop(session_id, None)
        if session is None:
            raise SessionNotFound(session_id)
        self.anomalies.forget(session_id)
        self.audit.record(
            "session.deleted",
            session=session_id,
            tenant=session.tenant,
            reason=reason,
            tokens=session.tokens.model_dump(),
        )
        await self._destroy(session)

    async def _destroy(self, session: Session) -> None:
        """Free everything a session holds on the host; what is already gone is fine."""
        try:
            if session.container_id is not None:
                await self._remove(session.container_id, session.id)
        finally:
            await session.bridge.close()
            self.violations.flush(session.id)
            await self.workspaces.remove(session.workspace_dir)
            shutil.rmtree(session.directory, ignore_errors=True)

    async def execute(
        self,
        session: Session,
        code: str,
        timeout_s: float | None = None,
        listener: EventListener | None = None,
        max_output_tokens: int | None = None,
        strategy: Strategy | None = None,
        language: Language = "python",
        checks: Preflight | None = None,
        dry_run: bool = False,
    ) -> ExecutionResult:
        """Run code in the session's interpreter for `language`, then shape its output to the token budget;
        executions of one session run one at a time. Python code is checked against the stubs first (`checks`,
        default the policy's): `dry_run` only checks it and lists what it can reach.

        Raises:
            SandboxError: the sandbox died and could not be restarted.
            LanguageUnavailable: the sandbox image has no runtime for `language`.
        """
        timeout = timeout_s if timeout_s is not None else session.limits.timeout_s
        attributes = {"mcpx.session": session.id, "mcpx.tenant": session.tenant}
        async with session.lock:
            with self.telemetry.span("execution", attributes) as span:
                started = session.last_used = time.monotonic()
                session.executions += 1
                session.listener = listener
                session.billed = []
                session.calls_started = session.result_bytes = 0
                session.trace = secrets.token_hex(16)
                session.traceparent = self.telemetry.traceparent()
                span.set_attribute("mcpx.trace", session.trace)
                try:
                    checking = (checks or session.policy.preflight, dry_run)
                    result = await self._run(session, code, timeout, language, max_output_tokens, strategy, checking)
                finally:
                    session.listener = None
                    session.traceparent = ""
                    session.last_used = time.monotonic()
                outcome = result.error.kind if result.error is not None else "ok"
                span.set_attribute("mcpx.outcome", outcome)
                if result.error is not None:
                    self.telemetry.fail(span, outcome)
            now = time.monotonic()
            self.telemetry.execution_finished(now - started, outcome)
            self.telemetry.tokens(result.tokens.returned, result.tokens.saved)
            self._raise(self.anomalies.execution(session.id, session.tenant, now - started, now), session)
            return result

    def _preflight(self, session: Session, code: str, language: Language) -> preflight.Report:
        if language != "python" or "servers" not in code:
            return preflight.Report()
        view = self.catalog.snapshot.only(session.servers)
        tools = self._interfaces.get(view.digest)
        if tools is None:
            tools = self._interfaces[view.digest] = stubgen.interfaces(view)
        return preflight.check(code, tools)

    @staticmethod
    def _checked(report: preflight.Report, dry_run: bool) -> ExecutionResult:
        """The response to code that is not run: a dry run, or one the pre-flight check refused."""
        if dry_run:
            return ExecutionResult(preflight=report.findings)
        error = ExecutionError(kind="preflight", type="PreflightError", message=preflight.summary(report.findings))
        return ExecutionResult(error=error, preflight=report.findings)

    async def _run(
        self,
        session: Session,
        code: str,
        timeout_s: float,
        language: Language,
        max_output_tokens: int | None,
        strategy: Strategy | None,
        checking: tuple[Preflight, bool] = ("off", False),
    ) -> ExecutionResult:
        (mode, dry_run), report = checking, self._preflight(session, code, language)
        refused = denied_imports(code, frozenset(session.policy.denied_imports))
        if language == "typescript" and session.policy.denied_imports:
            # The import check reads Python only: refuse rather than let TypeScript bypass the policy.
            refused = ["denied_imports is set and only Python code can be checked against it"]
        if refused:
            self.audit.record("static_check.refused", session=session.id, trace=session.trace, found=refused)
            self.telemetry.refused("static_check")
            self._raise(self.anomalies.refusal(session.id, session.tenant, time.monotonic()), session)
            result = ExecutionResult(
                error=ExecutionError(kind="policy", type="PolicyRefusal",
                                     message="imports denied by this session's policy: " + "; ".join(refused))
            )  # fmt: skip
        elif dry_run or (mode == "enforce" and report.findings):
            result = self._checked(report, dry_run)
            if not dry_run:
                self.audit.record("preflight.refused", session=session.id, trace=session.trace,
                                  found=[finding.kind for finding in report.findings])  # fmt: skip
        else:
            result = await self._execute(session, code, timeout_s, language)
            result.preflight = report.findings if mode == "warn" else []
        result.manifest = report.manifest
        if result.error is not None and result.error.kind in ("timeout", "oom", "crash"):
            event = f"execution.{result.error.kind}"
            self.audit.record(event, session=session.id, trace=session.trace, state_reset=result.state_reset)
        self.ledger.flush()
        result.tool_calls = list(await asyncio.gather(*session.billed))
        budget = max_output_tokens or self.settings.max_output_tokens
        return await anyio.to_thread.run_sync(
            self._shape, session, code, result, budget, strategy or self.settings.output_strategy
        )

    def _shape(
        self, session: Session, code: str, result: ExecutionResult, budget: int, strategy: Strategy
    ) -> ExecutionResult:
        """Fit what the model reads of the result into its budget, save the full text of what was cut, and account
        for the tokens."""
        error = result.error
        calls = [call.model_dump() for call in result.tool_calls]
        parts = {
            "stdout": result.stdout,
            "stderr": result.stderr,
            "result": result.result,
            "traceback": error.traceback if error else "",
            "message": error.message if error else "",
            "tool_calls": calls,
        }
        folder = f"{OUTPUTS}/{session.executions}"
        names = {
            "stdout": "stdout.txt", "stderr": "stderr.txt", "result": "result.json", "traceback": "traceback.txt",
            "message": "error_message.txt", "tool_calls": "tool_calls.json",
        }  # fmt: skip
        saved_at = {part: f"{WORKSPACE_MOUNT}/{folder}/{name}" for part, name in names.items()}
        # Bytes the sandbox dropped are named in the text too, wherever shaping cuts it.
        notes = {name: shaping.drop_marker(drop.bytes, drop.limit_bytes) for name, drop in result.dropped.items()}
        shaped = self._fit(result, parts, budget, strategy, saved_at, notes)
        for part in shaped.cut:
            value = parts[part]
            text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, indent=1)
            try:
                self.workspaces.write(session.workspace_dir, f"{folder}/{names[part]}", text.encode())
                result.full_output[part] = saved_at[part]
            except WorkspaceError as exc:
                logger.warning("session %s: cannot save the full %s: %s", session.id, part, exc)
        if set(shaped.cut) - set(result.full_output):  # markers must not point to files that were not written
            shaped = self._fit(result, parts, budget, strategy, result.full_output, notes)
        tool_results = sum(call.tokens for call in result.tool_calls)
        tool_calls = sum(call.call_tokens for call in result.tool_calls)
        carry(result, shaped)
        returned = self.tokens.count_json(result.model_dump(include=CARRIED))
        code_tokens = self.tokens.count(code)
        direct = tool_results + tool_calls
        result.tokens = TokenReport(
            returned=returned,
            code=code_tokens,
            tool_results=tool_results,
            tool_calls=tool_calls,
            direct_estimate=direct,
            saved=direct - returned - code_tokens,
        )
        session.tokens = session.tokens.add(result.tokens)
        return result

    def _fit(
        self,
        result: ExecutionResult,
        parts: dict[str, Any],
        budget: int,
        strategy: Strategy,
        saved_at: dict[str, str],
        notes: dict[str, str],
    ) -> shaping.Shaped:
        """Shape the parts so that the response's JSON of them (with its keys, quotes and escapes) is within
        `budget` tokens: the parts are shaped to less by what that JSON took over, until it fits."""
        room = budget
        for attempt in range(FIT_ROUNDS):
            shaped = shaping.shape_output(self.tokens, parts, room, strategy, saved_at, notes)
            size = self.tokens.count_json(carry(result.model_copy(deep=True), shaped).model_dump(include=CARRIED))
            if size <= budget or room == 0:
                break
            # Escapes can take several times the text's tokens (\u0001): shrink in proportion, and by more each
            # round, since a cut moves by whole tokens of each part.
            room = max(min(room * budget // size, room - 2**attempt), 0)
        return shaped

    async def interrupt(self, session: Session) -> None:
        """Stop the running execution, as a timeout does (interrupt, then kill after the grace period)."""
        with contextlib.suppress(BridgeClosed, BridgeTimeout, RemoteError):
            await session.bridge.request("interrupt", {}, timeout_s=5)

    async def _execute(self, session: Session, code: str, timeout_s: float, language: Language) -> ExecutionResult:
        started = time.monotonic()
        reset = False
        if not session.bridge.is_connected:
            await self._restart(session)
            reset = True
        container_id = session.container_id or ""
        ooms = self._ooms[container_id]
        params = {
            "code": code,
            "timeout_s": timeout_s,
            "stream": session.listener is not None,
            "language": language,
            "traceparent": session.traceparent,
        }
        deadline = timeout_s + self.settings.kill_grace_s + HUNG_MARGIN_S
        # Output arrives in notifications ahead of the reply, so no frame limit bounds it: only the output cap.
        output = session.output = {
            name: CapturedStream(self.settings.max_output_bytes) for name in ("stdout", "stderr")
        }
        try:
            reply = await session.bridge.request("execute", params, deadline)
            result = ExecutionResult.model_validate(reply)
            session.output = None
            result.stdout, result.stderr = output["stdout"].text(), output["stderr"].text()
            result.dropped = {
                name: DroppedOutput(bytes=stream.dropped, limit_bytes=stream.limit)
                for name, stream in output.items()
                if stream.dropped
            }
        except BridgeTimeout:
            await self._restart(session)
            return failure("timeout", "the sandbox stopped responding and was restarted", started)
        except (BridgeClosed, RemoteError, ValidationError) as exc:
            if isinstance(exc, RemoteError) and exc.code == NO_LANGUAGE_RUNTIME:
                raise LanguageUnavailable(language, str(exc)) from None
            kind: Literal["oom", "crash"] = "oom" if await self._died_of_oom(session) else "crash"
            logger.info("session %s: sandbox lost during execution (%s): %s", session.id, kind, exc)
            await self._restart(session)
            message = "the sandbox ran out of memory" if kind == "oom" else "the sandbox crashed"
            return failure(kind, f"{message} and was restarted; the workspace was kept", started)
        if reset:
            result.state_reset = True
        error = result.error
        if (
            error is not None
            and error.kind in ("crash", "timeout")
            and await self._oom_since(container_id, ooms, error)
        ):
            result.error = ExecutionError(
                kind="oom", type="MemoryError", message="the interpreter ran out of memory and was killed",
                traceback=error.traceback,
            )  # fmt: skip
        return result

    async def _oom_since(self, container_id: str, before: int, error: ExecutionError) -> bool:
        """Whether the engine reported an OOM kill in the sandbox since `before`: at once for a timeout, within a
        bounded wait for a crash (the engine's event trails the death it explains)."""
        deadline = time.monotonic() + (OOM_EVENT_WAIT_S if error.kind == "crash" else 0)
        while self._ooms[container_id] <= before:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def _died_of_oom(self, session: Session) -> bool:
        """Wait (bounded) for the engine to report the container's end, then read its OOM flag."""
        if session.container_id is None:
            return False
        for _ in range(20):
            state = await self.backend.state(session.container_id)
            if state is None:
                return False
            if not state.running:
                return state.oom_killed
            await asyncio.sleep(0.1)
        return False

    async def _restart(self, session: Session) -> None:
        """A fresh sandbox on the same workspace. Raises: SessionNotFound (the session was deleted meanwhile)."""
        if self.sessions.get(session.id) is not session:
            raise SessionNotFound(session.id)
        session.restarts += 1
        await session.bridge.disconnect()
        if session.container_id is not None:
            await self._remove(session.container_id, session.id)
            session.container_id = None
        await self._boot(session)
        self._persist(session)

    async def _remove(self, container_id: str, session_id: str) -> None:
        """Remove a session's sandbox, and forget the OOM kills counted in it. A sandbox the engine cannot remove
        now (a zombie it cannot kill yet, a layer it cannot delete) never fails the caller: the session is gone, or
        restarts in a new sandbox, all the same, and the reaper tries the removal again."""
        self._ooms.pop(container_id, None)
        try:
            await self.backend.remove(container_id)
        except SandboxError as exc:
            logger.warning("removal of sandbox %s deferred: %s", container_id, exc)
            self._deferred[container_id] = session_id
            self.telemetry.removal_deferred()
            self.audit.record("sandbox.removal_deferred", session=session_id, container=container_id, reason=str(exc))

    async def _retry_removals(self) -> None:
        """Try again every removal the engine refused; a second refusal waits for the next round."""
        for container_id, session_id in list(self._deferred.items()):
            with contextlib.suppress(SandboxError):
                await self.backend.remove(container_id)
                del self._deferred[container_id]
                self.audit.record("sandbox.removed_late", session=session_id, container=container_id)

    async def _boot(self, session: Session) -> None:
        """Start a container for the session and wait until its runtime connects to the socket."""
        if not session.tools_dir.is_dir():  # removed from under this controller: the current catalog's, written again
            session.tools_dir = await self.stubs_for(self.catalog.snapshot.only(session.servers))
        spec = SandboxSpec(
            session_id=session.id,
            controller_id=self.settings.controller_id,
            image=self.settings.image,
            runtime=session.runtime,
            memory_mb=session.limits.memory_mb,
            cpus=session.limits.cpus,
            pids_limit=self.settings.pids_limit,
            tmp_size_mb=self.settings.tmp_size_mb,
            socket_dir=session.socket_dir,
            workspace_dir=session.workspace_dir,
            tools_dir=session.tools_dir,
            created=session.created_at,
            expires=session.expires_at,
            generation=session.restarts,
            environment={**self._runtime_environment(), "MCPX_EXPIRES_AT": str(session.expires_at)},
        )
        session.container_id = await self.backend.start(spec)
        deadline = time.monotonic() + self.settings.start_timeout_s
        while not session.bridge.is_connected:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.25):
                    await session.bridge.connected.wait()
                continue
            state = await self.backend.state(session.container_id)
            if state is None or not state.running:
                logs = await self.backend.logs(session.container_id)
                raise SandboxError("the sandbox exited before connecting", session_id=session.id, logs=logs)
            if time.monotonic() > deadline:
                raise SandboxStartTimeout("the sandbox did not connect in time", session_id=session.id)

    async def _on_sandbox_request(self, session: Session, method: str, params: dict[str, Any]) -> Any:
        """Requests from sandbox code: tool calls (through policy) and tool search. Raises: RemoteError."""
        if method == "tools/search":
            view = self.catalog.snapshot.only(session.servers)
            detail = DETAILS.get(str(params.get("detail")), "description")
            limit = params["limit"] if isinstance(params.get("limit"), int) else 10
            language: Language = "typescript" if params.get("language") == "typescript" else "python"
            return discovery.search(view, str(params.get("query", "")), detail, min(limit, 100), language)
        if method != "tools/call":
            raise RemoteError(METHOD_NOT_FOUND, f"unknown method {method!r}")
        server, tool = params.get("server"), params.get("tool")
        where = {"server": str(server)[:200], "tool": str(tool)[:200]}
        meta = params.get("_meta")
        parent = child_of(meta.get("traceparent") if isinstance(meta, dict) else None, session.traceparent)
        with self.telemetry.span("tool_call", {"mcpx.session": session.id, **where}, parent or None) as span:
            try:
                self._check_quota(session)
                info = check_call(
                    self.catalog.snapshot, session.servers, session.policy, server, tool, params.get("arguments")
                )
                return await self._call(session, info.server, info.name, params["arguments"], where)
            except PolicyRefusal as refusal:
                self._refused(session, refusal.kind, refusal.audited, where)
                self.telemetry.fail(span, refusal.kind)
                raise RemoteError(TOOL_ERROR, str(refusal), {"kind": refusal.kind, **where}) from None
            except RemoteError as error:
                self.telemetry.fail(span, str(error.data["kind"]))
                raise

    async def _call(self, session: Session, server: str, tool: str, arguments: Any, where: dict[str, str]) -> Any:
        """A tool call the policy allowed: sent to its server, measured, accounted, its answer redacted."""
        started, trace = time.monotonic(), session.trace
        session.calls_total += 1
        session.calls_started += 1
        session.calls_in_flight += 1
        self._raise(self.anomalies.tool_call(session.id, session.tenant, started), session)
        try:
            outcome = await self.catalog.call(server, tool, arguments, self.telemetry.traceparent())
        finally:
            session.calls_in_flight -= 1
        elapsed = round((time.monotonic() - started) * 1000, 3)
        current = session.trace == trace  # an answer outliving its execution is not billed to the next one
        if current:
            session.result_bytes += outcome.size
        # The answer goes first; the call is booked (tokens, metrics, audit, stream event) with others shortly after.
        listener = session.listener if current else None
        booked = self.ledger.book(session.id, trace, server, tool, arguments, outcome, elapsed, listener)
        if current:
            session.billed.append(booked)
        if outcome.error is not None:
            raise RemoteError(TOOL_ERROR, redact(outcome.error, self.secrets), {"kind": outcome.kind, **where})
        if session.result_bytes > session.policy.max_result_bytes_per_execution:
            limit = session.policy.max_result_bytes_per_execution
            message = f"this execution received more than {limit} bytes of tool results; the result was withheld"
            self._refused(session, "quota", message, where)
            raise RemoteError(TOOL_ERROR, message, {"kind": "quota", **where})
        return redact(outcome.value, self.secrets)

    def _check_quota(self, session: Session) -> None:
        """Raises: PolicyRefusal when a call would exceed one of the session's quotas."""
        policy = session.policy
        if session.calls_started >= policy.max_tool_calls_per_execution:
            raise PolicyRefusal("quota", f"at most {policy.max_tool_calls_per_execution} tool calls per execution")
        if session.calls_total >= policy.max_tool_calls:
            raise PolicyRefusal("quota", f"at most {policy.max_tool_calls} tool calls per session")
        if session.calls_in_flight >= policy.max_concurrent_tool_calls:
            raise PolicyRefusal("quota", f"at most {policy.max_concurrent_tool_calls} tool calls at once")
        if session.result_bytes >= policy.max_result_bytes_per_execution:
            # Spent: the next call's answer could only be withheld, and its side effects would have happened.
            limit = policy.max_result_bytes_per_execution
            raise PolicyRefusal("quota", f"this execution has received its {limit} bytes of tool results")

    def _refused(self, session: Session, kind: str, reason: str, where: dict[str, str]) -> None:
        self.audit.record("policy.refused", session=session.id, trace=session.trace, kind=kind, reason=reason[:500],
                          server=where["server"], tool=where["tool"])  # fmt: skip
        self.telemetry.refused(kind)
        self._raise(self.anomalies.refusal(session.id, session.tenant, time.monotonic()), session)

    def _raise(self, anomalies: list[Anomaly], session: Session) -> None:
        for anomaly in anomalies:
            self.audit.record(
                "anomaly.detected", session=session.id, tenant=session.tenant, trace=session.trace or None,
                kind=anomaly.kind, scope=anomaly.scope, value=round(anomaly.value, 3),
                threshold=round(anomaly.threshold, 3),
            )  # fmt: skip
            self.telemetry.anomaly(anomaly.kind)

    def _on_violation(self, session: Session, what: str) -> None:
        self.violations.record(session.id, "bridge.violation", what, session=session.id, trace=session.trace or None)

    def _runtime_environment(self) -> dict[str, str]:
        """The sandbox runtime's knobs; nothing secret ever goes here."""
        return {
            "MCPX_SOCKET": f"{SOCKET_MOUNT}/{SOCKET_NAME}",
            "MCPX_MAX_FRAME": str(self.settings.max_frame_bytes),
            "MCPX_MAX_OUTPUT": str(self.settings.max_output_bytes),
            "MCPX_KILL_GRACE_S": str(self.settings.kill_grace_s),
            "MCPX_RECONNECT_S": str(self.settings.reconnect_s),
        }

    async def _keep_alive_forever(self) -> None:
        """Tell every sandbox, a few times per reconnect window, that its controller still runs: a sandbox that
        hears nothing for that long (its controller frozen, or gone) ends itself."""
        while True:
            await asyncio.sleep(self.settings.reconnect_s / 3)
            await asyncio.gather(
                *(session.bridge.notify("keepalive", {}) for session in [*self.sessions.values(), *self.pool])
            )

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reap_interval_s)
            await self._retry_removals()
            now, wall = time.monotonic(), time.time()
            expired = [session for session in self.pool if wall >= session.expires_at]
            if expired:
                self.pool = [session for session in self.pool if session not in expired]
                await asyncio.gather(*(self._destroy(session) for session in expired))
                self._refill.set()
            for session in list(self.sessions.values()):
                reason = None
                if wall >= session.expires_at:
                    reason = "max_age"  # busy or not: its sandbox ends itself now anyway
                elif not session.busy and idle_expired(now, session.last_used, session.limits.ttl_s):
                    reason = "idle"
                if reason is not None:
                    logger.info("session %s reached its %s limit: deleting", session.id, reason)
                    try:
                        await self.delete(session.id, reason)
                    except SessionNotFound:
                        pass
                    except MCPXError:
                        logger.exception("reaping session %s failed", session.id)

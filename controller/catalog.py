"""The catalog: one MCP client per configured server, and what they offer as an immutable, hashable snapshot.

Each server has a task that keeps its connection open (stdio or streamable HTTP), lists its tools page by page,
follows `tools/list_changed` (as a notification on 2025-era connections, through `subscriptions/listen` on
2026-07-28 ones), and reconnects with backoff when the server dies. This is the one module that imports the MCP
client; its errors are mapped here to `ToolOutcome`s.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import anyio
import httpx2
import pydantic
import pydantic_core
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.types import Implementation, RequestParamsMeta, ToolListChangedNotification

from controller import admission
from controller.admission import Quarantined
from controller.audit import AuditLog
from controller.config import CatalogLimits, HttpServer, StdioServer
from controller.pins import Pins, fingerprint

logger = logging.getLogger(__name__)

CONNECTION_CLOSED, REQUEST_TIMEOUT = -32000, -32001
MODERN_PROTOCOL = "2026-07-28"
CLIENT_INFO = Implementation(name="mcpx", version="0.1.0")
MAX_TOOL_PAGES = 100
SHOWN_QUARANTINED = 100  # quarantined or changed tools per server in /readyz and /v1/tools; the audit log has all


@dataclass(frozen=True)
class ToolInfo:
    """One tool as its server lists it; every string here is untrusted server input."""

    server: str
    name: str
    description: str = ""
    title: str | None = None
    input_schema: dict[str, Any] = field(default_factory=lambda: {"type": "object"})
    output_schema: dict[str, Any] | None = None
    annotations: dict[str, Any] = field(default_factory=dict)

    @functools.cached_property
    def input_schema_key(self) -> str:
        """The inputSchema as canonical JSON, computed once: what argument validators are cached by."""
        return json.dumps(self.input_schema, sort_keys=True)

    def wire(self) -> dict[str, Any]:
        """The definition as a direct-tool-calling client would load it (MCP's wire layout)."""
        definition: dict[str, Any] = {"name": self.name, "description": self.description}
        if self.title:
            definition["title"] = self.title
        definition["inputSchema"] = self.input_schema
        if self.output_schema is not None:
            definition["outputSchema"] = self.output_schema
        if self.annotations:
            definition["annotations"] = self.annotations
        return definition


@dataclass(frozen=True)
class ServerInfo:
    """One configured server and its tools, sorted by name."""

    name: str
    description: str = ""
    tools: tuple[ToolInfo, ...] = ()

    @functools.cached_property
    def digest(self) -> str:
        """A content hash of this server's part of the catalog, computed once."""
        canonical = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class CatalogSnapshot:
    """Every reachable server's tools at one moment; servers sorted by name."""

    servers: tuple[ServerInfo, ...] = ()
    changed: frozenset[tuple[str, str]] = frozenset()
    """(server, tool) of each tool whose definition differs from its pin (see `controller.pins`)."""

    @functools.cached_property
    def digest(self) -> str:
        """A content hash: equal catalogs share one stubs tree (built from the servers' own, so a server that
        changes costs one server's hashing, not the catalog's)."""
        combined = "\n".join([*(server.digest for server in self.servers), *map(repr, sorted(self.changed))])
        return hashlib.sha256(combined.encode()).hexdigest()[:32]

    @functools.cached_property
    def _by_name(self) -> dict[str, ServerInfo]:
        return {server.name: server for server in self.servers}

    @functools.cached_property
    def _tools(self) -> dict[tuple[str, str], ToolInfo]:
        """Every tool by (server, name), built once: each tool call looks its tool up."""
        return {(server.name, tool.name): tool for server in self.servers for tool in server.tools}

    def server(self, name: str) -> ServerInfo | None:
        return self._by_name.get(name)

    def tool(self, server: str, name: str) -> ToolInfo | None:
        return self._tools.get((server, name))

    def only(self, servers: frozenset[str] | None) -> CatalogSnapshot:
        """The part of the catalog a session with this allowlist may see (None: everything)."""
        if servers is None:
            return self
        return CatalogSnapshot(
            tuple(server for server in self.servers if server.name in servers),
            frozenset(change for change in self.changed if change[0] in servers),
        )


@dataclass(frozen=True)
class ToolOutcome:
    """A tool's answer as sandbox code receives it: a JSON value, or the server's error message."""

    value: Any
    error: str | None = None
    kind: str = ""
    size: int = 0


@dataclass(frozen=True)
class ServerStatus:
    """Whether a configured server is usable, for /readyz and the catalog."""

    name: str
    state: str
    tools: int
    error: str | None = None
    protocol: str | None = None
    list_changes: int = 0
    quarantined: tuple[Quarantined, ...] = ()
    """Tools kept out of the catalog (the first `SHOWN_QUARANTINED`), with the reason."""
    quarantined_total: int = 0
    changed: tuple[DefinitionChange, ...] = ()
    """Tools whose definition changed since pinned (the first `SHOWN_QUARANTINED`)."""


@dataclass(frozen=True)
class DefinitionChange:
    """A tool whose definition differs from the one pinned when it was first seen; `held` when its old stub is
    served and its calls are refused until an operator accepts the change."""

    server: str
    tool: str
    pinned: str
    current: str
    held: bool


@dataclass(frozen=True)
class Boundary:
    """What every server's listing is held to: the limits, the pins, the policy on changes, and the audit log."""

    limits: CatalogLimits = field(default_factory=CatalogLimits)
    pins: Pins = field(default_factory=lambda: Pins(None))
    on_definition_change: str = "serve"
    audit: AuditLog | None = None


def plain_value(result: dict[str, Any]) -> Any:
    """A CallToolResult (wire dict) as a plain value: structured content when present, else its content blocks.

    Text that is a JSON document is parsed; binary content becomes a described placeholder.
    """
    if result.get("structuredContent") is not None:
        return result["structuredContent"]
    values = [block_value(block) for block in result.get("content") or []]
    return values[0] if len(values) == 1 else values


def block_value(block: dict[str, Any]) -> Any:
    kind = block.get("type")
    if kind == "text":
        text = str(block.get("text", ""))
        if text[:1] in ("{", "["):
            # Not json.loads: it decodes lone surrogates (no frame to the sandbox could carry them) and overflows
            # the stack on deep nesting; this parser refuses both, and such text stays the text it is.
            try:
                return pydantic_core.from_json(text)
            except ValueError:
                pass
        return text
    if kind in ("image", "audio"):
        data = str(block.get("data", ""))
        return f"[{kind}: {block.get('mimeType', 'unknown type')}, {len(data) * 3 // 4} bytes, not shown]"
    if kind == "resource":
        resource = block.get("resource") or {}
        if "text" in resource:
            return resource["text"]
        return f"[resource {resource.get('uri', '?')}: {resource.get('mimeType', 'binary')}, not shown]"
    if kind == "resource_link":
        return f"[resource link {block.get('uri', '?')}: {block.get('name', '')}]"
    return f"[{kind} content, not shown]"


class ServerConnection:
    """One upstream server: a task keeps a `Client` open and reconnects with backoff when it fails."""

    def __init__(
        self,
        name: str,
        config: StdioServer | HttpServer,
        on_change: Callable[[], None],
        boundary: Boundary | None = None,
        budget: Callable[[], int] | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.boundary = boundary or Boundary()
        self._budget = budget or (lambda: self.boundary.limits.max_catalog_bytes)
        self.tools: tuple[ToolInfo, ...] = ()  # what is served: pinned definitions in place of held changes
        self.live: tuple[ToolInfo, ...] = ()  # what the server lists now, within the limits
        self.size = 0
        self.quarantined: tuple[Quarantined, ...] = ()
        self.changed: dict[str, tuple[str, str, ToolInfo]] = {}  # name -> (current hash, pinned hash, pinned tool)
        self._audited: set[tuple[str, ...]] = set()
        self.description = config.description or ""
        self.state = "connecting"
        self.error: str | None = None
        self.protocol: str | None = None
        self.list_changes = 0
        self._info: ServerInfo | None = None
        self.ready = asyncio.Event()
        self.settled = asyncio.Event()  # set once the first connection attempt succeeded or failed
        self._on_change = on_change
        self._client: Client | None = None
        self._lost = asyncio.Event()
        self._refresh_wanted = asyncio.Event()

    def info(self) -> ServerInfo:
        """This server's part of the catalog, rebuilt only when its tools or description changed."""
        if self._info is None or self._info.tools is not self.tools or self._info.description != self.description:
            self._info = ServerInfo(self.name, self.description, self.tools)
        return self._info

    def status(self) -> ServerStatus:
        held = self.boundary.on_definition_change == "quarantine"
        changes = tuple(
            DefinitionChange(self.name, name, pinned, current, held)
            for name, (current, pinned, _) in sorted(self.changed.items())[:SHOWN_QUARANTINED]
        )
        return ServerStatus(
            self.name,
            self.state,
            len(self.tools),
            self.error,
            self.protocol,
            self.list_changes,
            self.quarantined[:SHOWN_QUARANTINED],
            len(self.quarantined),
            changes,
        )

    async def run(self) -> None:
        """Connect, serve, reconnect; until cancelled."""
        delay = 0.5
        while True:
            try:
                await self._serve_one_connection()
                delay = 0.5
            except Exception as exc:  # noqa: BLE001 - any failure of a server is its state, not ours
                cause: BaseException = exc
                while isinstance(cause, BaseExceptionGroup) and cause.exceptions:
                    cause = cause.exceptions[0]  # the SDK's task groups wrap the one failure that matters
                self.error = f"{type(cause).__name__}: {cause}"[:500]
                logger.warning("MCP server %s failed: %s", self.name, self.error)
            self.state = "reconnecting" if self.tools else "failed"
            self.settled.set()
            self._on_change()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def _serve_one_connection(self) -> None:
        async with AsyncExitStack() as stack:
            client = await stack.enter_async_context(self._client_for(stack))
            self.protocol = client.protocol_version
            if not self.config.description:
                info = client.server_info
                self.description = (client.instructions or (info.title or info.name if info else "") or "").strip()
            await self._list_tools(client)
            self._client, self.state, self.error = client, "ready", None
            self._lost.clear()
            self.ready.set()
            self.settled.set()
            self._on_change()
            try:
                async with anyio.create_task_group() as tasks:
                    tools_capability = client.server_capabilities.tools
                    if self.protocol >= MODERN_PROTOCOL and tools_capability and tools_capability.list_changed:
                        tasks.start_soon(self._listen, client)
                    tasks.start_soon(self._refresh_on_demand, client)
                    await self._lost.wait()
                    tasks.cancel_scope.cancel()
            finally:
                self._client = None
                self.ready.clear()

    def _client_for(self, stack: AsyncExitStack) -> Client:
        config = self.config
        if isinstance(config, StdioServer):
            parameters = StdioServerParameters(
                command=config.command, args=list(config.args), env=config.env or None, cwd=config.cwd
            )
            return Client(parameters, message_handler=self._on_message, client_info=CLIENT_INFO, cache=None)
        http = httpx2.AsyncClient(headers=config.headers, timeout=httpx2.Timeout(config.timeout_s, read=None))
        stack.push_async_callback(http.aclose)
        transport = streamable_http_client(config.url, http_client=http)
        return Client(transport, message_handler=self._on_message, client_info=CLIENT_INFO, cache=None)

    async def _list_tools(self, client: Client) -> None:
        listed = await self._fetch_tools(client)
        # The boundary runs in a worker thread: bounded, linear work that the event loop never waits on.
        admitted, changed = await anyio.to_thread.run_sync(self._admit, listed, self._budget())
        self.live, self.size, self.quarantined, self.changed = (
            admitted.tools,
            admitted.size,
            admitted.quarantined,
            changed,
        )
        self._publish()
        audit = self.boundary.audit
        for item in admitted.quarantined:
            quarantine_key = ("q", item.tool, str(item.chars), item.reason)
            if audit is not None and quarantine_key not in self._audited:
                self._audited.add(quarantine_key)
                audit.record("tool.quarantined", **dataclasses.asdict(item))
        for name, (current, pinned, _) in changed.items():
            change_key = ("c", name, current)
            if audit is not None and change_key not in self._audited:
                self._audited.add(change_key)
                audit.record(
                    "tool.definition_changed",
                    server=self.name,
                    tool=name,
                    pinned=pinned,
                    current=current,
                    held=self.boundary.on_definition_change == "quarantine",
                )

    def _admit(
        self, listed: list[ToolInfo], budget: int
    ) -> tuple[admission.Admitted, dict[str, tuple[str, str, ToolInfo]]]:
        config = self.config
        admitted = admission.admit(
            self.name, listed, self.boundary.limits, budget, config.annotations, config.trust_annotations
        )
        return admitted, self.boundary.pins.review(self.name, admitted.tools)

    def _publish(self) -> None:
        """Serve the live tools, each held change by its pinned definition when changes are quarantined."""
        if self.boundary.on_definition_change != "quarantine" or not self.changed:
            self.tools = self.live
        else:
            self.tools = tuple(self.changed[tool.name][2] if tool.name in self.changed else tool for tool in self.live)

    async def accept(self, tool: str) -> bool:
        """Pin the tool's current definition and serve it; False when the server lists no such tool."""
        live = next((info for info in self.live if info.name == tool), None)
        if live is None:
            return False
        await anyio.to_thread.run_sync(self.boundary.pins.accept, live)
        self.changed.pop(tool, None)
        self._audited = {key for key in self._audited if key[:2] != ("c", tool)}
        self._publish()
        if self.boundary.audit is not None:
            self.boundary.audit.record(
                "tool.definition_accepted", server=self.name, tool=tool, current=fingerprint(live)
            )
        self._on_change()
        return True

    async def _fetch_tools(self, client: Client) -> list[ToolInfo]:
        tools: list[ToolInfo] = []
        cursor: str | None = None
        for _ in range(MAX_TOOL_PAGES):
            page = await client.list_tools(cursor=cursor)
            for tool in page.tools:
                annotations = tool.annotations.model_dump(by_alias=True, exclude_none=True) if tool.annotations else {}
                tools.append(
                    ToolInfo(
                        server=self.name,
                        name=tool.name,
                        description=tool.description or "",
                        title=tool.title,
                        input_schema=dict(tool.input_schema),
                        output_schema=dict(tool.output_schema) if tool.output_schema is not None else None,
                        annotations=annotations,
                    )
                )
            cursor = page.next_cursor
            if cursor is None:
                break
        return tools

    async def _on_message(self, message: Any) -> None:
        if isinstance(message, ToolListChangedNotification):
            self._refresh_wanted.set()

    async def _listen(self, client: Client) -> None:
        """2026-07-28 servers announce changes only to a `subscriptions/listen` stream; not all offer one."""
        try:
            async with client.listen(tools_list_changed=True) as subscription:
                async for _event in subscription:
                    self._refresh_wanted.set()
        except MCPError as exc:
            logger.info("MCP server %s offers no change subscription (%s)", self.name, exc.message)

    async def _refresh_on_demand(self, client: Client) -> None:
        while True:
            await self._refresh_wanted.wait()
            self._refresh_wanted.clear()
            self.list_changes += 1
            await self._list_tools(client)
            logger.info("MCP server %s changed its tools (%d now)", self.name, len(self.live))
            self._on_change()

    async def call(self, tool: str, arguments: dict[str, Any], timeout_s: float, traceparent: str = "") -> ToolOutcome:
        """Call a tool, passing the W3C `traceparent` on in the request's `_meta`; every failure is an outcome
        with a message, never an exception."""
        if self.state != "failed" and not self.ready.is_set():  # a reconnect is under way: give it a moment
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(timeout_s, 10.0)):
                    await self.ready.wait()
        client = self._client
        if client is None:
            return ToolOutcome(None, f"server {self.name!r} is unavailable: {self.error or self.state}", "unavailable")
        # An open map (`extra_items`), which mypy does not model yet.
        meta = cast(RequestParamsMeta, {"traceparent": traceparent}) if traceparent else None
        try:
            # The SDK's own deadline: on expiry it also tells the server to cancel the call.
            result = await client.call_tool(tool, arguments, read_timeout_seconds=timeout_s, meta=meta)
        except MCPError as exc:
            if exc.code == CONNECTION_CLOSED:
                if self._client is client:
                    self._client = None
                    self.ready.clear()
                    self._lost.set()
                return ToolOutcome(None, f"server {self.name!r} closed the connection during the call", "unavailable")
            if exc.code == REQUEST_TIMEOUT:
                return ToolOutcome(None, f"{self.name}.{tool} timed out after {timeout_s:g} s", "timeout")
            return ToolOutcome(None, f"{self.name}.{tool} failed: {exc.message}", "server_error")
        except (RuntimeError, pydantic.ValidationError) as exc:
            # The SDK raises these when a result breaks its own outputSchema or the protocol.
            return ToolOutcome(None, f"{self.name}.{tool} returned an invalid result: {exc}"[:2000], "invalid_result")
        wire = result.model_dump(by_alias=True, mode="json", exclude_none=True)
        size = len(result.model_dump_json(by_alias=True, exclude_none=True).encode())  # 5x quicker than json.dumps
        if result.is_error:
            message = " ".join(str(block_value(block)) for block in wire.get("content") or [])
            return ToolOutcome(None, message or f"{self.name}.{tool} reported an error", "tool_error", size)
        return ToolOutcome(plain_value(wire), size=size)


class Catalog:
    """Every configured server's connection, and the snapshot of their tools."""

    def __init__(self, servers: Mapping[str, StdioServer | HttpServer], boundary: Boundary | None = None) -> None:
        self.boundary = boundary or Boundary()
        self.connections = {
            name: ServerConnection(name, config, self._changed, self.boundary, functools.partial(self._budget, name))
            for name, config in servers.items()
        }
        self.snapshot = CatalogSnapshot()
        self.listeners: list[Callable[[CatalogSnapshot], None]] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, wait_s: float) -> None:
        """Start every connection; wait up to `wait_s` for them (a slow or broken server does not block the rest)."""
        self._tasks = [asyncio.create_task(c.run(), name=f"mcp:{n}") for n, c in self.connections.items()]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                await asyncio.gather(*(c.settled.wait() for c in self.connections.values()))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def statuses(self) -> list[ServerStatus]:
        return [connection.status() for connection in self.connections.values()]

    async def call(self, server: str, tool: str, arguments: dict[str, Any], traceparent: str = "") -> ToolOutcome:
        connection = self.connections[server]
        return await connection.call(tool, arguments, connection.config.timeout_s, traceparent)

    def _budget(self, server: str) -> int:
        """The catalog bytes left for `server`'s tools: the limit less every other server's."""
        others = sum(connection.size for name, connection in self.connections.items() if name != server)
        return max(self.boundary.limits.max_catalog_bytes - others, 0)

    async def accept(self, server: str, tool: str) -> bool:
        """Accept a tool's changed definition (see `ServerConnection.accept`); False for an unknown tool."""
        connection = self.connections.get(server)
        return connection is not None and await connection.accept(tool)

    def _changed(self) -> None:
        servers = tuple(connection.info() for _name, connection in sorted(self.connections.items()) if connection.tools)
        changed = frozenset(
            (name, tool)
            for name, connection in self.connections.items()
            if connection.tools
            for tool in connection.changed
        )
        snapshot = CatalogSnapshot(servers, changed)
        if snapshot.digest != self.snapshot.digest:
            self.snapshot = snapshot
            for listener in self.listeners:
                listener(snapshot)

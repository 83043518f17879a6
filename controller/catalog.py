"""The catalog: what the configured MCP servers offer, as an immutable, hashable snapshot."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any


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


@dataclass(frozen=True)
class CatalogSnapshot:
    """Every reachable server's tools at one moment; servers sorted by name."""

    servers: tuple[ServerInfo, ...] = ()

    @property
    def digest(self) -> str:
        """A content hash: equal catalogs share one stubs tree."""
        canonical = json.dumps([asdict(server) for server in self.servers], sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:32]

    def server(self, name: str) -> ServerInfo | None:
        return next((server for server in self.servers if server.name == name), None)

    def tool(self, server: str, name: str) -> ToolInfo | None:
        info = self.server(server)
        return None if info is None else next((tool for tool in info.tools if tool.name == name), None)

    def only(self, servers: frozenset[str] | None) -> CatalogSnapshot:
        """The part of the catalog a session with this allowlist may see (None: everything)."""
        if servers is None:
            return self
        return CatalogSnapshot(tuple(server for server in self.servers if server.name in servers))

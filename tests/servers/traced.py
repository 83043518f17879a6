"""An MCP server (stdio) whose one tool answers with the W3C trace context its request carried in `_meta`."""

from __future__ import annotations

from mcp.server import MCPServer
from mcp.server.mcpserver import Context

server = MCPServer("traced")


@server.tool()
def traceparent(ctx: Context) -> dict[str, str]:
    """The `traceparent` of this request's `_meta` ("" when it had none)."""
    meta = ctx.request_context.meta or {}
    return {"traceparent": str(meta.get("traceparent", ""))}


if __name__ == "__main__":
    server.run()

"""mcpx: run AI-agent code next to MCP tools, in hardened sandboxes."""

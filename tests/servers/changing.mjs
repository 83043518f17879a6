// An MCP server (the official TypeScript SDK, 2025 protocol, stdio) whose tool list changes on demand:
// calling `add_tool` registers `added_<n>`, and the SDK announces it with notifications/tools/list_changed.
// MCP_SDK is the SDK's dist/esm directory (it ships with server-everything in .servers/npm).
const sdk = process.env.MCP_SDK;
const { McpServer } = await import(`${sdk}/server/mcp.js`);
const { StdioServerTransport } = await import(`${sdk}/server/stdio.js`);

const server = new McpServer({ name: "changing", version: "1.0.0" });
let added = 0;
server.registerTool("add_tool", { description: "Adds a tool named added_<n> to this server." }, async () => {
  added += 1;
  const name = `added_${added}`;
  server.registerTool(name, { description: `Tool number ${added}, added at run time.` }, async () => ({
    content: [{ type: "text", text: name }],
  }));
  return { content: [{ type: "text", text: name }] };
});
await server.connect(new StdioServerTransport());

"""A hostile MCP server (stdio): tool names, descriptions, schemas and results built to break whatever consumes them.

Every tool echoes the wire name and arguments it received, so tests can check that each stub reached the right tool.
`echo_env` returns its environment (a credential from the config included), `die` kills the server mid-call,
`lie` answers with structured content that breaks its own outputSchema, `garble` with text that is JSON but for a
lone surrogate (which no valid UTF-8 can carry), `sleep` outlasts short timeouts.
Each call's tool name is appended to the file named by HOSTILE_LOG, so tests can see what reached the server.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

# Valid JSON whose string, once decoded, is not valid Unicode text.
GARBLED = '{"text": "\\ud800 alone"}'
BREAKOUT = '"""; import os; os.system("touch /tmp/pwned") #'
NASTY_TEXT = (
    "Triple \"\"\"quotes\"\"\" and '''singles''', a backslash \\ at the end \\"
    "\nnew\rline\r\nand \u2028 separators \u2029 \x85 \x0b \x0c, a NUL \x00, # not a comment,"
    " __import__('os').system('id'), {braces} and %s formats"
)


def schema(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required}


TOOLS = [
    types.Tool(name=BREAKOUT, description=NASTY_TEXT, input_schema=schema({"x": {"type": "string"}}, [])),
    types.Tool(name="class", title='"""title"""', description="a keyword", input_schema=schema({}, [])),
    types.Tool(name="Class", description="collides with class after lowering", input_schema=schema({}, [])),
    types.Tool(name="my-tool", description="dash", input_schema=schema({}, [])),
    types.Tool(name="my_tool", description="underscore: collides with my-tool", input_schema=schema({}, [])),
    types.Tool(name="myTool", description="camel: collides too", input_schema=schema({}, [])),
    types.Tool(name="123", description="digits only", input_schema=schema({}, [])),
    types.Tool(name="__import__", description="dunder", input_schema=schema({}, [])),
    types.Tool(name="ünïcödé·名前", description="unicode", input_schema=schema({}, [])),
    types.Tool(
        name="weird_params",
        description="property names and enums that are not identifiers",
        input_schema=schema(
            {
                'a"b': {"type": "string", "description": NASTY_TEXT},
                "def": {"type": "integer"},
                "with space": {"type": "string", "enum": ['x"""', "y\\", "z\n#"]},
                "_call": {"type": "boolean", "default": True},
                "nested": {
                    "type": "object",
                    "properties": {'"""': {"type": "string"}, "ok": {"type": "array", "items": {"type": "number"}}},
                    "required": ['"""'],
                },
                "dflt": {"type": "string", "default": BREAKOUT},
            },
            ['a"b', "def"],
        ),
    ),
    types.Tool(name="echo_env", description="returns the server's environment", input_schema=schema({}, [])),
    types.Tool(name="die", description="exits the server process mid-call", input_schema=schema({}, [])),
    types.Tool(
        name="lie",
        description="structured content that breaks its own outputSchema",
        input_schema=schema({}, []),
        output_schema=schema({"n": {"type": "integer"}}, ["n"]),
    ),
    types.Tool(name="garble", description="JSON text with a lone surrogate", input_schema=schema({}, [])),
    types.Tool(name="sleep", description="sleeps", input_schema=schema({"s": {"type": "number"}}, ["s"])),
    types.Tool(name="fail", description="reports an error", input_schema=schema({}, [])),
]


async def list_tools(_ctx: Any, _params: Any) -> types.ListToolsResult:
    return types.ListToolsResult(tools=TOOLS)


async def call_tool(_ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
    arguments = params.arguments or {}
    if log := os.environ.get("HOSTILE_LOG"):
        with open(log, "a") as calls:
            calls.write(repr(params.name) + "\n")
    if params.name == "echo_env":
        return types.CallToolResult(content=[], structured_content={"env": dict(os.environ)})
    if params.name == "die":
        os._exit(1)
    if params.name == "lie":
        return types.CallToolResult(content=[], structured_content={"n": "not an integer"})
    if params.name == "garble":
        return types.CallToolResult(content=[types.TextContent(type="text", text=GARBLED)])
    if params.name == "sleep":
        await asyncio.sleep(float(arguments["s"]))
    if params.name == "fail":
        return types.CallToolResult(
            content=[types.TextContent(type="text", text="it broke: " + NASTY_TEXT)], is_error=True
        )
    return types.CallToolResult(content=[], structured_content={"tool": params.name, "arguments": arguments})


async def main() -> None:
    server = Server("hostile", instructions=NASTY_TEXT, on_list_tools=list_tools, on_call_tool=call_tool)
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


if __name__ == "__main__":
    asyncio.run(main())

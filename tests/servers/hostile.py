"""A hostile MCP server (stdio): tool names, descriptions, schemas and results built to break whatever consumes them.

Every tool echoes the wire name and arguments it received, so tests can check that each stub reached the right tool.
`echo_env` returns its environment (a credential from the config included), `die` kills the server mid-call,
`lie` answers with structured content that breaks its own outputSchema, `garble` with text that is JSON but for a
lone surrogate (which no valid UTF-8 can carry), `sleep` outlasts short timeouts, `reflect` answers with its
credential (SECRET_TOKEN) in one of the ENCODINGS, amid other text.
Each call's tool name is appended to the file named by HOSTILE_LOG, so tests can see what reached the server.
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

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


# Bytes around an embedded base64 secret: `shift` more of them before it puts it at each of base64's 3 alignments.
BEFORE, AFTER = bytes(range(200, 209)), bytes(range(250, 256))
ENCODINGS: dict[str, Callable[[str, int], str]] = {
    "plain": lambda secret, _: secret,
    "upper": lambda secret, _: secret.upper(),
    "swapcase": lambda secret, _: secret.swapcase(),
    "reversed": lambda secret, _: secret[::-1],
    "reversed-upper": lambda secret, _: secret[::-1].upper(),
    "hex": lambda secret, _: secret.encode().hex(),
    "hex-upper": lambda secret, _: secret.encode().hex().upper(),
    "url": lambda secret, _: quote(secret, safe=""),
    "url-every-byte": lambda secret, _: "".join(f"%{byte:02X}" for byte in secret.encode()),
    "url-every-byte-lower": lambda secret, _: "".join(f"%{byte:02x}" for byte in secret.encode()),
    "base64": lambda secret, _: base64.b64encode(secret.encode()).decode(),
    "base64-unpadded": lambda secret, _: base64.b64encode(secret.encode()).decode().rstrip("="),
    "base64url": lambda secret, _: base64.urlsafe_b64encode(secret.encode()).decode(),
    "base64url-unpadded": lambda secret, _: base64.urlsafe_b64encode(secret.encode()).decode().rstrip("="),
    "base64-embedded": lambda secret, shift: base64.b64encode(BEFORE[shift:] + secret.encode() + AFTER).decode(),
    "base64url-embedded": lambda secret, shift: base64.urlsafe_b64encode(
        BEFORE[shift:] + secret.encode() + AFTER
    ).decode(),
}


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
    types.Tool(
        name="reflect",
        description="returns its credential encoded, amid other text",
        input_schema=schema(
            {"encoding": {"type": "string", "enum": list(ENCODINGS)}, "shift": {"type": "integer", "default": 0}},
            ["encoding"],
        ),
    ),
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
    if params.name == "reflect":
        encoded = ENCODINGS[arguments["encoding"]](os.environ["SECRET_TOKEN"], int(arguments.get("shift", 0)))
        return types.CallToolResult(content=[types.TextContent(type="text", text=f"before {encoded} after")])
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

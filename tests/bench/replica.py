"""Replica MCP servers for the token benchmark: real tool definitions, captured once, listed under many names.

Host side: `capture` lists real servers' tools once with the MCP client, `replica_names` plans the copies, and
`running` starts this file as a child process. Child side (`python tests/bench/replica.py --definitions FILE
--port N`): every replica is its own MCP server (its own name and session manager) at
`http://127.0.0.1:N/<replica>/mcp` over streamable HTTP, listing its source's tools verbatim. One process serves them
all: a hundred stdio servers would spend over a minute of CPU importing the SDK. Calls answer `is_error`: replicas
exist to be listed, searched and stubbed, never called.

FILE is JSON: `{"sources": {"everything": {"name", "title", "version", "instructions", "tools": [wire Tool, ...]}},
"replicas": {"everything_01": "everything", ...}}`.
"""

from __future__ import annotations

import argparse
import json
import math
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import uvicorn
from mcp import Client, StdioServerParameters
from mcp.server.lowlevel import Server
from starlette.applications import Starlette
from starlette.routing import BaseRoute

CAPTURE_TIMEOUT_S = 60.0
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0

# --- host side -----------------------------------------------------------------------------------------------


async def capture(servers: dict[str, StdioServerParameters]) -> dict[str, dict[str, Any]]:
    """Each server's tool definitions (wire JSON), name, title, version and instructions, listed once.

    Raises: TimeoutError.
    """
    captured: dict[str, dict[str, Any]] = {}
    with anyio.fail_after(CAPTURE_TIMEOUT_S):
        for name, parameters in servers.items():
            async with Client(parameters, cache=None) as client:
                tools: list[dict[str, Any]] = []
                cursor: str | None = None
                while True:
                    page = await client.list_tools(cursor=cursor)
                    tools += [tool.model_dump(by_alias=True, exclude_none=True, mode="json") for tool in page.tools]
                    cursor = page.next_cursor
                    if cursor is None:
                        break
                info = client.server_info
                captured[name] = {
                    "name": info.name if info else name,
                    "title": info.title if info else None,
                    "version": info.version if info else "",
                    "instructions": client.instructions,
                    "tools": tools,
                }
    return captured


def replica_names(captured: dict[str, dict[str, Any]], tools: int) -> dict[str, str]:
    """Replica name -> source server: as many copies of every captured server as list at least `tools` tools."""
    per_copy = sum(len(source["tools"]) for source in captured.values())
    copies = math.ceil(tools / per_copy)
    width = max(2, len(str(copies)))
    return {f"{source}_{copy:0{width}d}": source for copy in range(1, copies + 1) for source in captured}


@contextmanager
def running(definitions: Path, port: int) -> Iterator[str]:
    """This file serving `definitions` on `port` in a child process; yields the URL template (`{name}` for the
    replica) and stops the child, whatever failed.

    Raises: RuntimeError (the child exited or did not listen in time).
    """
    command = [sys.executable, __file__, "--definitions", str(definitions), "--port", str(port)]
    process = subprocess.Popen(command)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not listening(port):
            if process.poll() is not None:
                raise RuntimeError(f"the replica server exited with {process.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the replica server did not listen on port {port} within {START_TIMEOUT_S} s")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/{{name}}/mcp"
    finally:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


# --- child side ----------------------------------------------------------------------------------------------


def replica(name: str, source: dict[str, Any]) -> Server[Any]:
    """One server named `name` that lists `source`'s tools and refuses to run them."""
    tools = [types.Tool.model_validate(tool) for tool in source["tools"]]
    refusal = f"{name} is a replica of {source['name']!r}: its tools are listed, not run"

    async def list_tools(_ctx: Any, _params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=tools)

    async def call_tool(_ctx: Any, _params: types.CallToolRequestParams) -> types.CallToolResult:
        return types.CallToolResult(content=[types.TextContent(type="text", text=refusal)], is_error=True)

    return Server(
        name,
        version=source.get("version") or "",
        title=source.get("title"),
        instructions=source.get("instructions"),
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


def create_app(definitions: dict[str, Any]) -> Starlette:
    """Every replica's endpoint in one app; its lifespan runs every replica's session manager."""
    servers = {name: replica(name, definitions["sources"][source]) for name, source in definitions["replicas"].items()}
    routes: list[BaseRoute] = []
    for name, server in servers.items():
        routes += server.streamable_http_app(streamable_http_path=f"/{name}/mcp").routes

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            for server in servers.values():
                await stack.enter_async_context(server.session_manager.run())
            yield

    return Starlette(routes=routes, lifespan=lifespan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--definitions", type=Path, required=True, help="the JSON file of sources and replicas")
    parser.add_argument("--port", type=int, required=True, help="loopback port to serve on")
    args = parser.parse_args()
    app = create_app(json.loads(args.definitions.read_text()))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()

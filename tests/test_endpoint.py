"""mcpx as an MCP server: a real MCP client over streamable HTTP against a live controller and real sandboxes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.client import ConnectMode
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, TextContent

from controller.config import Settings
from controller.sessions import session_directory
from controller.shaping import Tokens
from tests.conftest import LiveServer, make_settings

pytestmark = pytest.mark.anyio

ALPHA, BETA = "alpha-key-mcp-0123456789", "beta-key-mcp-9876543210"
CALL_TIMEOUT_S = 120


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class LiveEndpoint(LiveServer):
    """A live controller (as `LiveServer`); create_app serves the MCP endpoint at /mcp."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.settings = settings


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, servers_file: Path) -> Iterator[LiveEndpoint]:
    """Two tenants: alpha may use everything, beta only the time server."""
    settings = make_settings(
        tmp_path_factory.mktemp("endpoint"),
        servers_file=servers_file,
        controller_id=f"mcp{id(servers_file) % 10000}",
        api_keys=f"alpha:{ALPHA},beta:{BETA}",
        tenants={"beta": {"servers": ["time"]}},
    )
    server = LiveEndpoint(settings)
    with server:
        yield server


@asynccontextmanager
async def connect(live: LiveEndpoint, key: str = ALPHA, mode: ConnectMode = "auto") -> AsyncIterator[Client]:
    """An MCP client session with the endpoint as `key`'s tenant, bounded as a whole; `auto` speaks the 2026
    protocol, `legacy` the 2025 handshake most clients still use."""
    with anyio.fail_after(CALL_TIMEOUT_S):
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
            transport = streamable_http_client(f"{live.url}/mcp", http_client=http)
            async with Client(transport, read_timeout_seconds=60, mode=mode) as client:
                yield client


def text_of(result: CallToolResult) -> str:
    return "".join(block.text for block in result.content if isinstance(block, TextContent))


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, text_of(result)
    content = result.structured_content
    assert isinstance(content, dict)
    assert json.loads(text_of(result)) == content  # clients without structured content read the same JSON
    return content


async def call_failing(client: Client, tool: str, **arguments: Any) -> str:
    result = await client.call_tool(tool, arguments)
    assert result.is_error, result
    return text_of(result)


async def run(client: Client, code: str, **arguments: Any) -> dict[str, Any]:
    """execute_code that must succeed; returns the whole ExecutionResult (with its session_id)."""
    reply = await call(client, "execute_code", code=code, **arguments)
    assert reply["error"] is None, reply["error"]
    return reply


@asynccontextmanager
async def session_of(client: Client) -> AsyncIterator[str]:
    session_id = str((await call(client, "create_session"))["session_id"])
    try:
        yield session_id
    finally:
        await client.call_tool("delete_session", {"session_id": session_id})


async def test_endpoint_offers_seven_short_tools(live: LiveEndpoint) -> None:
    async with connect(live) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert sorted(tools) == sorted(
        ["list_servers", "search_tools", "create_session", "execute_code", "read_file", "write_file", "delete_session"]
    )
    definitions = json.dumps([tool.model_dump(by_alias=True, exclude_none=True) for tool in tools.values()])
    assert len(definitions) < 6000  # all seven together stay below the definitions of one mid-sized server
    assert "servers.<server>" in (tools["execute_code"].description or "")
    read_only = {name for name, tool in tools.items() if tool.annotations and tool.annotations.read_only_hint}
    assert read_only == {"list_servers", "search_tools", "read_file"}


async def test_list_servers_gives_each_server_its_description_tool_count_and_module(live: LiveEndpoint) -> None:
    async with connect(live) as client:
        servers = {entry["name"]: entry for entry in (await call(client, "list_servers"))["servers"]}
    assert servers["time"]["tools"] == 2
    assert servers["time"]["module"] == "servers.time"
    assert {"docstore", "crm", "deploys", "everything"} <= set(servers)
    assert all(isinstance(entry["description"], str) for entry in servers.values())


async def test_search_tools_finds_a_tool_with_its_import_path(live: LiveEndpoint) -> None:
    async with connect(live) as client:
        hits = (await call(client, "search_tools", query="current time in a timezone", limit=3))["tools"]
        full = (await call(client, "search_tools", query="convert time", detail="full", limit=1))["tools"]
    assert hits[0]["import"] == "servers.time.get_current_time"
    assert len(hits) <= 3 and hits[0]["description"]
    assert full[0]["tool"] == "convert_time" and "source_timezone" in full[0]["signature"]


async def test_execute_code_calls_a_tool_through_its_stub_in_a_new_session(live: LiveEndpoint) -> None:
    async with connect(live) as client:
        reply = await run(client, "from servers.time import get_current_time\nget_current_time(timezone='UTC')")
        try:
            assert reply["result"]["timezone"] == "UTC"
            assert [(c["server"], c["tool"], c["ok"]) for c in reply["tool_calls"]] == [
                ("time", "get_current_time", True)
            ]
        finally:
            await call(client, "delete_session", session_id=reply["session_id"])


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_session_keeps_its_variables_across_execute_code_calls(live: LiveEndpoint, mode: ConnectMode) -> None:
    async with connect(live, mode=mode) as client, session_of(client) as session_id:
        first = await run(client, "x = 6 * 7\nprint('set')", session_id=session_id)
        second = await run(client, "x", session_id=session_id)
    assert first["session_id"] == second["session_id"] == session_id
    assert first["stdout"] == "set\n"
    assert second["result"] == 42


async def test_a_failure_of_the_code_is_data_not_a_tool_error(live: LiveEndpoint) -> None:
    async with connect(live) as client, session_of(client) as session_id:
        reply = await call(client, "execute_code", code="1 / 0", session_id=session_id)
    assert reply["error"]["kind"] == "exception"
    assert reply["error"]["type"] == "ZeroDivisionError"


async def test_code_reads_a_file_written_with_write_file(live: LiveEndpoint) -> None:
    async with connect(live) as client, session_of(client) as session_id:
        written = await call(client, "write_file", session_id=session_id, path="data/in.txt", content="héllo\n")
        reply = await run(client, "open('/workspace/data/in.txt', encoding='utf-8').read()", session_id=session_id)
    assert written == {"path": "/workspace/data/in.txt", "bytes": len("héllo\n".encode())}
    assert reply["result"] == "héllo\n"


async def test_read_file_returns_a_file_the_code_wrote(live: LiveEndpoint) -> None:
    async with connect(live) as client, session_of(client) as session_id:
        await run(client, "open('/workspace/out.json', 'w').write('{\"n\": 7}')", session_id=session_id)
        relative = await call(client, "read_file", session_id=session_id, path="out.json")
        absolute = await call(client, "read_file", session_id=session_id, path="/workspace/out.json")
    assert relative == absolute == {"path": "/workspace/out.json", "content": '{"n": 7}', "cut_tokens": 0}


async def test_read_file_cuts_a_long_file_and_says_where_all_of_it_is(live: LiveEndpoint) -> None:
    code = "open('/workspace/big.txt', 'w').write(''.join(f'line {i}\\n' for i in range(50_000)))"
    async with connect(live) as client, session_of(client) as session_id:
        await run(client, code, session_id=session_id)
        reply = await call(client, "read_file", session_id=session_id, path="big.txt")
    assert reply["cut_tokens"] > 0
    assert reply["content"].startswith("line 0\n") and reply["content"].endswith("line 49999\n")
    assert "full output: /workspace/big.txt" in reply["content"]
    assert Tokens().count(reply["content"]) <= live.settings.max_output_tokens + 8


async def test_an_unknown_session_is_a_tool_error_that_says_so(live: LiveEndpoint) -> None:
    async with connect(live) as client:
        for tool, arguments in [
            ("execute_code", {"code": "1"}),
            ("read_file", {"path": "a.txt"}),
            ("write_file", {"path": "a.txt", "content": ""}),
            ("delete_session", {}),
        ]:
            message = await call_failing(client, tool, session_id="0123456789abcdef", **arguments)
            assert "session '0123456789abcdef' not found" in message, (tool, message)
            assert "create_session" in message


REFUSALS = ("is not inside the workspace", "Not a directory", "Too many levels of symbolic links")


@pytest.mark.parametrize(
    "path", ["../escape.txt", "/etc/passwd", "/workspace/../escape.txt", "a/../../escape.txt", "link/x.txt", "link"]
)
async def test_paths_outside_the_workspace_are_refused(live: LiveEndpoint, path: str) -> None:
    async with connect(live) as client, session_of(client) as session_id:
        await run(client, "import os\nos.symlink('/etc', '/workspace/link')", session_id=session_id)
        written = await call_failing(client, "write_file", session_id=session_id, path=path, content="owned")
        read = await call_failing(client, "read_file", session_id=session_id, path=path)
        session_dir = session_directory(live.settings.state_dir / "sessions", session_id)
        assert not (session_dir / "escape.txt").exists()
    assert any(refusal in written for refusal in REFUSALS), written
    assert any(refusal in read for refusal in REFUSALS) and "root:" not in read, read
    assert not Path("/etc/x.txt").exists()


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_an_execution_the_client_cancels_is_interrupted(live: LiveEndpoint, mode: ConnectMode) -> None:
    async with connect(live, mode=mode) as client, session_of(client) as session_id:
        with anyio.move_on_after(3):
            sleep = {"code": "import time\ntime.sleep(60)", "session_id": session_id, "timeout_s": 90}
            await client.call_tool("execute_code", sleep)
        with anyio.fail_after(20):  # uninterrupted, the sleep would hold the session for a minute
            reply = await run(client, "'free'", session_id=session_id)
    assert reply["result"] == "free"


async def test_a_session_of_another_tenant_is_not_found(live: LiveEndpoint) -> None:
    async with connect(live, ALPHA) as alpha, connect(live, BETA) as beta, session_of(alpha) as session_id:
        for tool, arguments in [
            ("execute_code", {"code": "1"}),
            ("read_file", {"path": "a"}),
            ("write_file", {"path": "a", "content": "x"}),
            ("delete_session", {}),
        ]:
            message = await call_failing(beta, tool, session_id=session_id, **arguments)
            assert f"session {session_id!r} not found" in message
        assert (await run(alpha, "'still here'", session_id=session_id))["result"] == "still here"


async def test_a_tenant_sees_and_uses_only_its_allowed_servers(live: LiveEndpoint) -> None:
    async with connect(live, BETA) as beta:
        servers = [entry["name"] for entry in (await call(beta, "list_servers"))["servers"]]
        hits = (await call(beta, "search_tools", query="get document time", detail="name"))["tools"]
        refused = await call_failing(beta, "create_session", servers=["crm"])
    assert servers == ["time"]
    assert hits and {hit["import"].split(".")[1] for hit in hits} == {"time"}
    assert "unknown servers: crm" in refused


def test_requests_without_a_valid_key_are_refused(live: LiveEndpoint) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    for headers in ({}, {"authorization": "Bearer not-a-key-0000000000"}):
        response = httpx.post(f"{live.url}/mcp", json=body, headers=headers, timeout=30)
        assert response.status_code == 401, response.text
        assert response.json()["error"] == "unauthorized"

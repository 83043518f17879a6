"""The async client against the real controller over real HTTP (and its SSE parsing, which is pure)."""

from __future__ import annotations

import inspect
import json
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import aclosing
from pathlib import Path

import anyio
import pytest
import uvicorn

from controller import client as client_module
from controller.client import (
    Event,
    MCPXClient,
    MCPXClientError,
    OutputEvent,
    ResultEvent,
    ServerSentEvent,
    SSEDecoder,
    ToolCallEvent,
)
from controller.config import Settings
from tests.conftest import LiveServer, SessionFactory, free_port, make_settings

pytestmark = pytest.mark.anyio
WAIT_S = 120  # the longest any one test here may take over the wire
API_KEY = "0123456789abcdef-test-key"
CALL_TIME = "from servers.time import get_current_time\nget_current_time(timezone='UTC')"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def mcpx(server: LiveServer) -> AsyncIterator[MCPXClient]:
    async with MCPXClient(server.url, timeout=60) as client:
        yield client


def decode(lines: list[str]) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    return [event for line in lines if (event := decoder.feed(line)) is not None]


# SSE parsing (pure)


def test_sse_events_are_split_on_blank_lines_with_their_names_and_data() -> None:
    lines = ["event: output", 'data: {"a": 1}', "", "event: result", "data: {}", ""]
    assert decode(lines) == [ServerSentEvent("output", '{"a": 1}'), ServerSentEvent("result", "{}")]


def test_sse_multi_line_data_is_joined_and_comments_and_unknown_fields_are_skipped() -> None:
    lines = [": keep-alive", "id: 7", "retry: 10", "data:first", "data:  second", "", ""]
    assert decode(lines) == [ServerSentEvent("message", "first\n second", "7")]


def test_sse_event_without_a_closing_blank_line_or_data_is_not_dispatched() -> None:
    assert decode(["event: ping", "", "event: result", 'data: {"x": 1}']) == []


# Health and readiness


async def test_health_and_readiness_report_a_serving_controller_and_its_mcp_servers(mcpx: MCPXClient) -> None:
    with anyio.fail_after(WAIT_S):
        assert (await mcpx.health()).status == "ok"
        readiness = await mcpx.ready()
    assert readiness.status == "ready"
    assert readiness.runtime in ("runsc", "runc")
    states = {server.name: server for server in readiness.servers}
    assert {"time", "docstore", "crm"} <= set(states)
    assert states["time"].state == "ready" and states["time"].tools == 2


# Sessions


async def test_a_session_is_created_listed_read_and_deleted(mcpx: MCPXClient) -> None:
    with anyio.fail_after(WAIT_S):
        created = await mcpx.create_session(
            runtime="runc",
            timeout_s=5,
            memory_mb=300,
            cpus=0.5,
            ttl_s=60,
            servers=["time"],
            policy={"read_only": True, "max_tool_calls": 5},
        )
        try:
            assert created.runtime == "runc"
            assert (created.limits.timeout_s, created.limits.memory_mb, created.limits.cpus) == (5, 300, 0.5)
            assert created.limits.ttl_s == 60
            assert created.policy.read_only and created.policy.max_tool_calls == 5
            assert created.servers == ["time"]
            assert created.state == "ready"
            fetched = await mcpx.get_session(created.id)
            assert fetched.id == created.id and fetched.created_at == created.created_at
            assert created.id in [session.id for session in await mcpx.list_sessions()]
        finally:
            await mcpx.delete_session(created.id)
        with pytest.raises(MCPXClientError) as gone:
            await mcpx.get_session(created.id)
    assert gone.value.status == 404


async def test_an_unknown_session_raises_the_servers_error_code_and_reason(mcpx: MCPXClient) -> None:
    with anyio.fail_after(WAIT_S), pytest.raises(MCPXClientError) as raised:
        await mcpx.get_session("no-such-session")
    assert raised.value.status == 404
    assert raised.value.error == "session_not_found"
    assert raised.value.detail
    with anyio.fail_after(WAIT_S), pytest.raises(MCPXClientError) as deleted:
        await mcpx.delete_session("no-such-session")
    assert (deleted.value.status, deleted.value.error) == (404, "session_not_found")


async def test_a_limit_out_of_range_raises_a_422_with_the_reason(mcpx: MCPXClient) -> None:
    with anyio.fail_after(WAIT_S), pytest.raises(MCPXClientError) as raised:
        await mcpx.create_session(memory_mb=10**9)
    assert raised.value.status == 422
    assert "memory_mb" in raised.value.detail


# Executions


async def test_execute_returns_output_and_value_and_a_failure_of_the_code_as_data(
    mcpx: MCPXClient, new_session: SessionFactory
) -> None:
    session = new_session(runtime="runc")
    with anyio.fail_after(WAIT_S):
        done = await mcpx.execute(session, "x = 6 * 7\nprint('hello')\nx")
        failed = await mcpx.execute(session, "x / 0")
    assert (done.stdout, done.result, done.error) == ("hello\n", 42, None)
    assert done.tokens.code > 0
    assert failed.error is not None
    assert (failed.error.kind, failed.error.type) == ("exception", "ZeroDivisionError")
    assert "ZeroDivisionError" in failed.error.traceback


async def test_execute_passes_its_time_limit_and_output_budget(mcpx: MCPXClient, new_session: SessionFactory) -> None:
    session = new_session(runtime="runc")
    with anyio.fail_after(WAIT_S):
        slow = await mcpx.execute(session, "import time\ntime.sleep(30)", timeout_s=1)
        loud = await mcpx.execute(session, "for i in range(20000): print(i)", max_output_tokens=64, strategy="truncate")
    assert slow.error is not None and slow.error.kind == "timeout"
    assert len(loud.stdout) < 2000
    assert "stdout" in loud.full_output


async def test_execute_reports_the_tool_calls_of_the_code(mcpx: MCPXClient, new_session: SessionFactory) -> None:
    session = new_session(runtime="runc")
    with anyio.fail_after(WAIT_S):
        result = await mcpx.execute(session, CALL_TIME)
    assert result.error is None
    assert [(call.server, call.tool, call.ok) for call in result.tool_calls] == [("time", "get_current_time", True)]


async def collect(events: AsyncGenerator[Event, None]) -> list[tuple[float, Event]]:
    arrived = []
    async with aclosing(events) as stream:
        async for event in stream:
            arrived.append((time.monotonic(), event))
    return arrived


async def test_streaming_delivers_output_as_it_is_printed_before_the_result(
    mcpx: MCPXClient, new_session: SessionFactory
) -> None:
    session = new_session(runtime="runc")
    code = "import time\nprint('first', flush=True)\ntime.sleep(1)\nprint('second')\n'done'"
    with anyio.fail_after(WAIT_S):
        arrived = await collect(mcpx.stream(session, code))
    outputs = [(at, event) for at, event in arrived if isinstance(event, OutputEvent)]
    results = [(at, event) for at, event in arrived if isinstance(event, ResultEvent)]
    assert len(results) == 1 and arrived[-1] == results[0], "exactly one result, and it comes last"
    assert outputs, "the printed text arrives as output events"
    first_at, first = outputs[0]
    assert first.stream == "stdout" and "first" in first.text
    assert results[0][0] - first_at > 0.5, "the first line arrived while the code was still sleeping"
    assert "".join(event.text for _, event in outputs if event.stream == "stdout") == "first\nsecond\n"
    result = results[0][1].result
    assert (result.stdout, result.result, result.error) == ("first\nsecond\n", "done", None)


async def test_streaming_reports_tool_calls_and_stderr_as_events(mcpx: MCPXClient, new_session: SessionFactory) -> None:
    session = new_session(runtime="runc")
    code = (
        "import sys\nfrom servers.time import get_current_time\n"
        "get_current_time(timezone='UTC')\nprint('oops', file=sys.stderr)"
    )
    with anyio.fail_after(WAIT_S):
        events = [event for _, event in await collect(mcpx.stream(session, code))]
    calls = [event.call for event in events if isinstance(event, ToolCallEvent)]
    assert [(call.server, call.tool, call.ok) for call in calls] == [("time", "get_current_time", True)]
    assert any(isinstance(event, OutputEvent) and event.stream == "stderr" for event in events)
    assert isinstance(events[-1], ResultEvent) and events[-1].result.stderr == "oops\n"


async def test_streaming_in_an_unknown_session_raises_a_404(mcpx: MCPXClient) -> None:
    with anyio.fail_after(WAIT_S), pytest.raises(MCPXClientError) as raised:
        await collect(mcpx.stream("no-such-session", "print(1)"))
    assert (raised.value.status, raised.value.error) == (404, "session_not_found")


# Workspace files


async def test_workspace_files_are_written_listed_read_seen_by_code_and_deleted(
    mcpx: MCPXClient, new_session: SessionFactory
) -> None:
    session = new_session(runtime="runc")
    data = bytes(range(256)) * 4
    with anyio.fail_after(WAIT_S):
        written = await mcpx.write_file(session, "in dir/data.bin", data)
        assert (written.path, written.size) == ("in dir/data.bin", len(data))
        listed = {file.path: file.size for file in await mcpx.list_files(session)}
        assert listed.get("in dir/data.bin") == len(data)
        assert await mcpx.read_file(session, "in dir/data.bin") == data
        seen = await mcpx.execute(session, "len(open('/workspace/in dir/data.bin', 'rb').read())")
        assert seen.result == len(data)
        made = await mcpx.execute(session, "open('/workspace/out.txt', 'w').write('from code')")
        assert made.error is None
        assert await mcpx.read_file(session, "out.txt") == b"from code"
        await mcpx.delete_file(session, "in dir/data.bin")
        with pytest.raises(MCPXClientError) as gone:
            await mcpx.read_file(session, "in dir/data.bin")
    assert gone.value.status == 404


# Tools


async def test_the_tool_catalog_lists_servers_with_their_tools(mcpx: MCPXClient) -> None:
    with anyio.fail_after(WAIT_S):
        listing = await mcpx.tools()
    servers = {server.name: server for server in listing.servers}
    assert {tool.name for tool in servers["time"].tools} == {"get_current_time", "convert_time"}
    assert servers["time"].state == "ready"
    assert len(listing.digest) >= 12
    assert listing.tokens["definitions"] > listing.tokens["listing"] > 0


async def test_tool_search_finds_tools_at_each_detail_level(mcpx: MCPXClient) -> None:
    with anyio.fail_after(WAIT_S):
        names = await mcpx.search_tools("current time timezone", detail="name", limit=3)
        described = await mcpx.search_tools("current time timezone", limit=1)
        full = await mcpx.search_tools("current time timezone", detail="full", limit=1)
    assert 1 <= len(names) <= 3
    assert names[0].import_path == "servers.time.get_current_time"
    assert names[0].description is None
    assert len(described) == 1 and described[0].description and "\n" not in described[0].description
    assert len(full) == 1
    assert (full[0].server, full[0].tool) == ("time", "get_current_time")
    assert full[0].signature and full[0].input_schema and full[0].description


async def test_one_tool_shows_its_stub_and_schemas(mcpx: MCPXClient) -> None:
    with anyio.fail_after(WAIT_S):
        detail = await mcpx.tool("time", "get_current_time")
    assert detail.signature.startswith("get_current_time(")
    assert "def get_current_time(" in detail.source
    assert detail.path.endswith(".py")
    assert "timezone" in detail.input_schema["properties"]


async def test_an_unknown_tool_raises_a_404_tool_not_found(mcpx: MCPXClient) -> None:
    with anyio.fail_after(WAIT_S), pytest.raises(MCPXClientError) as raised:
        await mcpx.tool("time", "no_such_tool")
    assert (raised.value.status, raised.value.error) == (404, "tool_not_found")


# Transport and auth


async def test_an_unreachable_server_raises_a_client_error_with_status_0() -> None:
    async with MCPXClient(f"http://127.0.0.1:{free_port()}", timeout=10) as client:
        with anyio.fail_after(30), pytest.raises(MCPXClientError) as raised:
            await client.health()
    assert (raised.value.status, raised.value.error) == (0, "unreachable")


def test_the_client_drops_an_idle_connection_well_before_a_server_closes_it() -> None:
    # Reusing a connection at the moment its server closes it fails the request (ReadError): the client's
    # idle expiry stays well under uvicorn's default keep-alive (5 s) and under mcpx's own.
    uvicorn_default = inspect.signature(uvicorn.Config).parameters["timeout_keep_alive"].default
    expiry = client_module.KEEPALIVE_S
    assert expiry <= uvicorn_default / 2 and expiry < Settings().http_keepalive_s
    pool = client_module.MCPXClient("http://127.0.0.1:1")._http._transport._pool  # type: ignore[attr-defined]
    assert pool._keepalive_expiry == expiry


def test_a_base_url_that_is_not_a_url_is_refused() -> None:
    with pytest.raises(ValueError, match="not a URL"):
        MCPXClient("http://[::1")


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A second controller that requires API keys (no MCP servers, its own controller id and state)."""
    config = tmp_path_factory.mktemp("keyed") / "servers.json"
    config.write_text(json.dumps({"mcpServers": {}}))
    settings = make_settings(
        tmp_path_factory.mktemp("keyed-state"),
        servers_file=Path(config),
        controller_id=f"keyed{os.getpid()}",
        api_keys=f"team-a:{API_KEY}",
    )
    with LiveServer(settings) as live:
        yield live


@pytest.mark.docker
async def test_the_api_key_is_sent_as_a_bearer_token_and_a_missing_or_wrong_one_is_refused(
    keyed_server: LiveServer,
) -> None:
    with anyio.fail_after(WAIT_S):
        async with MCPXClient(keyed_server.url, api_key=API_KEY) as client:
            assert await client.list_sessions() == []
            assert (await client.tools()).servers == []
        for key in (None, "wrong-key-0123456789"):
            async with MCPXClient(keyed_server.url, api_key=key) as client:
                with pytest.raises(MCPXClientError) as raised:
                    await client.list_sessions()
            assert (raised.value.status, raised.value.error) == (401, "unauthorized")

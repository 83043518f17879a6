"""Several controllers on one engine, as a StatefulSet's replicas: any replica serves any session, by forwarding
requests to the session's owner. Real controllers over real HTTP, real sandboxes, a real MCP server (time)."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import TextContent

from controller.config import Settings
from controller.replicas import HOP_HEADER, Replicas, verbatim
from controller.sessions import owner_of
from tests.conftest import TIME_SERVER, LiveServer, free_port, make_settings

ALPHA, BETA = "alpha-key-replicas-0123456789", "beta-key-replicas-9876543210"
TOOL_CALL = "from servers.time import get_current_time\nget_current_time(timezone='UTC')['timezone']"
KEEPALIVE_S = 0.2


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def headers(key: str = ALPHA) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


# --- pure: ids, peers, paths -----------------------------------------------------------------------------------


def test_session_ids_name_their_owner_strictly() -> None:
    assert owner_of("mcpx-0.0123456789abcdef") == "mcpx-0"
    forged = ["mcpx-0.0123456789ABCDEF", "mcpx-0.0123", "a.b.0123456789abcdef", "0123456789abcdef", ""]
    forged += ["Evil.0123456789abcdef", "evil.com:80/.0123456789abcdef", "x" * 32 + ".0123456789abcdef"]
    for forged_id in forged:
        assert owner_of(forged_id) is None, forged_id


def test_only_configured_peers_and_siblings_under_the_template_are_reached(tmp_path: Path) -> None:
    settings = Settings(
        state_dir=tmp_path,
        controller_id="mcpx-0",
        peers={"edge": "http://10.0.0.9:8080"},
        peer_url="http://{replica}.mcpx-replicas:8080",
    )
    replicas = Replicas(settings)
    assert replicas.url_of("mcpx-0") is None
    assert replicas.url_of("edge") == "http://10.0.0.9:8080"
    assert replicas.url_of("mcpx-12") == "http://mcpx-12.mcpx-replicas:8080"
    for stranger in ("other-1", "mcpx", "mcpx-01", "mcpx-x", "evil"):
        assert replicas.url_of(stranger) is None, stranger
    assert replicas.owner("evil.0123456789abcdef") is None
    assert replicas.owner("mcpx-3.0123456789abcdef") == ("mcpx-3", "http://mcpx-3.mcpx-replicas:8080")


@pytest.mark.parametrize(
    "peers", [{"Bad": "http://x:1"}, {"b": "ftp://x"}, {"b": "http://x:1/path"}, {"b": "http://x/{replica}"}]
)
def test_malformed_peers_are_refused(tmp_path: Path, peers: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="peers"):
        Settings(state_dir=tmp_path, peers=peers)


@pytest.mark.parametrize("template", ["http://mcpx-replicas:8080", "http://{replica}.x:80/v1", "{replica}:80"])
def test_a_template_without_its_placeholder_in_the_host_is_refused(tmp_path: Path, template: str) -> None:
    with pytest.raises(ValueError, match="peer_url"):
        Settings(state_dir=tmp_path, peer_url=template)


def test_forwarded_paths_keep_their_dot_segments() -> None:
    assert verbatim(b"/v1/sessions/a/files/x/../y/./z") == b"/v1/sessions/a/files/x/%2E%2E/y/%2E/z"
    assert verbatim(b"/v1/sessions/a/files/..x") == b"/v1/sessions/a/files/..x"


# --- live: two controllers, one engine -------------------------------------------------------------------------


@dataclass
class Pair:
    a: LiveServer
    b: LiveServer
    c_settings: Settings  # a third replica the others know, started by the test that stops it


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("replicas") / "servers.json"
    path.write_text(json.dumps({"mcpServers": {"time": {"command": str(TIME_SERVER)}}}))
    return path


def replica_settings(directory: Path, servers: Path, name: str, ports: dict[str, int]) -> Settings:
    return make_settings(
        directory / name,
        servers_file=servers,
        controller_id=name,
        port=ports[name],
        api_keys=f"alpha:{ALPHA},beta:{BETA}",
        peers={other: f"http://127.0.0.1:{port}" for other, port in ports.items() if other != name},
        forward_connect_timeout_s=1.0,
        sse_keepalive_s=KEEPALIVE_S,
    )


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, servers: Path) -> Iterator[Pair]:
    directory = tmp_path_factory.mktemp("state")
    ports = {f"rep{os.getpid()}-{ordinal}": free_port() for ordinal in range(3)}
    a, b, c = (replica_settings(directory, servers, name, ports) for name in ports)
    with LiveServer(a) as live_a, LiveServer(b) as live_b:
        yield Pair(live_a, live_b, c)


@pytest.fixture
def clients(pair: Pair) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    with (
        httpx.Client(base_url=pair.a.url, headers=headers(), timeout=120) as a,
        httpx.Client(base_url=pair.b.url, headers=headers(), timeout=120) as b,
    ):
        yield a, b


def create(api: httpx.Client) -> str:
    response = api.post("/v1/sessions", json={"runtime": "runsc"})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def execute(api: httpx.Client, session_id: str, code: str) -> dict[str, Any]:
    response = api.post(f"/v1/sessions/{session_id}/executions", json={"code": code})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    assert result["error"] is None, result["error"]
    return result


@pytest.mark.docker
def test_sessions_made_through_either_replica_are_usable_through_both(
    pair: Pair, clients: tuple[httpx.Client, httpx.Client]
) -> None:
    a, b = clients
    for creator, other in ((a, b), (b, a)):
        session_id = create(creator)
        owner = owner_of(session_id)
        assert owner is not None
        assert other.get(f"/v1/sessions/{session_id}").json()["id"] == session_id
        # Interpreter state lives in the owner's sandbox, whichever replica the requests came through.
        execute(other, session_id, "zone = 'set through the other replica'")
        assert execute(creator, session_id, "zone")["result"] == "set through the other replica"
        called = execute(other, session_id, TOOL_CALL)
        assert called["result"] == "UTC"
        assert [(call["server"], call["tool"], call["ok"]) for call in called["tool_calls"]] == [
            ("time", "get_current_time", True)
        ]
        upload = other.put(f"/v1/sessions/{session_id}/files/in/data.bin", content=b"\x00\x01 payload " * 1000)
        assert upload.status_code == 201, upload.text
        assert execute(creator, session_id, "len(open('/workspace/in/data.bin','rb').read())")["result"] == 11000
        execute(creator, session_id, "open('/workspace/out.txt', 'w').write('from ' + zone)")
        assert other.get(f"/v1/sessions/{session_id}/files/out.txt").content == b"from set through the other replica"
        assert {f["path"] for f in other.get(f"/v1/sessions/{session_id}/files").json()["files"]} >= {"out.txt"}
        assert other.delete(f"/v1/sessions/{session_id}/files/out.txt").status_code == 204
        # A name that is neither UTF-8 nor one line reaches the owner byte for byte.
        odd = quote(b"odd\xff\n.bin")
        assert other.put(f"/v1/sessions/{session_id}/files/{odd}", content=b"odd").json()["url_path"] == odd
        assert odd in {f["url_path"] for f in creator.get(f"/v1/sessions/{session_id}/files").json()["files"]}
        assert other.get(f"/v1/sessions/{session_id}/files/{odd}").content == b"odd"
        assert other.delete(f"/v1/sessions/{session_id}/files/{odd}").status_code == 204
        # Another tenant's key is passed on as is: the owner refuses it exactly as for its own clients.
        stranger = other.get(f"/v1/sessions/{session_id}", headers=headers(BETA))
        assert (stranger.status_code, stranger.json()["error"]) == (404, "session_not_found")
        assert other.get(f"/v1/sessions/{session_id}", headers={"authorization": "Bearer nope"}).status_code == 401
        assert other.delete(f"/v1/sessions/{session_id}").status_code == 204
        gone = creator.get(f"/v1/sessions/{session_id}")
        assert (gone.status_code, gone.json()["error"]) == (404, "session_not_found")


@pytest.mark.docker
def test_a_stream_through_a_non_owner_delivers_every_event(clients: tuple[httpx.Client, httpx.Client]) -> None:
    a, b = clients
    session_id = create(a)
    # The code waits, after its first line, until the test has received that line: a buffered stream never ends.
    code = (
        "import os, time\nprint('tick', 0, flush=True)\nwhile not os.path.exists('/workspace/seen'):\n"
        "    time.sleep(0.05)\nfor i in (1, 2):\n    print('tick', i, flush=True)\n" + TOOL_CALL
    )
    events: list[tuple[str, Any]] = []
    released = False
    with b.stream(
        "POST", f"/v1/sessions/{session_id}/executions", json={"code": code}, headers={"accept": "text/event-stream"}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        kind = ""
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((kind, json.loads(line.removeprefix("data: "))))
                if kind == "output" and not released:
                    assert a.put(f"/v1/sessions/{session_id}/files/seen", content=b"").status_code == 201
                    released = True
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "result" and "tool_call" in kinds, kinds
    assert "".join(data["text"] for kind, data in events if kind == "output").count("tick") == 3
    assert events[-1][1]["result"] == "UTC"
    assert a.delete(f"/v1/sessions/{session_id}").status_code == 204


@pytest.mark.docker
def test_a_silent_stream_through_a_non_owner_keeps_its_keepalive_comments(
    clients: tuple[httpx.Client, httpx.Client],
) -> None:
    a, b = clients
    session_id = create(a)
    code = f"import time\ntime.sleep({KEEPALIVE_S * 8})\n'done'"
    with b.stream(
        "POST", f"/v1/sessions/{session_id}/executions", json={"code": code}, headers={"accept": "text/event-stream"}
    ) as response:
        lines = [line for line in response.iter_lines() if line]
    ending = lines.index("event: result")
    assert ending >= 2 and set(lines[:ending]) == {": keepalive"}, lines
    assert json.loads(lines[ending + 1].removeprefix("data: "))["result"] == "done"
    assert a.delete(f"/v1/sessions/{session_id}").status_code == 204


@pytest.mark.docker
def test_forged_ids_are_not_found_and_never_forwarded(clients: tuple[httpx.Client, httpx.Client]) -> None:
    a, _ = clients
    for forged in ("evil.0123456789abcdef", "rep0-9.0123456789abcdef", "127.0.0.1:1.0123456789abcdef", "x" * 80):
        for method, path in (("GET", ""), ("POST", "/executions"), ("PUT", "/files/x"), ("DELETE", "")):
            body = {"code": "1"} if path == "/executions" else None
            response = a.request(method, f"/v1/sessions/{forged}{path}", json=body)
            assert (response.status_code, response.json()["error"]) == (404, "session_not_found"), response.text


@pytest.mark.docker
def test_a_forwarded_request_is_never_forwarded_again(pair: Pair, clients: tuple[httpx.Client, httpx.Client]) -> None:
    a, b = clients
    session_id = create(b)
    try:
        looped = a.get(f"/v1/sessions/{session_id}", headers={HOP_HEADER: "somebody"})
        assert (looped.status_code, looped.json()["error"]) == (502, "forwarding_loop")
        assert "misconfigured" in looped.json()["detail"]
    finally:
        assert b.delete(f"/v1/sessions/{session_id}").status_code == 204


@pytest.mark.docker
def test_sessions_of_a_replica_that_went_away_fail_at_once(
    pair: Pair, clients: tuple[httpx.Client, httpx.Client]
) -> None:
    a, _ = clients
    with LiveServer(pair.c_settings) as c, httpx.Client(base_url=c.url, headers=headers(), timeout=120) as api_c:
        session_id = create(api_c)
        assert execute(a, session_id, "6 * 7")["result"] == 42
    for method, path in (("GET", ""), ("POST", "/executions"), ("GET", "/files")):
        body = {"code": "1"} if path == "/executions" else None
        response = a.request(method, f"/v1/sessions/{session_id}{path}", json=body)
        assert (response.status_code, response.json()["error"]) == (503, "replica_unavailable"), response.text
        assert pair.c_settings.controller_id in response.json()["detail"]
        assert "(ConnectError)" in response.json()["detail"]  # refused at once, not a wait for the connect timeout


# --- the MCP endpoint ---------------------------------------------------------------------------------------------


@asynccontextmanager
async def mcp_client(live: LiveServer) -> AsyncIterator[Client]:
    async with (
        httpx2.AsyncClient(headers=headers(), timeout=60) as http,
        Client(streamable_http_client(f"{live.url}/mcp", http_client=http), read_timeout_seconds=60) as client,
    ):
        yield client


async def tool(client: Client, name: str, **arguments: Any) -> tuple[bool, str]:
    result = await client.call_tool(name, arguments)
    return result.is_error, "".join(block.text for block in result.content if isinstance(block, TextContent))


@pytest.mark.docker
@pytest.mark.anyio
async def test_mcp_tools_work_on_sessions_of_another_replica(
    pair: Pair, clients: tuple[httpx.Client, httpx.Client]
) -> None:
    a, _ = clients
    session_id = create(a)
    with anyio.fail_after(120):
        async with mcp_client(pair.b) as b:
            failed, text = await tool(b, "write_file", session_id=session_id, path="/workspace/n.txt", content="héllo")
            assert not failed, text
            failed, text = await tool(b, "execute_code", session_id=session_id, code="open('n.txt').read() + '!'")
            assert not failed, text
            assert json.loads(text)["result"] == "héllo!" and json.loads(text)["session_id"] == session_id
            failed, text = await tool(b, "execute_code", session_id=session_id, code=TOOL_CALL)
            assert json.loads(text)["tool_calls"][0]["tool"] == "get_current_time"
            # The language travels with the forwarded call: valid TypeScript, a syntax error in Python.
            typed = "const answer: number = 6 * 7;\nanswer"
            for language, expected in (("typescript", 42), ("python", None)):
                failed, text = await tool(b, "execute_code", session_id=session_id, code=typed, language=language)
                assert not failed and json.loads(text)["result"] == expected, (language, text)
            failed, text = await tool(b, "read_file", session_id=session_id, path="n.txt")
            assert not failed and json.loads(text)["content"] == "héllo", text
            failed, text = await tool(b, "read_file", session_id=session_id, path="../etc/passwd")
            assert failed, text
            failed, text = await tool(b, "delete_session", session_id=session_id)
            assert not failed, text
            failed, text = await tool(b, "execute_code", session_id=session_id, code="1")
            assert failed and "not found" in text, text
    assert a.get(f"/v1/sessions/{session_id}").status_code == 404

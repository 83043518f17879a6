"""Hostile requests to the HTTP API: oversized, malformed and out-of-range bodies, traversal in path parameters,
floods of session creation, and a session deleted under a running execution. None may get a 5xx or run code."""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import combinations
from typing import Any

import anyio.to_thread
import docker
import httpx
import pytest

from controller.config import Settings
from controller.runtime import DockerBackend, SandboxSpec
from controller.sessions import session_directory
from tests.conftest import ROOT, TIME_SERVER, LiveServer, SessionFactory, execute, make_settings, wait_until

JSON = {"content-type": "application/json"}


def executions(api: httpx.Client, session: str) -> int:
    return int(api.get(f"/v1/sessions/{session}").json()["executions"])


def sandboxes(docker_client: docker.DockerClient, label: str) -> list[str]:
    return [str(c.id) for c in docker_client.containers.list(all=True, filters={"label": label})]


def test_a_10_mb_program_gets_413_with_a_reason_and_never_runs(
    api: httpx.Client, new_session: SessionFactory, settings: Settings
):
    session = new_session(runtime="runc")
    # Over the code limit, within the body limit: the route refuses it; over both: refused before it is parsed.
    code_limit = f"code is larger than {settings.max_code_bytes} bytes"
    body_limit = f"the request body is larger than {settings.max_json_bytes} bytes"
    for size, refusal in (
        (settings.max_code_bytes + 1, {"error": "bad_request", "detail": code_limit}),
        (10**7, {"error": "request_too_large", "detail": body_limit}),
    ):
        program = "open('/workspace/ran', 'w')\n"
        program += "#" * (size - len(program))
        response = api.post(f"/v1/sessions/{session}/executions", json={"code": program})
        assert (response.status_code, response.json()) == (413, refusal)
    assert executions(api, session) == 0


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"\xff\xfe{}", b'{"code": "1"', b"[", b'"code"', b"\x00" * 64],
    ids=["malformed", "invalid-utf8", "truncated", "open-array", "a-string", "nul-bytes"],
)
def test_a_malformed_json_body_gets_422_on_every_route_and_runs_nothing(
    api: httpx.Client, new_session: SessionFactory, docker_client: docker.DockerClient, settings: Settings, body: bytes
):
    session = new_session(runtime="runc")
    label = f"mcpx.controller={settings.controller_id}"
    before = len(sandboxes(docker_client, label))
    for route in ("/v1/sessions", f"/v1/sessions/{session}/executions"):
        response = api.post(route, content=body, headers=JSON)
        assert response.status_code == 422, (route, response.text)
        assert response.json()["detail"]
    assert len(sandboxes(docker_client, label)) == before
    assert executions(api, session) == 0


@pytest.mark.parametrize(
    "headers",
    [{"content-type": "text/plain"}, {"content-type": "application/x-www-form-urlencoded"}, {"content-type": ""}],
    ids=["text-plain", "form", "none"],
)
def test_a_json_program_under_another_content_type_gets_422_and_never_runs(
    api: httpx.Client, new_session: SessionFactory, headers: dict[str, str]
):
    session = new_session(runtime="runc")
    body = json.dumps({"code": "open('/workspace/ran', 'w').write('x')"}).encode()
    response = api.post(f"/v1/sessions/{session}/executions", content=body, headers=headers)
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["type"] == "model_attributes_type"
    assert executions(api, session) == 0


def test_unknown_fields_are_refused_everywhere_and_nothing_starts_or_runs(
    api: httpx.Client, new_session: SessionFactory, docker_client: docker.DockerClient, settings: Settings
):
    session = new_session(runtime="runc")
    label = f"mcpx.controller={settings.controller_id}"
    before = len(sandboxes(docker_client, label))
    for route, body in [
        ("/v1/sessions", {"runtime": "runc", "privileged": True}),
        ("/v1/sessions", {"runtime": "runc", "network_mode": "host"}),
        ("/v1/sessions", {"runtime": "runc", "policy": {"allow_network": True}}),
        (f"/v1/sessions/{session}/executions", {"code": "1", "user": "root"}),
        (f"/v1/sessions/{session}/executions", {"code": "1", "session": "other"}),
    ]:
        response = api.post(route, json=body)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["errors"][0]["type"] == "extra_forbidden"
    assert len(sandboxes(docker_client, label)) == before
    assert executions(api, session) == 0


SESSION = "/v1/sessions"
EXECUTION = "/v1/sessions/{session}/executions"


@pytest.mark.parametrize(
    ("route", "body"),
    [
        (SESSION, b'{"timeout_s": -1}'),
        (SESSION, b'{"timeout_s": 0}'),
        (SESSION, b'{"timeout_s": 1e309}'),
        (SESSION, b'{"memory_mb": 1000000000000000000000000000000}'),
        (SESSION, b'{"memory_mb": 63}'),
        (SESSION, b'{"cpus": Infinity}'),
        (SESSION, b'{"cpus": -0.5}'),
        (SESSION, b'{"ttl_s": -1}'),
        (SESSION, b'{"ttl_s": 1e12}'),
        (SESSION, b'{"policy": {"max_concurrent_tool_calls": 0}}'),
        (SESSION, b'{"policy": {"max_tool_calls": -1}}'),
        (SESSION, b'{"runtime": "runc; rm -rf /"}'),
        (SESSION, b'{"servers": ["../../etc"]}'),
        (EXECUTION, b'{"code": "1", "timeout_s": -1}'),
        (EXECUTION, b'{"code": "1", "timeout_s": 1e309}'),
        (EXECUTION, b'{"code": "1", "max_output_tokens": 0}'),
        (EXECUTION, b'{"code": "1", "max_output_tokens": 1000000000000}'),
        (EXECUTION, b'{"code": "1", "strategy": "exec"}'),
    ],
)
def test_an_out_of_range_limit_gets_422_with_a_reason(
    api: httpx.Client, new_session: SessionFactory, route: str, body: bytes
):
    session = new_session(runtime="runc") if route == EXECUTION else ""
    response = api.post(route.format(session=session), content=body, headers=JSON)
    assert response.status_code == 422, response.text
    assert response.json()["detail"]
    if session:
        assert executions(api, session) == 0


@pytest.mark.parametrize(
    ("route", "body"), [(SESSION, b'{"cpus": NaN}'), (EXECUTION, b'{"code": "1", "timeout_s": NaN}')]
)
def test_a_nan_limit_gets_422_not_500(server: LiveServer, new_session: SessionFactory, route: str, body: bytes):
    session = new_session(runtime="runc") if route == EXECUTION else ""
    # A client of its own: the server drops the connection after its 500, and the witness check needs `api`'s.
    with httpx.Client(base_url=server.url, timeout=60) as client:
        response = client.post(route.format(session=session), content=body, headers=JSON)
    assert response.status_code == 422, response.text


@pytest.mark.parametrize(
    "query",
    [{"limit": 0}, {"limit": -1}, {"limit": 10**20}, {"detail": "../../etc/passwd"}, {"limit": "NaN"}],
    ids=["zero", "negative", "huge", "traversal", "nan"],
)
def test_tool_search_refuses_out_of_range_parameters(api: httpx.Client, query: dict[str, Any]):
    response = api.get("/v1/tools/search", params=query)
    assert response.status_code == 422, response.text


@pytest.mark.parametrize("nested", [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000])
def test_a_deeply_nested_body_gets_a_4xx(api: httpx.Client, new_session: SessionFactory, nested: bytes):
    session = new_session(runtime="runc")
    for route in (SESSION, EXECUTION.format(session=session)):
        response = api.post(route, content=nested, headers=JSON)
        assert response.status_code == 400, response.text
        assert response.json() == {"error": "bad_request", "detail": "There was an error parsing the body"}
    assert executions(api, session) == 0


SESSION_IDS = [
    "..%2F..",
    "..%2F..%2Fstubs",
    "..%2F..%2Faudit.log",
    "%2e%2e",
    "%2e",
    "%00",
    "a%00b",
    "a%2Fb",
    "%252e%252e%252f",
    "%5C..%5C..",
    "sessions",
    "x" * 4096,
    "%3Cscript%3E",
]


def test_path_traversal_and_odd_session_ids_get_404_and_touch_nothing(
    api: httpx.Client, new_session: SessionFactory, settings: Settings
):
    bystander = new_session(runtime="runc")
    execute(api, bystander, "kept = 'yes'")
    for session_id in SESSION_IDS:
        for method, path in (
            ("GET", f"/v1/sessions/{session_id}"),
            ("DELETE", f"/v1/sessions/{session_id}"),
            ("POST", f"/v1/sessions/{session_id}/executions"),
        ):
            response = api.request(method, path, json={"code": "open('/workspace/ran', 'w')"})
            assert response.status_code == 404, (method, path, response.text)
            assert response.json()["detail"]
    assert (settings.state_dir / "stubs").is_dir()
    assert (settings.state_dir / "audit.log").is_file()
    assert (session_directory(settings.state_dir / "sessions", bystander) / "socket" / "bridge.sock").exists()
    assert execute(api, bystander, "kept")["result"] == "yes"
    assert executions(api, bystander) == 2


@pytest.mark.parametrize(
    "path",
    [
        "/v1/tools/..%2F..%2F..%2Fetc/passwd",
        "/v1/tools/time/..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "/v1/tools/%2e%2e/%2e%2e",
        "/v1/tools/time/%2e%2e%2f__init__",
        "/v1/tools/%00/%00",
        "/v1/tools/time/get_current_time%00.py",
    ],
)
def test_path_traversal_in_tool_names_gets_404_and_no_file(api: httpx.Client, path: str):
    response = api.get(path)
    assert response.status_code == 404, response.text
    assert "root:" not in response.text
    assert "Generated by mcpx" not in response.text


def test_an_oversized_request_line_gets_a_4xx(settings: Settings):
    with socket.create_connection(("127.0.0.1", settings.port), timeout=30) as client:
        client.sendall(b"GET /v1/sessions/" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        status = client.recv(64).split(b"\r\n")[0]
    assert status.split(b" ")[1].startswith(b"4"), status


SMALL_JSON_LIMIT = 4096


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A controller that allows two sessions, with three quick servers (eight distinct allowlists)."""
    directory = tmp_path_factory.mktemp("small")
    config: dict[str, dict[str, Any]] = {"time": {"command": str(TIME_SERVER)}}
    for name in ("crm", "docstore"):
        config[name] = {"command": sys.executable, "args": ["-m", f"controller.demo.{name}"], "cwd": str(ROOT)}
    servers = directory / "servers.json"
    servers.write_text(json.dumps({"mcpServers": config}))
    settings = make_settings(
        directory / "state",
        servers_file=servers,
        max_sessions=2,
        controller_id=f"small{os.getpid()}",
        max_json_bytes=SMALL_JSON_LIMIT,
    )
    with LiveServer(settings) as live:
        yield live


def test_sessions_beyond_max_sessions_get_429_until_one_is_deleted(small_server: LiveServer):
    with httpx.Client(base_url=small_server.url, timeout=120) as client:
        created = [client.post(SESSION, json={"runtime": "runc"}) for _ in range(2)]
        try:
            assert [r.status_code for r in created] == [201, 201]
            refused = client.post(SESSION, json={"runtime": "runc"})
            assert refused.status_code == 429
            assert refused.json() == {"error": "session_limit_reached", "detail": refused.json()["detail"]}
            assert "2" in refused.json()["detail"]
            assert client.delete(f"{SESSION}/{created.pop().json()['id']}").status_code == 204
            created.append(client.post(SESSION, json={"runtime": "runc"}))
            assert created[-1].status_code == 201
        finally:
            for response in created:
                if response.status_code == 201:
                    client.delete(f"{SESSION}/{response.json()['id']}")


def test_a_concurrent_flood_of_session_creations_never_exceeds_max_sessions(
    small_server: LiveServer, docker_client: docker.DockerClient
):
    allowlists = [list(c) for size in range(4) for c in combinations(["time", "crm", "docstore"], size)]
    label = f"mcpx.controller=small{os.getpid()}"

    def create(servers: list[str]) -> httpx.Response:
        return httpx.post(f"{small_server.url}{SESSION}", json={"runtime": "runc", "servers": servers}, timeout=120)

    with ThreadPoolExecutor(len(allowlists)) as pool:
        responses = list(pool.map(create, allowlists))
    try:
        statuses = sorted(r.status_code for r in responses)
        running = len(sandboxes(docker_client, label))
        assert statuses == [201, 201] + [429] * (len(allowlists) - 2), statuses
        assert running <= 2
    finally:
        for response in responses:
            if response.status_code == 201:
                httpx.delete(f"{small_server.url}{SESSION}/{response.json()['id']}", timeout=120)


def test_deleting_a_session_during_an_execution_ends_it_without_a_5xx_or_a_leftover_sandbox(
    api: httpx.Client, server: LiveServer, new_session: SessionFactory, docker_client: docker.DockerClient
):
    session = new_session(runtime="runc")
    finished: dict[str, httpx.Response] = {}

    def run() -> None:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            finished["response"] = client.post(
                f"/v1/sessions/{session}/executions", json={"code": "import time\ntime.sleep(5)"}
            )

    thread = threading.Thread(target=run)
    thread.start()
    wait_until(lambda: api.get(f"/v1/sessions/{session}").json()["state"] == "busy", 15, "the execution to start")
    assert api.delete(f"/v1/sessions/{session}").status_code == 204
    thread.join(timeout=90)
    label = f"mcpx.session={session}"
    try:
        assert not thread.is_alive()
        response = finished["response"]
        assert response.status_code in (200, 404), response.text
        wait_until(lambda: not sandboxes(docker_client, label), 15, "no sandbox of the deleted session")
    finally:
        for leftover in docker_client.containers.list(all=True, filters={"label": label}):
            leftover.remove(force=True)


def padded(document: dict[str, Any], size: int) -> bytes:
    """`document` as JSON of exactly `size` bytes (whitespace is valid JSON)."""
    body = json.dumps(document).encode()
    return body + b" " * (size - len(body))


def chunks(body: bytes) -> Iterator[bytes]:
    """A body httpx sends chunked, without a Content-Length."""
    for start in range(0, len(body), 1000):
        yield body[start : start + 1000]


@pytest.mark.parametrize("framing", ["declared", "chunked"])
def test_a_json_body_over_the_limit_gets_413_on_every_route_before_it_is_parsed(
    small_server: LiveServer, docker_client: docker.DockerClient, framing: str
):
    label = f"mcpx.controller=small{os.getpid()}"
    with httpx.Client(base_url=small_server.url, timeout=120) as client:
        session = client.post(SESSION, json={"runtime": "runc"}).json()["id"]
        try:
            before = len(sandboxes(docker_client, label))
            mcp = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
            mcp_headers = {"accept": "application/json, text/event-stream", **JSON}
            for route, document, headers in (
                (SESSION, {"runtime": "runc"}, JSON),
                (f"{SESSION}/{session}/executions", {"code": "open('/workspace/ran', 'w')"}, JSON),
                ("/mcp", mcp, mcp_headers),
            ):
                # Over the limit, whether it parses or not: refused before anything reads it as JSON.
                for body in (padded(document, SMALL_JSON_LIMIT + 1), b"{" * (SMALL_JSON_LIMIT * 4)):
                    content = chunks(body) if framing == "chunked" else body
                    response = client.post(route, content=content, headers=headers)
                    assert response.status_code == 413, (route, response.text)
                    assert response.json() == {
                        "error": "request_too_large",
                        "detail": f"the request body is larger than {SMALL_JSON_LIMIT} bytes",
                    }
            assert len(sandboxes(docker_client, label)) == before
            assert executions(client, session) == 0
            # At the limit exactly, a body is served as usual; uploads have their own, larger limit.
            for size in (SMALL_JSON_LIMIT - 1, SMALL_JSON_LIMIT):
                body = padded({"code": "6 * 7"}, size)
                content = chunks(body) if framing == "chunked" else body
                response = client.post(f"{SESSION}/{session}/executions", content=content, headers=JSON)
                assert (response.status_code, response.json()["result"]) == (200, 42), response.text
            upload = client.put(f"{SESSION}/{session}/files/big.bin", content=b"x" * SMALL_JSON_LIMIT * 4)
            assert upload.status_code == 201, upload.text
        finally:
            client.delete(f"{SESSION}/{session}")


class HeldBoots(DockerBackend):
    """The real engine, with every sandbox start held at a gate the test opens: creations stay in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.held = 0
        self.gate = threading.Event()

    async def start(self, spec: SandboxSpec) -> str:
        self.held += 1
        await anyio.to_thread.run_sync(self.gate.wait)
        return await super().start(spec)


def test_a_create_over_the_limit_is_refused_before_any_create_in_flight_completes(
    tmp_path_factory: pytest.TempPathFactory,
):
    tmp_path = tmp_path_factory.mktemp("held")  # short: a session socket's path must fit 108 bytes
    servers = tmp_path / "servers.json"
    servers.write_text(json.dumps({"mcpServers": {"time": {"command": str(TIME_SERVER)}}}))
    settings = make_settings(
        tmp_path / "state", servers_file=servers, max_sessions=2, controller_id=f"held{os.getpid()}"
    )
    boots = HeldBoots()
    completed: list[httpx.Response] = []
    with LiveServer(settings, backend=boots) as live, httpx.Client(base_url=live.url, timeout=120) as client:

        def create() -> None:
            completed.append(client.post(SESSION, json={"runtime": "runc"}))

        in_flight = [threading.Thread(target=create) for _ in range(2)]
        try:
            for thread in in_flight:
                thread.start()
            wait_until(lambda: boots.held == 2, 60, "two creations to reach their sandbox's start")
            for _ in range(3):
                refused = client.post(SESSION, json={"runtime": "runc"})
                assert (refused.status_code, refused.json()["error"]) == (429, "session_limit_reached")
            assert completed == [] and boots.held == 2  # the refusals did no work and waited for none
        finally:
            boots.gate.set()
            for thread in in_flight:
                thread.join(timeout=120)
        assert sorted(response.status_code for response in completed) == [201, 201]
        for response in completed:
            client.delete(f"{SESSION}/{response.json()['id']}")

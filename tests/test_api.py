"""Tenants and keys, workspace files, and streamed executions, over real HTTP against real sandboxes."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from controller.api import create_app
from controller.config import Settings
from controller.errors import ConfigError
from controller.sessions import session_directory
from tests.conftest import (
    IMAGE,
    ROOT,
    TIME_SERVER,
    LiveServer,
    SessionFactory,
    execute,
    free_port,
    make_settings,
    wait_until,
)

ALPHA, BETA = "alpha-key-0123456789abcdef", "beta-key-fedcba9876543210"
KEEPALIVE_S = 0.2


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory, servers_file: Path) -> Iterator[tuple[LiveServer, Settings]]:
    """A controller with two tenants; beta may use only the time server and one session."""
    settings = make_settings(
        tmp_path_factory.mktemp("keyed"),
        servers_file=servers_file,
        controller_id=f"keyed{id(servers_file) % 10000}",
        api_keys=f"alpha:{ALPHA},beta:{BETA}",
        tenants={"beta": {"servers": ["time"], "max_sessions": 1}},
        sse_keepalive_s=KEEPALIVE_S,
    )
    with LiveServer(settings) as live:
        yield live, settings


@pytest.fixture
def alpha(keyed: tuple[LiveServer, Settings]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=keyed[0].url, headers={"authorization": f"Bearer {ALPHA}"}, timeout=120) as client:
        yield client


@pytest.fixture
def beta(keyed: tuple[LiveServer, Settings]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=keyed[0].url, headers={"authorization": f"Bearer {BETA}"}, timeout=120) as client:
        yield client


@pytest.fixture
def alpha_session(alpha: httpx.Client) -> Iterator[str]:
    session = alpha.post("/v1/sessions").json()["id"]
    yield session
    alpha.delete(f"/v1/sessions/{session}")


def test_requests_without_a_valid_key_are_refused(keyed: tuple[LiveServer, Settings]):
    with httpx.Client(base_url=keyed[0].url) as anonymous:
        assert anonymous.get("/healthz").status_code == 200
        for headers in ({}, {"authorization": "Bearer wrong-key-000000000000"}, {"authorization": ALPHA}):
            for method, path in (("POST", "/v1/sessions"), ("GET", "/v1/sessions"), ("GET", "/v1/tools")):
                response = anonymous.request(method, path, headers=headers)
                assert response.status_code == 401, (headers, path)
                assert response.json()["error"] == "unauthorized"


def test_another_tenants_session_is_not_found_through_every_route(
    alpha: httpx.Client, beta: httpx.Client, alpha_session: str
):
    base = f"/v1/sessions/{alpha_session}"
    attempts = [
        beta.get(base),
        beta.delete(base),
        beta.post(f"{base}/executions", json={"code": "1"}),
        beta.post(f"{base}/executions", json={"code": "1"}, headers={"accept": "text/event-stream"}),
        beta.get(f"{base}/files"),
        beta.get(f"{base}/files/x.txt"),
        beta.put(f"{base}/files/x.txt", content=b"intruder"),
        beta.delete(f"{base}/files/x.txt"),
    ]
    assert [response.status_code for response in attempts] == [404] * len(attempts)
    assert all(response.json()["error"] == "session_not_found" for response in attempts)
    assert [s["id"] for s in alpha.get("/v1/sessions").json()["sessions"]] == [alpha_session]
    assert beta.get("/v1/sessions").json()["sessions"] == []
    assert execute(alpha, alpha_session, "import os\nos.listdir('/workspace')")["result"] == []


def test_a_tenant_sees_and_uses_only_its_servers_within_its_session_cap(beta: httpx.Client):
    assert [s["name"] for s in beta.get("/v1/tools").json()["servers"]] == ["time"]
    assert beta.get("/v1/tools/crm/get_record").status_code == 404
    assert beta.post("/v1/sessions", json={"servers": ["crm"]}).status_code == 422
    first = beta.post("/v1/sessions")
    assert first.status_code == 201
    try:
        assert first.json()["servers"] == ["time"]
        assert beta.post("/v1/sessions").status_code == 429
    finally:
        beta.delete(f"/v1/sessions/{first.json()['id']}")


def test_keys_are_never_logged(
    alpha: httpx.Client, alpha_session: str, keyed: tuple[LiveServer, Settings], caplog: pytest.LogCaptureFixture
):
    with caplog.at_level(logging.DEBUG):
        execute(alpha, alpha_session, "print('hello')")
        alpha.get("/v1/tools")
    audit = (keyed[1].state_dir / "audit.log").read_text()
    for text in (caplog.text, audit, repr(keyed[1])):
        assert ALPHA not in text and BETA not in text


def test_serving_beyond_loopback_without_keys_is_refused(tmp_path: Path):
    with pytest.raises(ConfigError, match="without API keys"):
        create_app(make_settings(tmp_path, host="0.0.0.0"))


def test_files_round_trip_binary_content_and_unicode_names(api: httpx.Client, new_session: SessionFactory):
    session = new_session()
    data = bytes(range(256)) * 1000
    path = "données/über ☃.bin"
    uploaded = api.put(f"/v1/sessions/{session}/files/{path}", content=data)
    assert uploaded.status_code == 201
    assert uploaded.json() == {"path": path, "url_path": quote(path.encode()), "size": len(data)}
    digest = execute(
        api, session, f"import hashlib\nhashlib.sha256(open('/workspace/{path}', 'rb').read()).hexdigest()"
    )
    assert digest["result"] == hashlib.sha256(data).hexdigest()
    execute(api, session, "import os\nos.makedirs('/workspace/out')\nopen('/workspace/out/report.txt', 'w').write('é')")
    listed = {f["path"]: f["size"] for f in api.get(f"/v1/sessions/{session}/files").json()["files"]}
    assert listed == {path: len(data), "out/report.txt": 2}
    assert api.get(f"/v1/sessions/{session}/files/out/report.txt").content == "é".encode()
    assert api.get(f"/v1/sessions/{session}/files/{path}").content == data
    assert api.delete(f"/v1/sessions/{session}/files/{path}").status_code == 204
    assert execute(api, session, f"import os\nos.path.exists('/workspace/{path}')")["result"] is False


# Names the code can give files that a URL or JSON cannot carry as they are.
ODD_NAMES = [
    b"bad\xff\xfe.bin",  # not UTF-8
    b"\xc3(.txt",  # a cut multi-byte sequence
    b"\xed\xa0\x80.txt",  # a UTF-16 surrogate encoded as UTF-8
    b"line\nbreak.txt",
    b"tab\tbell\x07esc\x1bdel\x7f.txt",
    b"\r",
    b"L" * 255,  # the longest name ext4 allows
    "é".encode() * 127,
    b"100%41 ?#&+.txt",  # URL syntax, and a percent-escape that is part of the name
    b"dir\xff/inner\n.txt",  # in a directory whose name is not UTF-8
]


def test_files_with_odd_names_are_listed_and_reached_by_their_url_path(api: httpx.Client, new_session: SessionFactory):
    session = new_session()
    make = "import os\nfor name in names:\n    os.makedirs(os.path.dirname(b'/workspace/' + name), exist_ok=True)\n"
    make += "    open(b'/workspace/' + name, 'wb').write(name)"
    execute(api, session, f"names = {ODD_NAMES!r}\n{make}")
    listing = api.get(f"/v1/sessions/{session}/files")
    assert listing.status_code == 200, listing.text
    files = {entry["url_path"]: entry for entry in listing.json()["files"]}
    assert set(files) == {quote(name, safe="/") for name in ODD_NAMES}
    for name in ODD_NAMES:
        entry = files[quote(name, safe="/")]
        assert (entry["path"], entry["size"]) == (name.decode(errors="replace"), len(name))
        url = f"/v1/sessions/{session}/files/{entry['url_path']}"
        assert api.get(url).content == name, name
        assert api.delete(url).status_code == 204, name
        assert api.get(url).status_code == 404, name
    assert api.get(f"/v1/sessions/{session}/files").json()["files"] == []
    # Uploads take the same paths, and answer with them.
    uploaded = api.put(f"/v1/sessions/{session}/files/{quote(ODD_NAMES[0])}", content=b"up")
    assert uploaded.json() == {
        "path": ODD_NAMES[0].decode(errors="replace"),
        "url_path": quote(ODD_NAMES[0]),
        "size": 2,
    }
    assert execute(api, session, f"open({b'/workspace/' + ODD_NAMES[0]!r}, 'rb').read()")["result"] == "b'up'"


@pytest.mark.parametrize("path", ["../escape.txt", "a/../../escape.txt", "%2e%2e/escape.txt", "a/%2e%2e/%2e%2e/x"])
def test_file_paths_that_leave_the_workspace_are_refused(api: httpx.Client, new_session: SessionFactory, path: str):
    session = new_session()
    for response in (
        api.put(f"/v1/sessions/{session}/files/{path}", content=b"x"),
        api.get(f"/v1/sessions/{session}/files/{path}"),
        api.delete(f"/v1/sessions/{session}/files/{path}"),
    ):
        assert response.status_code == 404, (path, response.status_code, response.text)


def test_symlinks_and_fifos_in_the_workspace_are_not_followed(api: httpx.Client, new_session: SessionFactory):
    session = new_session()
    execute(api, session, "import os\nos.symlink('/etc/passwd', '/workspace/link')\nos.mkfifo('/workspace/pipe')\n"
            "os.symlink('/etc', '/workspace/dir')")  # fmt: skip
    for path in ("link", "pipe", "dir/passwd"):
        assert api.get(f"/v1/sessions/{session}/files/{path}").status_code == 404
    assert api.put(f"/v1/sessions/{session}/files/link", content=b"overwrite").status_code == 404
    assert api.put(f"/v1/sessions/{session}/files/dir/hostile", content=b"x").status_code == 404
    assert "root:" in Path("/etc/passwd").read_text()
    assert api.get(f"/v1/sessions/{session}/files").json()["files"] == []


def events(response: httpx.Response) -> Iterator[tuple[str, Any, float]]:
    name = ""
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            yield name, json.loads(line[6:]), time.monotonic()


def test_a_streamed_execution_shows_output_before_it_ends(api: httpx.Client, new_session: SessionFactory):
    session = new_session()
    code = "import time\nprint('first', flush=True)\ntime.sleep(2)\nprint('second')\n'done'"
    with api.stream("POST", f"/v1/sessions/{session}/executions", json={"code": code},
                    headers={"accept": "text/event-stream"}) as response:  # fmt: skip
        assert response.headers["content-type"].startswith("text/event-stream")
        received = list(events(response))
    kinds = [name for name, _, _ in received]
    assert kinds[0] == "output" and kinds[-1] == "result"
    result_at = received[-1][2]
    # Output comes in chunks as it was written (print writes its text, then the newline).
    early = [data for name, data, at in received if name == "output" and result_at - at >= 1.5]
    assert {data["stream"] for data in early} == {"stdout"}
    assert "".join(data["text"] for data in early) == "first\n"
    assert received[-1][1]["result"] == "done"
    assert received[-1][1]["stdout"] == "first\nsecond\n"


def test_a_streamed_execution_reports_tool_calls_as_they_happen(api: httpx.Client, new_session: SessionFactory):
    session = new_session()
    code = "from servers.time import get_current_time\nget_current_time(timezone='UTC')['timezone']"
    with api.stream("POST", f"/v1/sessions/{session}/executions", json={"code": code},
                    headers={"accept": "text/event-stream"}) as response:  # fmt: skip
        received = [(name, data) for name, data, _ in events(response)]
    assert [name for name, _ in received] == ["tool_call", "result"]
    assert received[0][1]["tool"] == "get_current_time"
    assert received[1][1]["result"] == "UTC"


def test_a_client_that_disconnects_stops_the_execution(api: httpx.Client, new_session: SessionFactory):
    session = new_session()
    code = (
        "import time\nfor i in range(100):\n    open('/workspace/count', 'w').write(str(i))\n"
        "    print(i, flush=True)\n    time.sleep(0.1)"
    )
    with api.stream("POST", f"/v1/sessions/{session}/executions", json={"code": code, "timeout_s": 60},
                    headers={"accept": "text/event-stream"}) as response:  # fmt: skip
        next(events(response))
    reached: list[int] = []

    def stopped() -> bool:
        reply = execute(api, session, "int(open('/workspace/count').read())")
        reached.append(reply["result"])
        return reply["error"] is None and len(reached) >= 2 and reached[-1] == reached[-2]

    wait_until(stopped, 20, "the disconnected execution to stop")
    assert reached[-1] < 99


def test_a_silent_stream_sends_keepalive_comments_until_its_result(alpha: httpx.Client, alpha_session: str):
    # Sleeping many keep-alive intervals, printing nothing: only comments can cross the silence.
    code = f"import time\ntime.sleep({KEEPALIVE_S * 8})\n'done'"
    with alpha.stream("POST", f"/v1/sessions/{alpha_session}/executions", json={"code": code},
                      headers={"accept": "text/event-stream"}) as response:  # fmt: skip
        lines = [line for line in response.iter_lines() if line]
    ending = lines.index("event: result")
    assert ending >= 2 and set(lines[:ending]) == {": keepalive"}, lines
    assert json.loads(lines[ending + 1].removeprefix("data: "))["result"] == "done"
    assert lines[ending + 2 :] == []


@pytest.mark.docker
def test_a_create_read_during_a_sigterm_drain_is_refused_while_the_running_execution_finishes(
    tmp_path_factory: pytest.TempPathFactory,
):
    """A real drain: `mcpx serve` gets SIGTERM while an execution runs and a create request is half read."""
    tmp_path = tmp_path_factory.mktemp("drain")  # short: a session socket's path must fit 108 bytes
    servers = tmp_path / "servers.json"
    servers.write_text(json.dumps({"mcpServers": {"time": {"command": str(TIME_SERVER)}}}))
    port = free_port()
    environment = {
        **os.environ,
        "MCPX_STATE_DIR": str(tmp_path / "state"),
        "MCPX_CONTROLLER_ID": f"drain{os.getpid()}",
        "MCPX_IMAGE": IMAGE,
        "MCPX_PORT": str(port),
        "MCPX_WARM_POOL_SIZE": "0",
        "MCPX_WORKSPACE_SIZE_MB": "32",
        "MCPX_DRAIN_TIMEOUT_S": "120",
    }
    serve = ROOT / ".venv" / "bin" / "mcpx"
    process = subprocess.Popen([str(serve), "serve", "--config", str(servers)], env=environment, cwd=ROOT)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as api:

            def accepting() -> bool:
                with socket.socket() as probe:
                    return probe.connect_ex(("127.0.0.1", port)) == 0

            wait_until(lambda: process.poll() is None and accepting(), 120, "mcpx serve to listen")
            session = api.post("/v1/sessions", json={"runtime": "runc"}).json()["id"]
            go = session_directory(tmp_path / "state" / "sessions", session) / "workspace" / "go"
            finished: dict[str, httpx.Response] = {}
            # Runs until the test lets it end, by a file it waits for.
            code = "import os, time\nwhile not os.path.exists('/workspace/go'):\n    time.sleep(0.05)\n'finished'"

            def run() -> None:
                with httpx.Client(base_url=api.base_url, timeout=120) as client:
                    finished["response"] = client.post(f"/v1/sessions/{session}/executions", json={"code": code})

            running = threading.Thread(target=run)
            running.start()
            wait_until(lambda: api.get(f"/v1/sessions/{session}").json()["state"] == "busy", 30, "the execution")
            body = json.dumps({"runtime": "runc"}).encode()
            with socket.create_connection(("127.0.0.1", port), timeout=120) as held:
                held.sendall(
                    b"POST /v1/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    b"Expect: 100-continue\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n"
                )
                assert held.recv(64).startswith(b"HTTP/1.1 100"), "the app did not start reading the request"
                process.send_signal(signal.SIGTERM)
                wait_until(lambda: not accepting(), 30, "the server to stop accepting connections")
                held.sendall(body)
                answer = b""
                while b"}" not in answer:
                    answer += held.recv(4096)
            status = int(answer.split(b" ")[1])
            problem = json.loads(answer[answer.index(b"\r\n\r\n") + 4 :])
            assert (status, problem["error"]) == (503, "shutting_down"), answer
            go.write_text("")
            running.join(timeout=120)
            assert finished["response"].status_code == 200
            assert finished["response"].json()["result"] == "finished"
        assert process.wait(timeout=120) in (0, -signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

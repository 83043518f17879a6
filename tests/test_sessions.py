"""The session API contract, TTL reaping, and cleanup across a controller restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import docker
import httpx
import pytest

from controller.config import Settings
from controller.sessions import session_directory
from tests.conftest import IMAGE, LiveServer, SessionFactory, execute, free_port, make_settings, wait_until


def containers_of(docker_client: docker.DockerClient, label: str) -> list[str]:
    return [c.id for c in docker_client.containers.list(all=True, filters={"label": label})]


def test_create_returns_id_runtime_and_creation_time(api: httpx.Client, new_session: SessionFactory):
    response = api.post("/v1/sessions")
    assert response.status_code == 201
    body = response.json()
    api.delete(f"/v1/sessions/{body['id']}")
    assert body["runtime"] == "runsc"
    assert body["created_at"]
    assert body["limits"]["memory_mb"] == 256


def test_get_reports_the_session_state(api: httpx.Client, new_session: SessionFactory):
    session = new_session(runtime="runc", memory_mb=300, ttl_s=60)
    execute(api, session, "1")
    body = api.get(f"/v1/sessions/{session}").json()
    assert body["id"] == session
    assert body["runtime"] == "runc"
    assert body["state"] == "ready"
    assert body["limits"]["memory_mb"] == 300
    assert body["executions"] == 1


def test_unknown_session_is_a_404_with_a_reason(api: httpx.Client):
    for response in (
        api.get("/v1/sessions/nope"),
        api.delete("/v1/sessions/nope"),
        api.post("/v1/sessions/nope/executions", json={"code": "1"}),
    ):
        assert response.status_code == 404
        assert response.json() == {"error": "session_not_found", "detail": "session 'nope' not found"}


def test_delete_removes_the_container_and_the_socket_dir(
    api: httpx.Client, docker_client: docker.DockerClient, settings: Settings
):
    session = api.post("/v1/sessions").json()["id"]
    assert len(containers_of(docker_client, f"mcpx.session={session}")) == 1
    directory = session_directory(settings.state_dir / "sessions", session)
    assert (directory / "socket" / "bridge.sock").exists()
    assert api.delete(f"/v1/sessions/{session}").status_code == 204
    assert containers_of(docker_client, f"mcpx.session={session}") == []
    assert not directory.exists()
    assert api.get(f"/v1/sessions/{session}").status_code == 404


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/v1/sessions", {"memory_mb": "lots"}, 422),
        ("/v1/sessions", {"memory_mb": 10**7}, 422),
        ("/v1/sessions", {"cpus": -1}, 422),
        ("/v1/sessions", {"ttl_s": 10**9}, 422),
        ("/v1/sessions", {"runtime": "kata"}, 422),
        ("/v1/sessions", {"unknown": 1}, 422),
        ("/v1/sessions", [1, 2], 422),
    ],
)
def test_bad_session_requests_get_a_4xx_with_a_reason(api: httpx.Client, path: str, body: object, status: int):
    response = api.post(path, json=body)
    assert response.status_code == status, response.text
    assert response.json()["detail"]


def test_bad_execution_requests_get_a_4xx_with_a_reason(
    api: httpx.Client, new_session: SessionFactory, settings: Settings
):
    session = new_session()
    url = f"/v1/sessions/{session}/executions"
    cases = [
        (api.post(url, content=b"{not json", headers={"content-type": "application/json"}), 422),
        (api.post(url, json={"code": 42}), 422),
        (api.post(url, json={}), 422),
        (api.post(url, json={"code": "1", "timeout_s": 0}), 422),
        (api.post(url, json={"code": "1", "timeout_s": settings.max_timeout_s + 1}), 422),
        (api.post(url, json={"code": "#" * (settings.max_code_bytes + 1)}), 413),
    ]
    for response, status in cases:
        assert response.status_code == status, response.text
        assert response.json()["detail"]
    assert execute(api, session, "'unharmed'")["result"] == "unharmed"


def test_idle_session_is_deleted_after_its_ttl(
    api: httpx.Client, new_session: SessionFactory, docker_client: docker.DockerClient
):
    session = new_session(ttl_s=1)
    execute(api, session, "1")
    wait_until(lambda: api.get(f"/v1/sessions/{session}").status_code == 404, 15, "the idle session to be reaped")
    wait_until(lambda: not containers_of(docker_client, f"mcpx.session={session}"), 15, "its sandbox to be removed")


def serve(state_dir: Path, port: int, controller_id: str, **settings: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "MCPX_STATE_DIR": str(state_dir),
        "MCPX_CONTROLLER_ID": controller_id,
        "MCPX_IMAGE": IMAGE,
        "MCPX_WARM_POOL_SIZE": "0",
        **{f"MCPX_{name.upper()}": value for name, value in settings.items()},
    }
    command = [sys.executable, "-m", "controller.cli", "serve", "--port", str(port), "--log-level", "warning"]
    process = subprocess.Popen(command, env=env)
    url = f"http://127.0.0.1:{port}/readyz"

    def ready() -> bool:
        assert process.poll() is None, "mcpx serve exited"
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(ready, 60, "mcpx serve to be ready")
    return process


TS_CALL = 'import { get_record } from "servers/crm";\n((await get_record({ record_id: "ACC-0001" })) as any).record.id'


def test_a_killed_controller_readopts_live_sessions_and_reaps_everything_else(
    tmp_path: Path, docker_client: docker.DockerClient
):
    controller_id = f"restart{os.getpid()}"
    port = free_port()
    label = f"mcpx.controller={controller_id}"
    api = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    first = serve(tmp_path, port, controller_id, warm_pool_size="1")
    try:
        kept, busy, dead = (api.post("/v1/sessions").json()["id"] for _ in range(3))
        execute(api, kept, "state = 'kept'\nopen('/workspace/note.txt', 'w').write('in the workspace')")
        # The TypeScript worker holds a connection of its own: the restart must not leave it on the dead one.
        assert execute(api, kept, TS_CALL, language="typescript")["result"] == "ACC-0001"
        wait_until(lambda: len(containers_of(docker_client, label)) == 4, 60, "the pool to refill")
        claimed = {c for session in (kept, busy, dead) for c in containers_of(docker_client, session_label(session))}
        pooled = set(containers_of(docker_client, label)) - claimed
        in_flight = subprocess.Popen(  # an execution still running when the controller dies
            [sys.executable, "-c", f"import httpx; httpx.post('{api.base_url}/v1/sessions/{busy}/executions', "
             "json={'code': 'import time; time.sleep(2)'}, timeout=30)"],
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_until(lambda: api.get(f"/v1/sessions/{busy}").json()["state"] == "busy", 10, "the execution to start")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    in_flight.wait(timeout=30)
    assert len(containers_of(docker_client, label)) == 4, "the killed controller's sandboxes should still run"
    (victim,) = containers_of(docker_client, session_label(dead))
    docker_client.containers.get(victim).kill()  # this one dies while nobody watches

    second = serve(tmp_path, port, controller_id, warm_pool_size="1")
    try:
        assert execute(api, kept, "state, open('/workspace/note.txt').read()")["result"] == ["kept", "in the workspace"]
        listed = api.get(f"/v1/sessions/{kept}/files").json()["files"]
        assert {"path": "note.txt", "url_path": "note.txt", "size": 16} in listed
        call = "from servers.crm import get_record\nget_record(record_id='ACC-0001')['record']['id']"
        reply = execute(api, kept, call)
        assert reply["result"] == "ACC-0001", reply
        reply = execute(api, kept, TS_CALL, language="typescript")
        assert reply["result"] == "ACC-0001", reply
        assert execute(api, busy, "6 * 7")["result"] == 42
        assert api.get(f"/v1/sessions/{dead}").status_code == 404
        remaining = set(containers_of(docker_client, label))
        assert not remaining & pooled, "the old pool's sandbox is reaped"
        assert victim not in remaining
        wait_until(lambda: len(containers_of(docker_client, label)) == 3, 60, "a fresh pool sandbox")
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=60)
        api.close()
    assert containers_of(docker_client, label) == []


def test_a_sandbox_ends_itself_when_its_controller_is_frozen_or_gone(
    tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    controller_id = f"orphan{os.getpid()}"
    port = free_port()

    def running(session: str) -> bool:
        found = docker_client.containers.list(filters={"label": session_label(session)})
        return any(container.status == "running" for container in found)

    try:
        aged_out = serve(tmp_path, port, controller_id, max_age_s="4")
        aged = httpx.post(f"http://127.0.0.1:{port}/v1/sessions", timeout=60).json()["id"]
        aged_out.send_signal(signal.SIGSTOP)  # alive, connection open, reaper stuck: the max age still holds
        wait_until(lambda: not running(aged), 20, "the sandbox past its max age to end itself")
        aged_out.send_signal(signal.SIGKILL)
        aged_out.wait()
        frozen = serve(tmp_path, port, controller_id, reconnect_s="2")
        silenced = httpx.post(f"http://127.0.0.1:{port}/v1/sessions", timeout=60).json()["id"]
        # Quiet past its whole reconnect window, with only keepalives on its connection (or ended, which fails).
        quiet_until = time.monotonic() + 1.5 * 2
        wait_until(lambda: not running(silenced) or time.monotonic() > quiet_until, 30, "a window of quiet")
        assert running(silenced), "keepalives keep a quiet session's sandbox alive"
        frozen.send_signal(signal.SIGSTOP)  # no more keepalives on an open connection
        wait_until(lambda: not running(silenced), 15, "the sandbox of a frozen controller to end itself")
        frozen.send_signal(signal.SIGKILL)
        frozen.wait()
        gone = serve(tmp_path, port, controller_id, reconnect_s="1")
        orphan = httpx.post(f"http://127.0.0.1:{port}/v1/sessions", timeout=60).json()["id"]
        gone.send_signal(signal.SIGKILL)
        gone.wait()
        assert running(orphan)
        wait_until(lambda: not running(orphan), 15, "the orphaned sandbox to end itself")
        last = serve(tmp_path, port, controller_id)  # reaps what the ended sandboxes left, workspaces included
        for session in (aged, silenced, orphan):
            assert httpx.get(f"http://127.0.0.1:{port}/v1/sessions/{session}").status_code == 404
        assert containers_of(docker_client, f"mcpx.controller={controller_id}") == []
        last.send_signal(signal.SIGTERM)
        last.wait(timeout=60)
    finally:
        for container in docker_client.containers.list(all=True, filters={"label": f"mcpx.controller={controller_id}"}):
            container.remove(force=True)


def session_label(session_id: str) -> str:
    return f"mcpx.session={session_id}"


def test_a_warm_pool_turns_session_creation_into_a_claim_and_refills(
    tmp_path: Path, servers_file: Path, docker_client: docker.DockerClient
):
    settings = make_settings(tmp_path, servers_file=servers_file, controller_id=f"pool{os.getpid()}", warm_pool_size=2)
    label = f"mcpx.controller={settings.controller_id}"
    with LiveServer(settings) as live, httpx.Client(base_url=live.url, timeout=120) as client:
        wait_until(lambda: len(containers_of(docker_client, label)) == 2, 60, "the pool to fill")
        pooled = set(containers_of(docker_client, label))
        created = client.post("/v1/sessions")
        assert created.status_code == 201
        session = created.json()["id"]
        (claimed,) = docker_client.containers.list(filters={"label": f"mcpx.session={session}"})
        assert claimed.id in pooled
        assert execute(client, session, "print('warm')")["stdout"] == "warm\n"
        wait_until(lambda: len(containers_of(docker_client, label)) == 3, 60, "the pool to refill")
        other = client.post("/v1/sessions", json={"runtime": "runc"}).json()["id"]
        (cold,) = docker_client.containers.list(filters={"label": f"mcpx.session={other}"})
        assert cold.id not in pooled
    assert containers_of(docker_client, label) == []

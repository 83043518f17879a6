"""Fixtures: a real controller served over real HTTP, backed by the real Docker engine and sandbox image."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import docker
import httpx
import pytest
import uvicorn

from controller.api import create_app
from controller.config import Limits, Settings
from controller.runtime import SandboxBackend
from controller.serving import server_config
from controller.telemetry import Telemetry
from controller.workspaces import mounts_under

IMAGE = os.environ.get("MCPX_TEST_IMAGE", "mcpx-sandbox:latest")
PIDS_LIMIT = 128
ROOT = Path(__file__).resolve().parents[1]
SERVERS = ROOT / ".servers"
TIME_SERVER = SERVERS / "time" / "bin" / "mcp-server-time"
EVERYTHING = SERVERS / "npm" / "node_modules" / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"
TS_SDK = SERVERS / "npm" / "node_modules" / "@modelcontextprotocol" / "sdk" / "dist" / "esm"
TYPESCRIPT = SERVERS / "npm" / "node_modules"  # where `make test-servers` installs the TypeScript compiler
SECRET = "sk-test-7c1f0e9b2d4a"


# Fixtures that reach the Docker engine (a live controller creates sandboxes; its test config starts the engine's
# neighbours too): a test that uses one, directly or through another fixture, is marked `docker`.
DOCKER_FIXTURES = {"docker_client", "servers_file", "server"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if DOCKER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.docker)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll a condition that has no event to wait on, failing after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


async def wait_until_async(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """`wait_until` for a condition that the running event loop itself must bring about."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        await anyio.sleep(0.01)


class LiveServer:
    """uvicorn in a thread: the same app `mcpx serve` runs, on a free loopback port."""

    def __init__(
        self, settings: Settings, telemetry: Telemetry | None = None, backend: SandboxBackend | None = None
    ) -> None:
        app = create_app(settings, backend, telemetry)
        config = server_config(app, settings, log_level="warning")  # as `mcpx serve` runs it
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{settings.port}"

    def __enter__(self) -> LiveServer:
        self.thread.start()
        wait_until(lambda: self.server.started or not self.thread.is_alive(), 60, "the server to start")
        assert self.server.started, "the server failed to start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


def make_settings(state_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "state_dir": state_dir,
        "controller_id": f"test{os.getpid()}",
        "image": IMAGE,
        "port": free_port(),
        "pids_limit": PIDS_LIMIT,
        "reap_interval_s": 0.2,
        "defaults": Limits(timeout_s=10, memory_mb=256),
        "workspace_size_mb": 32,
        "warm_pool_size": 0,
    }
    return Settings(**{**values, **overrides})


@pytest.fixture(scope="session", autouse=True)
def no_workspace_mount_outlives_the_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A test that fails while a controller it started is dead leaves that controller's workspaces loop-mounted
    under its tmp_path: unmounted here, or they hold loop devices and a later run cannot delete old tmp dirs."""
    yield
    for mount_point in mounts_under(tmp_path_factory.getbasetemp()):
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    client = docker.from_env()
    yield client
    client.close()


def wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    def accepting() -> bool:
        assert process.poll() is None, "the server exited"
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    wait_until(accepting, 30, f"a server on port {port}")


@pytest.fixture(scope="session")
def everything_http() -> Iterator[str]:
    """server-everything over streamable HTTP, on a free loopback port."""
    port = free_port()
    env = {**os.environ, "PORT": str(port)}
    process = subprocess.Popen(["node", str(EVERYTHING), "streamableHttp"], env=env, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, process)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="session")
def hostile_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    log = tmp_path_factory.mktemp("hostile") / "calls.log"
    log.touch()
    return log


@pytest.fixture(scope="session")
def servers_file(tmp_path_factory: pytest.TempPathFactory, everything_http: str, hostile_log: Path) -> Iterator[Path]:
    """The test config: real third-party servers over stdio and HTTP, ours (demo, hostile, changing), and a
    credential that reaches servers through `${VAR}` expansion."""
    config = {
        "mcpServers": {
            "time": {"command": str(TIME_SERVER)},
            "everything": {"command": "node", "args": [str(EVERYTHING), "stdio"]},
            "everything_http": {"url": everything_http, "headers": {"Authorization": "Bearer ${MCPX_TEST_SECRET}"}},
            "hostile": {
                "command": sys.executable,
                "args": ["-m", "tests.servers.hostile"],
                "cwd": str(ROOT),
                "env": {"SECRET_TOKEN": "${MCPX_TEST_SECRET}", "HOSTILE_LOG": str(hostile_log)},
            },
            "changing": {
                "command": "node",
                "args": [str(ROOT / "tests" / "servers" / "changing.mjs")],
                "env": {"MCP_SDK": str(TS_SDK)},
            },
            "docstore": {"command": sys.executable, "args": ["-m", "controller.demo.docstore"], "cwd": str(ROOT)},
            "crm": {
                "command": sys.executable,
                "args": ["-m", "controller.demo.crm"],
                "cwd": str(ROOT),
                "trust_annotations": True,
            },
            "deploys": {"command": sys.executable, "args": ["-m", "controller.demo.deploys"], "cwd": str(ROOT)},
        }
    }
    path = tmp_path_factory.mktemp("config") / "servers.json"
    path.write_text(json.dumps(config))
    os.environ["MCPX_TEST_SECRET"] = SECRET
    yield path
    del os.environ["MCPX_TEST_SECRET"]


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory, servers_file: Path) -> Settings:
    return make_settings(tmp_path_factory.mktemp("state"), servers_file=servers_file)


@pytest.fixture(scope="session")
def server(settings: Settings) -> Iterator[LiveServer]:
    with LiveServer(settings) as live:
        yield live


@pytest.fixture
def api(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120) as client:
        yield client


@pytest.fixture(params=["runsc", "runc"])
def runtime(request: pytest.FixtureRequest) -> str:
    return str(request.param)


SessionFactory = Callable[..., str]


@pytest.fixture
def new_session(api: httpx.Client) -> Iterator[SessionFactory]:
    """Create sessions (any `POST /v1/sessions` fields); whatever the test leaves is deleted afterwards."""
    created: list[str] = []

    def create(**body: Any) -> str:
        response = api.post("/v1/sessions", json=body)
        assert response.status_code == 201, response.text
        session_id = str(response.json()["id"])
        created.append(session_id)
        return session_id

    yield create
    for session_id in created:
        api.delete(f"/v1/sessions/{session_id}")


def check_typescript(tree: Path) -> dict[str, Any]:
    """Every `.ts` file under `tree` read by the real TypeScript compiler: `{"files": n, "problems": [...]}`
    (parse errors, statements a stub must not have, type errors under --strict)."""
    if not (TYPESCRIPT / "typescript").is_dir():
        pytest.fail("the TypeScript compiler is missing: run `make test-servers`")
    script = ROOT / "tests" / "typescript" / "check_stubs.cjs"
    runtime_types = ROOT / "sandbox-image" / "mcpx_node" / "runtime.d.ts"
    done = subprocess.run(
        ["node", str(script), str(tree), str(runtime_types)],
        env={**os.environ, "NODE_PATH": str(TYPESCRIPT)},
        capture_output=True,
        check=True,
        timeout=300,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def execute(api: httpx.Client, session_id: str, code: str, **body: Any) -> dict[str, Any]:
    response = api.post(f"/v1/sessions/{session_id}/executions", json={"code": code, **body})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


class Serve:
    """`mcpx serve` as a process of its own on a free port (its stderr in `log`); stopped with SIGTERM on exit."""

    def __init__(self, tmp_path: Path, state_dir: Path, controller_id: str, *args: str, **settings: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / f"serve-{self.port}.log"
        config = tmp_path / "empty-servers.json"
        if not config.exists():
            config.write_text(json.dumps({"mcpServers": {}}))
        self.env = {
            **os.environ,
            "MCPX_STATE_DIR": str(state_dir),
            "MCPX_CONTROLLER_ID": controller_id,
            "MCPX_IMAGE": IMAGE,
            "MCPX_WARM_POOL_SIZE": "0",
            **{f"MCPX_{name.upper()}": value for name, value in settings.items()},
        }
        self.command = [str(Path(sys.executable).parent / "mcpx"), "serve", "--port", str(self.port)]
        self.command += [*args] if "--config" in args else ["--config", str(config), *args]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> subprocess.Popen[bytes]:
        with self.log.open("wb") as stderr:
            self.process = subprocess.Popen(
                self.command, env=self.env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr
            )
        return self.process

    def __enter__(self) -> Serve:
        process = self.start()

        def healthy() -> bool:
            assert process.poll() is None, f"mcpx serve exited: {self.log.read_text()}"
            try:
                return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, 60, "mcpx serve to answer /healthz")
        return self

    def __exit__(self, *exc: object) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)

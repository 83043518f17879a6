"""Fixtures: a real controller served over real HTTP, backed by the real Docker engine and sandbox image."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
import uvicorn

from controller.api import create_app
from controller.config import Limits, Settings

IMAGE = os.environ.get("MCPX_TEST_IMAGE", "mcpx-sandbox:latest")
PIDS_LIMIT = 128


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


class LiveServer:
    """uvicorn in a thread: the same app `mcpx serve` runs, on a free loopback port."""

    def __init__(self, settings: Settings) -> None:
        config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=settings.port, log_level="warning")
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
    }
    return Settings(**{**values, **overrides})


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    client = docker.from_env()
    yield client
    client.close()


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return make_settings(tmp_path_factory.mktemp("state"))


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


def execute(api: httpx.Client, session_id: str, code: str, **body: Any) -> dict[str, Any]:
    response = api.post(f"/v1/sessions/{session_id}/executions", json={"code": code, **body})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result

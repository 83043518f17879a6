"""What every benchmark shares: starting a controller (in a thread, or as `mcpx serve`), the docker CLI, cleanup of
labelled containers, percentiles and the host metadata written beside the numbers."""

from __future__ import annotations

import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from controller.api import create_app
from controller.config import Settings

DOCKER_TIMEOUT_S = 60.0
SERVER_START_TIMEOUT_S = 60.0
SERVER_STOP_TIMEOUT_S = 60.0
# Every container a benchmark starts carries this label (the controller's own do), so cleanup and `make clean`
# find them.
LABEL = "mcpx.controller"


def percentile(samples: list[float], p: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[p - 1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_on_sigterm() -> None:
    """A SIGTERM (a CI timeout, `timeout make bench`) unwinds like Ctrl-C, through the cleanup."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))


@contextmanager
def live_controller(settings: Settings) -> Iterator[str]:
    """The controller served by uvicorn in a thread; yields its base URL. Its shutdown deletes every session."""
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=settings.port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the controller did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{settings.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=SERVER_START_TIMEOUT_S)


@contextmanager
def controller(temp: Path, name: str, image: str, **settings: Any) -> Iterator[str]:
    """A live controller in a thread with its own id and state dir under `temp`; yields its URL. Leaving it
    deletes its sessions and stops its MCP servers, and removes any container still labelled as its own."""
    controller_id = f"{name}{os.getpid()}"
    state_dir = temp / f"state-{name}"
    state_dir.mkdir()
    values = {"state_dir": state_dir, "controller_id": controller_id, "image": image, "port": free_port()}
    try:
        with live_controller(Settings(**{**values, **settings})) as url:
            yield url
    finally:
        remove_labelled(f"{LABEL}={controller_id}")


@contextmanager
def served_controller(temp: Path, controller_id: str, image: str, environ: dict[str, str]) -> Iterator[tuple[str, int]]:
    """`mcpx serve` as its own process (so its memory is its own), configured by MCPX_* `environ`; yields its URL
    and pid once /readyz answers 200. Leaving it stops it with SIGTERM, on which it deletes its sessions: what it
    leaves is for the caller to check (`labelled`) and remove.

    Raises: RuntimeError (it did not become ready).
    """
    state_dir = temp / f"state-{controller_id}"
    state_dir.mkdir()
    port = free_port()
    env = {**os.environ, **environ, "MCPX_STATE_DIR": str(state_dir), "MCPX_CONTROLLER_ID": controller_id}
    command = [sys.executable, "-m", "controller.cli", "serve", "--port", str(port), "--log-level", "warning"]
    process = subprocess.Popen(command, env={**env, "MCPX_IMAGE": image})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while not ready(url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("mcpx serve did not become ready")
            time.sleep(0.2)
        yield url, process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=SERVER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def docker(*args: str) -> str:
    """Run the docker CLI; its stdout, stripped. Raises: subprocess.CalledProcessError, subprocess.TimeoutExpired."""
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=DOCKER_TIMEOUT_S, check=True)
    return done.stdout.strip()


def labelled(label: str) -> list[str]:
    """Ids of every container, running or not, with the label."""
    return docker("ps", "--all", "--quiet", "--filter", f"label={label}").split()


def remove_labelled(label: str) -> None:
    """Remove every container with the label: sessions the controller could not delete, and the baselines'."""
    leftovers = labelled(label)
    if leftovers:
        docker("rm", "--force", *leftovers)


def metadata(image: str, runs: dict[str, int]) -> dict[str, Any]:
    """The host, Docker and image a run measured, and how many samples each measurement took."""
    image_id, image_size = docker("image", "inspect", "--format", "{{.Id}} {{.Size}}", image).split()
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "docker_version": docker("version", "--format", "{{.Server.Version}}"),
        "image": {"name": image, "id": image_id, "size_bytes": int(image_size)},
        "runs": runs,
    }

"""One controller per state dir (a second one exits naming the holder), and a stub tree removed from under a
controller is written again: real `mcpx serve` processes on real ports, real sessions."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from controller.api import create_app
from controller.statedir import StateDirBusy, StateLock
from tests.conftest import TIME_SERVER, LiveServer, Serve, execute, make_settings, wait_until


@pytest.fixture
def state() -> Iterator[Path]:
    """A state dir with a short path: a session's socket path must fit the 108 bytes of a Unix socket address."""
    directory = Path(tempfile.mkdtemp(prefix="mcpx-"))
    yield directory / "state"
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def time_config(tmp_path: Path) -> Path:
    path = tmp_path / "time.json"
    path.write_text(json.dumps({"mcpServers": {"time": {"command": str(TIME_SERVER)}}}))
    return path


def test_a_second_lock_on_a_state_dir_names_the_holder_until_it_is_released(tmp_path: Path) -> None:
    first = StateLock(tmp_path / "state", "first", "127.0.0.1", 8080)
    first.acquire()
    first.acquire()  # idempotent
    second = StateLock(tmp_path / "state", "second", "127.0.0.1", 8099)
    with pytest.raises(StateDirBusy, match=rf"in use by controller 'first' \(pid {os.getpid()}, port 8080, started 2"):
        second.acquire()
    assert not second.held
    first.release()
    second.acquire()
    assert json.loads((tmp_path / "state" / "controller.lock").read_text())["controller_id"] == "second"
    second.release()


@pytest.mark.docker
def test_a_second_controller_on_the_same_state_dir_exits_at_once_naming_the_holder(
    tmp_path: Path, state: Path, time_config: Path
) -> None:
    with Serve(tmp_path, state, f"lock{os.getpid()}") as first, httpx.Client(base_url=first.url, timeout=120) as api:
        created = api.post("/v1/sessions", json={"runtime": "runc"})
        assert created.status_code == 201, created.text
        session = created.json()["id"]
        execute(api, session, "kept = 'still here'")
        trees = sorted(path.name for path in (state / "stubs").iterdir())
        second = Serve(tmp_path, state, f"lock{os.getpid()}", "--config", str(time_config))
        try:
            assert second.start().wait(timeout=60) == 2
        finally:
            second.__exit__()
        message = second.log.read_text()
        assert first.process is not None
        assert f"the state dir {state} is in use by controller 'lock{os.getpid()}'" in message
        assert f"(pid {first.process.pid}, port {first.port}, started 20" in message
        # The first one lost nothing: its session, its sandbox, its stub trees; new sessions start.
        assert sorted(path.name for path in (state / "stubs").iterdir()) == trees
        assert execute(api, session, "kept")["result"] == "still here"
        again = api.post("/v1/sessions", json={"runtime": "runc"})
        assert again.status_code == 201, again.text
        for session_id in (session, again.json()["id"]):
            assert api.delete(f"/v1/sessions/{session_id}").status_code == 204


@pytest.mark.docker
def test_an_in_process_controller_on_a_held_state_dir_does_not_start_and_touches_nothing(
    state: Path, time_config: Path
) -> None:
    settings = make_settings(state, servers_file=time_config, controller_id=f"held{os.getpid()}")
    with LiveServer(settings) as live, httpx.Client(base_url=live.url, timeout=120) as api:
        session = api.post("/v1/sessions", json={"runtime": "runc", "servers": ["time"]}).json()["id"]
        trees = sorted((state / "stubs").iterdir())
        intruder = create_app(make_settings(state, servers_file=time_config, controller_id="intruder"))

        async def start_up() -> None:
            async with intruder.router.lifespan_context(intruder):
                pytest.fail("the intruder started")

        with pytest.raises(StateDirBusy, match=f"in use by controller 'held{os.getpid()}' \\(pid {os.getpid()}"):
            asyncio.run(start_up())
        assert sorted((state / "stubs").iterdir()) == trees
        assert execute(api, session, "from servers.time import get_current_time\n'ok'")["result"] == "ok"
        assert api.delete(f"/v1/sessions/{session}").status_code == 204


@pytest.mark.docker
def test_a_removed_stub_tree_is_written_again_and_no_warm_sandbox_mounting_it_is_handed_out(
    tmp_path: Path, state: Path, time_config: Path
) -> None:
    call = "from servers.time import get_current_time\nget_current_time(timezone='UTC')['timezone']"
    with (
        Serve(tmp_path, state, f"stubs{os.getpid()}", "--config", str(time_config), warm_pool_size="1") as served,
        httpx.Client(base_url=served.url, timeout=120) as api,
    ):

        def pool_size() -> float:
            lines = api.get("/metrics").text.splitlines()
            return sum(float(line.split()[-1]) for line in lines if line.startswith("mcpx_pool_size"))

        wait_until(lambda: pool_size() == 1, 120, "the warm pool to fill")
        for tree in (state / "stubs").iterdir():
            shutil.rmtree(tree)  # as the other controller of the issue did
        sessions = []
        for _ in range(2):  # the first would claim the warm sandbox, the second start one on the removed tree
            created = api.post("/v1/sessions")
            assert created.status_code == 201, created.text
            sessions.append(created.json()["id"])
            assert execute(api, sessions[-1], call)["result"] == "UTC"
        assert [path.name for path in (state / "stubs").iterdir() if not path.name.startswith(".")]
        for session_id in sessions:
            assert api.delete(f"/v1/sessions/{session_id}").status_code == 204


def test_serve_exits_2_when_the_state_dir_is_held_before_serving(tmp_path: Path) -> None:
    lock = StateLock(tmp_path / "state", "holder", "127.0.0.1", 1234)
    lock.acquire()
    try:
        refused = Serve(tmp_path, tmp_path / "state", f"late{os.getpid()}")
        done = subprocess.run(refused.command, env=refused.env, capture_output=True, text=True, timeout=60)
    finally:
        lock.release()
    assert done.returncode == 2
    assert "in use by controller 'holder'" in done.stderr and "port 1234" in done.stderr

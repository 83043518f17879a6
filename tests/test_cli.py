"""The `mcpx` command line, in-process against the real controller over real HTTP (and `mcpx serve` as a process)."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from controller.cli import local_key, main
from controller.config import Settings
from controller.errors import ConfigError
from tests.conftest import IMAGE, ROOT, LiveServer, Serve, SessionFactory, free_port, make_settings, wait_until

MCPX = Path(sys.executable).parent / "mcpx"
API_KEY = "0123456789abcdef-cli-key"
KEYS = f"ops:{API_KEY}"


def run(capsys: pytest.CaptureFixture[str], *argv: str, stdin: str | None = None) -> tuple[int, str, str]:
    """`mcpx ARGV` in-process: its exit code, stdout and stderr."""
    capsys.readouterr()
    if stdin is not None:
        sys.stdin = io.StringIO(stdin)
    try:
        code = main(list(argv))
    finally:
        sys.stdin = sys.__stdin__
    out, err = capsys.readouterr()
    return code, out, err


def sandboxes(docker_client: docker.DockerClient, settings: Settings) -> set[str]:
    containers = docker_client.containers.list(all=True, filters={"label": f"mcpx.controller={settings.controller_id}"})
    return {container.id for container in containers if container.id is not None}


@pytest.fixture(autouse=True)
def no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI reads MCPX_URL and MCPX_API_KEY; a developer's own must not leak into the tests."""
    monkeypatch.delenv("MCPX_URL", raising=False)
    monkeypatch.delenv("MCPX_API_KEY", raising=False)


# exec


def test_exec_from_stdin_prints_stdout_then_the_value_and_exits_0(
    server: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "--url", server.url, "exec", "-", stdin="x = 6 * 7\nprint('hello')\nx\n")
    assert (code, out, err) == (0, "hello\n42\n", "")


def test_exec_runs_a_file_and_takes_global_options_after_the_command(
    server: LiveServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    script = tmp_path / "job.py"
    script.write_text("import sys\nprint('out')\nprint('err', file=sys.stderr)\n'text value'\n")
    code, out, err = run(capsys, "exec", str(script), "--url", server.url, "--runtime", "runc")
    assert (code, out, err) == (0, "out\ntext value\n", "err\n")


def test_exec_deletes_its_fresh_session_afterwards(
    server: LiveServer,
    settings: Settings,
    docker_client: docker.DockerClient,
    api: httpx.Client,
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = sandboxes(docker_client, settings)
    sessions_before = {session["id"] for session in api.get("/v1/sessions").json()["sessions"]}
    code, out, _ = run(capsys, "--url", server.url, "exec", "-", "--runtime", "runc", stdin="print(1)")
    assert (code, out) == (0, "1\n")
    assert {session["id"] for session in api.get("/v1/sessions").json()["sessions"]} == sessions_before
    assert sandboxes(docker_client, settings) <= before


def test_exec_of_failing_code_prints_the_traceback_on_stderr_and_exits_1(
    server: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "--url", server.url, "exec", "-", stdin="print('before')\n1 / 0\n")
    assert (code, out) == (1, "before\n")
    assert "Traceback" in err and err.rstrip().endswith("ZeroDivisionError: division by zero")


def test_exec_of_code_that_times_out_says_so_and_exits_1(
    server: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "--url", server.url, "exec", "-", "--timeout", "1", stdin="import time\ntime.sleep(30)")
    assert code == 1
    assert "(timeout)" in err


def test_exec_in_a_named_session_keeps_its_state_and_the_session(
    server: LiveServer, new_session: SessionFactory, api: httpx.Client, capsys: pytest.CaptureFixture[str]
) -> None:
    session = new_session(runtime="runc")
    assert run(capsys, "--url", server.url, "exec", "-", "--session", session, stdin="x = 5")[0] == 0
    code, out, _ = run(capsys, "--url", server.url, "exec", "-", "--session", session, stdin="x * 2")
    assert (code, out) == (0, "10\n")
    assert api.get(f"/v1/sessions/{session}").json()["executions"] == 2


def test_exec_json_prints_the_execution_result_and_keeps_the_exit_code(
    server: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "--json", "--url", server.url, "exec", "-", stdin="print('hi')\n[1, 2]")
    result = json.loads(out)
    assert (code, result["stdout"], result["result"], result["error"]) == (0, "hi\n", [1, 2], None)
    assert {"duration_ms", "tool_calls", "tokens", "state_reset"} <= set(result)
    code, out, _ = run(capsys, "--json", "--url", server.url, "exec", "-", stdin="raise KeyError('k')")
    assert code == 1 and json.loads(out)["error"]["type"] == "KeyError"


def test_exec_stream_prints_output_as_it_comes_then_the_value(
    server: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    source = "import sys\nprint('a', flush=True)\nprint('b', file=sys.stderr)\n7"
    code, out, err = run(capsys, "--url", server.url, "exec", "-", "--stream", stdin=source)
    assert (code, out, err) == (0, "a\n7\n", "b\n")
    code, out, _ = run(capsys, "--json", "--url", server.url, "exec", "-", "--stream", stdin=source)
    events = [json.loads(line) for line in out.splitlines()]
    assert code == 0
    # print() writes the text and the newline apart, so a stream may carry them in one event or in two.
    outputs = events[:-1]
    assert {(e["event"], e["stream"]) for e in outputs} == {("output", "stdout"), ("output", "stderr")}
    assert "".join(e["text"] for e in outputs if e["stream"] == "stdout") == "a\n"
    assert events[-1]["event"] == "result" and events[-1]["result"]["result"] == 7


def test_exec_against_an_unreachable_url_exits_3_with_the_reason_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, out, err = run(capsys, "--url", url, "exec", "-", stdin="print(1)")
    assert (code, out) == (3, "")
    assert "unreachable" in err and url in err
    code, _, err = run(capsys, "--json", "--url", url, "exec", "-", stdin="print(1)")
    assert code == 3 and json.loads(err)["error"] == "unreachable"


def test_exec_takes_the_url_from_mcpx_url(
    server: LiveServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MCPX_URL", server.url)
    assert run(capsys, "exec", "-", stdin="print(3)")[:2] == (0, "3\n")


def test_exec_of_a_missing_file_or_a_bad_url_is_a_usage_error(
    server: LiveServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run(capsys, "--url", server.url, "exec", str(tmp_path / "missing.py"))
    assert code == 2 and "missing.py" in err
    assert run(capsys, "--url", "ftp://example", "exec", "-", stdin="1")[0] == 2
    assert run(capsys, "exec")[0] == 2
    assert run(capsys, "--url", server.url, "exec", "-", "--session", "x", "--runtime", "runc", stdin="1")[0] == 2


def test_exec_in_an_unknown_session_exits_3(server: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "--url", server.url, "exec", "-", "--session", "no-such-session", stdin="1")
    assert code == 3 and "session_not_found" in err


def test_exec_says_where_the_full_output_is_when_it_was_cut_to_the_budget(
    server: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ("--url", server.url, "exec", "-", "--max-output-tokens", "64")
    code, out, err = run(capsys, *argv, stdin="for i in range(20000): print(i)")
    assert code == 0 and len(out) < 2000
    assert "stdout was cut to fit the token budget; the full text is in the workspace: " in err


# tools


def test_tools_ls_lists_every_server_with_its_tools(server: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--url", server.url, "tools", "ls")
    assert code == 0
    assert "time (ready)" in out and "  get_current_time" in out and "  convert_time" in out
    code, out, _ = run(capsys, "--url", server.url, "--json", "tools", "ls")
    listing = json.loads(out)
    assert code == 0 and "time" in {entry["name"] for entry in listing["servers"]}


def test_tools_search_finds_a_tool_by_what_it_does(server: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--url", server.url, "tools", "search", "current", "time", "--limit", "3")
    assert code == 0 and out.splitlines()[0].startswith("servers.time.get_current_time  ")
    code, out, _ = run(capsys, "--url", server.url, "--json", "tools", "search", "current time", "--detail", "full")
    hits: list[dict[str, Any]] = json.loads(out)
    assert code == 0 and hits[0]["import"] == "servers.time.get_current_time" and hits[0]["signature"]
    assert (hits[0]["server"], hits[0]["tool"]) == ("time", "get_current_time")


def test_tools_show_prints_the_stub_and_an_unknown_tool_exits_3(
    server: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "--url", server.url, "tools", "show", "time", "get_current_time")
    assert code == 0 and "def get_current_time(" in out
    code, out, _ = run(capsys, "--url", server.url, "--json", "tools", "show", "time", "get_current_time")
    assert code == 0 and json.loads(out)["input_schema"]["properties"]["timezone"]
    code, _, err = run(capsys, "--url", server.url, "tools", "show", "time", "no_such_tool")
    assert code == 3 and "tool_not_found" in err


# sessions


def test_sessions_ls_shows_a_session_and_rm_deletes_it(
    server: LiveServer, new_session: SessionFactory, api: httpx.Client, capsys: pytest.CaptureFixture[str]
) -> None:
    session = new_session(runtime="runc")
    code, out, _ = run(capsys, "--url", server.url, "sessions", "ls")
    assert code == 0 and out.startswith("ID") and session in out
    code, out, _ = run(capsys, "--url", server.url, "--json", "sessions", "ls")
    assert code == 0 and session in [entry["id"] for entry in json.loads(out)["sessions"]]
    code, out, _ = run(capsys, "--url", server.url, "sessions", "rm", session)
    assert (code, out) == (0, f"deleted {session}\n")
    assert api.get(f"/v1/sessions/{session}").status_code == 404


def test_sessions_rm_of_an_unknown_id_exits_3_and_reports_it(
    server: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "--url", server.url, "--json", "sessions", "rm", "no-such-session")
    report = json.loads(out)
    assert code == 3 and report["deleted"] == []
    assert report["failed"][0]["error"] == "session_not_found"


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A second controller that requires API keys (no MCP servers, its own controller id and state)."""
    config = tmp_path_factory.mktemp("keyed") / "servers.json"
    config.write_text(json.dumps({"mcpServers": {}}))
    state = tmp_path_factory.mktemp("keyed-state")
    settings = make_settings(state, servers_file=config, controller_id=f"clikeyed{os.getpid()}", api_keys=KEYS)
    with LiveServer(settings) as live:
        yield live


@pytest.mark.docker
def test_the_api_key_comes_from_the_option_or_mcpx_api_key(
    keyed_server: LiveServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = run(capsys, "--url", keyed_server.url, "sessions", "ls")
    assert code == 3 and "unauthorized" in err
    assert run(capsys, "--url", keyed_server.url, "--api-key", API_KEY, "--json", "sessions", "ls")[:2] == (
        0,
        '{"sessions": []}\n',
    )
    monkeypatch.setenv("MCPX_API_KEY", API_KEY)
    assert run(capsys, "--url", keyed_server.url, "tools", "ls")[0] == 0


# doctor


def test_doctor_with_a_url_checks_docker_gvisor_the_image_the_server_and_each_mcp_server(
    server: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "--json", "doctor", "--url", server.url, "--image", IMAGE)
    report = json.loads(out)
    checks = {check["name"]: check for check in report["checks"]}
    for name in ("docker", "gvisor", "image", "server", "mcp:time", "mcp:docstore"):
        assert checks[name]["ok"], checks[name]
    assert code == (0 if report["ok"] else 1) and report["ok"] == all(check["ok"] for check in checks.values())
    code, out, _ = run(capsys, "doctor", "--url", server.url, "--image", IMAGE)
    lines = out.splitlines()
    assert any(line.startswith("ok") and " server " in line for line in lines)
    assert all(line.split()[0] in ("ok", "FAIL") for line in lines)


@pytest.mark.docker
def test_doctor_names_a_missing_image_and_an_unreachable_server_with_their_fixes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, out, _ = run(capsys, "doctor", "--url", url, "--image", "mcpx-test-no-such-image:never")
    assert code == 1
    assert "FAIL  image" in out and "mcpx image build" in out
    assert "FAIL  server" in out and "mcpx serve" in out


def test_doctor_reports_an_unreachable_docker_and_exits_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    monkeypatch.delenv("MCPX_DOCKER_HOST", raising=False)
    code, out, _ = run(capsys, "--json", "doctor")
    report = json.loads(out)
    assert code == 1 and report["ok"] is False
    assert report["checks"][0]["name"] == "docker" and "make host" in report["checks"][0]["fix"]


# image build


def test_image_build_streams_the_build_prefixed_with_elapsed_time_and_fails_on_a_missing_base(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["image", "build", "--base", "mcpx-test-no-such-base:never", "--image", "mcpx-test-never-built:x"]
    argv += ["--python-only"]
    code, out, err = run(capsys, *argv)
    assert code == 1
    assert "[" in out and "s] build: docker build (BASE=mcpx-test-no-such-base:never, TYPESCRIPT=0)" in out
    assert "failed with exit code" in err
    code, out, err = run(capsys, "--json", *argv)
    summary = json.loads(out)
    assert code == 1 and summary["ok"] is False and summary["image"] == "mcpx-test-never-built:x"
    assert "build: docker build" in err


# usage and serve


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "tools")[0] == 2
    assert run(capsys, "frobnicate")[0] == 2
    assert run(capsys, "--help")[0] == 0


@pytest.mark.docker
def test_serve_still_serves_the_api_and_stops_on_sigterm(tmp_path: Path) -> None:
    config = tmp_path / "servers.json"
    config.write_text(json.dumps({"mcpServers": {}}))
    port = free_port()
    env = {**os.environ, "MCPX_STATE_DIR": str(tmp_path / "state"), "MCPX_CONTROLLER_ID": f"serve{os.getpid()}"}
    command = [str(MCPX), "serve", "--port", str(port), "--config", str(config), "--log-level", "warning"]
    log = tmp_path / "serve.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr)
    try:

        def healthy() -> bool:
            assert process.poll() is None, "mcpx serve exited"
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, 60, "mcpx serve to answer /healthz")
        process.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it caught
        assert process.wait(timeout=60) in (0, -signal.SIGTERM)
        assert f"serving on http://127.0.0.1:{port}" in log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def test_serve_refuses_an_invalid_config_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "servers.json"
    config.write_text('{"mcpServers": {"bad": {}}}')
    code, _, err = run(capsys, "serve", "--config", str(config))
    assert code == 2 and "bad" in err


NO_KEYS = "WARNING controller.cli: no API keys: any local process can use every session (its code, files and tools)"


@pytest.mark.docker
def test_serve_without_api_keys_warns_that_any_local_process_can_use_every_session(tmp_path: Path) -> None:
    with Serve(tmp_path, tmp_path / "state", f"open{os.getpid()}") as served:
        log = served.log.read_text()
    assert NO_KEYS in log and f"through {served.url}; require keys with MCPX_API_KEYS" in log


@pytest.mark.docker
def test_serve_generate_key_requires_the_key_it_wrote_owner_only_and_keeps_it_across_restarts(tmp_path: Path) -> None:
    state = tmp_path / "state"
    keys: list[str] = []
    for _ in range(2):
        with Serve(tmp_path, state, f"keyed{os.getpid()}", "--generate-key") as served:
            key_file = state / "api-key"
            assert key_file.stat().st_mode & 0o777 == 0o600
            tenant, _, key = key_file.read_text().strip().partition(":")
            assert tenant == "local" and len(key) >= 32
            keys.append(key)
            assert httpx.get(f"{served.url}/v1/sessions", timeout=30).status_code == 401
            authorized = httpx.get(f"{served.url}/v1/sessions", headers={"Authorization": f"Bearer {key}"}, timeout=30)
            assert authorized.status_code == 200
            log = served.log.read_text()
        assert f"tenant `local` has the one in {key_file}" in log and "no API keys" not in log and key not in log
    assert keys[0] == keys[1]


def test_generate_key_refuses_a_key_file_others_can_read_and_a_configured_keys_file(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    (tmp_path / "api-key").write_text("local:0123456789abcdef0123456789abcdef\n")
    (tmp_path / "api-key").chmod(0o644)
    with pytest.raises(ConfigError, match="is readable by others: `chmod 600` it"):
        local_key(settings)
    with pytest.raises(ConfigError, match="--generate-key writes its own keys file"):
        local_key(Settings(state_dir=tmp_path, api_keys_file=tmp_path / "keys"))


# make help


def test_make_help_lists_every_documented_target_with_its_variables_expanded() -> None:
    documented = re.findall(r"^([^\s:#=$]+):[^\n]*## ", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert {"k8s-validate", "run", "help"} <= set(documented)
    done = subprocess.run(
        ["make", "-s", "--no-print-directory", "help", "HOST=10.1.2.3", "PORT=9999", "OVERLAY=prod"],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    text = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout)
    assert [line.split()[0] for line in text.splitlines()] == documented
    assert "$(" not in text
    assert "Serve the API on 10.1.2.3:9999" in text and "k8s/overlays/prod" in text

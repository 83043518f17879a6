"""Notebook semantics of executions, in real sandboxes over the real socket."""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller.shaping import Tokens
from tests.conftest import LiveServer, SessionFactory, execute, make_settings


def test_variables_imports_and_functions_persist_across_executions(api: httpx.Client, new_session: SessionFactory):
    session = new_session()
    execute(api, session, "import math\ncount = 41\ndef bump(n):\n    return n + 1")
    reply = execute(api, session, "bump(count), math.floor(2.5)")
    assert reply["result"] == [42, 2]
    assert reply["error"] is None
    assert reply["state_reset"] is False


def test_top_level_await_works(api: httpx.Client, new_session: SessionFactory):
    session = new_session()
    reply = execute(
        api,
        session,
        "import asyncio\nasync def twice(x):\n    await asyncio.sleep(0)\n    return 2 * x\n"
        "values = await asyncio.gather(twice(1), twice(2))\nvalues",
    )
    assert reply["result"] == [2, 4]
    assert execute(api, session, "await twice(values[1])")["result"] == 8


def test_trailing_expression_value_is_returned_as_json_or_repr(api: httpx.Client, new_session: SessionFactory):
    session = new_session()
    assert execute(api, session, "x = 1")["result"] is None
    assert execute(api, session, "{'a': [1, 2.5, None, 'é']}")["result"] == {"a": [1, 2.5, None, "é"]}
    assert execute(api, session, "class Thing: pass\nThing()")["result"].startswith("<__main__.Thing object at")


def test_stdout_and_stderr_are_captured_separately(api: httpx.Client, new_session: SessionFactory):
    session = new_session()
    reply = execute(
        api, session, "import sys, os\nprint('out')\nprint('err', file=sys.stderr)\nos.system('echo from-a-subprocess')"
    )
    assert reply["stdout"] == "out\nfrom-a-subprocess\n"
    assert reply["stderr"] == "err\n"


def test_exception_is_reported_with_type_and_traceback(api: httpx.Client, new_session: SessionFactory):
    session = new_session()
    reply = execute(api, session, "def fail():\n    raise ValueError('bad input')\nprint('before')\nfail()")
    assert reply["stdout"] == "before\n"
    error = reply["error"]
    assert error["kind"] == "exception"
    assert error["type"] == "ValueError"
    assert error["message"] == "bad input"
    assert "line 2, in fail" in error["traceback"]
    assert "mcpx_runtime" not in error["traceback"]
    assert reply["state_reset"] is False


def test_syntax_error_is_an_exception_result(api: httpx.Client, new_session: SessionFactory):
    reply = execute(api, new_session(), "def broken(:")
    assert reply["error"]["kind"] == "exception"
    assert reply["error"]["type"] == "SyntaxError"


def test_replacing_or_closing_stdout_does_not_break_later_executions(api: httpx.Client, new_session: SessionFactory):
    session = new_session()
    execute(api, session, "import sys, os\nsys.stdout = None\nos.close(1)")
    assert execute(api, session, "print('still here')")["stdout"] == "still here\n"


def test_infinite_loop_times_out_and_the_session_stays_usable(
    api: httpx.Client, new_session: SessionFactory, runtime: str
):
    session = new_session(runtime=runtime)
    execute(api, session, "kept = 'state'")
    reply = execute(api, session, "while True:\n    pass", timeout_s=2)
    assert reply["error"]["kind"] == "timeout"
    assert reply["state_reset"] is False
    assert execute(api, session, "kept")["result"] == "state"


def test_ignoring_sigint_does_not_escape_the_timeout(api: httpx.Client, new_session: SessionFactory, runtime: str):
    session = new_session(runtime=runtime)
    reply = execute(
        api, session, "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass", timeout_s=2
    )
    assert reply["error"]["kind"] == "timeout"
    assert reply["state_reset"] is True
    assert execute(api, session, "1 + 1")["result"] == 2


def test_memory_bomb_is_reported_as_oom_and_the_session_recovers(
    api: httpx.Client, new_session: SessionFactory, runtime: str
):
    session = new_session(runtime=runtime, memory_mb=256)
    execute(api, session, "open('/workspace/kept.txt', 'w').write('survives')")
    reply = execute(api, session, "hog = []\nwhile True:\n    hog.append(bytearray(10 * 1024 * 1024))", timeout_s=30)
    assert reply["error"]["kind"] == "oom"
    assert reply["state_reset"] is True
    assert execute(api, session, "open('/workspace/kept.txt').read()")["result"] == "survives"


def test_allocation_below_the_memory_limit_succeeds(api: httpx.Client, new_session: SessionFactory):
    session = new_session(memory_mb=256)
    assert execute(api, session, "len(bytearray(100 * 1024 * 1024))")["result"] == 100 * 1024 * 1024


@pytest.mark.parametrize("code", ["import os\nos._exit(3)", "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)"])
def test_interpreter_exit_is_reported_and_the_next_execution_works(
    api: httpx.Client, new_session: SessionFactory, code: str
):
    session = new_session()
    reply = execute(api, session, code)
    assert reply["error"]["kind"] == "crash"
    assert reply["state_reset"] is True
    assert execute(api, session, "'alive'")["result"] == "alive"


def test_killing_the_sandbox_supervisor_restarts_the_sandbox(
    api: httpx.Client, new_session: SessionFactory, runtime: str
):
    session = new_session(runtime=runtime)
    execute(api, session, "open('/workspace/note', 'w').write('kept')")
    reply = execute(api, session, "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)")
    assert reply["error"]["kind"] == "crash"
    assert reply["state_reset"] is True
    assert execute(api, session, "open('/workspace/note').read()")["result"] == "kept"
    assert api.get(f"/v1/sessions/{session}").json()["restarts"] == 1


def test_output_beyond_the_cap_is_dropped_with_a_marker(api: httpx.Client, new_session: SessionFactory, settings):
    session = new_session()
    reply = execute(api, session, f"print('x' * {settings.max_output_bytes + 1000}, end='')\nprint('the end')")
    assert len(reply["stdout"]) < settings.max_output_bytes + 200
    assert "[mcpx: 1008 more bytes of output were dropped]" in reply["stdout"]
    assert reply["stdout"].endswith("xthe end\n")
    limit = {"limit": "MCPX_MAX_OUTPUT_BYTES", "limit_bytes": settings.max_output_bytes}
    assert reply["dropped"] == {"stdout": {"bytes": 1008, **limit}}


def test_a_forked_child_that_falls_through_cannot_answer_for_the_worker(api: httpx.Client, new_session: SessionFactory):
    session = new_session()
    reply = execute(
        api, session, "import os, time\nif os.fork() == 0:\n    raise SystemExit('child')\ntime.sleep(0.5)\n'parent'"
    )
    assert reply["result"] == "parent"
    assert reply["error"] is None


@pytest.mark.parametrize("strategy", ["truncate", "sample", "summarize"])
def test_output_over_budget_is_shaped_and_saved_whole_in_the_workspace(
    api: httpx.Client, new_session: SessionFactory, strategy: str
):
    session = new_session()
    code = "for i in range(5000):\n    print(f'line {i}: ' + 'é' * 20)"
    reply = execute(api, session, code, max_output_tokens=300, strategy=strategy)
    assert reply["tokens"]["returned"] <= 400
    assert "line 0:" in reply["stdout"]
    assert "mcpx cut" in reply["stdout"]
    saved = reply["full_output"]["stdout"]
    assert saved.startswith("/workspace/.mcpx/outputs/")
    assert saved in reply["stdout"]
    whole = execute(api, session, f"text = open({saved!r}).read()\nlen(text.splitlines()), text.splitlines()[-1][:10]")
    assert whole["result"] == [5000, "line 4999:"]


def test_a_large_result_is_summarized_as_its_shape(api: httpx.Client, new_session: SessionFactory):
    session = new_session()
    code = "[{'id': i, 'name': f'customer {i}', 'amount': i * 1.5} for i in range(3000)]"
    reply = execute(api, session, code, max_output_tokens=200, strategy="summarize")
    assert isinstance(reply["result"], dict), reply
    summary = reply["result"]["mcpx_summary"]
    assert summary["list"] == 3000
    assert set(summary["item"]) == {"id", "name", "amount"}
    assert reply["full_output"]["result"].endswith("result.json")


def test_output_within_budget_is_untouched_and_accounted(api: httpx.Client, new_session: SessionFactory):
    reply = execute(api, new_session(), "print('hello')\n42")
    assert reply["stdout"] == "hello\n"
    assert reply["full_output"] == {}
    tokens = reply["tokens"]
    assert tokens["returned"] > 0
    assert tokens["code"] > 0
    assert tokens["tool_results"] == tokens["direct_estimate"] == 0
    assert tokens["saved"] == -(tokens["returned"] + tokens["code"])


def test_processes_started_by_an_execution_end_with_it(api: httpx.Client, new_session: SessionFactory, runtime: str):
    session = new_session(runtime=runtime)
    started = execute(
        api,
        session,
        "import os, subprocess, time\n"
        "subprocess.Popen(['sleep', '300'])\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        os.execv('/bin/sleep', ['sleep', '301'])\n"
        "    os._exit(0)\n"
        "time.sleep(0.5)\n"
        "sorted(open(f'/proc/{p}/cmdline').read().replace(chr(0), ' ').strip() for p in os.listdir('/proc')"
        " if p.isdigit() and 'sleep' in open(f'/proc/{p}/cmdline').read())",
    )
    assert started["result"] == ["sleep 300", "sleep 301"]
    left = execute(
        api,
        session,
        "import os\n[p for p in os.listdir('/proc') if p.isdigit() and 'sleep' in open(f'/proc/{p}/cmdline').read()]",
    )
    assert left["result"] == []


def test_modules_written_to_the_workspace_import_but_shadow_nothing(api: httpx.Client, new_session: SessionFactory):
    session = new_session()
    execute(api, session, "open('/workspace/helpers.py', 'w').write('ANSWER = 42')\nopen('/workspace/json.py', 'w')")
    reply = execute(api, session, "import helpers, json\nhelpers.ANSWER, hasattr(json, 'dumps')")
    assert reply["result"] == [42, True]


# Output capture: every byte up to the cap (MCPX_MAX_OUTPUT_BYTES a stream) reaches the response and the file of the
# full output; past it only the middle is dropped, so the real end survives, and the response says how much.

CAP = 100_000
DROP_MARKER = re.compile(
    r"\n\[mcpx: (\d+) more bytes of output were dropped\] \(over MCPX_MAX_OUTPUT_BYTES, [\d,]+ bytes a stream\)\n"
)
TEXT = "text = ''.join(f'{{i:06d}} ' + 'x' * 92 + '\\n' for i in range({size} // 100 + 1))[:{size}]\n"
WRITERS = {
    "small writes": "import sys\nfor i in range(0, len(text), 100):\n    sys.{name}.write(text[i : i + 100])",
    "one large write": "import os\ndata = text.encode()\nwhile data:\n    data = data[os.write({fd}, data) :]",
    "a subprocess": (
        "import subprocess, sys\nopen('/workspace/printed.txt', 'w').write(text)\n"
        "command = 'import shutil, sys; shutil.copyfileobj(open(\"/workspace/printed.txt\"), sys.{name})'\n"
        "subprocess.run([sys.executable, '-c', command], check=True)"
    ),
}
TS_WRITE = (
    "var text = Array.from({{ length: Math.floor({size} / 100) + 1 }},\n"
    "  (_, i) => String(i).padStart(6, '0') + ' ' + 'x'.repeat(92) + '\\n').join('').slice(0, {size});\n"
    "for (let i = 0; i < text.length; i += 100) process.{name}.write(text.slice(i, i + 100));\n"
)


def printed(size: int) -> str:
    """What TEXT and TS_WRITE print: numbered lines of 100 bytes, cut to `size`."""
    return "".join(f"{i:06d} " + "x" * 92 + "\n" for i in range(size // 100 + 1))[:size]


def python_printing(size: int, name: str, writer: str) -> str:
    return TEXT.format(size=size) + WRITERS[writer].format(name=name, fd=1 if name == "stdout" else 2)


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """A controller whose output cap is CAP bytes a stream (and no MCP servers)."""
    state = tmp_path_factory.mktemp("capped")
    servers = state / "servers.json"
    servers.write_text(json.dumps({"mcpServers": {}}))
    settings = make_settings(state, servers_file=servers, controller_id=f"capped{os.getpid()}", max_output_bytes=CAP)
    with LiveServer(settings) as live, httpx.Client(base_url=live.url, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def capped_session(capped: httpx.Client) -> Iterator[str]:
    session = str(capped.post("/v1/sessions").json()["id"])
    yield session
    capped.delete(f"/v1/sessions/{session}")


def run(client: httpx.Client, session: str, code: str, streamed: bool, **body: Any) -> tuple[dict[str, Any], str]:
    """An execution's response, and the text of its `output` events per stream (when streamed)."""
    if not streamed:
        return execute(client, session, code, **body), ""
    received: list[tuple[str, Any]] = []
    with client.stream("POST", f"/v1/sessions/{session}/executions", json={"code": code, **body},
                       headers={"accept": "text/event-stream"}) as response:  # fmt: skip
        event = ""
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                received.append((event, json.loads(line[6:])))
    assert received[-1][0] == "result", received[-1]
    return received[-1][1], json.dumps([data for event, data in received if event == "output"])


def check_capture(client: httpx.Client, session: str, reply: dict[str, Any], name: str, expected: str, cap: int):
    """The file of the full output holds all that was printed up to the cap; past it, the start and the end with
    a marker between them, and `dropped` says how many bytes and by which limit. The response ends as the output."""
    saved = reply["full_output"][name]
    response = client.get(f"/v1/sessions/{session}/files/{saved.removeprefix('/workspace/')}")
    kept = response.content.decode()
    over = len(expected.encode()) - cap
    if over <= 0:
        assert kept == expected
        assert name not in reply["dropped"]
    else:
        head, dropped, tail = DROP_MARKER.split(kept)
        assert int(dropped) == over
        assert head == expected[: len(head)] and tail == expected[len(expected) - len(tail) :]
        assert len(head) + len(tail) == cap
        assert reply["dropped"][name] == {"bytes": over, "limit": "MCPX_MAX_OUTPUT_BYTES", "limit_bytes": cap}
    assert reply[name].endswith(expected[-60:])
    return kept


@pytest.mark.docker
@pytest.mark.parametrize("size", [CAP - 1, CAP, CAP + 1, 3 * CAP])
@pytest.mark.parametrize("name", ["stdout", "stderr"])
@pytest.mark.parametrize("writer", list(WRITERS))
def test_output_up_to_the_cap_is_kept_whole_and_past_it_loses_only_its_middle(
    capped: httpx.Client, capped_session: str, size: int, name: str, writer: str
):
    reply, _ = run(capped, capped_session, python_printing(size, name, writer), streamed=False)
    assert reply["error"] is None, reply["error"]
    check_capture(capped, capped_session, reply, name, printed(size), CAP)


@pytest.mark.docker
@pytest.mark.parametrize("size", [CAP - 1, CAP, CAP + 1, 3 * CAP])
@pytest.mark.parametrize("name", ["stdout", "stderr"])
def test_a_streamed_execution_sends_the_same_output_as_it_saves(
    capped: httpx.Client, capped_session: str, size: int, name: str
):
    reply, events = run(capped, capped_session, python_printing(size, name, "small writes"), streamed=True)
    kept = check_capture(capped, capped_session, reply, name, printed(size), CAP)
    streamed = "".join(event["text"] for event in json.loads(events) if event["stream"] == name)
    assert streamed == kept


@pytest.mark.docker
@pytest.mark.parametrize("size", [CAP - 1, CAP + 1, 3 * CAP])
@pytest.mark.parametrize("name", ["stdout", "stderr"])
@pytest.mark.parametrize("streamed", [False, True])
def test_typescript_output_is_captured_up_to_the_cap_and_keeps_its_end(
    capped: httpx.Client, capped_session: str, size: int, name: str, streamed: bool
):
    code = TS_WRITE.format(size=size, name=name)
    reply, events = run(capped, capped_session, code, streamed, language="typescript")
    assert reply["error"] is None, reply["error"]
    kept = check_capture(capped, capped_session, reply, name, printed(size), CAP)
    if streamed:
        assert "".join(event["text"] for event in json.loads(events) if event["stream"] == name) == kept


@pytest.mark.parametrize("streamed", [False, True])
def test_twenty_thousand_lines_under_the_default_cap_are_all_kept(
    api: httpx.Client, new_session: SessionFactory, settings, streamed: bool
):
    # About 2 MB: the sandbox used to keep 1,198,372 bytes (the frame limit / 14) of the 4 MiB it documents.
    session = new_session()
    size = 20_000 * 100
    reply, _ = run(api, session, python_printing(size, "stdout", "small writes"), streamed)
    check_capture(api, session, reply, "stdout", printed(size), settings.max_output_bytes)
    assert reply["dropped"] == {}


@pytest.fixture
def capture_class(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The sandbox supervisor's Capture, imported here (it is stdlib only) and forgotten afterwards."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent.parent / "sandbox-image"))
    try:
        yield importlib.import_module("mcpx_runtime.supervisor").Capture
    finally:
        for module in [module for module in sys.modules if module.partition(".")[0] == "mcpx_runtime"]:
            del sys.modules[module]


def captured(capture: Any, pieces: list[bytes]) -> tuple[str, int, str]:
    start = "".join(capture.add(piece) for piece in pieces)
    rest, dropped, end = capture.finish()
    return start + rest, dropped, end


@pytest.mark.parametrize("over", [-1, 0, 1, 2, 3, 5, 3000])
@pytest.mark.parametrize("piece", [1, 7, 64, 5000])
def test_the_sandbox_keeps_the_start_and_the_end_of_a_stream_and_never_splits_a_character(
    capture_class: Any, over: int, piece: int
):
    data = "".join(f"{i}é€😀" for i in range(400)).encode()
    pieces = [data[i : i + piece] for i in range(0, len(data), piece)]
    limit = len(data) - over
    start, dropped, end = captured(capture_class(limit), pieces)
    if over <= 0:
        assert (start, dropped, end) == (data.decode(), 0, "")
        return
    assert "\ufffd" not in start + end
    assert data.startswith(start.encode()) and data.endswith(end.encode())
    assert len(start.encode()) + dropped + len(end.encode()) == len(data)
    assert over <= dropped <= over + 6
    assert len(end.encode()) >= limit // 4 - 3


TOOL_CALLS = 150
CARRIED = ("stdout", "stderr", "result", "error", "tool_calls")


@pytest.mark.parametrize("budget", [300, 1000])
def test_many_tool_calls_and_a_long_error_message_fit_the_budget_and_are_counted(
    api: httpx.Client, new_session: SessionFactory, budget: int
):
    session = new_session()
    code = (
        "from servers.time import get_current_time\n"
        f"for _ in range({TOOL_CALLS}):\n"
        "    get_current_time(timezone='UTC')\n"
        "raise ValueError(' '.join(f'word{i}' for i in range(5000)))"
    )
    reply = execute(api, session, code, max_output_tokens=budget)
    assert reply["error"]["message"].startswith("word0 word1 ")
    returned = Tokens().count(json.dumps({key: reply[key] for key in CARRIED}, ensure_ascii=False))
    assert returned == reply["tokens"]["returned"] <= budget
    assert reply["tool_calls_omitted"] > 0
    assert len(reply["tool_calls"]) + reply["tool_calls_omitted"] == TOOL_CALLS
    assert reply["tokens"]["tool_results"] > 0
    files = f"/v1/sessions/{session}/files/"
    calls = api.get(files + reply["full_output"]["tool_calls"].removeprefix("/workspace/")).json()
    assert len(calls) == TOOL_CALLS and calls[0] == reply["tool_calls"][0] and calls[-1] == reply["tool_calls"][-1]
    message = api.get(files + reply["full_output"]["message"].removeprefix("/workspace/")).text
    assert message == " ".join(f"word{i}" for i in range(5000))


def test_output_that_json_escapes_several_times_over_still_fits_the_budget(
    api: httpx.Client, new_session: SessionFactory
):
    # A control character is one token of text and several of JSON (\u0001): the budget is of the JSON.
    reply = execute(api, new_session(), "print('\\x01' * 50_000)\n'done'", max_output_tokens=500)
    assert reply["result"] == "done"
    returned = Tokens().count(json.dumps({key: reply[key] for key in CARRIED}, ensure_ascii=False))
    assert returned == reply["tokens"]["returned"] <= 500
    assert "\x01" * 20 in reply["stdout"]

"""Notebook semantics of executions, in real sandboxes over the real socket."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import SessionFactory, execute


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
    reply = execute(api, session, f"print('x' * {settings.max_output_bytes + 1000})")
    assert len(reply["stdout"]) < settings.max_output_bytes + 200
    assert "more bytes of output were dropped" in reply["stdout"]


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

"""Sandboxed code calling real MCP servers through generated stubs and the session socket."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import SECRET, SessionFactory, execute, wait_until


def ok(api: httpx.Client, session: str, code: str) -> Any:
    reply = execute(api, session, code)
    assert reply["error"] is None, reply["error"]
    return reply["result"]


def test_every_tool_of_every_server_is_listed(api: httpx.Client):
    listing = api.get("/v1/tools").json()
    tools = {server["name"]: len(server["tools"]) for server in listing["servers"]}
    assert tools["time"] == 2
    assert tools["everything"] == tools["everything_http"] >= 12
    assert tools["hostile"] == 15  # and two whose names break the MCP spec's charset are quarantined:
    assert {(q["server"], q["reason"]) for q in listing["quarantined"]} == {("hostile", "name_charset")}
    assert len(listing["quarantined"]) == 2
    assert listing["unavailable"] == []


def test_code_calls_the_time_server_through_its_stub(api: httpx.Client, new_session: SessionFactory):
    session = new_session()
    result = ok(api, session, "from servers.time import get_current_time\nget_current_time(timezone='UTC')")
    assert result["timezone"] == "UTC"
    converted = ok(
        api,
        session,
        "from servers.time import convert_time\n"
        "convert_time(source_timezone='UTC', time='12:00', target_timezone='Asia/Tokyo')['target']['datetime']",
    )
    assert "T21:00:00+09:00" in converted


@pytest.mark.parametrize("name", ["everything", "everything_http"])
def test_code_calls_server_everything_over_stdio_and_http(api: httpx.Client, new_session: SessionFactory, name: str):
    session = new_session()
    result = ok(
        api,
        session,
        f"from servers.{name} import echo, get_sum, get_structured_content\n"
        "echo(message='hi'), get_sum(a=2, b=40), get_structured_content(location='New York')",
    )
    assert result[0] == "Echo: hi"
    assert "42" in result[1]
    assert set(result[2]) >= {"temperature", "conditions"}


def test_execution_reports_its_tool_calls(api: httpx.Client, new_session: SessionFactory):
    reply = execute(api, new_session(), "from servers.everything import echo\necho(message='a')\necho(message='b')")
    calls = reply["tool_calls"]
    assert [(c["server"], c["tool"], c["ok"]) for c in calls] == [("everything", "echo", True)] * 2
    assert all(c["bytes"] > 0 and c["ms"] > 0 for c in calls)


def test_stubs_are_awaitable_and_run_concurrently(api: httpx.Client, new_session: SessionFactory):
    session = new_session()
    result = ok(
        api,
        session,
        "import asyncio\nfrom servers.everything import echo\n"
        "await asyncio.gather(*(echo(message=str(i)) for i in range(8)))",
    )
    assert result == [f"Echo: {i}" for i in range(8)]
    assert ok(api, session, "from servers.everything import echo\nawait echo(message='x')") == "Echo: x"


def test_stubs_are_callable_from_threads(api: httpx.Client, new_session: SessionFactory):
    result = ok(
        api,
        new_session(),
        "from concurrent.futures import ThreadPoolExecutor\nfrom servers.everything import echo\n"
        "with ThreadPoolExecutor(4) as pool:\n    out = list(pool.map(lambda i: echo(message=str(i)), range(8)))\nout",
    )
    assert result == [f"Echo: {i}" for i in range(8)]


def test_a_forked_child_calls_tools_on_a_connection_of_its_own(api: httpx.Client, new_session: SessionFactory):
    code = (
        "import os, threading, time\n"
        "from mcpx_runtime.tools import call_tool\n"
        "from servers.everything import echo\n"
        "echo(message='parent')\n"
        # A call in flight while the child is forked: its thread holds the connection's locks.
        "slow = threading.Thread(target=call_tool, args=('hostile', 'sleep', {'s': 1.0}))\n"
        "slow.start()\n"
        "time.sleep(0.3)\n"
        "read, write = os.pipe()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os.write(write, echo(message='child').encode())\n"
        "    os._exit(0)\n"
        "os.waitpid(pid, 0)\n"
        "slow.join()\n"
        "[os.read(read, 100).decode(), echo(message='after')]"
    )
    assert ok(api, new_session(), code) == ["Echo: child", "Echo: after"]


def test_search_tools_finds_tools_without_reading_the_stubs(api: httpx.Client, new_session: SessionFactory):
    hits = ok(api, new_session(), "from servers import search_tools\nsearch_tools('current time timezone', limit=3)")
    assert hits[0]["import"] == "servers.time.get_current_time"
    assert hits[0]["description"]
    found = api.get("/v1/tools/search", params={"q": "sum two numbers", "detail": "full"}).json()[0]
    assert (found["tool"], found["import"]) == ("get-sum", "servers.everything.get_sum")


def test_one_tool_shows_its_stub_and_schema(api: httpx.Client):
    detail = api.get("/v1/tools/time/get_current_time").json()
    assert detail["path"] == "servers/time/get_current_time.py"
    assert "def get_current_time(" in detail["source"]
    assert detail["input_schema"]["required"] == ["timezone"]
    assert api.get("/v1/tools/time/nope").status_code == 404


def hostile_calls(log: Path) -> list[str]:
    return log.read_text().splitlines()


def test_call_outside_the_allowlist_is_refused_before_reaching_the_server(
    api: httpx.Client, new_session: SessionFactory, hostile_log: Path
):
    session = new_session(servers=["time"])
    assert api.get(f"/v1/sessions/{session}").json()["servers"] == ["time"]
    assert execute(api, session, "import servers.hostile")["error"]["type"] == "PreflightError"
    # Past the pre-flight check, the sandbox has no such module at all.
    assert execute(api, session, "import servers.hostile", preflight="off")["error"]["type"] == "ModuleNotFoundError"
    before = hostile_calls(hostile_log)
    reply = execute(api, session, "from mcpx_runtime.tools import call_tool\ncall_tool('hostile', 'fail', {})")
    assert reply["error"]["type"] == "ToolNotAllowed"
    assert "not allowed" in reply["error"]["message"]
    assert hostile_calls(hostile_log) == before


def test_unknown_tools_and_invalid_arguments_are_refused_naming_the_problem(
    api: httpx.Client, new_session: SessionFactory, hostile_log: Path
):
    session = new_session()
    before = hostile_calls(hostile_log)
    unknown = execute(api, session, "from mcpx_runtime.tools import call_tool\ncall_tool('hostile', 'nope', {})")
    assert unknown["error"]["type"] == "ToolNotAllowed"
    invalid = execute(
        api, session, "from mcpx_runtime.tools import call_tool\ncall_tool('hostile', 'sleep', {'s': 'x'})"
    )
    assert invalid["error"]["type"] == "InvalidArguments"
    assert "'s'" in invalid["error"]["message"]
    # The controller's own check, behind the pre-flight one that would refuse this literal before it runs.
    code = "from servers.time import get_current_time\nget_current_time(timezone=5)"
    missing = execute(api, session, code, preflight="off")
    assert missing["error"]["type"] == "InvalidArguments"
    assert "timezone" in missing["error"]["message"]
    assert hostile_calls(hostile_log) == before
    assert api.post("/v1/sessions", json={"servers": ["nope"]}).status_code == 422


def test_tool_errors_reach_the_code_as_tool_errors_with_the_servers_message(
    api: httpx.Client, new_session: SessionFactory
):
    session = new_session()
    reply = execute(api, session, "from servers.time import get_current_time\nget_current_time(timezone='Mars/Base')")
    assert reply["error"]["type"] == "ToolError"
    assert "Mars/Base" in reply["error"]["message"]
    caught = ok(
        api,
        session,
        "from servers import ToolError\nfrom mcpx_runtime.tools import call_tool\n"
        "try:\n    call_tool('hostile', 'lie', {})\n"
        "except ToolError as exc:\n    caught = (type(exc).__name__, exc.kind)\n"
        "caught",
    )
    assert caught == ["InvalidResult", "invalid_result"]


def test_a_server_killed_mid_call_gives_a_tool_error_and_recovers(api: httpx.Client, new_session: SessionFactory):
    session = new_session()
    reply = execute(api, session, "from mcpx_runtime.tools import call_tool\ncall_tool('hostile', 'die', {})")
    assert reply["error"]["type"] == "ServerUnavailable"
    assert reply["tool_calls"][0]["ok"] is False
    again = ok(api, session, "from mcpx_runtime.tools import call_tool\ncall_tool('hostile', 'my-tool', {})")
    assert again == {"tool": "my-tool", "arguments": {}}


def test_every_hostile_stub_reaches_its_tool_by_wire_name(api: httpx.Client, new_session: SessionFactory):
    session = new_session(servers=["hostile"])
    tools = api.get("/v1/tools/search", params={"q": "", "detail": "full", "limit": 100}).json()
    special = ("die", "sleep", "lie", "garble", "fail", "echo_env", "reflect")
    hostile = [t for t in tools if t["server"] == "hostile" and t["tool"] not in special]
    assert len(hostile) == 8
    for entry in hostile:
        module, function = entry["import"].rsplit(".", 1)
        arguments = "**{'a_b': 'x', 'def_': 1}" if entry["tool"] == "weird_params" else ""
        code = f"from {module} import {function}\n{function}({arguments})"
        reply = execute(api, session, code)
        assert reply["error"] is None, (entry, reply["error"])
        assert isinstance(reply["result"], dict), (entry, reply["result"])
        assert reply["result"]["tool"] == entry["tool"]


def test_importing_every_stub_writes_nothing_and_calls_nothing(
    api: httpx.Client, new_session: SessionFactory, hostile_log: Path
):
    session = new_session()
    before = hostile_calls(hostile_log)
    events = ok(
        api,
        session,
        "import sys, pkgutil, importlib\nseen = []\n"
        "def audit(event, args):\n"
        "    if event in ('open', 'os.system', 'subprocess.Popen', 'socket.connect', 'os.remove') and "
        "not (event == 'open' and str(args[0]).endswith(('.py', '.pyc'))):\n"
        "        seen.append((event, str(args[0])[:80]))\n"
        "sys.addaudithook(audit)\n"
        "import servers\n"
        "for info in pkgutil.walk_packages(servers.__path__, 'servers.'):\n    importlib.import_module(info.name)\n"
        "seen",
    )
    assert [e for e in events if "/tools/" not in e[1] and "__pycache__" not in e[1]] == []
    assert hostile_calls(hostile_log) == before


def test_no_credential_is_visible_inside_the_sandbox(api: httpx.Client, new_session: SessionFactory):
    session = new_session()
    echoed = ok(api, session, "from mcpx_runtime.tools import call_tool\ncall_tool('hostile', 'echo_env', {})")
    assert echoed["env"]["SECRET_TOKEN"] == "[redacted]"
    found = ok(
        api,
        session,
        "import os\nsecret = " + json.dumps(SECRET) + "\nhits = []\n"
        "if any(secret in v for v in os.environ.values()): hits.append('environ')\n"
        "for root in ('/tools', '/workspace', '/run/mcpx', '/opt/mcpx', '/tmp'):\n"
        "    for d, _, files in os.walk(root):\n"
        "        for f in files:\n"
        "            try:\n"
        "                if secret.encode() in open(os.path.join(d, f), 'rb').read(): hits.append(f)\n"
        "            except OSError:\n"
        "                pass\n"
        "for p in ('/proc/self/environ', '/proc/1/environ', '/proc/self/cmdline'):\n"
        "    try:\n"
        "        if secret.encode() in open(p, 'rb').read(): hits.append(p)\n"
        "    except OSError:\n"
        "        pass\n"
        "hits",
    )
    assert found == []
    reply = execute(api, session, "from mcpx_runtime.tools import call_tool\ncall_tool('hostile', 'echo_env', {})")
    assert SECRET not in json.dumps(reply)


def test_tool_list_changes_regenerate_stubs_for_new_sessions(api: httpx.Client, new_session: SessionFactory):
    first = new_session()
    added = ok(api, first, "from servers.changing import add_tool\nadd_tool()")

    def listed() -> bool:
        tools = {s["name"]: s["tools"] for s in api.get("/v1/tools").json()["servers"]}
        return any(tool["name"] == added for tool in tools["changing"])

    wait_until(listed, 15, f"{added} to be listed")
    later = new_session()
    assert ok(api, later, f"from servers.changing import {added}\n{added}()") == added
    assert execute(api, first, f"from servers.changing import {added}")["error"]["type"] == "ImportError"


def test_a_transcript_moved_between_servers_never_enters_the_response(api: httpx.Client, new_session: SessionFactory):
    session = new_session(servers=["docstore", "crm"])
    reply = execute(
        api,
        session,
        "from servers.docstore import get_document\nfrom servers.crm import add_note\n"
        "doc = get_document(document_id='transcript-01')\n"
        "note = add_note(record_id='ACC-0001', text=doc['content'])\n"
        "print(note['note_id'], note['length'])",
    )
    assert reply["error"] is None, reply["error"]
    tokens = reply["tokens"]
    assert tokens["tool_results"] >= 40_000
    assert tokens["tool_calls"] >= 40_000  # a direct agent would have written the transcript back out
    assert tokens["returned"] < 150  # the printed line, and the two calls' entries in tool_calls
    assert tokens["saved"] >= 80_000
    assert [call["tokens"] > 40_000 for call in reply["tool_calls"]] == [True, False]
    totals = api.get(f"/v1/sessions/{session}").json()["tokens"]
    assert totals == tokens


def test_the_catalog_reports_what_discovery_costs(api: httpx.Client):
    tokens = api.get("/v1/tools").json()["tokens"]
    assert tokens["tools"] >= 50
    assert tokens["definitions"] > 10 * tokens["stub_mean"]
    assert tokens["listing"] < tokens["definitions"]


def test_server_everything_announces_its_conditional_tools_and_the_catalog_follows(api: httpx.Client):
    # server-everything registers its capability-dependent tools after the handshake and sends
    # notifications/tools/list_changed; the catalog must have re-listed in answer to it.
    servers = {s["name"]: s for s in api.get("/readyz").json()["servers"]}
    assert servers["everything"]["list_changes"] >= 1
    tools = {s["name"]: [t["name"] for t in s["tools"]] for s in api.get("/v1/tools").json()["servers"]}
    assert "simulate-research-query" in tools["everything"]


def test_polling_a_deployment_in_a_loop_returns_only_the_outcome(api: httpx.Client, new_session: SessionFactory):
    reply = execute(
        api,
        new_session(servers=["deploys"]),
        "from servers.deploys import start_deployment, get_deployment\n"
        "deployment = start_deployment(service='billing-api', version='v2.14.0')\n"
        "polls = 0\n"
        "while (status := get_deployment(deployment_id=deployment['id']))['phase'] != 'healthy':\n"
        "    polls += 1\n"
        "print(status['phase'], polls)",
    )
    assert reply["stdout"].startswith("healthy ")
    assert len(reply["tool_calls"]) > 10
    assert reply["tokens"]["tool_results"] > 20 * reply["tokens"]["returned"]

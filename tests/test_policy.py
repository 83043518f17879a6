"""Session policy (allowlists, read-only, quotas, static pre-check) and the audit log, against the real thing."""

from __future__ import annotations

import json
from typing import Any

import httpx

from controller.config import Settings
from tests.conftest import SessionFactory, execute


def error_type(api: httpx.Client, session: str, code: str) -> str | None:
    error = execute(api, session, code)["error"]
    return None if error is None else str(error["type"])


def audit_events(settings: Settings, session: str) -> list[dict[str, Any]]:
    path = settings.audit_log or settings.state_dir / "audit.log"
    events = [json.loads(line) for line in path.read_text().splitlines()]
    return [event for event in events if event["session"] == session]


def test_a_read_only_session_may_call_only_read_only_tools(api: httpx.Client, new_session: SessionFactory):
    session = new_session(servers=["crm"], policy={"read_only": True})
    assert error_type(api, session, "from servers.crm import get_record\nget_record(record_id='ACC-0001')") is None
    refused = execute(
        api, session, "from servers.crm import update_record\nupdate_record(record_id='ACC-0001', fields={'tier': 'x'})"
    )
    assert refused["error"]["type"] == "ToolNotAllowed"
    assert "read-only" in refused["error"]["message"]


def test_a_tool_allowlist_refuses_the_servers_other_tools(api: httpx.Client, new_session: SessionFactory):
    session = new_session(servers=["time"], policy={"tools": ["time/get_current_time"]})
    assert (
        error_type(api, session, "from servers.time import get_current_time\nget_current_time(timezone='UTC')") is None
    )
    code = (
        "from servers.time import convert_time\n"
        "convert_time(source_timezone='UTC', time='10:00', target_timezone='UTC')"
    )
    assert error_type(api, session, code) == "ToolNotAllowed"


def test_tool_call_quotas_per_execution_and_per_session_are_enforced(api: httpx.Client, new_session: SessionFactory):
    session = new_session(servers=["everything"], policy={"max_tool_calls_per_execution": 3, "max_tool_calls": 5})
    code = "from servers.everything import echo\ndone = 0\nfor i in range(10):\n    echo(message='x')\n    done += 1"
    assert error_type(api, session, code) == "QuotaExceeded"
    assert execute(api, session, "done")["result"] == 3
    assert error_type(api, session, code) == "QuotaExceeded"
    assert execute(api, session, "done")["result"] == 2


def test_concurrent_calls_beyond_the_quota_are_refused(api: httpx.Client, new_session: SessionFactory):
    session = new_session(servers=["hostile"], policy={"max_concurrent_tool_calls": 2})
    outcomes = execute(
        api,
        session,
        "import asyncio\nfrom mcpx_runtime.tools import call_tool\n"
        "async def one():\n    try:\n        await call_tool('hostile', 'sleep', {'s': 0.5})\n        return 'ok'\n"
        "    except Exception as exc:\n        return type(exc).__name__\n"
        "sorted(await asyncio.gather(*(one() for _ in range(5))))",
    )["result"]
    assert outcomes.count("ok") == 2
    assert outcomes.count("QuotaExceeded") == 3


def test_tool_result_bytes_beyond_the_quota_are_withheld(api: httpx.Client, new_session: SessionFactory):
    session = new_session(servers=["docstore"], policy={"max_result_bytes_per_execution": 10_000})
    reply = execute(
        api, session, "from servers.docstore import get_document\nget_document(document_id='transcript-01')"
    )
    assert reply["error"]["type"] == "QuotaExceeded"
    assert "transcript" not in json.dumps(reply).lower().replace("transcript-01", "")


def test_a_session_cannot_loosen_the_server_wide_policy(
    api: httpx.Client, new_session: SessionFactory, settings: Settings
):
    session = new_session(policy={"max_tool_calls": 10**9, "max_concurrent_tool_calls": 10**6})
    policy = api.get(f"/v1/sessions/{session}").json()["policy"]
    assert policy["max_tool_calls"] == settings.policy.max_tool_calls
    assert policy["max_concurrent_tool_calls"] == settings.policy.max_concurrent_tool_calls


def test_the_static_pre_check_refuses_denied_imports_before_running(api: httpx.Client, new_session: SessionFactory):
    session = new_session(policy={"denied_imports": ["subprocess", "ctypes"]})
    for code in ["import subprocess", "from ctypes import CDLL", "__import__('subprocess')",
                 "import importlib\nimportlib.import_module('ctypes.util')"]:  # fmt: skip
        reply = execute(api, session, "ran = True\n" + code)
        assert reply["error"]["kind"] == "policy", code
        assert execute(api, session, "'ran' in dir()")["result"] is False
    assert error_type(api, session, "import json\njson.dumps([1])") is None


def test_the_audit_log_records_what_happened_without_argument_values(
    api: httpx.Client, new_session: SessionFactory, settings: Settings
):
    session = new_session(servers=["everything"], policy={"denied_imports": ["ctypes"]})
    execute(api, session, "from servers.everything import echo\necho(message='canary-argument-8c1d')")
    execute(api, session, "from mcpx_runtime.tools import call_tool\ncall_tool('time', 'get_current_time', {})")
    execute(api, session, "import ctypes")
    execute(api, session, "while True:\n    pass", timeout_s=1)
    forged_answer = b'{"jsonrpc": "2.0", "id": 1, "result": "forged"}\n'
    execute(
        api,
        session,
        "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect('/run/mcpx/bridge.sock')\n"
        f"s.sendall({forged_answer!r})\ns.recv(1000)",
    )
    api.delete(f"/v1/sessions/{session}")
    events = audit_events(settings, session)
    names = [event["event"] for event in events]
    for expected in ["session.created", "tool.called", "policy.refused", "static_check.refused", "execution.timeout",
                     "bridge.violation", "session.deleted"]:  # fmt: skip
        assert expected in names, (expected, names)
    called = next(event for event in events if event["event"] == "tool.called")
    assert (called["server"], called["tool"], called["ok"]) == ("everything", "echo", True)
    assert called["trace"]
    assert "canary-argument-8c1d" not in json.dumps(events)

"""Session policy (allowlists, read-only, quotas, static pre-check) and the audit log, against the real thing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from controller.catalog import ToolInfo
from controller.config import Settings
from controller.policy import _plain_check, argument_problem
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


QUOTA_PROBE = """
from mcpx_runtime.tools import call_tool
outcomes = []
for name in ("my-tool", "my_tool", "Class"):
    try:
        call_tool("hostile", name, {})
        outcomes.append("ok")
    except Exception as exc:
        outcomes.append(type(exc).__name__)
outcomes
"""


@pytest.mark.parametrize(
    ("slack", "outcomes", "received"),
    [
        pytest.param(-1, ["QuotaExceeded"] * 3, ["my-tool"], id="the-first-answer-overshoots"),
        pytest.param(0, ["ok", "QuotaExceeded", "QuotaExceeded"], ["my-tool"], id="the-first-answer-spends-it"),
        pytest.param(
            1, ["ok", "QuotaExceeded", "QuotaExceeded"], ["my-tool", "my_tool"], id="one-byte-left-lets-one-more-go"
        ),
    ],
)
def test_once_the_result_bytes_quota_is_spent_the_next_call_never_reaches_the_server(
    api: httpx.Client,
    new_session: SessionFactory,
    hostile_log: Path,
    slack: int,
    outcomes: list[str],
    received: list[str],
):
    calibration = execute(
        api,
        new_session(servers=["hostile"]),
        "from mcpx_runtime.tools import call_tool\ncall_tool('hostile', 'my-tool', {})",
    )
    size = calibration["tool_calls"][0]["bytes"]  # my-tool and my_tool answer alike: the same size
    session = new_session(servers=["hostile"], policy={"max_result_bytes_per_execution": size + slack})
    before = len(hostile_log.read_text().splitlines())
    reply = execute(api, session, QUOTA_PROBE)
    assert reply["result"] == outcomes
    assert hostile_log.read_text().splitlines()[before:] == [repr(name) for name in received]
    # The quota is per execution: the next one may call again.
    assert execute(api, session, QUOTA_PROBE)["result"][0] == outcomes[0]


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


# --- argument validation: the plain-schema shortcut must agree with jsonschema everywhere ------------------------

PLAIN_SCHEMAS: list[dict[str, Any]] = [
    {"type": "object", "properties": {"timezone": {"type": "string", "description": "IANA"}}, "required": ["timezone"]},
    {"properties": {"n": {"type": "integer", "title": "N"}, "x": {"type": "number"}}, "type": "object"},
    {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object", "additionalProperties": False,
     "properties": {"flag": {"type": "boolean"}, "maybe": {"type": ["string", "null"]}}, "required": ["flag"]},
    {"$schema": "http://json-schema.org/draft-04/schema#", "type": "object",
     "properties": {"n": {"type": "integer"}, "items": {"type": "array"}, "meta": {"type": "object"}}},
    {"type": "object", "properties": {"anything": {"description": "no type: any value"}}, "required": ["anything"]},
]  # fmt: skip
OTHER_SCHEMAS: list[dict[str, Any]] = [
    {"type": "object", "properties": {"unit": {"type": "string", "enum": ["c", "f"]}}},
    {"type": "object", "properties": {"point": {"type": "object", "properties": {"x": {"type": "number"}}}}},
    {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}}},
    {"type": "object", "properties": {"n": {"$ref": "#/$defs/n"}}, "$defs": {"n": {"type": "integer"}}},
    {"$schema": "http://json-schema.org/draft-03/schema#", "type": "object", "properties": {"n": {"type": "integer"}}},
    {"type": "object", "properties": {"n": {"type": [{"hostile": True}]}}},
    {"type": "object", "additionalProperties": {"type": "string"}},
]
VALUES: list[Any] = ["text", "", 0, 7, -3, 1.0, 2.5, True, False, None, [], [1], {}, {"a": 1}, 10**30]


def argument_sets(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """Every property alone and with the required ones, with every kind of JSON value, plus strays and gaps."""
    properties = schema.get("properties", {})
    names = [*properties, "stray"]
    fits = jsonschema.Draft202012Validator

    def fitting(name: str) -> Any:
        return next(value for value in VALUES if fits(properties.get(name, {})).is_valid(value))

    required = {name: fitting(name) for name in schema.get("required", [])}
    sets: list[dict[str, Any]] = [{}, dict(required)]
    for name in names:
        for value in VALUES:
            sets += [{name: value}, {**required, name: value}]
    return sets


def jsonschema_problem(schema: dict[str, Any], arguments: dict[str, Any]) -> str | None:
    """What jsonschema alone says, the schema taken as the catalog keeps it (keys sorted: it orders the errors)."""
    schema = json.loads(json.dumps(schema, sort_keys=True))
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.exceptions.SchemaError:
        return None  # a server's broken schema is not held to
    error = jsonschema.exceptions.best_match(cls(schema).iter_errors(arguments))
    if error is None:
        return None
    where = ".".join(str(part) for part in error.absolute_path)
    return f"argument {where!r}: {error.message}" if where else error.message


def test_argument_problems_are_jsonschemas_whether_or_not_the_schema_is_plain() -> None:
    for schema in PLAIN_SCHEMAS + OTHER_SCHEMAS:
        tool = ToolInfo("srv", "tool", input_schema=schema)
        for arguments in argument_sets(schema):
            assert argument_problem(tool, arguments) == jsonschema_problem(schema, arguments), (schema, arguments)


def test_only_plain_schemas_take_the_shortcut_and_it_answers_for_valid_arguments() -> None:
    for schema in PLAIN_SCHEMAS:
        check = _plain_check(ToolInfo("srv", "tool", input_schema=schema).input_schema_key)
        assert check is not None, schema
        assert any(check(arguments) for arguments in argument_sets(schema)), schema
    for schema in OTHER_SCHEMAS:
        assert _plain_check(ToolInfo("srv", "tool", input_schema=schema).input_schema_key) is None, schema

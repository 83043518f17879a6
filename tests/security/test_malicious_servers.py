"""A hostile MCP server against the sandbox that calls it: its metadata in the stubs, a call it never answers in
time, a result that breaks its own schema, and an error message built to be executed."""

from __future__ import annotations

import textwrap
from typing import Any

import httpx

from tests.conftest import SessionFactory, execute
from tests.security.conftest import Attack
from tests.servers.hostile import GARBLED, NASTY_TEXT

# Sandbox-side: every file of the mounted stubs, parsed and held to "definitions only", independently of the
# generator's own check.
STUB_AUDIT = textwrap.dedent(
    """
    import ast, os

    VALUES = (ast.Constant, ast.Name, ast.Load, ast.Dict, ast.List, ast.Tuple, ast.Subscript, ast.BinOp, ast.BitOr,
              ast.UnaryOp, ast.USub, ast.keyword)
    TYPES = VALUES + (ast.Attribute,)

    def only(node, allowed):
        return all(isinstance(child, allowed) for child in ast.walk(node))

    def typed_dict(value):
        return (isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "TypedDict"
                and all(only(part, VALUES) for part in value.args + value.keywords))

    def harmless(statement, first):
        if first and isinstance(statement, ast.Expr):
            return isinstance(statement.value, ast.Constant) and isinstance(statement.value.value, str)
        if isinstance(statement, ast.ImportFrom):
            module = statement.module or ""
            return statement.level == 0 and (
                module in ("__future__", "typing", "mcpx_runtime.tools") or module.startswith("servers."))
        if isinstance(statement, (ast.Assign, ast.AnnAssign)):
            targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
            return all(isinstance(t, ast.Name) for t in targets) and (
                only(statement.value, VALUES) or typed_dict(statement.value))
        if isinstance(statement, ast.FunctionDef):
            docstring, *rest = statement.body
            if statement.decorator_list or len(rest) != 1 or not isinstance(rest[0], ast.Return):
                return False
            call = rest[0].value
            arguments = statement.args
            return (isinstance(docstring, ast.Expr) and isinstance(docstring.value, ast.Constant)
                    and isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "_call"
                    and all(only(part, VALUES) for part in call.args + call.keywords)
                    and all(only(default, VALUES) for default in arguments.defaults + arguments.kw_defaults
                            if default is not None)
                    and all(arg.annotation is None or only(arg.annotation, TYPES)
                            for arg in arguments.args + arguments.kwonlyargs)
                    and (statement.returns is None or only(statement.returns, TYPES)))
        return False

    files, refused, other = 0, [], []
    for directory, _, names in os.walk("/tools"):
        for name in names:
            path = os.path.join(directory, name)
            if name.endswith(".ts"):
                continue  # the TypeScript stubs: parsed and vetted statement by statement in tests/test_tsstubs.py
            if not name.endswith(".py"):
                other.append(path)
                continue
            files += 1
            tree = ast.parse(open(path, encoding="utf-8").read(), path)
            refused += [f"{path}:{s.lineno}" for i, s in enumerate(tree.body) if not harmless(s, i == 0)]
    {"files": files, "refused": refused, "other": other}
    """
)


NEVER_IN_TIME = "import time\nstarted = time.monotonic()\nfrom servers.hostile import sleep\nsleep(s={seconds})"


def result(reply: dict[str, Any]) -> Any:
    assert reply["error"] is None, reply["error"]
    return reply["result"]


def test_every_mounted_stub_file_holds_nothing_but_definitions(attack: Attack):
    audit = result(attack(STUB_AUDIT))
    assert audit["files"] > 40  # every server's package and tool files, the hostile ones included
    assert audit["refused"] == []
    assert audit["other"] == []


def test_a_call_the_server_never_answers_in_time_is_interrupted_and_its_late_answer_goes_to_no_other_call(
    api: httpx.Client, new_session: SessionFactory, runtime: str
):
    session = new_session(runtime=runtime, servers=["hostile"])
    stuck = execute(api, session, NEVER_IN_TIME.format(seconds=4), timeout_s=1.5)
    assert stuck["error"]["kind"] == "timeout"
    assert stuck["state_reset"] is False
    # Calls made while the abandoned one is answered (at started + 4 s) must each get their own result.
    later = execute(
        api,
        session,
        textwrap.dedent(
            """
            from mcpx_runtime.tools import call_tool
            results = []
            while time.monotonic() - started < 5.5:  # paced to stay under the per-execution call quota
                results.append((len(results), call_tool("hostile", "my_tool", {"i": len(results)})))
                time.sleep(0.01)
            len(results), [r for i, r in results if r != {"tool": "my_tool", "arguments": {"i": i}}]
            """
        ),
        timeout_s=20,
    )
    calls, wrong = result(later)
    assert calls > 5
    assert wrong == []


def test_the_late_answer_of_an_abandoned_call_is_not_billed_to_the_next_execution(
    api: httpx.Client, new_session: SessionFactory
):
    session = new_session(runtime="runc", servers=["hostile"])
    assert execute(api, session, NEVER_IN_TIME.format(seconds=2), timeout_s=1)["error"]["kind"] == "timeout"
    waits = execute(api, session, "while time.monotonic() - started < 3:\n    time.sleep(0.05)")
    assert waits["error"] is None, waits["error"]
    assert waits["tool_calls"] == []
    assert waits["tokens"]["tool_results"] == 0


def test_a_result_that_breaks_its_own_schema_raises_invalid_result_and_never_reaches_the_code(attack: Attack):
    reply = attack(
        textwrap.dedent(
            """
            from servers import InvalidResult
            from servers.hostile import lie
            try:
                outcome = ["returned", lie()]
            except InvalidResult as exc:
                outcome = [type(exc).__name__, exc.kind, exc.server, exc.tool, str(exc)]
            outcome
            """
        )
    )
    kind, *fields, message = result(reply)
    assert [kind, *fields] == ["InvalidResult", "invalid_result", "hostile", "lie"]
    assert message.startswith("hostile.lie returned an invalid result")
    assert [(c["tool"], c["ok"]) for c in reply["tool_calls"]] == [("lie", False)]


def test_an_error_result_with_hostile_text_arrives_as_tool_error_text_only(attack: Attack):
    reply = attack(
        textwrap.dedent(
            """
            import os
            from servers import ToolError
            from servers.hostile import fail
            try:
                fail()
                outcome = ["returned"]
            except ToolError as exc:
                outcome = [type(exc).__name__, exc.kind, exc.server, exc.tool, str(exc)]
            outcome + [os.path.exists("/tmp/pwned")]
            """
        )
    )
    assert result(reply) == ["ToolError", "tool_error", "hostile", "fail", "it broke: " + NASTY_TEXT, False]
    assert reply["stdout"] == reply["stderr"] == ""


def test_json_text_holding_a_lone_surrogate_arrives_as_the_text_it_is(attack: Attack):
    # Decoded, it would be a string no frame to the sandbox can carry: the call must neither hang nor fail.
    reply = attack("from servers.hostile import garble\ngarble()")
    assert result(reply) == GARBLED
    assert [(c["tool"], c["ok"]) for c in reply["tool_calls"]] == [("garble", True)]

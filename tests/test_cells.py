"""Plain and concurrent tool calls in one cell: a plain call returns its result, always; a call the cell awaits,
gathers or schedules runs concurrently (`mcpx_runtime.cells`)."""

from __future__ import annotations

import ast
import importlib.util

import httpx
import pytest

from tests.conftest import ROOT, SessionFactory, execute

# The sandbox runtime is not a package of the controller: its pure rewrite is loaded from its file.
_spec = importlib.util.spec_from_file_location("cells", ROOT / "sandbox-image" / "mcpx_runtime" / "cells.py")
assert _spec is not None and _spec.loader is not None
cells = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cells)

# Concurrency is seen by the quota, not by a clock: with two calls allowed in flight, a third concurrent one is
# refused, and calls one after another never are.
CONCURRENT = {"max_concurrent_tool_calls": 2}
OUTCOME = (
    "import asyncio\nfrom servers.hostile import sleep\n"
    "async def outcome():\n"
    "    try:\n        await sleep(s=0.3)\n        return 'ok'\n"
    "    except Exception as exc:\n        return type(exc).__name__\n"
    "def named(results):\n    return sorted(type(r).__name__ if isinstance(r, Exception) else 'ok' for r in results)\n"
)


def rewritten(code: str) -> str:
    return ast.unparse(cells.rewrite(ast.parse(code)))


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("a = get(x=1)", "a = get(x=1)"),
        ("a = get(x=1)\nb = await get(x=2)", "a = get(x=1)\nb = await __mcpx_awaited__(get, x=2)"),
        (
            "await asyncio.gather(get(x=1), other(y=2))",
            "await __mcpx_awaited__(asyncio.gather, __mcpx_awaited__(get, x=1), __mcpx_awaited__(other, y=2))",
        ),
        (
            "asyncio.gather(*(get(x=i) for i in ids))",
            "asyncio.gather(*(__mcpx_awaited__(get, x=i) for i in ids))",
        ),
        (
            "calls = [get(x=i) for i in ids]\nawait asyncio.gather(*calls)",
            "calls = [__mcpx_awaited__(get, x=i) for i in ids]\nawait __mcpx_awaited__(asyncio.gather, *calls)",
        ),
        (
            "tasks = []\ntasks.append(get(x=1))\ngather(*tasks)",
            "tasks = []\ntasks.append(__mcpx_awaited__(get, x=1))\ngather(*tasks)",
        ),
        ("t = create_task(get(x=1))", "t = create_task(__mcpx_awaited__(get, x=1))"),
        ("done = wait([get(x=1), get(x=2)])", "done = wait([__mcpx_awaited__(get, x=1), __mcpx_awaited__(get, x=2)])"),
        ("tg.create_task(get(x=1))", "tg.create_task(__mcpx_awaited__(get, x=1))"),
    ],
)
def test_only_calls_handed_to_the_event_loop_are_rewritten(code: str, expected: str):
    assert rewritten(code) == expected


def test_a_function_s_plain_calls_stay_plain_and_its_awaited_ones_are_rewritten():
    code = "async def f(i):\n    v = get(x=i)\n    return await get(x=v)"
    assert rewritten(code) == "async def f(i):\n    v = get(x=i)\n    return await __mcpx_awaited__(get, x=v)"


def test_names_are_awaited_per_scope():
    # `calls` is gathered only inside `g`: the module's own `calls` stays a plain call.
    code = "calls = get(x=1)\nasync def g():\n    calls = [get(x=2)]\n    await gather(*calls)"
    assert rewritten(code).startswith("calls = get(x=1)\n")
    assert "calls = [__mcpx_awaited__(get, x=2)]" in rewritten(code)


def test_the_rewrite_moves_no_line():
    code = "a = get(x=1)\n\nb = await get(\n    x=2)\nc = 3"
    before = [(n.lineno, type(n).__name__) for n in ast.parse(code).body]
    after = [(n.lineno, type(n).__name__) for n in cells.rewrite(ast.parse(code)).body]
    assert before == after


@pytest.mark.docker
def test_plain_and_awaited_calls_in_one_cell_each_return_what_they_should(
    api: httpx.Client, new_session: SessionFactory
):
    code = (
        "from servers.everything import echo\n"
        "first = echo(message='plain')\n"
        "second = await echo(message='awaited')\n"
        "[first, second, first.upper()]"
    )
    assert execute(api, new_session(), code)["result"] == ["Echo: plain", "Echo: awaited", "ECHO: PLAIN"]


@pytest.mark.docker
def test_a_plain_call_inside_an_async_function_returns_its_result(api: httpx.Client, new_session: SessionFactory):
    code = (
        "import asyncio\nfrom servers.everything import echo\n"
        "async def shout(word):\n    text = echo(message=word)\n    return text.upper()\n"
        "await asyncio.gather(shout('a'), shout('b'))"
    )
    assert execute(api, new_session(), code)["result"] == ["ECHO: A", "ECHO: B"]


@pytest.mark.docker
def test_gathered_calls_run_concurrently_and_plain_ones_one_after_another(
    api: httpx.Client, new_session: SessionFactory
):
    session = new_session(servers=["hostile"], policy=CONCURRENT)
    gathered = OUTCOME + "sorted(await asyncio.gather(*(outcome() for _ in range(3))))"
    assert execute(api, session, gathered)["result"] == ["QuotaExceeded", "ok", "ok"]
    plain = "import asyncio\nfrom servers.hostile import sleep\n[sleep(s=0.1)['tool'] for _ in range(3)]\n"
    assert (
        execute(api, session, plain + "await asyncio.sleep(0)\n" + "[sleep(s=0.1)['tool'] for _ in range(3)]")["result"]
        == ["sleep"] * 3
    )


@pytest.mark.docker
@pytest.mark.parametrize(
    "schedule",
    [
        "calls = [sleep(s=0.3) for _ in range(3)]\nresults = await asyncio.gather(*calls, return_exceptions=True)",
        "tasks = []\nfor _ in range(3):\n    tasks.append(sleep(s=0.3))\n"
        "results = await asyncio.gather(*tasks, return_exceptions=True)",
        "tasks = [asyncio.create_task(sleep(s=0.3)) for _ in range(3)]\n"
        "results = await asyncio.gather(*tasks, return_exceptions=True)",
    ],
    ids=["comprehension", "appended", "tasks"],
)
def test_calls_stored_for_a_later_gather_run_concurrently(
    api: httpx.Client, new_session: SessionFactory, schedule: str
):
    session = new_session(servers=["hostile"], policy=CONCURRENT)
    assert execute(api, session, OUTCOME + schedule + "\nnamed(results)")["result"] == ["QuotaExceeded", "ok", "ok"]


@pytest.mark.docker
def test_parallel_runs_plain_calls_at_once_from_plain_code(api: httpx.Client, new_session: SessionFactory):
    session = new_session(servers=["hostile", "everything"], policy=CONCURRENT)
    code = (
        "from servers import parallel, QuotaExceeded\nfrom servers.everything import echo\n"
        "from servers.hostile import sleep\n"
        "echoes = parallel(echo, [{'message': str(i)} for i in range(5)], limit=2)\n"
        "try:\n    parallel(sleep, [{'s': 0.3}] * 3, limit=3)\n    refused = None\n"
        "except QuotaExceeded as exc:\n    refused = type(exc).__name__\n"
        "[echoes, refused]"
    )
    assert execute(api, session, code)["result"] == [[f"Echo: {i}" for i in range(5)], "QuotaExceeded"]


@pytest.mark.docker
@pytest.mark.parametrize("call", ["fail()", "await fail()"], ids=["plain", "awaited"])
def test_a_failed_call_s_traceback_shows_the_agent_s_line_not_the_runtime(
    api: httpx.Client, new_session: SessionFactory, call: str
):
    reply = execute(api, new_session(servers=["hostile"]), f"from servers.hostile import fail\nx = 1\n{call}")
    error = reply["error"]
    assert error["type"] == "ToolError"
    assert "line 3, in <module>" in error["traceback"]
    assert "mcpx_runtime" not in error["traceback"]

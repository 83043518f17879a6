"""The suite's own rules, checked on its source: no wall-clock upper bounds (timing claims are `make bench` rows) and
no sleeps to synchronise (tests wait on events, or poll through `wait_until`). Code that tests send into a sandbox
is a string, never a call here, so it may sleep as it likes."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
# Benchmarks measure time; our test MCP servers sleep on request (that is their job).
EXEMPT = (TESTS / "bench", TESTS / "servers")
SLEEPS = {"sleep"}  # time.sleep, asyncio.sleep, anyio.sleep, trio.sleep, or any of them imported bare
CLOCKS = {
    "monotonic",
    "monotonic_ns",
    "perf_counter",
    "perf_counter_ns",
    "time",
    "time_ns",
    "process_time",
    "timestamp",
}
TIMING_NAMES = {"elapsed", "duration", "took", "latency", "wall"}
# The one place a test may sleep: the polling helpers, for conditions without an event.
POLLERS = {("conftest.py", "wait_until"), ("conftest.py", "wait_until_async")}


def called_name(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    if isinstance(call.func, ast.Name):
        return call.func.id
    return None


def reads_a_clock(node: ast.AST, instants: set[str]) -> bool:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute) and sub.func.attr in CLOCKS:
            return True
        if isinstance(sub, ast.Name) and sub.id in instants:
            return True
    return False


def is_duration(node: ast.AST, instants: set[str], durations: set[str]) -> bool:
    """A difference of a clock reading and something not a constant (`time.monotonic() - started`), or a name
    holding one; a reading less a constant (`before - 0.001`) is still a point in time."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and (sub.id in durations or sub.id in TIMING_NAMES):
            return True
        if isinstance(sub, ast.BinOp) and isinstance(sub.op, ast.Sub):
            sides = (sub.left, sub.right)
            if any(reads_a_clock(side, instants) for side in sides) and not any(
                isinstance(side, ast.Constant) for side in sides
            ):
                return True
    return False


def timed_names(function: ast.AST) -> tuple[set[str], set[str]]:
    """Names a function assigns a clock reading (`started = time.monotonic()`) and a duration (`took = ...`)."""
    instants: set[str] = set()
    durations: set[str] = set()
    for node in ast.walk(function):
        if isinstance(node, ast.Assign):
            names = {name.id for target in node.targets for name in ast.walk(target) if isinstance(name, ast.Name)}
            if is_duration(node.value, instants, durations):
                durations |= names
            elif reads_a_clock(node.value, instants):
                instants |= names
    return instants, durations


def upper_bounds(source: str) -> list[int]:
    """Lines of asserts that bound a duration from above (`elapsed < 4`, `time.monotonic() - started < 10`)."""
    found = []
    for function in ast.walk(ast.parse(source)):
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        instants, durations = timed_names(function)
        for node in ast.walk(function):
            if not isinstance(node, ast.Assert):
                continue
            for compare in (sub for sub in ast.walk(node.test) if isinstance(sub, ast.Compare)):
                operands = [compare.left, *compare.comparators]
                for left, op, right in zip(operands, compare.ops, operands[1:], strict=False):
                    below = isinstance(op, ast.Lt | ast.LtE) and is_duration(left, instants, durations)
                    above = isinstance(op, ast.Gt | ast.GtE) and is_duration(right, instants, durations)
                    if below or above:
                        found.append(node.lineno)
    return sorted(set(found))


def sleeps(source: str, filename: str) -> list[int]:
    """Lines that call a sleep outside the polling helpers."""
    found = []

    def visit(node: ast.AST, function: str | None) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            function = node.name
        if isinstance(node, ast.Call) and called_name(node) in SLEEPS and (filename, function) not in POLLERS:
            found.append(node.lineno)
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    visit(ast.parse(source), None)
    return found


def suite_files() -> list[Path]:
    return sorted(path for path in TESTS.rglob("*.py") if not any(path.is_relative_to(e) for e in EXEMPT))


@pytest.mark.parametrize("path", suite_files(), ids=lambda path: str(path.relative_to(TESTS)))
def test_no_test_bounds_a_duration_or_sleeps_to_synchronise(path: Path) -> None:
    source = path.read_text()
    assert upper_bounds(source) == [], "a wall-clock upper bound: assert the order of events, measure in make bench"
    assert sleeps(source, path.name) == [], "a sleep: wait on an event, or poll with wait_until"


@pytest.mark.parametrize(
    "source",
    [
        "def t():\n    t0 = time.monotonic()\n    run()\n    assert time.monotonic() - t0 < 2 + 2\n",
        "def t():\n    reply, took = timed(api)\n    assert took < LIMIT\n",
        "def t():\n    t0 = time.perf_counter()\n    took = time.perf_counter() - t0\n    assert 1 <= took <= 5\n",
        "def t():\n    before = time.time()\n    assert abs(stamp - before) < 0.2\n",
        "def t():\n    start = time.process_time()\n    spent = time.process_time() - start\n    assert 1.0 > spent\n",
        "def t():\n    first = time.monotonic() - s\n    total = time.monotonic() - s\n    assert first < total - 1\n",
    ],
)
def test_every_form_of_a_wall_clock_upper_bound_is_found(source: str) -> None:
    assert upper_bounds(source) != []


@pytest.mark.parametrize(
    "source",
    [
        "def t():\n    reply, elapsed = timed(api)\n    assert elapsed >= GRACE + MARGIN\n",
        "def t():\n    execute(api, s, 'import time\\nt0 = time.monotonic()\\nassert time.monotonic() - t0 < 1')\n",
        "def t():\n    before = time.time()\n    assert before - 0.001 < stamp.timestamp() <= time.time()\n",
        "def t():\n    assert len(rows) < LIMIT and reply['ms'] > 0\n",
    ],
)
def test_lower_bounds_and_sandbox_code_are_not_upper_bounds(source: str) -> None:
    assert upper_bounds(source) == []


@pytest.mark.parametrize(
    "source",
    [
        "def t():\n    time.sleep(3)\n",
        "async def t():\n    await asyncio.sleep(0)\n",
        "async def t():\n    while busy():\n        await anyio.sleep(0.05)\n",
        "from time import sleep\ndef t():\n    sleep(1)\n",
    ],
)
def test_every_form_of_a_sleep_in_a_test_is_found(source: str) -> None:
    assert sleeps(source, "test_x.py") != []


def test_sleeps_in_sandbox_code_and_in_the_polling_helpers_are_allowed() -> None:
    assert sleeps("def t():\n    execute(api, s, 'import time\\ntime.sleep(5)')\n", "test_x.py") == []
    assert sleeps("def wait_until(p, t, w):\n    time.sleep(0.05)\n", "conftest.py") == []
    assert sleeps("def wait_until(p, t, w):\n    time.sleep(0.05)\n", "test_x.py") != []

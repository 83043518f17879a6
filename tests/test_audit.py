"""The audit log's throttle for events a sandbox can repeat at will."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from controller.audit import AuditLog, Repeats
from tests.conftest import wait_until_async

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_a_repeated_event_is_one_line_at_once_and_one_with_the_count_of_the_rest(tmp_path: Path):
    audit = AuditLog(tmp_path / "audit.log")
    repeats = Repeats(audit, window_s=60)
    for _ in range(20_000):
        repeats.record("s1", "bridge.violation", "bad frame", session="s1")
    repeats.record("s1", "bridge.violation", "other kind", session="s1")
    repeats.record("s2", "bridge.violation", "bad frame", session="s2")
    assert [(e["session"], e["what"], e["count"]) for e in lines(audit.path)] == [
        ("s1", "bad frame", 1),
        ("s1", "other kind", 1),
        ("s2", "bad frame", 1),
    ]
    repeats.flush("s1")
    repeats.flush("s2")
    written = lines(audit.path)
    assert len(written) == 4
    assert written[3] == {**written[3], "session": "s1", "what": "bad frame", "count": 19_999}
    assert sum(e["count"] for e in written if e["session"] == "s1" and e["what"] == "bad frame") == 20_000


@pytest.mark.parametrize("repeats_in_window", [0, 1, 3])
async def test_a_window_that_ends_writes_its_count_and_the_next_event_opens_a_new_one(
    tmp_path: Path, repeats_in_window: int
):
    audit = AuditLog(tmp_path / "audit.log")
    repeats = Repeats(audit, window_s=0.05)
    for _ in range(1 + repeats_in_window):
        repeats.record("s", "bridge.violation", "x", session="s")
    await wait_until_async(lambda: not repeats._windows, 10, "the window to end")
    repeats.record("s", "bridge.violation", "x", session="s")
    counts = [e["count"] for e in lines(audit.path)]
    assert counts == ([1, repeats_in_window, 1] if repeats_in_window else [1, 1])
    repeats.flush("s")

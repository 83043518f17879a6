"""The books of tool calls: batched, complete, in order, each call with its own time, none lost to another's failure.

The parts are the real ones (tokenizer, telemetry, an audit file); end to end, tests/test_api.py and
tests/test_policy.py check the same books through sandboxed code.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from controller import ledger
from controller.audit import AuditLog
from controller.catalog import ToolOutcome
from controller.ledger import Ledger, ToolCall
from controller.shaping import Tokens
from controller.telemetry import Telemetry
from tests.conftest import wait_until

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def tokens() -> Tokens:
    return Tokens()


@pytest.fixture
def audit_path(tmp_path: Path) -> Path:
    return tmp_path / "audit.log"


@pytest.fixture
def books(tokens: Tokens, audit_path: Path) -> Ledger:
    return Ledger(tokens, Telemetry("test"), AuditLog(audit_path))


def audited(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def outcome(value: Any) -> ToolOutcome:
    return ToolOutcome(value, size=len(json.dumps(value)))


def book(books: Ledger, value: Any, *, tool: str = "get", events: list[Any] | None = None) -> asyncio.Future[ToolCall]:
    listener = (lambda name, data: events.append((name, data))) if events is not None else None
    return books.book("s1", "t1", "srv", tool, {"q": "x"}, outcome(value), 1.5, listener)


async def test_a_call_is_booked_within_the_flush_delay_without_anyone_asking(
    books: Ledger, tokens: Tokens, audit_path: Path
) -> None:
    events: list[Any] = []
    booked = book(books, {"text": "hello world"}, events=events)
    asyncio.get_running_loop().call_soon(events.append, "next turn")  # a batch waits longer than this
    call = await asyncio.wait_for(booked, ledger.FLUSH_AFTER_S * 20)
    value = {"text": "hello world"}
    assert (call.server, call.tool, call.ok, call.ms, call.bytes) == ("srv", "get", True, 1.5, len(json.dumps(value)))
    assert call.tokens == tokens.count_json(value)
    assert call.call_tokens == tokens.count_json({"name": "get", "arguments": {"q": "x"}})
    assert events == ["next turn", ("tool_call", call.model_dump())]
    [entry] = audited(audit_path)
    assert entry["event"] == "tool.called" and entry["session"] == "s1" and entry["trace"] == "t1"
    assert "x" not in json.dumps(entry)  # argument values are never audited


async def test_flush_books_every_waiting_call_at_once_in_order(books: Ledger, audit_path: Path) -> None:
    futures = [book(books, i, tool=f"tool{i}") for i in range(5)]
    books.flush()
    assert all(future.done() for future in futures)
    assert [future.result().tool for future in futures] == [f"tool{i}" for i in range(5)]
    assert [entry["tool"] for entry in audited(audit_path)] == [f"tool{i}" for i in range(5)]


async def test_a_full_batch_is_booked_as_soon_as_the_current_answer_is_out(books: Ledger) -> None:
    events: list[Any] = []
    futures = [book(books, i, events=events) for i in range(ledger.MAX_PENDING)]
    assert not any(future.done() for future in futures)
    asyncio.get_running_loop().call_soon(events.append, "next turn")  # the flush delay's timer would come after it
    await asyncio.gather(*futures)
    assert events.index("next turn") == ledger.MAX_PENDING


async def test_the_audit_time_is_the_calls_not_the_flushs(books: Ledger, audit_path: Path) -> None:
    before = time.time()
    book(books, "early")
    booked_by = time.time()
    # Audit times have milliseconds: the flush comes at a later one than any the call could have.
    wait_until(lambda: time.time() > booked_by + 0.001, 10, "the clock to pass the call's millisecond")
    books.flush()
    stamp = datetime.fromisoformat(audited(audit_path)[0]["time"]).timestamp()
    assert before - 0.001 < stamp <= booked_by


async def test_a_large_result_is_counted_apart_and_close_waits_for_it(books: Ledger, tokens: Tokens) -> None:
    text = "word " * (ledger.INLINE_COUNT_BYTES // 4)
    large = books.book("s1", "t1", "srv", "big", {}, ToolOutcome(text, size=len(text)), 9.0, None)
    small = book(books, "small")
    await books.close()
    assert large.result().tokens == tokens.count(text)
    assert small.result().tokens == tokens.count_json("small")


async def test_a_call_that_cannot_be_booked_fails_alone(books: Ledger, audit_path: Path) -> None:
    def broken(name: str, data: Any) -> None:
        raise AssertionError("never called: booking fails first")

    bad = books.book("s1", "t1", "srv", "bad", {}, ToolOutcome(object(), size=1), 1.0, broken)
    good = book(books, "fine")
    books.flush()
    assert isinstance(bad.exception(), TypeError)  # an object no JSON can hold
    assert good.result().ok
    assert [entry["tool"] for entry in audited(audit_path)] == ["bad", "get"]  # the failed call was audited


async def test_a_cancelled_wait_does_not_break_the_batch(books: Ledger) -> None:
    first, second = book(books, 1), book(books, 2)
    first.cancel()
    books.flush()
    assert first.cancelled() and second.result().tokens > 0

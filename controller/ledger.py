"""The books of tool calls: token counts, metrics, audit records and stream events, kept in batches.

A tool call's answer goes back to the sandbox first; its bookkeeping follows. Done call by call, that work (two
token counts, a metric, an audit line) runs between one call of a loop and the next with the tokenizer's tables
cold each time, and on a 2-vCPU host it added 0.2-0.3 ms to every call. Booked in batches it runs warm: a call
waits at most FLUSH_AFTER_S (or until MAX_PENDING calls wait, or its execution ends) to be booked. Results of
INLINE_COUNT_BYTES or more are counted in a worker thread as soon as they arrive.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
from pydantic import BaseModel, Field

from controller.audit import AuditLog
from controller.catalog import ToolOutcome
from controller.shaping import Tokens
from controller.telemetry import Telemetry

logger = logging.getLogger(__name__)

# Called with ("output", {"stream", "text"}) and ("tool_call", ToolCall fields) while an execution runs.
EventListener = Callable[[str, dict[str, Any]], None]
FLUSH_AFTER_S = 0.05
MAX_PENDING = 64
INLINE_COUNT_BYTES = 64 * 1024


class ToolCall(BaseModel):
    """One tool call made by an execution's code; `tokens` is the size of its result, which stayed in the sandbox."""

    server: str
    tool: str
    ok: bool
    ms: float
    bytes: int
    tokens: int
    call_tokens: int = Field(default=0, exclude=True)


@dataclass(frozen=True)
class Entry:
    """A finished call waiting to be booked."""

    session: str
    trace: str
    server: str
    tool: str
    arguments: Any
    outcome: ToolOutcome
    ms: float
    at: float  # Unix time of the answer
    listener: EventListener | None  # the execution's stream, if the call is billed to one that streams
    booked: asyncio.Future[ToolCall]


class Ledger:
    """Books finished tool calls; `flush()` books every waiting one now (an execution does before it answers)."""

    def __init__(self, tokens: Tokens, telemetry: Telemetry, audit: AuditLog) -> None:
        self.tokens = tokens
        self.telemetry = telemetry
        self.audit = audit
        self._pending: list[Entry] = []
        self._timer: asyncio.Handle | None = None
        self._counting: set[asyncio.Task[None]] = set()

    def book(
        self,
        session: str,
        trace: str,
        server: str,
        tool: str,
        arguments: Any,
        outcome: ToolOutcome,
        ms: float,
        listener: EventListener | None,
    ) -> asyncio.Future[ToolCall]:
        """Account for a finished call; the future resolves to its ToolCall once booked."""
        loop = asyncio.get_running_loop()
        entry = Entry(session, trace, server, tool, arguments, outcome, ms, time.time(), listener, loop.create_future())
        if outcome.size >= INLINE_COUNT_BYTES:
            task = asyncio.create_task(self._count_apart(entry))
            self._counting.add(task)
            task.add_done_callback(self._counting.discard)
            return entry.booked
        self._pending.append(entry)
        if len(self._pending) >= MAX_PENDING:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_soon(self.flush)  # once the answer this call belongs to is sent
        elif self._timer is None:
            self._timer = loop.call_later(FLUSH_AFTER_S, self.flush)
        return entry.booked

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, []
        for entry in pending:
            self._settle(entry)

    async def close(self) -> None:
        """Book everything, the large results being counted included."""
        self.flush()
        await asyncio.gather(*self._counting)

    async def _count_apart(self, entry: Entry) -> None:
        try:
            tokens = await anyio.to_thread.run_sync(self.tokens.count_json, self._result(entry))
        except Exception as exc:  # noqa: BLE001 - every call of a batch must be resolved
            self._failed(entry, exc)
        else:
            self._settle(entry, tokens)

    @staticmethod
    def _result(entry: Entry) -> Any:
        return entry.outcome.value if entry.outcome.error is None else entry.outcome.error

    def _settle(self, entry: Entry, tokens: int | None = None) -> None:
        """Book one call; its result's tokens are counted here unless given."""
        try:
            call = self._book(entry, tokens)
        except Exception as exc:  # noqa: BLE001 - every call of a batch must be resolved
            self._failed(entry, exc)
            return
        if entry.listener is not None:
            entry.listener("tool_call", call.model_dump())
        if not entry.booked.done():  # done: its execution was cancelled
            entry.booked.set_result(call)

    @staticmethod
    def _failed(entry: Entry, exc: Exception) -> None:
        """A call that cannot be booked fails its execution's answer, not the other calls of its batch."""
        logger.error("booking a call of %s.%s failed", entry.server, entry.tool, exc_info=exc)
        if not entry.booked.done():
            entry.booked.set_exception(exc)

    def _book(self, entry: Entry, tokens: int | None) -> ToolCall:
        outcome = entry.outcome
        ok = outcome.error is None
        self.telemetry.tool_called(entry.server, entry.tool, entry.ms / 1000, outcome.kind or None)
        self.audit.record(
            "tool.called", session=entry.session, trace=entry.trace, at=entry.at, ok=ok, kind=outcome.kind or None,
            ms=entry.ms, bytes=outcome.size, server=entry.server, tool=entry.tool,
        )  # fmt: skip
        return ToolCall(
            server=entry.server,
            tool=entry.tool,
            ok=ok,
            ms=entry.ms,
            bytes=outcome.size,
            tokens=self.tokens.count_json(self._result(entry)) if tokens is None else tokens,
            call_tokens=self.tokens.count_json({"name": entry.tool, "arguments": entry.arguments}),
        )

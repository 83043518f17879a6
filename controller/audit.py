"""The audit log: one JSON object per line, appended, never rewritten.

Events: session.created, session.deleted, execution.timeout, execution.oom, execution.crash, tool.called,
policy.refused, static_check.refused, bridge.violation, anomaly.detected. Each carries the session, tenant and trace
ids it belongs to.
Tool calls are logged by name, outcome and size; argument values never are. They are written in batches (see
`controller.ledger`), up to 50 ms after the call, with the time of the call.
Events a sandbox can repeat at will (bridge.violation) go through `Repeats`: per session, kind and window, the first
is written at once and the rest as one line with their `count`, so a flood costs the log two lines per window.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class AuditLog:
    """Appends events to `path` (None: events go to the `controller.audit` logger only)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._fd: int | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            # O_APPEND: each event is one write at the end, whoever else appends to the file.
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def record(
        self,
        event: str,
        *,
        session: str | None = None,
        tenant: str | None = None,
        trace: str | None = None,
        at: float | None = None,
        **fields: Any,
    ) -> None:
        """Append one event; `at` (Unix time) is when it happened, if not now."""
        when = datetime.now(UTC) if at is None else datetime.fromtimestamp(at, UTC)
        entry = {
            "time": when.isoformat(timespec="milliseconds"),
            "event": event,
            "session": session,
            "tenant": tenant,
            "trace": trace,
            **fields,
        }
        line = json.dumps(entry, ensure_ascii=False, default=str, separators=(",", ":")) + "\n"
        logger.debug("audit %s", line.rstrip())
        if self._fd is not None:
            with self._lock:
                os.write(self._fd, line.encode())

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass
class _Window:
    event: str
    fields: dict[str, Any]
    timer: asyncio.TimerHandle
    count: int = 0


class Repeats:
    """Writes an event that repeats (per scope, e.g. a session, and per `what`, from a fixed set) at most twice per
    `window_s`: the first at once with `count` 1, the others of the window as one line at its end with their
    `count`. Summing `count` over the lines gives how often it happened."""

    def __init__(self, audit: AuditLog, window_s: float) -> None:
        self.audit = audit
        self.window_s = window_s
        self._windows: dict[tuple[str, str], _Window] = {}

    def record(self, scope: str, event: str, what: str, **fields: Any) -> None:
        """Must be called on the event loop (a window's end is a timer)."""
        key = (scope, what)
        window = self._windows.get(key)
        if window is None:
            self.audit.record(event, what=what, count=1, **fields)
            timer = asyncio.get_running_loop().call_later(self.window_s, self._close, key)
            self._windows[key] = _Window(event, fields, timer)
        else:
            window.count += 1
            window.fields = fields  # the latest trace

    def flush(self, scope: str) -> None:
        """End the scope's windows now, writing what they hold (a session that ends does)."""
        for key in [key for key in self._windows if key[0] == scope]:
            self._close(key)

    def _close(self, key: tuple[str, str]) -> None:
        window = self._windows.pop(key, None)
        if window is None:
            return
        window.timer.cancel()
        if window.count:
            self.audit.record(window.event, what=key[1], count=window.count, **window.fields)

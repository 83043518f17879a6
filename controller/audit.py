"""The audit log: one JSON object per line, appended, never rewritten.

Events: session.created, session.deleted, execution.timeout, execution.oom, execution.crash, tool.called,
policy.refused, static_check.refused, bridge.violation, anomaly.detected. Each carries the session, tenant and trace
ids it belongs to.
Tool calls are logged by name, outcome and size; argument values never are. They are written in batches (see
`controller.ledger`), up to 50 ms after the call, with the time of the call.
"""

from __future__ import annotations

import json
import logging
import os
import threading
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

"""What a controller leaves in its state dir so that its next start can re-adopt live sessions.

One `session.json` per claimed session, beside (never inside) what the sandbox sees. A record that is missing,
unreadable or from another layout makes its session reaped, never guessed at.
"""

from __future__ import annotations

import contextlib
import os
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from controller.config import Limits
from controller.policy import Policy

RECORD = "session.json"


class SessionRecord(BaseModel):
    """A session as its next controller needs it: who owns it, what it may do, where its sandbox is."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    tenant: str
    limits: Limits
    runtime: str
    servers: list[str] | None
    policy: Policy
    created_at: datetime
    expires_at: float
    container_id: str
    tools_dir: Path
    executions: int = 0
    restarts: int = 0


def write_record(directory: Path, record: SessionRecord) -> None:
    """Replace the session's record atomically (a crash leaves the old one or the new one)."""
    staging = directory / f".{RECORD}.tmp"
    staging.write_text(record.model_dump_json())
    os.replace(staging, directory / RECORD)


def read_record(directory: Path) -> SessionRecord | None:
    with contextlib.suppress(OSError, ValidationError, ValueError):
        return SessionRecord.model_validate_json((directory / RECORD).read_bytes())
    return None

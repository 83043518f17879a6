"""Definition pins: each tool's definition as first seen, so that a later change (a "rug pull") is noticed.

A pin is a SHA-256 of the tool's name, description and schemas, kept with the definition itself, so that the old stub
can be served while a change waits for an operator. Pins live in the controller's state dir, rewritten atomically
on every change, so a restart keeps them. Every method may block on the file: call them from a worker thread.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from controller.catalog import ToolInfo

logger = logging.getLogger(__name__)


def fingerprint(tool: ToolInfo) -> str:
    """The hash a pin holds: name, description and both schemas, as canonical JSON."""
    pinned = {
        "name": tool.name,
        "description": tool.description,
        "inputSchema": tool.input_schema,
        "outputSchema": tool.output_schema,
    }
    return hashlib.sha256(json.dumps(pinned, sort_keys=True, default=str).encode()).hexdigest()


class Pins:
    """The pinned definitions by server and tool name, persisted in `path` (None: kept in memory only)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._pins: dict[str, dict[str, dict[str, Any]]] = {}
        if path is not None and path.exists():
            try:
                loaded = json.loads(path.read_text())
            except (OSError, ValueError) as exc:  # a torn or foreign file: start over rather than refuse to serve
                logger.warning("ignoring unreadable tool pins %s: %s", path, exc)
            else:
                self._pins = loaded if isinstance(loaded, dict) else {}

    def review(self, server: str, tools: tuple[ToolInfo, ...]) -> dict[str, tuple[str, str, ToolInfo]]:
        """Pin the tools seen for the first time; `{name: (current fingerprint, pinned one, pinned definition)}` for
        each tool whose definition differs from its pin (the pinned definition carries the current annotations)."""
        changed: dict[str, tuple[str, str, ToolInfo]] = {}
        with self._lock:
            pins = self._pins.setdefault(server, {})
            added = False
            for tool in tools:
                current = fingerprint(tool)
                pin = pins.get(tool.name)
                if not isinstance(pin, dict) or not isinstance(pin.get("definition"), dict):
                    pins[tool.name] = {"sha256": current, "definition": self._definition(tool)}
                    added = True
                elif pin.get("sha256") != current:
                    changed[tool.name] = (current, str(pin.get("sha256")), self._restore(tool, pin["definition"]))
            if added:
                self._save()
        return changed

    def accept(self, tool: ToolInfo) -> None:
        """Pin `tool`'s current definition in place of the old one."""
        with self._lock:
            self._pins.setdefault(tool.server, {})[tool.name] = {
                "sha256": fingerprint(tool),
                "definition": self._definition(tool),
            }
            self._save()

    @staticmethod
    def _definition(tool: ToolInfo) -> dict[str, Any]:
        return {
            "description": tool.description,
            "title": tool.title,
            "inputSchema": tool.input_schema,
            "outputSchema": tool.output_schema,
        }

    @staticmethod
    def _restore(tool: ToolInfo, definition: dict[str, Any]) -> ToolInfo:
        schema = definition.get("inputSchema")
        output = definition.get("outputSchema")
        return dataclasses.replace(
            tool,
            description=str(definition.get("description") or ""),
            title=definition.get("title") if isinstance(definition.get("title"), str) else None,
            input_schema=schema if isinstance(schema, dict) else {"type": "object"},
            output_schema=output if isinstance(output, dict) else None,
        )

    def _save(self) -> None:
        if self.path is None:
            return
        staging = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        staging.write_text(json.dumps(self._pins, sort_keys=True, separators=(",", ":"), default=str))
        os.replace(staging, self.path)

"""JSON-RPC 2.0 framing shared by the supervisor and the worker: one JSON object per line."""

from __future__ import annotations

import json
from typing import Any

Message = dict[str, Any]
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


class FrameTooLarge(Exception):
    """A peer sent a line longer than the frame limit."""


def encode(message: Message) -> bytes:
    """Serialize one message as a single line; JSON escapes every newline inside strings."""
    return _ENCODER.encode(message).encode() + b"\n"


class LineReader:
    """Splits a byte stream into decoded messages, refusing lines over `limit` bytes."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Message | None]:
        """Return the complete messages in `data`; None stands for a line that is not a JSON object.

        Raises:
            FrameTooLarge: the pending line exceeds the limit (the stream cannot be resynchronised).
        """
        self._buffer += data
        messages: list[Message | None] = []
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                break
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            if len(line) > self._limit:
                raise FrameTooLarge(len(line))
            if line.strip():
                messages.append(decode(line))
        if len(self._buffer) > self._limit:
            raise FrameTooLarge(len(self._buffer))
        return messages


def decode(line: bytes) -> Message | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None

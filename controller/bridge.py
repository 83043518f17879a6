"""The controller's end of a session socket: JSON-RPC 2.0, one message per line.

The first connection is the control connection: the sandbox's supervisor, which the controller sends `execute` and
friends to. Later ones are call connections: the interpreter's own, so a tool call costs one socket round trip
instead of a relay through the supervisor. They may only send requests (tool calls, searches), never answer the
controller's, and only `MAX_CALL_CONNECTIONS` may be open at once.

Everything that arrives here is hostile. A malformed or unexpected frame gets a JSON-RPC error; a frame over the
limit, or a connection over the limit, closes that connection. Nothing a sandbox sends raises out of this module or
blocks another session.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from controller.errors import BridgeClosed, BridgeTimeout

logger = logging.getLogger(__name__)

Params = dict[str, Any]
RequestHandler = Callable[[str, Params], Awaitable[Any]]
NotificationHandler = Callable[[str, Params], None]

PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INTERNAL_ERROR = -32700, -32600, -32601, -32603
# One per interpreter process that calls tools (a cell's forked children get their own), and a little room.
MAX_CALL_CONNECTIONS = 8


class RemoteError(Exception):
    """A JSON-RPC error to send back to the sandbox; raised by request handlers."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.data = data


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def encode(message: Params) -> bytes:
    return _ENCODER.encode({"jsonrpc": "2.0", **message}).encode() + b"\n"


class Bridge:
    """Listens on `path`; the sandbox runtime connects. Requests go both ways on the control connection, and come
    in on call connections."""

    def __init__(
        self,
        path: Path,
        *,
        max_frame: int,
        on_request: RequestHandler | None = None,
        on_notification: NotificationHandler | None = None,
        label: str = "",
    ) -> None:
        self.path = path
        self.label = label
        self._max_frame = max_frame
        self.on_request = on_request
        self.on_notification = on_notification
        self.on_violation: Callable[[str], None] | None = None
        self._server: asyncio.AbstractServer | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._callers: set[asyncio.StreamWriter] = set()
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self.connected = asyncio.Event()
        self.protocol_errors = 0

    async def start(self) -> None:
        self.path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._on_connection, self.path, limit=self._max_frame + 1)
        # The sandbox user is not root; gVisor's gofer and runc both check the socket's mode for it.
        os.chmod(self.path, 0o666)  # noqa: S103 - the directory, mounted into one sandbox only, is the boundary

    @property
    def is_connected(self) -> bool:
        return self._writer is not None

    async def request(self, method: str, params: Params, timeout_s: float) -> Any:
        """Send a request to the sandbox and return its result.

        Raises:
            BridgeClosed: no sandbox is connected, or it disconnected before answering.
            BridgeTimeout: no answer within `timeout_s` seconds.
            RemoteError: the sandbox answered with a JSON-RPC error.
        """
        writer = self._writer
        if writer is None:
            raise BridgeClosed(f"no sandbox connected to {self.label}")
        request_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await self._send(writer, {"id": request_id, "method": method, "params": params})
            async with asyncio.timeout(timeout_s):
                return await future
        except TimeoutError as exc:
            raise BridgeTimeout(f"{method} got no answer within {timeout_s:.1f} s") from exc
        finally:
            self._pending.pop(request_id, None)

    async def notify(self, method: str, params: Params) -> None:
        """Send a notification to the sandbox if one is connected; a failure to deliver is not an error."""
        if self._writer is not None:
            await self._send_quietly(self._writer, {"method": method, "params": params})

    async def disconnect(self) -> None:
        """Drop the current connections (their sandbox is being replaced)."""
        for writer in [self._writer, *self._callers]:
            if writer is not None:
                writer.close()
        self._fail_pending()

    async def close(self) -> None:
        await self.disconnect()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        self.path.unlink(missing_ok=True)

    async def _send(self, writer: asyncio.StreamWriter, message: Params) -> None:
        await self._write(writer, encode(message))

    async def _write(self, writer: asyncio.StreamWriter, frame: bytes) -> None:
        try:
            writer.write(frame)
            await writer.drain()
        except (ConnectionError, OSError) as exc:
            raise BridgeClosed(f"the sandbox of {self.label} went away") from exc

    def _fail_pending(self) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(BridgeClosed(f"the sandbox of {self.label} disconnected"))
        self._pending.clear()

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._writer is None:
            await self._serve_control(reader, writer)
        elif len(self._callers) < MAX_CALL_CONNECTIONS:
            self._callers.add(writer)
            try:
                await self._read(reader, writer, control=False)
            finally:
                self._callers.discard(writer)
                writer.close()
        else:
            self._violation(f"a connection over the limit of {MAX_CALL_CONNECTIONS + 1} was refused")
            writer.close()

    async def _serve_control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self.connected.set()
        try:
            await self._read(reader, writer, control=True)
        finally:
            if self._writer is writer:
                self._writer = None
                self.connected.clear()
                self._fail_pending()
            writer.close()

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, control: bool) -> None:
        while True:
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.LimitOverrunError:
                self._violation(f"a frame over {self._max_frame} bytes; connection closed")
                with contextlib.suppress(BridgeClosed):
                    await self._send(writer, error_reply(None, INVALID_REQUEST, "frame too large"))
                return
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            await self._dispatch(writer, line, control)

    async def _dispatch(self, writer: asyncio.StreamWriter, line: bytes, control: bool) -> None:
        try:
            message = json.loads(line)
        except (ValueError, RecursionError):  # a frame nested past the parser's depth is as malformed as bad JSON
            message = None
        if not isinstance(message, dict):
            self._violation("a frame that is not a JSON object")
            await self._send_quietly(writer, error_reply(None, PARSE_ERROR, "parse error"))
            return
        method, request_id = message.get("method"), message.get("id")
        if method is None and control:
            self._on_response(message)
        elif method is None or (request_id is None and not control):
            self._violation("a response or notification on a call connection")
            await self._send_quietly(writer, error_reply(request_id, INVALID_REQUEST, "only requests are taken here"))
        elif not isinstance(method, str) or not isinstance(message.get("params", {}), dict):
            self._violation("a request with a bad method or params")
            await self._send_quietly(writer, error_reply(request_id, INVALID_REQUEST, "invalid request"))
        elif request_id is None:
            if self.on_notification is not None:
                self.on_notification(method, message.get("params") or {})
        elif self.on_request is None:
            await self._send_quietly(writer, error_reply(request_id, METHOD_NOT_FOUND, f"unknown method {method}"))
        else:
            task = asyncio.create_task(self._serve(writer, request_id, method, message.get("params") or {}))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _on_response(self, message: Params) -> None:
        request_id = message.get("id")
        future = self._pending.get(request_id) if isinstance(request_id, int) else None
        if future is None or future.done():
            self._violation(f"a response to an unknown request id {str(request_id)[:40]!r}")
            return
        error = message.get("error")
        if isinstance(error, dict):
            future.set_exception(RemoteError(int(error.get("code", INTERNAL_ERROR)), str(error.get("message", ""))))
        else:
            future.set_result(message.get("result"))

    async def _serve(self, writer: asyncio.StreamWriter, request_id: Any, method: str, params: Params) -> None:
        assert self.on_request is not None
        try:
            result = await self.on_request(method, params)
        except RemoteError as exc:
            reply = error_reply(request_id, exc.code, str(exc), exc.data)
        except Exception:
            logger.exception("bridge handler for %s failed", method)
            reply = error_reply(request_id, INTERNAL_ERROR, "internal error")
        else:
            reply = {"id": request_id, "result": result}
        try:
            frame = encode(reply)
        except ValueError:  # e.g. a lone surrogate: no valid UTF-8 frame can carry it
            logger.warning("bridge handler for %s returned a result that is not valid JSON text", method)
            frame = encode(error_reply(request_id, INTERNAL_ERROR, "the result cannot be sent as JSON text"))
        with contextlib.suppress(BridgeClosed):
            await self._write(writer, frame)

    async def _send_quietly(self, writer: asyncio.StreamWriter, message: Params) -> None:
        with contextlib.suppress(BridgeClosed):
            await self._send(writer, message)

    def _violation(self, what: str) -> None:
        self.protocol_errors += 1
        logger.warning("bridge protocol violation on %s: %s", self.label, what)
        if self.on_violation is not None:
            self.on_violation(what)


def error_reply(request_id: Any, code: int, message: str, data: Any = None) -> Params:
    error: Params = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"id": request_id, "error": error}

"""The controller's end of a session socket: JSON-RPC 2.0, one message per line.

The first connection is the control connection: the sandbox's supervisor, which the controller sends `execute` and
friends to. Later ones are call connections: the interpreter's own, so a tool call costs one socket round trip
instead of a relay through the supervisor. They may only send requests (tool calls, searches), never answer the
controller's, and only `MAX_CALL_CONNECTIONS` may be open at once.

Everything that arrives here is hostile. A malformed or unexpected frame gets a JSON-RPC error; a frame over the
limit, a connection over the limit, `max_violations` protocol violations on one connection, a frame left unfinished
for `idle_timeout_s`, or a call connection that sends no frame that long after opening, closes that connection. A
request id a connection has used before (in flight or answered) is refused, so a replayed call never runs twice.

Nothing a sandbox sends raises out of this module or blocks another session: a session's frames are handled at most
`FRAMES_PER_TURN` at a time before the event loop serves the others, and at most `MAX_IN_FLIGHT` of its requests
run at once; past that its socket is read no further until one finishes (backpressure, not a growing task list).
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
# A session's frames handled in a row before other sessions get the event loop: a flood costs its own session time.
FRAMES_PER_TURN = 32
# A session's requests handled at once (above any policy's concurrent calls, which refuses the rest quickly).
MAX_IN_FLIGHT = 64
READ_SIZE = 64 * 1024
# Request ids kept beyond the contiguous run each connection has used; past this the oldest half joins the run.
MAX_SPARSE_IDS = 1024


class RemoteError(Exception):
    """A JSON-RPC error to send back to the sandbox; raised by request handlers."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.data = data


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def encode(message: Params) -> bytes:
    return _ENCODER.encode({"jsonrpc": "2.0", **message}).encode() + b"\n"


class UsedIds:
    """The request ids one connection has used: every integer up to `floor`, and those in `sparse` above it.

    The runtimes count ids up from 1 on each connection, so the contiguous run folds into `floor` and memory stays
    small; ids a hostile peer scatters are capped, the lowest half folded in (ids below them, never sent, are then
    refused too: no honest peer goes back).
    """

    __slots__ = ("floor", "sparse")

    def __init__(self) -> None:
        self.floor: int | None = None
        self.sparse: set[int] = set()

    def claim(self, request_id: int) -> bool:
        """Record `request_id`; False if it was used before."""
        if self.floor is None:
            self.floor = request_id - 1
        if request_id <= self.floor or request_id in self.sparse:
            return False
        self.sparse.add(request_id)
        while self.floor + 1 in self.sparse:
            self.floor += 1
            self.sparse.remove(self.floor)
        if len(self.sparse) > MAX_SPARSE_IDS:
            ordered = sorted(self.sparse)
            half = len(ordered) // 2
            self.floor, self.sparse = ordered[half], set(ordered[half + 1 :])
        return True


class Peer:
    """One connection's state: its writer, the ids it used, the violations it made."""

    __slots__ = ("control", "ids", "violations", "writer")

    def __init__(self, writer: asyncio.StreamWriter, *, control: bool) -> None:
        self.writer = writer
        self.control = control
        self.ids = UsedIds()
        self.violations = 0


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
        idle_timeout_s: float = 10.0,
        max_violations: int = 100,
    ) -> None:
        self.path = path
        self.label = label
        self._max_frame = max_frame
        self._idle_timeout_s = idle_timeout_s
        self._max_violations = max_violations
        self._budget = FRAMES_PER_TURN
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
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
        self._server = await asyncio.start_unix_server(self._on_connection, self.path, limit=READ_SIZE)
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
        if writer.is_closing():  # uvloop raises RuntimeError on a write to a closed transport
            raise BridgeClosed(f"the sandbox of {self.label} went away")
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
                await self._read(reader, Peer(writer, control=False))
            finally:
                self._callers.discard(writer)
                writer.close()
        else:
            self._violation(None, f"a connection over the limit of {MAX_CALL_CONNECTIONS + 1} was refused")
            writer.close()

    async def _serve_control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self.connected.set()
        try:
            await self._read(reader, Peer(writer, control=True))
        finally:
            if self._writer is writer:
                self._writer = None
                self.connected.clear()
                self._fail_pending()
            writer.close()

    async def _read(self, reader: asyncio.StreamReader, peer: Peer) -> None:
        """Read frames until the peer leaves or is closed for misbehaving."""
        loop = asyncio.get_running_loop()
        opened = loop.time()
        partial, started = bytearray(), 0.0  # an unfinished frame, and when its first byte came
        framed = peer.control  # the supervisor may stay quiet; a call connection exists to send frames
        while True:
            deadline = started + self._idle_timeout_s if partial else None
            if not framed and not partial:
                deadline = opened + self._idle_timeout_s
            try:
                async with asyncio.timeout_at(deadline):
                    data = await reader.read(READ_SIZE)
            except TimeoutError:
                what = "a frame left unfinished" if partial else "a call connection that sent no frame"
                self._violation(None, f"{what} for {self._idle_timeout_s:g} s; connection closed")
                return
            except ConnectionError:
                return
            if not data:
                return
            *lines, rest = data.split(b"\n")
            if lines:
                lines[0], framed = bytes(partial) + lines[0], True
                partial, started = bytearray(rest), loop.time()
            else:
                if not partial:
                    started = loop.time()
                partial += rest
            for line in lines:
                if len(line) > self._max_frame:
                    await self._too_large(peer)
                    return
                if not await self._dispatch(peer, line):
                    return
                self._budget -= 1
                if self._budget <= 0:
                    self._budget = FRAMES_PER_TURN
                    await asyncio.sleep(0)  # the other sessions' turn
            if len(partial) > self._max_frame:
                await self._too_large(peer)
                return

    async def _too_large(self, peer: Peer) -> None:
        self._violation(None, f"a frame over {self._max_frame} bytes; connection closed")
        with contextlib.suppress(BridgeClosed):
            await self._send(peer.writer, error_reply(None, INVALID_REQUEST, "frame too large"))

    async def _dispatch(self, peer: Peer, line: bytes) -> bool:
        """Handle one frame; False when the connection is to be closed."""
        writer, control = peer.writer, peer.control
        try:
            message = json.loads(line)
        except (ValueError, RecursionError):  # a frame nested past the parser's depth is as malformed as bad JSON
            message = None
        if not isinstance(message, dict):
            await self._send_quietly(writer, error_reply(None, PARSE_ERROR, "parse error"))
            return self._violation(peer, "a frame that is not a JSON object")
        method, request_id = message.get("method"), message.get("id")
        if method is None and control:
            return self._on_response(peer, message)
        if method is None or (request_id is None and not control):
            await self._send_quietly(writer, error_reply(request_id, INVALID_REQUEST, "only requests are taken here"))
            return self._violation(peer, "a response or notification on a call connection")
        if not isinstance(method, str) or not isinstance(message.get("params", {}), dict):
            await self._send_quietly(writer, error_reply(request_id, INVALID_REQUEST, "invalid request"))
            return self._violation(peer, "a request with a bad method or params")
        if request_id is None:
            if self.on_notification is not None:
                self.on_notification(method, message.get("params") or {})
            return True
        if type(request_id) is not int:
            await self._send_quietly(writer, error_reply(None, INVALID_REQUEST, "request ids are integers"))
            return self._violation(peer, "a request id that is not an integer")
        if not peer.ids.claim(request_id):
            await self._send_quietly(writer, error_reply(request_id, INVALID_REQUEST, "request id already used"))
            return self._violation(peer, "a request id used before on this connection")
        if self.on_request is None:
            await self._send_quietly(writer, error_reply(request_id, METHOD_NOT_FOUND, f"unknown method {method}"))
            return True
        if writer.transport.get_write_buffer_size() > self._max_frame:
            with contextlib.suppress(ConnectionError):
                await writer.drain()  # answers pile up unread: read no more until the peer catches up
        await self._slots.acquire()
        task = asyncio.create_task(self._serve(writer, request_id, method, message.get("params") or {}))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    def _on_response(self, peer: Peer, message: Params) -> bool:
        request_id = message.get("id")
        future = self._pending.get(request_id) if isinstance(request_id, int) else None
        if future is None or future.done():
            return self._violation(peer, "a response to an unknown request id")
        error = message.get("error")
        if isinstance(error, dict):
            future.set_exception(RemoteError(int(error.get("code", INTERNAL_ERROR)), str(error.get("message", ""))))
        else:
            future.set_result(message.get("result"))
        return True

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
        finally:
            self._slots.release()  # before the answer is written: a peer that reads slowly holds no slot
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

    def _violation(self, peer: Peer | None, what: str) -> bool:
        """Count a violation; False when it is `peer`'s last allowed one, and its connection is to be closed."""
        self.protocol_errors += 1
        logger.debug("bridge protocol violation on %s: %s", self.label, what)
        if self.on_violation is not None:
            self.on_violation(what)
        if peer is None:
            return True
        peer.violations += 1
        if peer.violations < self._max_violations:
            return True
        logger.warning("bridge of %s: closing a connection after %d protocol violations", self.label, peer.violations)
        self._violation(None, f"a connection closed after {peer.violations} protocol violations")
        return False


def error_reply(request_id: Any, code: int, message: str, data: Any = None) -> Params:
    error: Params = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"id": request_id, "error": error}

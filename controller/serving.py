"""How the API is served: uvicorn, with connection limits that hold under load and against idle or slow clients.

- Keep-alive: an idle connection stays open for `http_keepalive_s` (75 s by default), longer than clients keep an idle
  connection for reuse (httpx 5 s, aiohttp 15 s, load balancers 60 s). With uvicorn's 5 s a client with a 5 s pool
  sent requests on connections the server was closing at that instant: `ReadError` under load.
- Request heads: uvicorn times a connection out only between requests, from a response's end to the next byte, so
  a connection that never sends anything, or sends a request head a byte at a time, stayed open forever.
  `HeadDeadlineProtocol` gives every request head (the first one included) the keep-alive time to arrive whole;
  h11 refuses a head still incomplete past `MAX_HEAD_BYTES` (400), so a slow one cannot grow without bound either.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from controller.config import Settings

# h11's own default, stated: a request head (request line and headers) still incomplete past this is refused.
MAX_HEAD_BYTES = 16 * 1024


class HeadDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol, where a request head must arrive whole within the keep-alive time of the moment
    the connection began waiting for it (its opening, or the previous response's end); later bytes do not
    extend it."""

    _head_deadline = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_deadline = self.loop.time() + self.timeout_keep_alive
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def on_response_complete(self) -> None:
        self._head_deadline = self.loop.time() + self.timeout_keep_alive
        super().on_response_complete()  # arms uvicorn's own timer: the same deadline

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # disarms the timer at any byte
        waiting = self.conn.their_state is h11.IDLE  # no complete request head yet
        if waiting and self.timeout_keep_alive_task is None and not self.transport.is_closing():
            delay = max(self._head_deadline - self.loop.time(), 0.0)
            self.timeout_keep_alive_task = self.loop.call_later(delay, self.timeout_keep_alive_handler)


def server_config(app: Any, settings: Settings, **options: Any) -> uvicorn.Config:
    """The uvicorn config `mcpx serve` runs `app` with (the tests' live servers too); `options` adds others."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=HeadDeadlineProtocol,
        timeout_keep_alive=settings.http_keepalive_s,
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        timeout_graceful_shutdown=30,
        **options,
    )


def serve(config: uvicorn.Config) -> bool:
    """Serve until a signal stops the server; False when it could not start (the reason is logged)."""
    server = uvicorn.Server(config)
    server.run()
    return server.started

"""Replicas: which controller owns a session, and forwarding requests for a session to its owner.

Several controllers (a StatefulSet's pods) serve behind one plain Service, each running its sessions' sandboxes in
its own engine. A session id names its owner (`<replica>.<16 hex digits>`, `sessions.owner_of`), so whichever
replica a request reaches knows where the session lives: `Forwarder` proxies requests under `/v1/sessions/{id}`
for another replica's session to it, streaming bodies both ways (SSE included) and passing the caller's own
`Authorization` so the owner authenticates and checks the tenant as usual; the MCP endpoint uses `Replicas.call`.

Only configured peers are ever contacted: the explicit `peers`, or siblings under the `peer_url` template
(`<stem>-<ordinal>`, this replica's stem). An id naming any other replica is handled locally, where it is simply
not found. A forwarded request carries `x-mcpx-forwarded-by` and is never forwarded again. `GET /v1/sessions` is
not forwarded: it lists the sessions of the replica that answers (a template names no finite set to fan out to).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import anyio
import httpx
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from controller.config import Settings
from controller.errors import ForwardingLoop, MCPXError, ReplicaUnavailable
from controller.sessions import owner_of

Problem = Callable[[MCPXError], Response]
HOP_HEADER = "x-mcpx-forwarded-by"
SESSION_PATH = re.compile(r"/v1/sessions/([^/]+)(?:/.*)?", re.DOTALL)  # a file name may hold a newline
SIBLING = re.compile(r"(.+)-(0|[1-9][0-9]{0,3})")
# Headers of one connection (RFC 9110 section 7.6.1) and the one httpx derives from the URL: never passed on.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "host"}
)
# An execution may run for `max_timeout_s`; its owner answers within that plus its kill grace and a restart.
READ_MARGIN_S = 60.0
KEEPALIVE_S = 2.0


@dataclass(frozen=True)
class Reply:
    """An owner's answer to `Replicas.call`."""

    status: int
    body: bytes


def verbatim(path: bytes) -> bytes:
    """A raw path whose dot segments are escaped, so that the owner sees the path this replica saw (httpx would
    resolve `a/../b` to `b`; the owner's server decodes `%2E%2E` back to `..`, which the routes then judge)."""
    escaped = {b".": b"%2E", b"..": b"%2E%2E"}
    return b"/".join(escaped.get(segment, segment) for segment in path.split(b"/"))


def stem(replica: str) -> str | None:
    """The StatefulSet name of `<stem>-<ordinal>`; None for a name without an ordinal."""
    match = SIBLING.fullmatch(replica)
    return match.group(1) if match else None


class Replicas:
    """This replica's peers and the HTTP client that reaches them. Call `aclose()` at shutdown."""

    def __init__(self, settings: Settings) -> None:
        self.name = settings.controller_id
        self.peers = dict(settings.peers)
        self.template = settings.peer_url
        timeout = httpx.Timeout(settings.max_timeout_s + READ_MARGIN_S, connect=settings.forward_connect_timeout_s)
        # Idle connections are dropped well before a peer's server closes them (uvicorn: after 5 s), so a request
        # never goes out on a connection the peer is closing.
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=32, keepalive_expiry=KEEPALIVE_S)
        # trust_env=False: peer traffic never goes through a proxy from the environment.
        self.http = httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=False, follow_redirects=False)

    def url_of(self, replica: str) -> str | None:
        """A peer's base URL; None for this replica and for names that are no configured peer."""
        if replica == self.name:
            return None
        if replica in self.peers:
            return self.peers[replica]
        if self.template is not None and stem(replica) is not None and stem(replica) == stem(self.name):
            return self.template.replace("{replica}", replica)
        return None

    def owner(self, session_id: str) -> tuple[str, str] | None:
        """(name, URL) of the peer owning a session; None when it is this replica's or names no peer."""
        replica = owner_of(session_id)
        url = self.url_of(replica) if replica is not None else None
        return (replica, url) if replica is not None and url is not None else None

    async def call(
        self, session_id: str, method: str, suffix: str, authorization: str | None, content: bytes = b""
    ) -> Reply | None:
        """Send one request under `/v1/sessions/{session_id}` (`suffix` percent-encoded) to the session's owner;
        None when that is this replica (or nobody known). Raises: ReplicaUnavailable."""
        remote = self.owner(session_id)
        if remote is None:
            return None
        replica, base = remote
        headers = {HOP_HEADER: self.name, "content-type": "application/json"}
        if authorization is not None:
            headers["authorization"] = authorization
        url = httpx.URL(base).copy_with(raw_path=verbatim(f"/v1/sessions/{session_id}{suffix}".encode()))
        try:
            response = await self.http.request(method, url, headers=headers, content=content)
        except httpx.TransportError as exc:
            raise unavailable(replica, session_id, exc) from exc
        return Reply(response.status_code, response.content)

    async def forward(
        self, request: Request, send: Send, owner: tuple[str, str], session_id: str, problem: Problem
    ) -> None:
        """Proxy one ASGI request to the owner, (name, URL), and stream its answer back; a client that goes away
        closes the owner's connection too (so an execution it streamed is interrupted there). An SSE stream cut by
        the owner ends with an `error` event, `problem` rendering its body.

        Raises:
            ReplicaUnavailable: the owner could not be reached (nothing was sent to the client yet).
        """
        replica, base = owner
        body_sent = anyio.Event()

        async def body() -> AsyncIterator[bytes]:
            async for chunk in request.stream():
                yield chunk
            body_sent.set()

        headers = [(name, value) for name, value in request.headers.raw if name.decode().lower() not in HOP_BY_HOP]
        headers.append((HOP_HEADER.encode(), self.name.encode()))
        query = request.scope.get("query_string", b"")
        target = request.scope.get("raw_path") or request.scope["path"].encode()
        # Only the path and query come from the caller: the peer's scheme, host and port stay the configured ones.
        url = httpx.URL(base).copy_with(raw_path=verbatim(target) + (b"?" + query if query else b""))
        outbound = self.http.build_request(request.method, url, headers=headers, content=body())
        try:
            response = await self.http.send(outbound, stream=True)
        except httpx.TransportError as exc:
            raise unavailable(replica, session_id, exc) from exc
        try:
            kept = [(n, v) for n, v in response.headers.raw if n.decode().lower() not in HOP_BY_HOP]
            await send({"type": "http.response.start", "status": response.status_code, "headers": kept})
            async with anyio.create_task_group() as group:
                group.start_soon(cancel_on_disconnect, request.receive, body_sent, group.cancel_scope)
                try:
                    async for chunk in response.aiter_raw():
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    tail = b""
                except httpx.TransportError as exc:  # the owner went away mid-answer: an SSE stream says so
                    sse = response.headers.get("content-type", "").startswith("text/event-stream")
                    error = problem(unavailable(replica, session_id, exc)).body
                    tail = b"event: error\ndata: " + bytes(error) + b"\n\n" if sse else b""
                await send({"type": "http.response.body", "body": tail, "more_body": False})
                group.cancel_scope.cancel()
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()


def unavailable(replica: str, session_id: str, exc: Exception) -> ReplicaUnavailable:
    reason = type(exc).__name__
    return ReplicaUnavailable(
        f"replica {replica!r}, which owns session {session_id!r}, is unreachable ({reason}); its sessions are "
        "unusable until it is back",
        replica=replica,
        session_id=session_id,
    )


async def cancel_on_disconnect(receive: Receive, body_sent: anyio.Event, scope: anyio.CancelScope) -> None:
    await body_sent.wait()
    message: Message = await receive()
    while message["type"] != "http.disconnect":
        message = await receive()
    scope.cancel()


class Forwarder:
    """ASGI middleware: a request for another replica's session goes to that replica, once authenticated here
    (an unauthenticated one never leaves this replica; the app refuses it). `problem` renders mcpx errors."""

    def __init__(
        self,
        app: ASGIApp,
        replicas: Replicas,
        authenticated: Callable[[Request], bool],
        problem: Problem,
    ) -> None:
        self.app = app
        self.replicas = replicas
        self.authenticated = authenticated
        self.problem = problem

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = SESSION_PATH.fullmatch(scope["path"]) if scope["type"] == "http" else None
        remote = self.replicas.owner(match.group(1)) if match is not None else None
        if match is None or remote is None or not self.authenticated(request := Request(scope, receive)):
            await self.app(scope, receive, send)
            return
        replica, session_id = remote[0], match.group(1)
        try:
            if HOP_HEADER in request.headers:
                raise ForwardingLoop(
                    f"session {session_id!r} belongs to replica {replica!r}, but this request was already forwarded "
                    f"by {request.headers[HOP_HEADER][:64]!r}: the replicas' peers are misconfigured",
                    replica=replica,
                    session_id=session_id,
                )
            await self.replicas.forward(request, send, remote, session_id, self.problem)
        except (ForwardingLoop, ReplicaUnavailable) as exc:
            await self.problem(exc)(scope, receive, send)

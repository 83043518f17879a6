"""HTTP connections as uvicorn serves them: kept open longer than clients reuse them (no request goes out on a
connection being closed), and closed when they stay silent or send a request head too slowly or too large. Raw
sockets play the clients: they have no keep-alive expiry of their own and reuse a connection whenever told to."""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from controller.serving import MAX_HEAD_BYTES
from tests.conftest import LiveServer, Serve, make_settings

KEEPALIVE_S = 1
HEAD = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"


@pytest.fixture(scope="module")
def state() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="mcpx-"))
    yield directory / "state"
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def quick(state: Path) -> Iterator[LiveServer]:
    """A controller whose connections stay idle for 1 s at most."""
    config = state.parent / "servers.json"
    config.write_text(json.dumps({"mcpServers": {}}))
    settings = make_settings(state, servers_file=config, controller_id=f"serving{os.getpid()}", http_keepalive_s=1)
    with LiveServer(settings) as live:
        yield live


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def response(sock: socket.socket) -> bytes:
    """One whole HTTP response (head and Content-Length body); b"" when the server closed the connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has closed the connection (EOF or reset), waiting up to the socket's timeout."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


@pytest.mark.docker
def test_a_connection_idle_as_long_as_clients_keep_theirs_is_still_served(tmp_path: Path, state: Path) -> None:
    # httpx's pools reuse an idle connection for 5 s, like uvicorn's default keep-alive: the race of `ReadError`s.
    idle_s = httpx.Limits().keepalive_expiry or 5.0
    with Serve(tmp_path, state.parent / "served", f"keep{os.getpid()}") as served, connect(served.url) as sock:
        sock.sendall(HEAD + b"\r\n")
        assert response(sock).startswith(b"HTTP/1.1 200")
        # Idle past the client's own expiry: the server must not close the connection meanwhile.
        closing, _, _ = select.select([sock], [], [], idle_s + 1)
        assert closing == []
        sock.sendall(HEAD + b"\r\n")
        assert response(sock).startswith(b"HTTP/1.1 200")


@pytest.mark.docker
def test_a_connection_that_never_sends_anything_is_closed_after_the_keep_alive_time(quick: LiveServer) -> None:
    with connect(quick.url) as sock:
        assert closed_by_server(sock)


@pytest.mark.docker
def test_a_request_head_that_stops_halfway_is_closed(quick: LiveServer) -> None:
    with connect(quick.url) as sock:
        sock.sendall(HEAD)
        assert closed_by_server(sock)


@pytest.mark.docker
def test_a_request_head_sent_a_byte_at_a_time_is_closed_at_its_deadline_though_bytes_keep_coming(
    quick: LiveServer,
) -> None:
    head = HEAD + b"X-Slow: " + b"s" * 200 + b"\r\n\r\n"  # 60 s at a byte per 0.25 s: far past the deadline
    sent = 0
    with connect(quick.url) as sock:
        while sent < len(head):
            try:
                sock.sendall(head[sent : sent + 1])
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += 1
            if select.select([sock], [], [], 0.25)[0]:  # the pace of a slow client; readable: answered or closed
                break
        assert sent < len(head), "the whole head got through"
        assert closed_by_server(sock)


@pytest.mark.docker
def test_a_request_head_incomplete_past_the_limit_is_refused_and_one_just_under_is_served(quick: LiveServer) -> None:
    prefix = HEAD + b"X-Pad: "
    with connect(quick.url) as sock:
        sock.sendall(prefix + b"p" * (MAX_HEAD_BYTES - len(prefix)))  # at the limit, still incomplete
        sock.sendall(b"\r\n\r\n")
        assert response(sock).startswith(b"HTTP/1.1 200")
    with connect(quick.url) as sock:
        sock.sendall(prefix + b"p" * (MAX_HEAD_BYTES + 1 - len(prefix)))
        assert response(sock).startswith(b"HTTP/1.1 400")
        assert closed_by_server(sock)


@pytest.mark.docker
def test_a_connection_is_kept_between_requests_within_the_keep_alive_time(quick: LiveServer) -> None:
    with connect(quick.url) as sock:
        for _ in range(3):
            sock.sendall(HEAD + b"\r\n")
            assert response(sock).startswith(b"HTTP/1.1 200")
        assert closed_by_server(sock)  # then idle: closed after the keep-alive time

"""The controller's end of a session socket, spoken to over a real Unix socket by a hostile peer."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import anyio
import pytest

from controller.bridge import MAX_CALL_CONNECTIONS, Bridge, RemoteError
from controller.errors import BridgeClosed, BridgeTimeout
from tests.conftest import wait_until_async

pytestmark = pytest.mark.anyio
MAX_FRAME = 1024


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def bridge(tmp_path: Path) -> AsyncIterator[Bridge]:
    async def on_request(method: str, params: dict[str, Any]) -> Any:
        if method == "echo":
            return params
        raise RemoteError(-32601, f"unknown method {method}")

    bridge = Bridge(tmp_path / "bridge.sock", max_frame=MAX_FRAME, on_request=on_request, label="test")
    await bridge.start()
    yield bridge
    await bridge.close()
    for peer in Peer.opened:
        peer.writer.close()
        with contextlib.suppress(ConnectionError):
            await peer.writer.wait_closed()
    Peer.opened.clear()


class Peer:
    """The sandbox side, written by hand so it can misbehave."""

    opened: ClassVar[list[Peer]] = []

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        Peer.opened.append(self)

    @classmethod
    async def connect(cls, bridge: Bridge) -> Peer:
        return cls(*await asyncio.open_unix_connection(bridge.path, limit=2**20))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def receive(self) -> dict[str, Any]:
        with anyio.fail_after(5):
            line = await self.reader.readline()
        assert line, "the bridge closed the connection"
        message: dict[str, Any] = json.loads(line)
        return message

    async def closed(self) -> bool:
        with anyio.fail_after(5):
            return await self.reader.read() == b""


async def connected(bridge: Bridge) -> Peer:
    peer = await Peer.connect(bridge)
    with anyio.fail_after(5):
        await bridge.connected.wait()
    return peer


async def test_requests_from_the_sandbox_are_answered(bridge: Bridge):
    peer = await connected(bridge)
    await peer.send(b'{"jsonrpc":"2.0","id":7,"method":"echo","params":{"x":1}}\n')
    assert await peer.receive() == {"jsonrpc": "2.0", "id": 7, "result": {"x": 1}}


async def test_a_result_no_frame_can_carry_is_answered_with_an_error(bridge: Bridge):
    peer = await connected(bridge)
    # Escaped, the lone surrogate is valid JSON; echoed back as a string, it is not valid UTF-8.
    await peer.send(b'{"jsonrpc":"2.0","id":8,"method":"echo","params":{"x":"\\ud800"}}\n')
    reply = await peer.receive()
    assert (reply["id"], reply["error"]["code"]) == (8, -32603)
    await peer.send(b'{"jsonrpc":"2.0","id":9,"method":"echo","params":{"x":"ok"}}\n')
    assert (await peer.receive())["result"] == {"x": "ok"}


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"{not json\n", -32700),
        (b"[1, 2, 3]\n", -32700),
        (b'"just a string"\n', -32700),
        (b'{"jsonrpc":"2.0","id":1,"method":42}\n', -32600),
        (b'{"jsonrpc":"2.0","id":1,"method":"echo","params":[1]}\n', -32600),
        (b'{"jsonrpc":"2.0","id":1,"method":"rm -rf /"}\n', -32601),
    ],
)
async def test_malformed_frames_get_an_error_and_the_connection_survives(bridge: Bridge, frame: bytes, code: int):
    peer = await connected(bridge)
    await peer.send(frame)
    assert (await peer.receive())["error"]["code"] == code
    await peer.send(b'{"jsonrpc":"2.0","id":2,"method":"echo","params":{}}\n')
    assert (await peer.receive())["result"] == {}
    assert bridge.protocol_errors >= (0 if code == -32601 else 1)


async def test_a_frame_over_the_limit_closes_the_connection(bridge: Bridge):
    peer = await connected(bridge)
    await peer.send(b'{"pad":"' + b"x" * (MAX_FRAME * 4) + b'"}\n')
    assert (await peer.receive())["error"]["code"] == -32600
    assert await peer.closed()
    assert bridge.protocol_errors == 1
    replacement = await connected(bridge)
    await replacement.send(b'{"jsonrpc":"2.0","id":1,"method":"echo","params":{"ok":true}}\n')
    assert (await replacement.receive())["result"] == {"ok": True}


async def test_later_connections_may_call_but_never_answer_the_controller(bridge: Bridge):
    control = await connected(bridge)
    caller = await Peer.connect(bridge)
    await caller.send(b'{"jsonrpc":"2.0","id":1,"method":"echo","params":{"from":"caller"}}\n')
    assert (await caller.receive())["result"] == {"from": "caller"}

    async def forge_then_answer() -> None:
        request = await control.receive()
        forged = {"jsonrpc": "2.0", "id": request["id"], "result": "forged"}
        await caller.send(json.dumps(forged).encode() + b"\n")
        assert (await caller.receive())["error"]["code"] == -32600
        await caller.send(b'{"jsonrpc":"2.0","method":"output","params":{"text":"forged"}}\n')
        assert (await caller.receive())["error"]["code"] == -32600
        answer = {"jsonrpc": "2.0", "id": request["id"], "result": "genuine"}
        await control.send(json.dumps(answer).encode() + b"\n")

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(forge_then_answer)
        assert await bridge.request("execute", {}, timeout_s=5) == "genuine"
    assert bridge.protocol_errors == 2


async def test_connections_over_the_limit_are_refused(bridge: Bridge):
    control = await connected(bridge)
    callers = [await Peer.connect(bridge) for _ in range(MAX_CALL_CONNECTIONS)]
    for number, caller in enumerate(callers):
        await caller.send(b'{"jsonrpc":"2.0","id":%d,"method":"echo","params":{}}\n' % number)
        assert (await caller.receive())["id"] == number
    intruder = await Peer.connect(bridge)
    assert await intruder.closed()
    assert bridge.protocol_errors == 1
    callers[0].writer.close()
    with anyio.fail_after(5):
        while True:  # the freed slot is taken by the next connection
            replacement = await Peer.connect(bridge)
            await replacement.send(b'{"jsonrpc":"2.0","id":7,"method":"echo","params":{}}\n')
            if (await replacement.reader.readline()) != b"":
                break
    await control.send(b'{"jsonrpc":"2.0","id":8,"method":"echo","params":{"still":"served"}}\n')
    assert (await control.receive())["result"] == {"still": "served"}


async def test_the_control_connection_is_the_first_after_none(bridge: Bridge):
    first = await connected(bridge)
    first.writer.close()
    await wait_until_async(lambda: not bridge.is_connected, 5, "the bridge to see the disconnect")  # no event for it
    second = await connected(bridge)

    async def answer() -> None:
        request = await second.receive()
        await second.send(json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": "new"}).encode() + b"\n")

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(answer)
        assert await bridge.request("ping", {}, timeout_s=5) == "new"


async def test_a_response_to_an_unknown_id_is_ignored_and_counted(bridge: Bridge):
    peer = await connected(bridge)
    await peer.send(b'{"jsonrpc":"2.0","id":999,"result":"forged"}\n')
    await peer.send(b'{"jsonrpc":"2.0","id":1,"method":"echo","params":{}}\n')
    assert (await peer.receive())["id"] == 1
    assert bridge.protocol_errors == 1


async def test_request_to_the_sandbox_returns_its_result(bridge: Bridge):
    peer = await connected(bridge)

    async def answer() -> None:
        request = await peer.receive()
        assert request["method"] == "ping"
        await peer.send(json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": {"pong": True}}).encode() + b"\n")

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(answer)
        assert await bridge.request("ping", {}, timeout_s=5) == {"pong": True}


async def test_a_sandbox_that_disconnects_mid_request_raises_bridge_closed(bridge: Bridge):
    peer = await connected(bridge)

    async def vanish() -> None:
        await peer.receive()
        peer.writer.close()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(vanish)
        with pytest.raises(BridgeClosed):
            await bridge.request("execute", {}, timeout_s=5)


async def test_a_silent_sandbox_raises_bridge_timeout(bridge: Bridge):
    await connected(bridge)
    with pytest.raises(BridgeTimeout):
        await bridge.request("execute", {}, timeout_s=0.2)


async def test_request_without_a_sandbox_raises_bridge_closed(bridge: Bridge):
    with pytest.raises(BridgeClosed):
        await bridge.request("execute", {}, timeout_s=1)

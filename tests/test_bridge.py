"""The controller's end of a session socket, spoken to over a real Unix socket by a hostile peer."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import anyio
import pytest

from controller.bridge import MAX_CALL_CONNECTIONS, MAX_IN_FLIGHT, MAX_SPARSE_IDS, Bridge, RemoteError, UsedIds
from controller.errors import BridgeClosed, BridgeTimeout
from tests.conftest import wait_until_async

pytestmark = pytest.mark.anyio
MAX_FRAME = 1024
NOT_AN_OBJECT = "a frame that is not a JSON object"


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


def test_used_ids_refuse_every_repeat_and_stay_small_however_they_come() -> None:
    ids = UsedIds()
    assert all(ids.claim(n) for n in range(1, 10_001))
    assert not any(ids.claim(n) for n in (1, 5_000, 10_000))
    assert ids.sparse == set()  # a run counted up folds into the floor
    scattered = UsedIds()
    assert all(scattered.claim(n) for n in range(0, 8 * MAX_SPARSE_IDS, 2))
    assert len(scattered.sparse) <= MAX_SPARSE_IDS
    assert not any(scattered.claim(n) for n in range(0, 8 * MAX_SPARSE_IDS, 2))
    assert scattered.claim(8 * MAX_SPARSE_IDS + 1)  # above everything seen: new


@pytest.fixture
async def counting(tmp_path: Path) -> AsyncIterator[tuple[Bridge, collections.Counter[str], asyncio.Event]]:
    """A bridge whose handler counts the requests it runs by method; `wait` holds until the event is set."""
    handled: collections.Counter[str] = collections.Counter()
    release = asyncio.Event()

    async def on_request(method: str, params: dict[str, Any]) -> Any:
        handled[method] += 1
        if method == "wait":
            await release.wait()
        return params

    bridge = Bridge(tmp_path / "c.sock", max_frame=MAX_FRAME, on_request=on_request, idle_timeout_s=0.3)
    await bridge.start()
    yield bridge, handled, release
    release.set()
    await bridge.close()


def request(request_id: Any, method: str = "echo") -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": {}}).encode() + b"\n"


async def test_a_replayed_request_id_is_refused_whether_its_call_is_in_flight_or_answered(
    counting: tuple[Bridge, collections.Counter[str], asyncio.Event],
):
    bridge, handled, release = counting
    await connected(bridge)
    caller = await Peer.connect(bridge)
    await caller.send(request(1, "wait"))
    await caller.send(request(1, "wait"))  # in flight
    replay = await caller.receive()
    assert replay == {"jsonrpc": "2.0", "id": 1, "error": {"code": -32600, "message": "request id already used"}}
    release.set()
    assert (await caller.receive())["result"] == {}
    await caller.send(request(2))
    assert (await caller.receive())["result"] == {}
    for used in (1, 2):  # answered
        await caller.send(request(used))
        assert (await caller.receive())["error"]["message"] == "request id already used"
    assert handled == {"wait": 1, "echo": 1}
    other = await Peer.connect(bridge)  # ids belong to their connection
    await other.send(request(1))
    assert (await other.receive())["result"] == {}
    assert bridge.protocol_errors == 3


@pytest.mark.parametrize("request_id", ["1", 1.0, True, [1], {"n": 1}])
async def test_a_request_id_that_is_not_an_integer_is_refused_unhandled(
    counting: tuple[Bridge, collections.Counter[str], asyncio.Event], request_id: Any
):
    bridge, handled, _ = counting
    peer = await connected(bridge)
    await peer.send(request(request_id))
    assert (await peer.receive())["error"] == {"code": -32600, "message": "request ids are integers"}
    assert handled == {}


async def supervisor_and_caller(bridge: Bridge) -> tuple[list[str], Peer, Peer]:
    """The violations the bridge reports from now on, its control connection, and a call connection that called."""
    seen: list[str] = []
    bridge.on_violation = seen.append
    control = await connected(bridge)
    caller = await Peer.connect(bridge)
    await caller.send(request(1))
    assert (await caller.receive())["id"] == 1
    return seen, control, caller


async def test_a_frame_left_unfinished_closes_its_connection_and_is_audited(
    counting: tuple[Bridge, collections.Counter[str], asyncio.Event],
):
    seen, control, caller = await supervisor_and_caller(counting[0])
    await caller.send(request(2)[:20])
    assert await caller.closed()
    await control.send(b'{"jsonrpc":"2.0","id":1,"method"')
    assert await control.closed()
    assert seen == ["a frame left unfinished for 0.3 s; connection closed"] * 2


async def test_a_call_connection_that_sends_nothing_is_closed_while_the_quiet_supervisor_and_a_caller_stay(
    counting: tuple[Bridge, collections.Counter[str], asyncio.Event],
):
    seen, control, caller = await supervisor_and_caller(counting[0])
    silent = await Peer.connect(counting[0])
    assert await silent.closed()
    assert seen == ["a call connection that sent no frame for 0.3 s; connection closed"]
    # Opened before the silent one, both outlived its timeout: the supervisor and a caller between calls may idle.
    await caller.send(request(2))
    assert (await caller.receive())["id"] == 2
    await control.send(request(3))
    assert (await control.receive())["id"] == 3


@pytest.mark.parametrize("limit", [1, 2, 5])
async def test_a_connection_is_closed_at_its_violation_limit_and_others_are_not(tmp_path: Path, limit: int):
    seen: list[str] = []

    async def on_request(method: str, params: dict[str, Any]) -> Any:
        return params

    bridge = Bridge(tmp_path / "v.sock", max_frame=MAX_FRAME, on_request=on_request, max_violations=limit)
    bridge.on_violation = seen.append
    await bridge.start()
    try:
        control = await connected(bridge)
        caller = await Peer.connect(bridge)
        await caller.send(b"{not json\n" * (limit - 1))
        for _ in range(limit - 1):  # just under the limit: answered, still open
            assert (await caller.receive())["error"]["code"] == -32700
        await caller.send(request(1))
        assert (await caller.receive())["id"] == 1
        await caller.send(b"{not json\n" * 3)
        assert (await caller.receive())["error"]["code"] == -32700  # the one at the limit is answered, then the end
        assert await caller.closed()
        assert seen == [NOT_AN_OBJECT] * limit + [f"a connection closed after {limit} protocol violations"]
        await control.send(request(2))
        assert (await control.receive())["id"] == 2
    finally:
        await bridge.close()


async def test_a_flooding_session_leaves_the_loop_to_a_quiet_one_while_its_frames_are_still_queued(tmp_path: Path):
    handled: collections.Counter[str] = collections.Counter()
    noisy_done_when_quiet_answered: list[int] = []

    async def on_request(method: str, params: dict[str, Any]) -> Any:
        handled[method] += 1
        if method == "quiet":
            noisy_done_when_quiet_answered.append(handled["flood"])
        return None

    frame = 16 * 1024 * 1024  # the production limit: its reader may buffer that much
    noisy = Bridge(tmp_path / "n.sock", max_frame=frame, on_request=on_request, label="noisy")
    quiet = Bridge(tmp_path / "q.sock", max_frame=frame, on_request=on_request, label="quiet")
    await noisy.start()
    await quiet.start()
    try:
        flooder = await connected(noisy)
        neighbour = await connected(quiet)
        total = 20_000
        flooder.writer.write(b"".join(request(n, "flood") for n in range(total)))
        await neighbour.send(request(1, "quiet"))
        assert (await neighbour.receive())["id"] == 1
        (done,) = noisy_done_when_quiet_answered
        assert done < total // 10, f"the quiet session waited for {done} frames of the flood"
        await wait_until_async(lambda: handled["flood"] >= total, 30, "the whole flood to be served")
    finally:
        await noisy.close()
        await quiet.close()


async def test_a_session_runs_at_most_max_in_flight_requests_and_its_socket_waits_while_others_are_served(
    tmp_path: Path, counting: tuple[Bridge, collections.Counter[str], asyncio.Event]
):
    bridge, handled, release = counting
    await connected(bridge)
    caller = await Peer.connect(bridge)
    extra = 10
    caller.writer.write(b"".join(request(n, "wait") for n in range(1, MAX_IN_FLIGHT + extra + 1)))
    await wait_until_async(lambda: handled["wait"] >= MAX_IN_FLIGHT, 10, "the session's requests in flight")

    async def on_request(method: str, params: dict[str, Any]) -> Any:
        return params

    other = Bridge(tmp_path / "o.sock", max_frame=MAX_FRAME, on_request=on_request)
    await other.start()
    try:
        neighbour = await connected(other)
        await neighbour.send(request(1))
        assert (await neighbour.receive())["id"] == 1
    finally:
        await other.close()
    assert handled["wait"] == MAX_IN_FLIGHT  # the rest still wait, unread, while another session was served
    release.set()
    answered = [await caller.receive() for _ in range(MAX_IN_FLIGHT + extra)]
    assert sorted(reply["id"] for reply in answered) == list(range(1, MAX_IN_FLIGHT + extra + 1))
    assert handled["wait"] == MAX_IN_FLIGHT + extra

"""Tool-call benchmark: sandbox code calling real MCP servers through its stubs, against the MCP SDK called directly.

Usage: python tests/bench/tools.py --out .bench/tools.json   (image from MCPX_IMAGE)
The sandbox code times its own calls with `time.perf_counter()` inside one execution, so neither the HTTP API nor
the execution round trip is in the numbers. Prints a table of p50/p95/mean latency and calls/s per runtime and
writes every sample, with host metadata, as JSON.

The paths are measured in rounds, taking turns: the direct SDK call, then each sandbox path, again and again. The
MCP server's own latency drifts by a millisecond within seconds on a small host; overhead is therefore the median,
over rounds, of a path's p50 minus the direct call's p50 in the same round. Rounds are short (25 calls per path) and
many (40): with 10 rounds of 50 calls, two runs a minute apart differed by 0.9 ms; with 40 of 25, by 0.01-0.3 ms.

The "direct paced" row is the direct call again, each one after a pause of PACED_PAUSE_S, as a call from a sandbox
comes after the sandbox round trip. It does not change the verdict; it shows how much of the overhead is the MCP
server (and the SDK) answering more slowly when calls are not back to back, which no sandbox path can avoid.

The "bare proxy" row is the floor of any intermediary on this host: a do-nothing server on the baseline's event
loop that reads a JSON-RPC line from a Unix socket, makes the same SDK call and writes the result back, called by a
client in a process of its own, as sandbox code is. What mcpx adds beyond it is the controller's own work and the
sandbox's. It does not change the verdict either.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
from anyio.from_thread import BlockingPortal, start_blocking_portal
from harness import controller, metadata, percentile, stop_on_sigterm
from mcp import Client, StdioServerParameters
from sessions import RUNTIMES

from controller.policy import Policy

ROOT = Path(__file__).resolve().parents[2]
TIME_SERVER = ROOT / ".servers" / "time" / "bin" / "mcp-server-time"
TIME = StdioServerParameters(command=str(TIME_SERVER))
DOCSTORE = StdioServerParameters(command=sys.executable, args=["-m", "controller.demo.docstore"], cwd=str(ROOT))
SMALL = ("time", "get_current_time", {"timezone": "UTC"})
LARGE = ("docstore", "get_document", {"document_id": "transcript-01"})
CONCURRENCY = 8
ROUNDS = 40
LARGE_WARMUP = 1
EXECUTION_TIMEOUT_S = 300.0
REQUEST_TIMEOUT_S = EXECUTION_TIMEOUT_S + 30.0
DIRECT_TIMEOUT_S = 300.0
OVERHEAD_TARGET_MS = 1.0
# About the time a runsc sandbox path spends between one answer and the next call on the 2-vCPU host we measure on.
PACED_PAUSE_S = 0.0007
DIRECT, PACED, PROXY = "direct mcp", "direct paced", "bare proxy"
# The durations come back as the cell's value: no token budget may cut them.
MAX_OUTPUT_TOKENS = 1_000_000

# The bare proxy's client, in its own process: for each line "<runs> <warmup>" on stdin, that many calls of the tool
# (argv: socket path, call params as JSON); writes the timed calls' durations and the last result's size.
PROXY_CLIENT = """\
import json, socket, sys, time
sock = socket.socket(socket.AF_UNIX)
sock.connect(sys.argv[1])
request = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": json.loads(sys.argv[2])}
frame = json.dumps(request).encode() + b"\\n"
pending = b""
for command in sys.stdin:
    runs, warmup = map(int, command.split())
    durations = []
    for _ in range(warmup + runs):
        started = time.perf_counter()
        sock.sendall(frame)
        while b"\\n" not in pending:
            chunk = sock.recv(65536)
            if not chunk:
                sys.exit("the bare proxy closed the connection")
            pending += chunk
        durations.append(round((time.perf_counter() - started) * 1000, 4))
        line, _, pending = pending.partition(b"\\n")
        reply = json.loads(line)
        if "result" not in reply:
            sys.exit(f"the bare proxy failed: {line[:300]!r}")
    size = len(json.dumps(reply["result"], separators=(",", ":"), ensure_ascii=False).encode())
    print(json.dumps({"durations_ms": durations[warmup:], "result_bytes": size}), flush=True)
"""
# Sandbox code; each cell's trailing expression is what it measured. Durations go back in ms rounded to 0.1 us:
# under ten characters a call in the result.
SEQUENTIAL = """\
import json, time
from servers.{server} import {tool}
for _ in range({warmup}):
    {tool}(**{arguments!r})
durations = []
for _ in range({runs}):
    started = time.perf_counter()
    value = {tool}(**{arguments!r})
    durations.append(round((time.perf_counter() - started) * 1000, 4))
size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
{{"durations_ms": durations, "result_bytes": size}}
"""
# The same from TypeScript, in a function: its declarations must not clash with the next cell's.
TS_SEQUENTIAL = """\
import {{ {tool} }} from "servers/{server}";
await (async () => {{
  for (let i = 0; i < {warmup}; i++) await {tool}({arguments});
  const durations: number[] = [];
  let value: unknown;
  for (let i = 0; i < {runs}; i++) {{
    const started = performance.now();
    value = await {tool}({arguments});
    durations.push(Math.round((performance.now() - started) * 10000) / 10000);
  }}
  return {{ durations_ms: durations, result_bytes: Buffer.byteLength(JSON.stringify(value)) }};
}})()
"""
THREADS = """\
import time
from concurrent.futures import ThreadPoolExecutor
from servers.{server} import {tool}
with ThreadPoolExecutor({concurrency}) as pool:
    list(pool.map(lambda _: {tool}(**{arguments!r}), range({warmup})))
    started = time.perf_counter()
    list(pool.map(lambda _: {tool}(**{arguments!r}), range({runs})))
    seconds = time.perf_counter() - started
seconds
"""
GATHER = """\
import asyncio, time
from servers.{server} import {tool}
async def batch():
    await asyncio.gather(*({tool}(**{arguments!r}) for _ in range({concurrency})))
for _ in range({warmup} // {concurrency} + 1):
    await batch()
started = time.perf_counter()
for _ in range({runs} // {concurrency}):
    await batch()
time.perf_counter() - started
"""


@dataclass
class Latency:
    """Sequential calls of one tool along one path: through a sandbox on a runtime, or the SDK called directly."""

    tool: str
    path: str
    samples_ms: list[float]
    # The result as its caller got it, as compact JSON: the plain value in a sandbox, the CallToolResult directly.
    result_bytes: int
    # What the controller measured around its own MCP call for each of the same calls (sandbox paths only).
    upstream_ms: list[float]
    # The p50 of each round's calls, in order.
    round_p50s_ms: list[float]

    def joined(self, other: Latency) -> Latency:
        """This path's calls followed by a later round's."""
        return Latency(
            self.tool,
            self.path,
            self.samples_ms + other.samples_ms,
            other.result_bytes,
            self.upstream_ms + other.upstream_ms,
            self.round_p50s_ms + other.round_p50s_ms,
        )

    @property
    def p50_ms(self) -> float:
        return percentile(self.samples_ms, 50)

    @property
    def p95_ms(self) -> float:
        return percentile(self.samples_ms, 95)

    @property
    def mean_ms(self) -> float:
        return statistics.fmean(self.samples_ms)

    @property
    def calls_per_s(self) -> float:
        return 1000 / self.mean_ms

    @property
    def upstream_p50_ms(self) -> float | None:
        return percentile(self.upstream_ms, 50) if len(self.upstream_ms) >= 2 else None

    @property
    def mcpx_p50_ms(self) -> float | None:
        """Per call, what was not the controller's MCP call (stub, worker, supervisor, socket, bridge, policy)."""
        if len(self.upstream_ms) < 2:
            return None
        paired = [total - upstream for total, upstream in zip(self.samples_ms, self.upstream_ms, strict=True)]
        return percentile(paired, 50)


@dataclass
class Throughput:
    """Concurrent calls of one tool from sandbox code: how many finished per second of wall time."""

    tool: str
    path: str
    mode: str
    calls: int
    seconds: float

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.seconds


@dataclass
class Overhead:
    """What the sandbox path adds to a direct SDK call of the same tool, at the median: per round, and over all."""

    tool: str
    runtime: str
    round_ms: list[float]
    result_bytes: int

    @property
    def ms(self) -> float:
        return statistics.median(self.round_ms)

    @property
    def middle_ms(self) -> tuple[float, float]:
        """The middle half of the rounds' overheads: how much the host moved the number."""
        return percentile(self.round_ms, 25), percentile(self.round_ms, 75)


def tool_name(tool: tuple[str, str, dict[str, Any]]) -> str:
    return f"{tool[0]}.{tool[1]}"


def servers_config() -> dict[str, Any]:
    """The two servers measured: a third-party one (mcp-server-time) and our docstore, as the tests configure them."""
    return {
        "mcpServers": {
            "time": {"command": str(TIME_SERVER)},
            "docstore": {"command": DOCSTORE.command, "args": list(DOCSTORE.args), "cwd": DOCSTORE.cwd},
        }
    }


class SandboxBench:
    """Tool calls timed by code in one session of the controller."""

    def __init__(self, api: httpx.Client, session_id: str, runtime: str) -> None:
        self.api = api
        self.session_id = session_id
        self.runtime = runtime

    def run(self, code: str, language: str = "python") -> tuple[Any, list[float]]:
        """The cell's value, and the controller's upstream milliseconds of each tool call it made."""
        body = {"code": code, "timeout_s": EXECUTION_TIMEOUT_S, "max_output_tokens": MAX_OUTPUT_TOKENS}
        response = self.api.post(f"/v1/sessions/{self.session_id}/executions", json={**body, "language": language})
        response.raise_for_status()
        reply = response.json()
        if reply["error"] is not None:
            raise RuntimeError(f"benchmark code failed on {self.runtime}: {reply['error']}")
        failed = [call for call in reply["tool_calls"] if not call["ok"]]
        if failed:
            raise RuntimeError(f"{len(failed)} tool calls failed on {self.runtime}, e.g. {failed[0]}")
        return reply["result"], [float(call["ms"]) for call in reply["tool_calls"]]

    def sequential(
        self, tool: tuple[str, str, dict[str, Any]], runs: int, warmup: int, language: str = "python"
    ) -> Latency:
        server, name, arguments = tool
        if language == "typescript":
            code = TS_SEQUENTIAL.format(server=server, tool=name, arguments=json.dumps(arguments), runs=runs,
                                        warmup=warmup)  # fmt: skip
        else:
            code = SEQUENTIAL.format(server=server, tool=name, arguments=arguments, runs=runs, warmup=warmup)
        value, upstream = self.run(code, language)
        if not isinstance(value, dict) or len(value.get("durations_ms", ())) != runs:
            raise RuntimeError(f"expected {runs} durations, got {str(value)[:200]!r}")
        path = self.runtime + (" ts" if language == "typescript" else "")
        samples = value["durations_ms"]
        return Latency(
            tool_name(tool), path, samples, value["result_bytes"], upstream[warmup:], [percentile(samples, 50)]
        )

    def concurrent(self, mode: str, template: str, tool: tuple[str, str, dict[str, Any]], runs: int) -> Throughput:
        server, name, arguments = tool
        calls = runs - runs % CONCURRENCY  # whole batches, so both modes make the same number of calls
        code = template.format(
            server=server, tool=name, arguments=arguments, runs=calls, warmup=CONCURRENCY * 4, concurrency=CONCURRENCY
        )
        seconds, _ = self.run(code)
        if not isinstance(seconds, float):
            raise RuntimeError(f"expected the elapsed seconds, got {str(seconds)[:200]!r}")
        return Throughput(tool_name(tool), self.runtime, mode, calls, seconds)


async def direct_calls(
    client: Client, tool: tuple[str, str, dict[str, Any]], runs: int, warmup: int, pause_s: float = 0.0
) -> Latency:
    """The baseline: an SDK client of the same server, called from the host as the controller calls it; with
    `pause_s`, each call after that long a pause (not timed)."""
    _, name, arguments = tool
    samples = []
    with anyio.fail_after(DIRECT_TIMEOUT_S):
        for _ in range(warmup + runs):
            if pause_s:
                await anyio.sleep(pause_s)
            started = time.perf_counter()
            result = await client.call_tool(name, arguments)
            samples.append((time.perf_counter() - started) * 1000)
            if result.is_error:
                raise RuntimeError(f"{tool_name(tool)} failed: {result.content}")
    size = len(result.model_dump_json(by_alias=True, exclude_none=True).encode())
    path = PACED if pause_s else DIRECT
    return Latency(tool_name(tool), path, samples[warmup:], size, [], [percentile(samples[warmup:], 50)])


async def serve_proxy(client: Client, path: Path) -> asyncio.AbstractServer:
    """The bare proxy: per line, a task that makes the SDK call and writes its result back; no checks, accounting
    or tracing. It serves until closed."""
    tasks: set[asyncio.Task[None]] = set()

    async def answer(writer: asyncio.StreamWriter, request: dict[str, Any]) -> None:
        params = request["params"]
        try:
            result = await client.call_tool(params["tool"], params["arguments"])
        except Exception as exc:  # the client, which waits for an answer, reports it
            writer.write(json.dumps({"jsonrpc": "2.0", "id": request["id"], "error": repr(exc)}).encode() + b"\n")
            return
        body = result.model_dump_json(by_alias=True, exclude_none=True)
        writer.write(f'{{"jsonrpc":"2.0","id":{json.dumps(request["id"])},"result":{body}}}\n'.encode())

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            task = asyncio.create_task(answer(writer, json.loads(line)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    return await asyncio.start_unix_server(on_connection, path)


class ProxyClient:
    """The bare proxy's client process."""

    def __init__(self, path: Path, tool: tuple[str, str, dict[str, Any]]) -> None:
        server, name, arguments = tool
        params = json.dumps({"server": server, "tool": name, "arguments": arguments})
        command = [sys.executable, "-c", PROXY_CLIENT, str(path), params]
        self.tool = tool
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def sequential(self, runs: int, warmup: int) -> Latency:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"{runs} {warmup}\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the bare proxy's client exited with {self.process.wait()}")
        value = json.loads(line)
        samples = value["durations_ms"]
        return Latency(tool_name(self.tool), PROXY, samples, value["result_bytes"], [], [percentile(samples, 50)])

    def close(self) -> None:
        self.process.kill()
        self.process.wait()


@contextlib.contextmanager
def bare_proxy(portal: BlockingPortal, client: Client, temp: Path) -> Iterator[ProxyClient]:
    """The bare proxy on the portal's loop, and its client process connected to it."""
    path = temp / "proxy.sock"
    server = portal.call(serve_proxy, client, path)
    proxy = ProxyClient(path, SMALL)
    try:
        yield proxy
    finally:
        proxy.close()
        portal.call(close_server, server)


async def close_server(server: asyncio.AbstractServer) -> None:
    server.close()
    await server.wait_closed()


def roomy_policy(runs: int, warmup: int, large_runs: int) -> Policy:
    """Quotas no measurement reaches: the default policy allows 1,000 calls per execution (and one session runs
    every measurement of its runtime)."""
    per_execution = max(runs, large_runs) + max(warmup, LARGE_WARMUP, 4 * CONCURRENCY) + CONCURRENCY
    return Policy(
        max_tool_calls_per_execution=per_execution,
        max_tool_calls=1_000_000,
        max_result_bytes_per_execution=max(Policy().max_result_bytes_per_execution, per_execution * 1024 * 1024),
    )


def expect_servers(api: httpx.Client) -> None:
    listing = api.get("/v1/tools").json()
    ready = {server["name"] for server in listing["servers"]}
    if not {SMALL[0], LARGE[0]} <= ready:
        raise RuntimeError(f"the MCP servers did not come up: {listing['unavailable']}")


def has_typescript(api: httpx.Client) -> bool:
    """Whether the image runs TypeScript (one built with TYPESCRIPT=0 does not: its rows are left out)."""
    session_id = api.post("/v1/sessions", json={"runtime": RUNTIMES[-1]}).json()["id"]
    response = api.post(f"/v1/sessions/{session_id}/executions", json={"code": "1", "language": "typescript"})
    api.delete(f"/v1/sessions/{session_id}")
    return response.status_code == 200


def measure(
    api: httpx.Client, runs: int, warmup: int, large_runs: int, rounds: int, temp: Path
) -> tuple[list[Latency], list[Throughput]]:
    """Every path in turn, `rounds` times over; the concurrent calls after them."""
    typescript = has_typescript(api)
    sessions: dict[str, SandboxBench] = {}
    try:
        for runtime in RUNTIMES:
            response = api.post("/v1/sessions", json={"runtime": runtime, "timeout_s": EXECUTION_TIMEOUT_S})
            if response.status_code != 201:
                raise RuntimeError(f"creating a {runtime} session failed: {response.status_code} {response.text}")
            sessions[runtime] = SandboxBench(api, str(response.json()["id"]), runtime)
        # The baseline runs on uvloop, as the controller does, in a thread with its own event loop.
        with (
            start_blocking_portal(backend_options={"use_uvloop": True}) as portal,
            portal.wrap_async_context_manager(Client(TIME, cache=None)) as time_client,
            portal.wrap_async_context_manager(Client(DOCSTORE, cache=None)) as docstore_client,
            bare_proxy(portal, time_client, temp) as proxy,
        ):
            measured: dict[tuple[str, str], Latency] = {}
            for round_number in range(rounds):
                # Every round warms each path up again: the others ran in between.
                small_warmup = warmup if round_number == 0 else max(warmup // rounds, 3)
                batches = [
                    portal.call(direct_calls, time_client, SMALL, runs // rounds, small_warmup),
                    portal.call(direct_calls, time_client, SMALL, runs // rounds, small_warmup, PACED_PAUSE_S),
                    proxy.sequential(runs // rounds, small_warmup),
                    portal.call(direct_calls, docstore_client, LARGE, large_runs // rounds, LARGE_WARMUP),
                ]
                for bench in sessions.values():
                    batches.append(bench.sequential(SMALL, runs // rounds, small_warmup))
                    batches.append(bench.sequential(LARGE, large_runs // rounds, LARGE_WARMUP))
                    if typescript:
                        batches.append(bench.sequential(SMALL, runs // rounds, small_warmup, "typescript"))
                        batches.append(bench.sequential(LARGE, large_runs // rounds, LARGE_WARMUP, "typescript"))
                for batch in batches:
                    key = (batch.tool, batch.path)
                    measured[key] = measured[key].joined(batch) if key in measured else batch
        throughputs = []
        for bench in sessions.values():
            throughputs.append(bench.concurrent(f"{CONCURRENCY} threads", THREADS, SMALL, runs))
            throughputs.append(bench.concurrent(f"asyncio.gather x{CONCURRENCY}", GATHER, SMALL, runs))
    finally:
        for bench in sessions.values():
            api.delete(f"/v1/sessions/{bench.session_id}")
    return list(measured.values()), throughputs


def overheads(latencies: list[Latency]) -> list[Overhead]:
    direct = {row.tool: row for row in latencies if row.path == DIRECT}
    return [
        Overhead(
            row.tool,
            row.path,
            [ours - theirs for ours, theirs in zip(row.round_p50s_ms, direct[row.tool].round_p50s_ms, strict=True)],
            row.result_bytes,
        )
        for row in latencies
        if row.path != DIRECT
    ]


def cost_per_mb(rows: list[Overhead], runtime: str) -> float:
    """Milliseconds per MB of result the sandbox path adds beyond a small call's overhead."""
    small = next(row for row in rows if row.runtime == runtime and row.tool == tool_name(SMALL))
    large = next(row for row in rows if row.runtime == runtime and row.tool == tool_name(LARGE))
    return (large.ms - small.ms) / ((large.result_bytes - small.result_bytes) / 1e6)


def table(latencies: list[Latency], throughputs: list[Throughput], rows: list[Overhead]) -> str:
    header = (
        f"{'tool':<23}{'path':<14}{'mode':<20}{'n':>5}{'p50 ms':>9}{'p95 ms':>9}{'mean ms':>9}{'calls/s':>9}"
        f"{'upstream':>10}{'in mcpx':>9}{'overhead':>10}"
    )
    lines = [header, "-" * len(header)]
    overhead = {(row.tool, row.runtime): row for row in rows}
    for row in latencies:
        upstream = f"{row.upstream_p50_ms:.3f}" if row.upstream_p50_ms is not None else ""
        in_mcpx = f"{row.mcpx_p50_ms:.3f}" if row.mcpx_p50_ms is not None else ""
        added = f"{overhead[row.tool, row.path].ms:+.3f}" if (row.tool, row.path) in overhead else ""
        lines.append(
            f"{row.tool:<23}{row.path:<14}{'sequential':<20}{len(row.samples_ms):>5}{row.p50_ms:>9.3f}"
            f"{row.p95_ms:>9.3f}{row.mean_ms:>9.3f}{row.calls_per_s:>9.0f}{upstream:>10}{in_mcpx:>9}{added:>10}"
        )
    for item in throughputs:
        lines.append(f"{item.tool:<23}{item.path:<14}{item.mode:<20}{item.calls:>5}{'':>27}{item.calls_per_s:>9.0f}")
    lines.append("")
    lines.append("upstream: p50 of the controller's own MCP call of each call; in mcpx: p50 of (call - upstream)")
    lines.append("overhead: median over rounds of (path p50 - direct mcp p50 in the same round); the target is on it")
    for runtime in RUNTIMES:
        small = overhead[tool_name(SMALL), runtime]
        verdict = "within" if small.ms <= OVERHEAD_TARGET_MS else "ABOVE"
        low, high = small.middle_ms
        lines.append(
            f"{runtime}: overhead {small.ms:.3f} ms p50 ({verdict} the {OVERHEAD_TARGET_MS:g} ms target; half the "
            f"rounds between {low:+.2f} and {high:+.2f}), {cost_per_mb(rows, runtime):.1f} ms per MB of result"
        )
    paced = overhead[tool_name(SMALL), PACED]
    lines.append(
        f"{PACED}: a {PACED_PAUSE_S * 1000:g} ms pause before each direct call alone adds {paced.ms:+.3f} ms; "
        "a sandbox's calls always come after such a pause (not part of the verdict)"
    )
    proxy = overhead[tool_name(SMALL), PROXY]
    lines.append(
        f"{PROXY}: any intermediary adds {proxy.ms:+.3f} ms here (a line in, the SDK call, a line out; its client in "
        "a process of its own); mcpx's controller and sandbox come on top of it (not part of the verdict)"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON results")
    parser.add_argument("--runs", type=int, default=1000, help="timed calls of the small tool per path")
    parser.add_argument("--warmup", type=int, default=20, help="untimed calls before them")
    parser.add_argument("--large-runs", type=int, default=80, help="timed calls of the large-result tool per path")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="turns each path takes, the runs split among them")
    args = parser.parse_args()
    if args.rounds < 1 or min(args.runs, args.large_runs) < max(CONCURRENCY, 2 * args.rounds) or args.warmup < 0:
        parser.error(f"--runs and --large-runs must be at least {CONCURRENCY} and twice --rounds, --warmup at least 0")
    if not TIME_SERVER.exists():
        parser.error(f"{TIME_SERVER} is missing: run `make setup` first")
    stop_on_sigterm()

    image = os.environ.get("MCPX_IMAGE", "mcpx-sandbox:latest")
    info = metadata(
        image, {"calls": args.runs, "warmup": args.warmup, "large_calls": args.large_runs, "rounds": args.rounds}
    )
    # Sub-millisecond numbers move with whatever else the host runs; the load says how quiet it was.
    info["host"]["load_average_1m"] = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="mcpx-bench-") as temp:
        servers_file = Path(temp) / "servers.json"
        servers_file.write_text(json.dumps(servers_config()))
        # Nothing boots in the background while calls are timed; sessions here are never the default profile.
        policy = roomy_policy(args.runs, args.warmup, args.large_runs)
        with (
            controller(Path(temp), "bench", image, servers_file=servers_file, warm_pool_size=0, policy=policy) as url,
            httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_S) as api,
        ):
            expect_servers(api)
            latencies, throughputs = measure(api, args.runs, args.warmup, args.large_runs, args.rounds, Path(temp))

    rows = overheads(latencies)
    print(table(latencies, throughputs, rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results = {
        "latency": [
            {
                **asdict(row),
                "n": len(row.samples_ms),
                "p50_ms": row.p50_ms,
                "p95_ms": row.p95_ms,
                "mean_ms": row.mean_ms,
                "calls_per_s": row.calls_per_s,
                "upstream_p50_ms": row.upstream_p50_ms,
                "mcpx_p50_ms": row.mcpx_p50_ms,
            }
            for row in latencies
        ],
        "throughput": [{**asdict(item), "calls_per_s": item.calls_per_s} for item in throughputs],
        "overhead": [{**asdict(row), "ms": row.ms, "middle_ms": row.middle_ms} for row in rows],
        "cost_per_mb_ms": {runtime: cost_per_mb(rows, runtime) for runtime in RUNTIMES},
        "target_overhead_ms": OVERHEAD_TARGET_MS,
    }
    args.out.write_text(json.dumps({**info, "results": results}, indent=2) + "\n")
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()

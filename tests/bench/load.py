"""Load benchmark: many concurrent sessions, each running executions that call a real MCP tool, over the HTTP API.

Usage: python tests/bench/load.py --out .bench/load.json [--sessions 50 --executions 20 --runtime runsc|runc]
(image from MCPX_IMAGE). The controller runs as `mcpx serve` in its own process with the built-in demo servers;
every session runs its executions one after another, all sessions at once, each execution calling the demo `crm`
server's `search_records` from sandbox code. Prints throughput, p50/p95/p99 latency, errors, the controller's RSS
and the memory of an idle session (the engine's cgroup accounting, `docker stats`), writes JSON, and exits non-zero
when any execution failed or any sandbox is left once the controller is gone.

Then the noisy neighbour: QUIET_SESSIONS sessions time their tool calls from inside the sandbox, alone, then again
while one more session floods streamed output and concurrent tool calls; the row gives the quiet calls' p50/p95
both ways, measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from harness import (
    LABEL,
    docker,
    labelled,
    metadata,
    percentile,
    remove_labelled,
    served_controller,
    stop_on_sigterm,
)

CODE = """\
from servers.crm import search_records
found = search_records(query={query!r}, limit=5)
[record["id"] for record in found["records"]]
"""
QUERIES = ("kestrel", "renewal", "freight", "acme", "")
# A quiet session's execution: tool calls one after another, each timed where the code sees it.
QUIET_CODE = """\
import time
from servers.crm import search_records
took = []
for query in {queries!r}:
    started = time.perf_counter()
    search_records(query=query, limit=5)
    took.append((time.perf_counter() - started) * 1000)
took
"""
# The noisy neighbour: streamed output as fast as it prints and calls from 8 coroutines at once, until stopped.
NOISY_CODE = """\
import asyncio, time
from servers.crm import search_records
deadline = time.monotonic() + {seconds}

async def caller():
    calls = 0
    while time.monotonic() < deadline:
        await search_records(query="acme", limit=5)
        calls += 1
    return calls

async def printer():
    lines = 0
    while time.monotonic() < deadline:
        print("noise " * 30)
        lines += 1
        if lines % 50 == 0:
            await asyncio.sleep(0)
    return lines

counts = await asyncio.gather(printer(), *(caller() for _ in range(8)))
{{"lines": counts[0], "calls": sum(counts[1:])}}
"""
QUIET_SESSIONS = 4
QUIET_EXECUTIONS = 3
NOISY_SECONDS = 300  # at most: the flood is stopped (its stream closed) once the quiet sessions are done
REQUEST_TIMEOUT_S = 300.0
CREATE_CONCURRENCY = 8  # session starts at once: boots are CPU-bound, more only queue in the engine
SETTLE_S = 3.0  # after the last boot, before idle memory is read
TARGET_ERRORS = 0
UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "kB": 10**3, "MB": 10**6, "GB": 10**9}


@dataclass
class Outcome:
    """What the load did: per-execution latencies and every error, with the memory readings."""

    sessions: int
    executions_per_session: int
    runtime: str
    create_ms: list[float] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    tool_calls: int = 0
    wall_s: float = 0.0
    rss_start_mib: float = 0.0
    rss_idle_mib: float = 0.0
    rss_peak_mib: float = 0.0
    idle_sandbox_mib: list[float] = field(default_factory=list)
    leftover_sandboxes: list[str] = field(default_factory=list)
    quiet_alone_ms: list[float] = field(default_factory=list)
    quiet_beside_noisy_ms: list[float] = field(default_factory=list)
    noisy: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        done = len(self.latencies_ms)
        return {
            "executions": done,
            "throughput_per_s": done / self.wall_s if self.wall_s else 0.0,
            "tool_calls_per_s": self.tool_calls / self.wall_s if self.wall_s else 0.0,
            "p50_ms": percentile(self.latencies_ms, 50) if done >= 2 else None,
            "p95_ms": percentile(self.latencies_ms, 95) if done >= 2 else None,
            "p99_ms": percentile(self.latencies_ms, 99) if done >= 2 else None,
            "create_p50_ms": percentile(self.create_ms, 50) if len(self.create_ms) >= 2 else None,
            "errors": len(self.errors),
            "controller_rss_per_idle_session_mib": (self.rss_idle_mib - self.rss_start_mib) / max(self.sessions, 1),
            "sandbox_mib_per_idle_session": sum(self.idle_sandbox_mib) / max(len(self.idle_sandbox_mib), 1),
            "leftover_sandboxes": len(self.leftover_sandboxes),
            **{
                f"quiet_{name}_p{p}_ms": percentile(samples, p) if len(samples) >= 2 else None
                for name, samples in (("alone", self.quiet_alone_ms), ("beside_noisy", self.quiet_beside_noisy_ms))
                for p in (50, 95)
            },
        }


def rss_mib(pid: int, field_name: str = "VmRSS") -> float:
    """A process's resident memory (VmRSS) or its peak (VmHWM), MiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{field_name}:\s+(\d+) kB", status, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no {field_name} for pid {pid}")
    return int(match.group(1)) / 1024


def mebibytes(usage: str) -> float:
    """`docker stats` memory usage ("12.5MiB / 256MiB") -> the used part in MiB."""
    match = re.fullmatch(r"([0-9.]+)\s*([A-Za-z]+)", usage.split("/")[0].strip())
    if match is None or match.group(2) not in UNITS:
        raise RuntimeError(f"unreadable memory usage {usage!r}")
    return float(match.group(1)) * UNITS[match.group(2)] / 2**20


def sandbox_memory(label: str) -> list[float]:
    """Memory of every running container with the label, as the engine accounts it (cgroup), MiB each."""
    ids = docker("ps", "--quiet", "--filter", f"label={label}").split()
    if not ids:
        return []
    output = docker("stats", "--no-stream", "--format", "{{.MemUsage}}", *ids)
    return [mebibytes(line) for line in output.splitlines() if line.strip()]


async def create(api: httpx.AsyncClient, runtime: str, gate: asyncio.Semaphore, outcome: Outcome) -> str | None:
    async with gate:
        started = time.perf_counter()
        try:
            response = await api.post("/v1/sessions", json={"runtime": runtime, "memory_mb": 256})
        except httpx.HTTPError as exc:
            outcome.errors.append(f"create: {type(exc).__name__}: {exc}")
            return None
        if response.status_code != 201:
            outcome.errors.append(f"create: {response.status_code} {response.text[:200]}")
            return None
        outcome.create_ms.append((time.perf_counter() - started) * 1000)
        return str(response.json()["id"])


async def drive(api: httpx.AsyncClient, session_id: str, executions: int, outcome: Outcome) -> None:
    """One session's executions, one after another, each checked for its tool call and its value."""
    for index in range(executions):
        code = CODE.format(query=QUERIES[index % len(QUERIES)])
        started = time.perf_counter()
        try:
            response = await api.post(f"/v1/sessions/{session_id}/executions", json={"code": code})
        except httpx.HTTPError as exc:
            outcome.errors.append(f"{session_id}: {type(exc).__name__}: {exc}")
            continue
        elapsed = (time.perf_counter() - started) * 1000
        if response.status_code != 200:
            outcome.errors.append(f"{session_id}: {response.status_code} {response.text[:200]}")
            continue
        result = response.json()
        calls = result["tool_calls"]
        if result["error"] is not None or not isinstance(result["result"], list) or not calls or not calls[0]["ok"]:
            outcome.errors.append(f"{session_id}: {json.dumps(result['error'] or result['result'])[:200]}")
            continue
        outcome.latencies_ms.append(elapsed)
        outcome.tool_calls += len(calls)


async def run_load(url: str, pid: int, label: str, args: argparse.Namespace, outcome: Outcome) -> None:
    limits = httpx.Limits(max_connections=args.sessions + 8)
    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT_S, limits=limits) as api:
        gate = asyncio.Semaphore(CREATE_CONCURRENCY)
        created = await asyncio.gather(*(create(api, args.runtime, gate, outcome) for _ in range(args.sessions)))
        sessions = [session_id for session_id in created if session_id is not None]
        await asyncio.sleep(SETTLE_S)
        outcome.rss_idle_mib = rss_mib(pid)
        outcome.idle_sandbox_mib = await asyncio.to_thread(sandbox_memory, label)
        started = time.perf_counter()
        await asyncio.gather(*(drive(api, session_id, args.executions, outcome) for session_id in sessions))
        outcome.wall_s = time.perf_counter() - started
        outcome.rss_peak_mib = rss_mib(pid, "VmHWM")
        for session_id in sessions:
            response = await api.delete(f"/v1/sessions/{session_id}")
            if response.status_code != 204:
                outcome.errors.append(f"delete {session_id}: {response.status_code}")
        await neighbours(api, args.runtime, outcome)


async def quiet_calls(api: httpx.AsyncClient, sessions: list[str], outcome: Outcome) -> list[float]:
    """Every quiet session's executions, all sessions at once; the tool-call times their code measured."""

    async def one(session_id: str) -> list[float]:
        took: list[float] = []
        for index in range(QUIET_EXECUTIONS):
            queries = [QUERIES[(index + n) % len(QUERIES)] for n in range(10)]
            response = await api.post(
                f"/v1/sessions/{session_id}/executions", json={"code": QUIET_CODE.format(queries=queries)}
            )
            result = response.json() if response.status_code == 200 else {"error": response.text[:200]}
            if result.get("error") is not None:
                outcome.errors.append(f"quiet {session_id}: {json.dumps(result['error'])[:200]}")
                continue
            took += result["result"]
        return took

    return [ms for took in await asyncio.gather(*(one(session_id) for session_id in sessions)) for ms in took]


async def noisy(api: httpx.AsyncClient, session_id: str, started: asyncio.Event, outcome: Outcome) -> None:
    """The noisy neighbour's one execution, streamed (so its output crosses the bridge as it is printed)."""
    body = {"code": NOISY_CODE.format(seconds=NOISY_SECONDS), "timeout_s": NOISY_SECONDS + 60}
    outcome.noisy = {"events": 0}
    async with api.stream(
        "POST", f"/v1/sessions/{session_id}/executions", json=body, headers={"Accept": "text/event-stream"}
    ) as response:
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                outcome.noisy["events"] += 1
                started.set()
    started.set()


async def neighbours(api: httpx.AsyncClient, runtime: str, outcome: Outcome) -> None:
    """The quiet sessions' calls alone, then beside the noisy one (which must outlast them)."""
    gate = asyncio.Semaphore(CREATE_CONCURRENCY)
    created = await asyncio.gather(*(create(api, runtime, gate, outcome) for _ in range(QUIET_SESSIONS + 1)))
    if None in created:
        return
    quiet, loud = [str(session_id) for session_id in created[:-1]], str(created[-1])
    outcome.quiet_alone_ms = await quiet_calls(api, quiet, outcome)
    started = asyncio.Event()
    flood = asyncio.create_task(noisy(api, loud, started, outcome))
    await started.wait()
    outcome.quiet_beside_noisy_ms = await quiet_calls(api, quiet, outcome)
    if flood.done():
        outcome.errors.append("the noisy session ended before the quiet ones: raise NOISY_SECONDS")
    flood.cancel()  # a client that disconnects stops its execution
    with contextlib.suppress(asyncio.CancelledError):
        await flood
    for session_id in created:
        await api.delete(f"/v1/sessions/{session_id}")


def table(outcome: Outcome) -> str:
    summary = outcome.summary()

    def ms(value: float | None) -> str:
        return f"{value:,.0f} ms" if value is not None else "n/a"

    rss = f"{outcome.rss_start_mib:.0f} MiB at start, {outcome.rss_idle_mib:.0f} MiB with the sessions idle, "
    rss += f"{outcome.rss_peak_mib:.0f} MiB peak"
    sandbox = f"{summary['sandbox_mib_per_idle_session']:.1f} MiB (cgroup, docker stats, "
    sandbox += f"{len(outcome.idle_sandbox_mib)} sandboxes)"
    rows = [
        ("sessions x executions", f"{outcome.sessions} x {outcome.executions_per_session} ({outcome.runtime})"),
        ("executions completed", f"{summary['executions']:,}"),
        ("throughput", f"{summary['throughput_per_s']:.1f} executions/s, {summary['tool_calls_per_s']:.1f} calls/s"),
        ("latency p50 / p95 / p99", f"{ms(summary['p50_ms'])} / {ms(summary['p95_ms'])} / {ms(summary['p99_ms'])}"),
        ("session create p50", ms(summary["create_p50_ms"])),
        ("errors", f"{summary['errors']} (target {TARGET_ERRORS})"),
        ("controller RSS", rss),
        ("controller per idle session", f"{summary['controller_rss_per_idle_session_mib']:.2f} MiB"),
        ("sandbox per idle session", sandbox),
        ("sandboxes left afterwards", str(summary["leftover_sandboxes"])),
        (
            "quiet tool call p50 / p95",
            f"alone {summary['quiet_alone_p50_ms'] or 0:.1f} / {summary['quiet_alone_p95_ms'] or 0:.1f} ms, beside a "
            f"noisy session {summary['quiet_beside_noisy_p50_ms'] or 0:.1f} / "
            f"{summary['quiet_beside_noisy_p95_ms'] or 0:.1f} ms ({QUIET_SESSIONS} sessions, "
            f"{len(outcome.quiet_beside_noisy_ms)} calls; the noisy one streamed {outcome.noisy.get('events', 0):,} "
            "events meanwhile)",
        ),
    ]
    return "\n".join(f"{name:<30}{value}" for name, value in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON results")
    parser.add_argument("--sessions", type=int, default=50, help="concurrent sessions")
    parser.add_argument("--executions", type=int, default=20, help="executions per session")
    parser.add_argument("--runtime", choices=("runsc", "runc"), default="runsc")
    args = parser.parse_args()
    if args.sessions < 1 or args.executions < 1 or args.sessions * args.executions < 2:
        parser.error("--sessions and --executions must be at least 1, and make at least 2 executions")
    stop_on_sigterm()

    image = os.environ.get("MCPX_IMAGE", "mcpx-sandbox:latest")
    info = metadata(image, {"sessions": args.sessions, "executions_per_session": args.executions})
    controller_id = f"load{os.getpid()}"
    label = f"{LABEL}={controller_id}"
    outcome = Outcome(args.sessions, args.executions, args.runtime)
    environ = {
        "MCPX_WARM_POOL_SIZE": "0",
        "MCPX_MAX_SESSIONS": str(args.sessions + 4),
        # Room for every execution's call; the default quotas are per session and far above 20 calls anyway.
        "MCPX_DEFAULTS__TIMEOUT_S": "120",
        "MCPX_DEFAULTS__TTL_S": "3600",
    }
    with tempfile.TemporaryDirectory(prefix="mcpx-bench-load-") as temp:
        try:
            with served_controller(Path(temp), controller_id, image, environ) as (url, pid):
                outcome.rss_start_mib = rss_mib(pid)
                asyncio.run(run_load(url, pid, label, args, outcome))
            # The controller is gone (it deletes its sessions on the way out): nothing of its own may be left.
            outcome.leftover_sandboxes = labelled(label)
        finally:
            remove_labelled(label)

    print(table(outcome))
    if outcome.errors:
        print(f"\nfirst errors: {outcome.errors[:5]}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {**info, "results": {**asdict(outcome), **outcome.summary()}, "target_errors": TARGET_ERRORS}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten to {args.out}")
    if outcome.leftover_sandboxes:
        print(f"FAILED: {len(outcome.leftover_sandboxes)} sandboxes were left behind", file=sys.stderr)
        return 1
    if len(outcome.errors) > TARGET_ERRORS:
        print(f"FAILED: {len(outcome.errors)} errors", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

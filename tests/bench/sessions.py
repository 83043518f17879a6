"""Session benchmark: the real controller over real HTTP, against `docker run` and `docker exec` in the same run.

Usage: python tests/bench/sessions.py --out .bench/sessions.json   (image from MCPX_IMAGE)
Prints a table of p50/p95 latencies per runtime and writes every sample, with host metadata, as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

import httpx
from harness import LABEL, controller, docker, metadata, percentile, remove_labelled, stop_on_sigterm

from controller.demo.documents import build_corpus

RUNTIMES = ("runsc", "runc")
WARMUP = 3
ROUND_TRIP_WARMUP = 20
CODE = "print(1)"
CODES = {"python": CODE, "typescript": "console.log(1)"}
REQUEST_TIMEOUT_S = 60.0

T = TypeVar("T")


@dataclass
class Row:
    """One measurement on one runtime."""

    measurement: str
    runtime: str
    samples_ms: list[float]
    speedup_vs_docker_exec: float | None = None

    @property
    def p50_ms(self) -> float:
        return percentile(self.samples_ms, 50)

    @property
    def p95_ms(self) -> float:
        return percentile(self.samples_ms, 95)


def timed(action: Callable[[], T], runs: int, warmup: int, after: Callable[[T], object] | None = None) -> list[float]:
    """Milliseconds of `runs` calls of `action`, after `warmup` untimed ones; `after` gets each result, untimed."""
    samples = []
    for _ in range(warmup + runs):
        started = time.perf_counter()
        outcome = action()
        samples.append((time.perf_counter() - started) * 1000)
        if after is not None:
            after(outcome)
    return samples[warmup:]


def expect_one(output: str) -> None:
    if output.strip() != "1":
        raise RuntimeError(f"expected the output 1, got {output!r}")


class Bench:
    """The measurements, against one controller."""

    def __init__(self, api: httpx.Client, image: str, label: str) -> None:
        self.api = api
        self.image = image
        self.label = label

    def create(self, runtime: str) -> str:
        response = self.api.post("/v1/sessions", json={"runtime": runtime})
        if response.status_code != 201:
            raise RuntimeError(f"creating a {runtime} session failed: {response.status_code} {response.text}")
        return str(response.json()["id"])

    def execute(self, session_id: str, language: str = "python") -> str:
        body = {"code": CODES[language], "language": language}
        response = self.api.post(f"/v1/sessions/{session_id}/executions", json=body)
        response.raise_for_status()
        result = response.json()
        if result["error"] is not None:
            raise RuntimeError(f"{CODES[language]} failed: {result['error']}")
        expect_one(result["stdout"])
        return session_id

    def delete(self, session_id: str) -> None:
        self.api.delete(f"/v1/sessions/{session_id}").raise_for_status()

    def cold_create(self, runtime: str, runs: int) -> list[float]:
        return timed(lambda: self.create(runtime), runs, WARMUP, after=self.delete)

    def create_then_execute(self, runtime: str, runs: int) -> list[float]:
        return timed(lambda: self.execute(self.create(runtime)), runs, WARMUP, after=self.delete)

    def warm_create_then_execute(self, runtime: str, runs: int, pool: int) -> list[float]:
        """Create -> first execution when the warm pool is full (refilling between samples is not timed)."""

        def full() -> None:
            deadline = time.monotonic() + REQUEST_TIMEOUT_S
            while len(docker("ps", "--quiet", "--filter", f"label={self.label}").split()) < pool:
                if time.monotonic() > deadline:
                    raise RuntimeError("the warm pool did not refill")
                time.sleep(0.05)

        def sample() -> str:
            return self.execute(self.create(runtime))

        samples = []
        for _ in range(runs):
            full()
            samples += timed(sample, 1, 0, after=self.delete)
        return samples

    def round_trip(self, runtime: str, runs: int, language: str = "python") -> list[float]:
        session_id = self.create(runtime)
        samples = timed(lambda: self.execute(session_id, language), runs, ROUND_TRIP_WARMUP)
        self.delete(session_id)
        return samples

    def first_typescript(self, runtime: str, runs: int) -> list[float]:
        """A session's first TypeScript execution, which starts its Node.js worker (the session exists already)."""
        samples = []
        for _ in range(runs):
            session_id = self.execute(self.create(runtime))
            samples += timed(lambda: self.execute(session_id, "typescript"), 1, 0)  # noqa: B023 - called at once
            self.delete(session_id)
        return samples

    def timeout_overshoot(self, runtime: str, runs: int, code: str) -> list[float]:
        """How long after its timeout a runaway cell is answered (a fresh session each, created untimed): the
        interrupt for a Python loop, the kill after the grace for a C loop deaf to it."""
        samples = []
        for _ in range(runs):
            session_id = self.create(runtime)
            body = {"code": code, "timeout_s": TIMEOUT_S}
            started = time.perf_counter()
            response = self.api.post(f"/v1/sessions/{session_id}/executions", json=body)
            samples.append((time.perf_counter() - started - TIMEOUT_S) * 1000)
            response.raise_for_status()
            if (response.json()["error"] or {}).get("kind") != "timeout":
                raise RuntimeError(f"{code!r} did not time out: {response.text}")
            self.delete(session_id)
        return samples

    def has_typescript(self) -> bool:
        session_id = self.create(RUNTIMES[-1])
        response = self.api.post(f"/v1/sessions/{session_id}/executions", json={"code": "1", "language": "typescript"})
        self.delete(session_id)
        return response.status_code == 200

    def docker_run(self, runtime: str, runs: int) -> list[float]:
        command = ["run", "--rm", "--runtime", runtime, "--network", "none", "--label", self.label]
        command += ["--entrypoint", "python3", self.image, "-c", CODE]
        return timed(lambda: expect_one(docker(*command)), runs, 1)

    def docker_exec(self, runtime: str, runs: int) -> list[float]:
        container = docker(
            *("run", "--detach", "--runtime", runtime, "--network", "none", "--label", self.label),
            *("--entrypoint", "sleep", self.image, "infinity"),
        )
        samples = timed(lambda: expect_one(docker("exec", container, "python3", "-c", CODE)), runs, WARMUP)
        docker("rm", "--force", container)
        return samples


WARM_POOL = 2
TIMEOUT_S = 1.0
RUNAWAYS = {"timeout overshoot (SIGINT)": "while True:\n    pass", "timeout overshoot (kill)": "sum(range(10**15))"}


def corpus_build_cpu(runs: int) -> list[float]:
    """CPU milliseconds of the docstore's corpus generation, which every start of the demo server pays."""
    samples = []
    for _ in range(runs):
        started = time.process_time()
        build_corpus()
        samples.append((time.process_time() - started) * 1000)
    return samples


def measure(bench: Bench, runs: int, round_trips: int, docker_runs: int, timeouts: int) -> list[Row]:
    rows = [Row("demo corpus build (CPU)", "host", corpus_build_cpu(runs))]
    typescript = bench.has_typescript()  # an image built with TYPESCRIPT=0 has no TypeScript rows
    for runtime in RUNTIMES:
        round_trip = Row("execution round trip", runtime, bench.round_trip(runtime, round_trips))
        docker_exec = Row("docker exec python3", runtime, bench.docker_exec(runtime, runs))
        round_trip.speedup_vs_docker_exec = docker_exec.p50_ms / round_trip.p50_ms
        rows += [
            Row("session create", runtime, bench.cold_create(runtime, runs)),
            Row("create -> first execution", runtime, bench.create_then_execute(runtime, runs)),
            round_trip,
            Row("docker run --rm python3", runtime, bench.docker_run(runtime, docker_runs)),
            docker_exec,
        ]
        rows += [
            Row(name, runtime, bench.timeout_overshoot(runtime, timeouts, code)) for name, code in RUNAWAYS.items()
        ]
        if typescript:
            rows += [
                Row("TS execution round trip", runtime, bench.round_trip(runtime, round_trips, "typescript")),
                Row("first TS exec (node start)", runtime, bench.first_typescript(runtime, runs)),
            ]
    return rows


def table(rows: list[Row]) -> str:
    header = f"{'measurement':<28}{'runtime':<9}{'n':>5}{'p50 ms':>10}{'p95 ms':>10}  speed-up vs docker exec"
    lines = [header, "-" * len(header)]
    for row in rows:
        speedup = f"{row.speedup_vs_docker_exec:.1f}x" if row.speedup_vs_docker_exec is not None else ""
        lines.append(
            f"{row.measurement:<28}{row.runtime:<9}{len(row.samples_ms):>5}{row.p50_ms:>10.1f}{row.p95_ms:>10.1f}"
            f"  {speedup}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON results")
    parser.add_argument("--runs", type=int, default=20, help="session creates and docker execs per runtime")
    parser.add_argument("--round-trips", type=int, default=200, help="executions in a warm session per runtime")
    parser.add_argument("--docker-runs", type=int, default=10, help="`docker run` baselines per runtime")
    parser.add_argument("--timeouts", type=int, default=5, help="runaway cells per kind and runtime")
    args = parser.parse_args()
    if min(args.runs, args.round_trips, args.docker_runs, args.timeouts) < 2:
        parser.error("every count must be at least 2 (for percentiles)")
    stop_on_sigterm()

    image = os.environ.get("MCPX_IMAGE", "mcpx-sandbox:latest")
    runs = {
        "create": args.runs,
        "round_trip": args.round_trips,
        "docker_run": args.docker_runs,
        "timeout": args.timeouts,
    }
    info = metadata(image, runs)
    label, warm_label = f"{LABEL}=bench{os.getpid()}", f"{LABEL}=benchwarm{os.getpid()}"
    with tempfile.TemporaryDirectory(prefix="mcpx-bench-") as temp:
        try:
            # Leaving a controller deletes its sessions, including any a failed measurement left behind.
            with (
                controller(Path(temp), "bench", image, warm_pool_size=0) as url,
                httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_S) as api,
            ):
                rows = measure(Bench(api, image, label), args.runs, args.round_trips, args.docker_runs, args.timeouts)
            with (
                controller(Path(temp), "benchwarm", image, warm_pool_size=WARM_POOL) as url,
                httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_S) as api,
            ):
                samples = Bench(api, image, warm_label).warm_create_then_execute(RUNTIMES[0], args.runs, WARM_POOL)
                rows.insert(2, Row("create -> first exec (warm)", RUNTIMES[0], samples))
        finally:
            remove_labelled(label)  # the baselines' containers

    print(table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results = [{**asdict(row), "n": len(row.samples_ms), "p50_ms": row.p50_ms, "p95_ms": row.p95_ms} for row in rows]
    args.out.write_text(json.dumps({**info, "results": results}, indent=2) + "\n")
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()

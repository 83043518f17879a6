"""What the token benchmark measures: the agent's tasks, each with the answer it must print, and shaping's cost.

A task is what the agent searches for, the code it runs and a check of what that code printed; tests/bench/tokens.py
plays it through the controller. Every expected answer comes from the same seeded data the demo servers serve
(`DocumentStore` for the docstore, `Tracker` for the deploys server), so no tokens of a broken run are counted.
Shaping's cost is `shape_output` timed on 10 MB of seeded output per strategy: request log lines as an API server
prints them, and invoice records as a tool returns them.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from controller.demo.deploys import Tracker
from controller.demo.docstore import DocumentStore
from controller.demo.documents import build_corpus
from controller.shaping import Strategy, Tokens, shape_output

TRANSCRIPT_ID, ACCOUNT_ID, SHEET_ID = "transcript-01", "ACC-0001", "sheet-01"
SEARCH_QUERY, SEARCH_LIMIT = "renewal date", 3
FILTER_REGION, FILTER_MIN_AMOUNT, SHOWN_ROWS = "EMEA", 25_000, 5
MIN_TRANSCRIPT_TOKENS = 40_000
SERVICE, VERSION = "billing-api", "v2.14.0"
MIN_POLLS = 11

# The product requires shaping 10 MB of output in well under a second.
SHAPING_BYTES = 10_000_000
SHAPING_BUDGET = 4_000  # Settings.max_output_tokens' default
SHAPING_LIMIT_MS = 1_000.0
SHAPING_RUNS = 5
STRATEGIES: tuple[Strategy, ...] = ("truncate", "summarize", "sample")
SAVED_AT = {"stdout": "/workspace/.mcpx/outputs/1/stdout.txt", "result": "/workspace/.mcpx/outputs/1/result.json"}

LEVELS = ("INFO",) * 8 + ("WARN", "ERROR")
METHODS = ("GET", "GET", "POST", "PUT")
STATUSES = (200,) * 12 + (201, 304, 404, 500)
ROUTES = ("/v1/invoices", "/v1/customers/{}", "/v1/orders/{}/items", "/healthz", "/v1/search?q=acc-{}")
WORDS = ("the", "customer", "asked", "for", "a", "revised", "quote", "before", "renewal", "next", "quarter")

DISCOVERY_TASK = f"""\
from servers.docstore import search_documents
from servers.time import get_current_time

now = get_current_time(timezone="UTC")
found = search_documents(query={SEARCH_QUERY!r}, limit={SEARCH_LIMIT})
print(now["datetime"], [match["document_id"] for match in found["matches"]])
"""
TRANSCRIPT_TASK = f"""\
from servers.crm import add_note
from servers.docstore import get_document

transcript = get_document(document_id={TRANSCRIPT_ID!r})["content"]
note = add_note(record_id={ACCOUNT_ID!r}, text=transcript)
print(f"{{note['note_id']}} on {{note['record_id']}}: {{note['length']}} of {{len(transcript)}} characters stored")
"""
FILTER_TASK = f"""\
import json
from servers.docstore import get_sheet

sheet = get_sheet(sheet_id={SHEET_ID!r})
at = {{name: i for i, name in enumerate(sheet["columns"])}}
region, amount = at["region"], at["amount"]
rows = [row for row in sheet["rows"] if row[region] == {FILTER_REGION!r} and row[amount] > {FILTER_MIN_AMOUNT}]
print(len(rows), "of", sheet["row_count"], "rows match")
for row in rows[:{SHOWN_ROWS}]:
    print(json.dumps(row))
"""
LOOP_TASK = f"""\
from servers.deploys import get_deployment, start_deployment

status = start_deployment(service={SERVICE!r}, version={VERSION!r})
polls = 0
while status["phase"] != "healthy":
    status = get_deployment(deployment_id=status["id"])
    polls += 1
print(f"{{status['phase']}} after {{polls}} polls, {{len(status['log'])}} log lines")
"""


@dataclass(frozen=True)
class Task:
    """What the agent must do: find `tools` (server, tool) with `query`, then run `code`, whose output `check`
    verifies (raising RuntimeError) against the demo data; its tool results must total `min_results` tokens, and
    it must make exactly `calls` tool calls when that is set."""

    name: str
    query: str
    tools: tuple[tuple[str, str], ...]
    code: str
    check: Callable[[str], None]
    min_results: int = 0
    calls: int | None = None


def expect(condition: bool, what: str, output: str) -> None:
    if not condition:
        raise RuntimeError(f"wrong answer: {what}; the task printed:\n{output[:2000]}")


def tasks() -> dict[str, Task]:
    corpus = build_corpus()
    store = DocumentStore(corpus)
    transcript = len(store.entry(TRANSCRIPT_ID).content)
    sheet = store.entry(SHEET_ID)
    at = {name: i for i, name in enumerate(sheet.columns)}
    matching = [
        row
        for row in sheet.rows
        if row[at["region"]] == FILTER_REGION and float(row[at["amount"]] or 0) > FILTER_MIN_AMOUNT
    ]
    documents = [match.document_id for match in store.search(SEARCH_QUERY, SEARCH_LIMIT).matches]
    tracker = Tracker()
    deployment = tracker.start(SERVICE, VERSION)
    while deployment.phase != "healthy":
        deployment = tracker.poll(deployment.id)

    def check_discovery(output: str) -> None:
        stamp, _, found = output.strip().partition(" ")
        try:
            skew = abs((datetime.fromisoformat(stamp) - datetime.now(UTC)).total_seconds())
        except ValueError:
            skew = math.inf
        expect(skew < 300, "the current UTC time", output)
        expect(found == repr(documents), f"the documents matching {SEARCH_QUERY!r}: {documents}", output)

    def check_transcript(output: str) -> None:
        match = re.fullmatch(r"(NOTE-\d{4,}) on (\S+): (\d+) of (\d+) characters stored", output.strip())
        expect(match is not None, "a note receipt", output)
        assert match is not None
        expect(match[2] == ACCOUNT_ID, f"the note is on {ACCOUNT_ID}", output)
        expect(int(match[3]) == int(match[4]) == transcript, f"all {transcript:,} characters stored", output)

    def check_filter(output: str) -> None:
        lines = output.strip().splitlines()
        expect(lines[:1] == [f"{len(matching)} of {len(sheet.rows)} rows match"], f"{len(matching)} rows", output)
        shown = [json.loads(line) for line in lines[1:]]
        expect(shown == matching[:SHOWN_ROWS], f"the first {SHOWN_ROWS} matching rows", output)

    def check_loop(output: str) -> None:
        expected = f"healthy after {deployment.polls} polls, {len(deployment.log)} log lines"
        expect(deployment.polls >= MIN_POLLS, f"a deployment that takes {MIN_POLLS}+ polls", output)
        expect(output.strip() == expected, expected, output)

    return {
        "discovery": Task(
            "discovery",
            "current time, search documents",
            (("time", "get_current_time"), ("docstore", "search_documents")),
            DISCOVERY_TASK,
            check_discovery,
        ),
        "transcript": Task(
            "transcript",
            "get document, add note",
            (("docstore", "get_document"), ("crm", "add_note")),
            TRANSCRIPT_TASK,
            check_transcript,
            MIN_TRANSCRIPT_TOKENS,
        ),
        "filter": Task("filter", "get sheet rows", (("docstore", "get_sheet"),), FILTER_TASK, check_filter),
        "loop": Task(
            "loop",
            "start deployment, get deployment status",
            (("deploys", "start_deployment"), ("deploys", "get_deployment")),
            LOOP_TASK,
            check_loop,
            calls=1 + deployment.polls,
        ),
    }


# --- shaping cost --------------------------------------------------------------------------------------------


def log_lines(size: int) -> str:
    """Seeded request log lines, as an API server prints them: at least `size` bytes."""
    rng = random.Random(11)
    lines, total, clock = [], 0, 1_764_000_000.0
    while total < size:
        clock += rng.expovariate(50)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(clock)) + f".{int(clock * 1000) % 1000:03d}Z"
        line = (
            f"{stamp} {rng.choice(LEVELS):<5} api-{rng.randrange(1, 9)} req={rng.getrandbits(48):012x} "
            f"{rng.choice(METHODS)} {rng.choice(ROUTES).format(rng.randrange(100_000))} "
            f"status={rng.choice(STATUSES)} ms={rng.lognormvariate(3, 1):.1f} bytes={rng.randrange(80, 90_000)}"
        )
        lines.append(line)
        total += len(line) + 1
    return "\n".join(lines) + "\n"


def invoices(size: int) -> list[dict[str, Any]]:
    """Seeded invoice records whose JSON is at least `size` bytes."""
    rng = random.Random(12)
    records: list[dict[str, Any]] = []
    total = 2
    while total < size:
        record = {
            "id": f"INV-{len(records) + 1:07d}",
            "account": f"ACC-{rng.randrange(10_000):04d}",
            "region": rng.choice(("EMEA", "AMER", "APAC")),
            "amount": round(rng.uniform(10, 90_000), 2),
            "currency": "EUR",
            "status": rng.choice(("paid", "open", "overdue")),
            "issued": f"2026-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}",
            "lines": rng.randrange(1, 40),
            "tags": rng.sample(("renewal", "upsell", "priority", "churn-risk", "pilot"), rng.randrange(3)),
            "note": " ".join(rng.choices(WORDS, k=rng.randrange(4, 16))),
        }
        records.append(record)
        total += len(json.dumps(record, ensure_ascii=False)) + 2
    return records


@dataclass
class ShapingCost:
    """`shape_output` timed on one input with one strategy: each run's wall and CPU ms (on a busy host the CPU
    time is the work, the wall time what a caller waits), and the response it shaped."""

    input: str
    part: str
    bytes: int
    strategy: str
    ms: list[float]
    cpu_ms: list[float]
    read: int
    cut_tokens: int
    load: float

    @property
    def median_ms(self) -> float:
        return statistics.median(self.ms)

    @property
    def median_cpu_ms(self) -> float:
        return statistics.median(self.cpu_ms)


def shaping_costs(tokens: Tokens, runs: int) -> list[ShapingCost]:
    """`shape_output` on 10 MB of each input with each strategy, `runs` times after a warm-up.

    Raises: RuntimeError if shaping left an input whole.
    """
    records = invoices(SHAPING_BYTES)
    inputs: dict[str, tuple[str, Any]] = {
        "log lines, printed": ("stdout", log_lines(SHAPING_BYTES)),
        "JSON list of dicts, returned": ("result", records),
        "JSON list of dicts, printed": ("stdout", json.dumps(records, ensure_ascii=False)),
    }
    costs = []
    for label, (part, value) in inputs.items():
        parts = {"stdout": "", "stderr": "", "result": None, "traceback": ""} | {part: value}
        size = len((value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)).encode())
        for strategy in STRATEGIES:
            elapsed, cpu = [], []
            for _ in range(runs + 1):
                started, started_cpu = time.perf_counter(), time.process_time()
                shaped = shape_output(tokens, parts, SHAPING_BUDGET, strategy, SAVED_AT)
                elapsed.append((time.perf_counter() - started) * 1000)
                cpu.append((time.process_time() - started_cpu) * 1000)
            if part not in shaped.cut:
                raise RuntimeError(f"shaping {label} ({size:,} bytes) with {strategy} cut nothing")
            response = {"stdout": shaped.stdout, "stderr": shaped.stderr, "result": shaped.result, "error": None}
            read = tokens.count_json(response)
            load = os.getloadavg()[0]
            costs.append(ShapingCost(label, part, size, strategy, elapsed[1:], cpu[1:], read, shaped.cut[part], load))
    return costs

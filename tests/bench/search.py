"""Search benchmark: recall@1, recall@5 and MRR of `search_tools` on labelled requests over real servers' tools.

Usage: python tests/bench/search.py              (the table; exits non-zero under the thresholds)
       python tests/bench/search.py --capture    (re-capture tests/search/catalog.json from the installed servers)

The catalog is what the real servers (`make test-servers`) and the demo servers answer to tools/list, captured into
tests/search/catalog.json so that scoring needs no server; tests/test_search.py checks the capture still matches the
installed servers. Each labelled query names the tools that answer it; a query is tuned on or held out by a hash of
its text (TUNING_SHARE of them tuned on), so the held-out part is fixed before any ranking change is tried.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller import discovery
from controller.catalog import Catalog, CatalogSnapshot, ServerInfo, ToolInfo
from controller.config import HttpServer, StdioServer, demo_servers

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "search"
CATALOG = DATA / "catalog.json"
QUERIES = DATA / "queries.json"
SERVERS = ROOT / ".servers"
NPM = SERVERS / "npm" / "node_modules" / "@modelcontextprotocol"
TUNING_SHARE = 0.6
RECALL_AT_1 = 0.7
RECALL_AT_5 = 0.9
CAPTURE_WAIT_S = 60.0


def real_servers(scratch: Path) -> dict[str, StdioServer | HttpServer]:
    """The third-party servers of the labelled set, as `make test-servers` installs them, and the demo servers.

    Arguments that would reach a tool description are fixed (the time server's local zone), so captures agree."""
    node = "node"
    return {
        "time": StdioServer(
            command=str(SERVERS / "time" / "bin" / "mcp-server-time"), args=("--local-timezone", "UTC")
        ),
        "git": StdioServer(command=str(SERVERS / "git" / "bin" / "mcp-server-git")),
        "filesystem": StdioServer(
            command=node, args=(str(NPM / "server-filesystem" / "dist" / "index.js"), str(scratch))
        ),
        "memory": StdioServer(
            command=node,
            args=(str(NPM / "server-memory" / "dist" / "index.js"),),
            env={"MEMORY_FILE_PATH": str(scratch / "memory.jsonl")},
        ),
        # tools/list needs no database: the server connects on the first query.
        "postgres": StdioServer(
            command=node, args=(str(NPM / "server-postgres" / "dist" / "index.js"), "postgresql://127.0.0.1:1/none")
        ),
        "everything": StdioServer(command=node, args=(str(NPM / "server-everything" / "dist" / "index.js"), "stdio")),
        **demo_servers(),
    }


def installed() -> bool:
    """Whether every third-party server of the labelled set is installed here."""
    with tempfile.TemporaryDirectory() as scratch:
        servers = real_servers(Path(scratch))
    paths = [
        Path(c.command if c.command != "node" else c.args[0]) for c in servers.values() if isinstance(c, StdioServer)
    ]
    return all(path.exists() for path in paths if path.is_absolute())


async def capture() -> dict[str, Any]:
    """Every server's tools/list answer, in MCP's wire layout, with the server's description.

    Raises:
        RuntimeError: a server did not list its tools in time.
    """
    with tempfile.TemporaryDirectory() as scratch:
        catalog = Catalog(real_servers(Path(scratch)))
        try:
            await catalog.start(CAPTURE_WAIT_S)
            missing = [status.name for status in catalog.statuses() if status.state != "ready"]
            if missing:
                raise RuntimeError(f"servers not ready: {missing}")
            snapshot = catalog.snapshot
        finally:
            await catalog.close()
    return {
        "servers": [
            {"name": s.name, "description": s.description, "tools": [tool.wire() for tool in s.tools]}
            for s in snapshot.servers
        ]
    }


def snapshot_of(document: dict[str, Any]) -> CatalogSnapshot:
    """A captured catalog as the controller holds it."""

    def tool(server: str, wire: dict[str, Any]) -> ToolInfo:
        return ToolInfo(
            server=server,
            name=wire["name"],
            description=wire.get("description", ""),
            title=wire.get("title"),
            input_schema=wire.get("inputSchema", {"type": "object"}),
            output_schema=wire.get("outputSchema"),
            annotations=wire.get("annotations", {}),
        )

    return CatalogSnapshot(
        tuple(
            ServerInfo(s["name"], s["description"], tuple(tool(s["name"], wire) for wire in s["tools"]))
            for s in document["servers"]
        )
    )


@dataclass(frozen=True)
class Query:
    text: str
    tools: frozenset[str]  # `server/tool`: any of them answers the query


@dataclass(frozen=True)
class Scores:
    queries: int
    recall_at_1: float
    recall_at_5: float
    mrr: float
    misses: tuple[tuple[str, str], ...]  # (query, what came first) for queries not answered at rank 1


def queries() -> list[Query]:
    return [Query(entry["query"], frozenset(entry["tools"])) for entry in json.loads(QUERIES.read_text())]


def split(labelled: list[Query]) -> tuple[list[Query], list[Query]]:
    """The tuning part (TUNING_SHARE of the queries) and the held-out rest, chosen by a hash of each query's text."""
    shuffled = sorted(labelled, key=lambda query: hashlib.sha256(query.text.encode()).hexdigest())
    cut = round(len(shuffled) * TUNING_SHARE)
    return shuffled[:cut], shuffled[cut:]


def catalog() -> CatalogSnapshot:
    return snapshot_of(json.loads(CATALOG.read_text()))


def found(snapshot: CatalogSnapshot, query: Query) -> list[str]:
    """The tools search finds for `query`, best first, as `server/tool` (search describes them in this order)."""
    return [f"{tool.server}/{tool.name}" for tool in discovery.rank(snapshot, query.text)]


def score(snapshot: CatalogSnapshot, labelled: list[Query]) -> Scores:
    ranks, misses = [], []
    for query in labelled:
        hits = found(snapshot, query)
        place = next((place for place, name in enumerate(hits, 1) if name in query.tools), None)
        ranks.append(place)
        if place != 1:
            misses.append((query.text, hits[0] if hits else "-"))
    return Scores(
        queries=len(labelled),
        recall_at_1=sum(place == 1 for place in ranks) / len(labelled),
        recall_at_5=sum(place is not None and place <= 5 for place in ranks) / len(labelled),
        mrr=sum(1 / place for place in ranks if place is not None) / len(labelled),
        misses=tuple(misses),
    )


def report() -> dict[str, Scores]:
    """Scores on the tuning part, the held-out part and the whole labelled set."""
    snapshot, labelled = catalog(), queries()
    tuning, held_out = split(labelled)
    return {
        "tuning": score(snapshot, tuning),
        "held out": score(snapshot, held_out),
        "all": score(snapshot, labelled),
    }


def table(scores: dict[str, Scores]) -> str:
    tools = sum(len(server.tools) for server in catalog().servers)
    lines = [
        f"search over {tools} tools; thresholds recall@1 >= {RECALL_AT_1}, recall@5 >= {RECALL_AT_5}",
        f"{'part':<10} {'queries':>7} {'recall@1':>9} {'recall@5':>9} {'MRR':>6}",
    ]
    for part, row in scores.items():
        lines.append(f"{part:<10} {row.queries:>7} {row.recall_at_1:>9.3f} {row.recall_at_5:>9.3f} {row.mrr:>6.3f}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capture", action="store_true", help="re-capture the catalog from the installed servers")
    parser.add_argument("--misses", action="store_true", help="list the tuning queries not answered first")
    args = parser.parse_args()
    if args.capture:
        document = asyncio.run(capture())
        CATALOG.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
        print(f"captured {sum(len(s['tools']) for s in document['servers'])} tools into {CATALOG}")
        return 0
    scores = report()
    print(table(scores))
    if args.misses:
        for query, first in scores["tuning"].misses:
            print(f"  {query!r}: first {first}")
    whole = scores["all"]
    return 0 if whole.recall_at_1 >= RECALL_AT_1 and whole.recall_at_5 >= RECALL_AT_5 else 1


if __name__ == "__main__":
    sys.exit(main())

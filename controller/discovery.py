"""Progressive disclosure: listings and search over the catalog, so agents read only the tools they need."""

from __future__ import annotations

import re
from typing import Any, Literal

from controller import stubgen, tsstubs
from controller.catalog import CatalogSnapshot, ToolInfo
from controller.shaping import Tokens

Detail = Literal["name", "description", "full"]
Language = Literal["python", "typescript"]
WORD = re.compile(r"[a-z0-9]+")
# Where a query word is found matters: a hit in the tool's name says more than one in its description.
WEIGHTS = (("name", 3.0), ("title", 2.0), ("server", 2.0), ("description", 1.0))


def one_line(text: str, limit: int = 120) -> str:
    """The first sentence or line of a description, bounded."""
    line = " ".join(text.strip().lstrip("#").strip().split("\n", 1)[0].split())
    sentence = re.split(r"(?<=[.!?])\s", line, maxsplit=1)[0]
    return sentence if len(sentence) <= limit else sentence[: limit - 1].rstrip() + "…"


def words(text: str) -> set[str]:
    return set(WORD.findall(re.sub(r"([a-z])([A-Z])", r"\1 \2", text).lower()))


def score(tool: ToolInfo, query: set[str]) -> float:
    fields = {
        "name": words(tool.name),
        "title": words(tool.title or ""),
        "server": words(tool.server),
        "description": words(tool.description),
    }
    return sum(weight for word in query for field, weight in WEIGHTS if word in fields[field])


def describe(
    snapshot: CatalogSnapshot,
    names: dict[tuple[str, str], tuple[str, str]],
    tool: ToolInfo,
    detail: Detail,
    language: Language = "python",
) -> dict[str, Any]:
    server_id, tool_id = names[(tool.server, tool.name)]
    # Every word here is read by a model: the import path is all code needs; wire names come with "full".
    entry: dict[str, Any] = {"import": f"servers.{server_id}.{tool_id}"}
    if language == "typescript":
        entry["import"] = f'import {{ {tsstubs.ident(tool_id)} }} from "servers/{server_id}"'
    if detail == "description":
        entry["description"] = one_line(tool.description)
    if detail == "full":
        entry["server"], entry["tool"], entry["description"] = tool.server, tool.name, tool.description
        entry["signature"] = signature(snapshot, tool.server, tool.name, language)
        entry["input_schema"] = tool.input_schema
    return entry


def signature(snapshot: CatalogSnapshot, server: str, tool: str, language: Language) -> str:
    """The tool's stub signature in `language`, on one line.

    Raises:
        KeyError: the catalog has no such tool.
    """
    render = tsstubs.signature if language == "typescript" else stubgen.signature
    return render(snapshot, server, tool)


def search(
    snapshot: CatalogSnapshot,
    query: str,
    detail: Detail = "description",
    limit: int = 10,
    language: Language = "python",
) -> list[dict[str, Any]]:
    """The best-matching tools for `query`, best first (every tool, in order, for an empty query); import lines
    and signatures in `language`."""
    wanted = words(query)
    tools = [tool for server in snapshot.servers for tool in server.tools]
    ranked = sorted(((score(tool, wanted), tool) for tool in tools), key=lambda pair: -pair[0])
    hits = [tool for points, tool in ranked if points > 0 or not wanted]
    names = stubgen.identifiers(snapshot)
    return [describe(snapshot, names, tool, detail, language) for tool in hits[: max(limit, 0)]]


def listing(snapshot: CatalogSnapshot) -> list[dict[str, Any]]:
    """Servers with their tools' one-line descriptions: what `GET /v1/tools` shows."""
    return [
        {
            "name": server.name,
            "description": one_line(server.description),
            "tools": [{"name": tool.name, "description": one_line(tool.description)} for tool in server.tools],
        }
        for server in snapshot.servers
    ]


def token_costs(snapshot: CatalogSnapshot, tokens: Tokens) -> dict[str, int]:
    """What discovery costs a model: every definition loaded upfront (a direct-tool-calling client) against the
    listing files an agent reads first and the size of one stub it opens next."""
    files = stubgen.render(snapshot)
    listing = sum(tokens.count(source) for path, source in files.items() if path.endswith("__init__.py"))
    stubs = [tokens.count(source) for path, source in files.items() if not path.endswith("__init__.py")]
    definitions = [tool.wire() for server in snapshot.servers for tool in server.tools]
    return {
        "tools": len(definitions),
        "definitions": tokens.count_json(definitions) if definitions else 0,
        "listing": listing,
        "stub_mean": round(sum(stubs) / len(stubs)) if stubs else 0,
    }

"""The catalog's boundary: what a server lists is held to limits before anything else reads it.

A tool over a limit is quarantined: it gets no stub, calls to it are refused (it is not in the catalog), and it is
reported (`/v1/tools`, `/readyz`, the audit log) while its server's other tools keep working. The checks run in the
order of their cost, each bounded by the limits before it: the name (length first, then the MCP spec's charset),
then description and schema sizes (schemas walked without recursion, stopping at the first limit), then the count
of tools per server and the bytes of the whole catalog. Every step is linear in what the server sent.

Annotations are untrusted hints (MCP spec): a server's own count only when the config trusts it
(`trust_annotations`); the operator's own, per tool in the config, win over them.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from controller.config import CatalogLimits

if TYPE_CHECKING:
    from controller.catalog import ToolInfo

NAME = re.compile(r"[A-Za-z0-9_.-]+")
SHOWN_NAME = 128  # a quarantined name is reported by its first characters and its length


@dataclass(frozen=True)
class Quarantined:
    """A tool kept out of the catalog, and why; `tool` is its name cut to `SHOWN_NAME` characters."""

    server: str
    tool: str
    chars: int
    reason: str
    detail: str


@dataclass(frozen=True)
class Admitted:
    """One server's listing after the boundary: the tools served, sorted by name, their definitions' JSON bytes,
    and the quarantined ones."""

    tools: tuple[ToolInfo, ...]
    size: int
    quarantined: tuple[Quarantined, ...]


def _name_problem(name: str, limits: CatalogLimits) -> tuple[str, str] | None:
    if not name or len(name) > limits.max_name_chars:
        return "name_length", f"the name has {len(name)} characters; 1 to {limits.max_name_chars} are allowed"
    if not NAME.fullmatch(name):
        return "name_charset", "the name has characters outside A-Z a-z 0-9 _ . -"
    return None


def _shape_problem(schema: object, limits: CatalogLimits) -> tuple[str, str] | None:
    """Depth and property count of a JSON value, walked with a stack and abandoned at the first limit."""
    properties = 0
    stack: list[tuple[object, int]] = [(schema, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            items: Iterable[object] = value.values()
            if isinstance(value.get("properties"), dict):
                properties += len(value["properties"])
                if properties > limits.max_schema_properties:
                    return "schema_properties", f"more than {limits.max_schema_properties} properties"
        elif isinstance(value, list):
            items = value
        else:
            continue
        if depth > limits.max_schema_depth:
            return "schema_depth", f"nested deeper than {limits.max_schema_depth} levels"
        stack.extend((item, depth + 1) for item in items)
    return None


def _size_problem(tool: ToolInfo, limits: CatalogLimits) -> tuple[str, str] | None:
    text = len(tool.description.encode("utf-8", "replace")) + len((tool.title or "").encode("utf-8", "replace"))
    if text > limits.max_description_bytes:
        return "description_size", f"{text} bytes of description; {limits.max_description_bytes} are allowed"
    for field, value in (("inputSchema", tool.input_schema), ("outputSchema", tool.output_schema),
                         ("annotations", tool.annotations)):  # fmt: skip
        if value is None:
            continue
        if problem := _shape_problem(value, limits):
            return problem[0], f"{field}: {problem[1]}"
        size = len(json.dumps(value, default=str))
        if size > limits.max_schema_bytes:
            return "schema_size", f"{field}: {size} bytes; {limits.max_schema_bytes} are allowed"
    return None


def _effective(tool: ToolInfo, own: Mapping[str, Any], trusted: bool) -> ToolInfo:
    annotations = {**(tool.annotations if trusted else {}), **own}
    return tool if annotations == tool.annotations else dataclasses.replace(tool, annotations=annotations)


def admit(
    server: str,
    listed: Iterable[ToolInfo],
    limits: CatalogLimits,
    budget: int,
    annotations: Mapping[str, Mapping[str, Any]],
    trust_annotations: bool,
) -> Admitted:
    """The tools of one listing that may be served, within `limits` and `budget` bytes of catalog.

    `annotations` are the operator's per tool; the server's own are kept only when `trust_annotations`.
    """
    quarantined: list[Quarantined] = []

    def refuse(tool: ToolInfo, reason: str, detail: str) -> None:
        shown = tool.name if len(tool.name) <= SHOWN_NAME else tool.name[:SHOWN_NAME] + "…"
        quarantined.append(Quarantined(server, shown, len(tool.name), reason, detail))

    named: dict[str, ToolInfo] = {}
    for tool in listed:
        if problem := _name_problem(tool.name, limits):
            refuse(tool, *problem)
        else:
            named[tool.name] = tool  # a name listed twice keeps its last definition
    served: list[ToolInfo] = []
    size = 0
    for name in sorted(named):
        tool = _effective(named[name], annotations.get(name, {}), trust_annotations)
        if problem := _size_problem(tool, limits):
            refuse(tool, *problem)
        elif len(served) >= limits.max_tools_per_server:
            refuse(tool, "too_many_tools", f"only the first {limits.max_tools_per_server} tools by name are served")
        elif size + (cost := len(json.dumps(tool.wire(), default=str))) > budget:
            refuse(tool, "catalog_size", f"the catalog would exceed {limits.max_catalog_bytes} bytes")
        else:
            served.append(tool)
            size += cost
    return Admitted(tuple(served), size, tuple(quarantined))

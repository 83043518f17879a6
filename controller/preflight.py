"""Pre-flight: what Python code will call, read from its syntax before anything runs.

`check(code, tools)` finds every stub the code imports or calls statically and returns
- findings: an unknown server or tool, an unknown keyword, a missing required argument, too many positional
  arguments, or a literal of the wrong JSON type for the tool's inputSchema, each with the tool's signature and,
  where a name is close, the nearest one;
- the effect manifest: every tool the code can reach, marked read-only or destructive from its annotations.
Calls it cannot resolve statically (a name bound again, `getattr`, `**kwargs`, `*args`) pass unchecked.
Pure: no engine, no I/O.
"""

from __future__ import annotations

import ast
import difflib
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

from controller.stubgen import Interface, Parameter

RUNTIME_NAMES = frozenset(
    {"SERVERS", "search_tools", "parallel", "ToolError", "ToolNotAllowed", "InvalidArguments", "ToolTimeout"}
    | {"ServerUnavailable", "QuotaExceeded", "InvalidResult"}
)
JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list, tuple),
    "object": (dict,),
    "null": (type(None),),
}
_UNKNOWN = object()


FindingKind = Literal[
    "unknown_server", "unknown_tool", "unknown_argument", "missing_argument", "too_many_arguments", "wrong_type"
]


class Finding(BaseModel):
    """One reason the code would fail at a tool call, found before it runs."""

    kind: FindingKind
    line: int
    message: str
    server: str = ""
    tool: str = ""
    signature: str = ""


class Reach(BaseModel):
    """A tool the code can call, as its server names it, with what its annotations say it does."""

    server: str
    tool: str
    read_only: bool
    destructive: bool


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    manifest: list[Reach] = field(default_factory=list)


Tools = dict[str, dict[str, Interface]]  # server identifier -> tool identifier -> interface


def check(code: str, tools: Tools) -> Report:
    """The findings and the effect manifest of Python `code` against the stubs of `tools`; code that does not
    parse has neither (running it reports the SyntaxError)."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return Report()
    return _Checker(tools).run(tree)


def summary(findings: list[Finding]) -> str:
    """The findings as one message for `error.message`."""
    return "\n".join(f"line {finding.line}: {finding.message}" for finding in findings)


def _nearest(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f" Did you mean `{close[0]}`?" if close else ""


def _reach(interface: Interface) -> Reach:
    hints = interface.tool.annotations
    read_only = hints.get("readOnlyHint") is True
    # The spec's default for a tool that is not read-only is destructive, unless the server says otherwise.
    destructive = not read_only and hints.get("destructiveHint", True) is not False
    return Reach(server=interface.server.name, tool=interface.tool.name, read_only=read_only, destructive=destructive)


def _literal(node: ast.expr) -> Any:
    """The value of a literal argument, or `_UNKNOWN` for anything computed."""
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _UNKNOWN


def _fits(value: Any, schema: object) -> bool:
    if not isinstance(schema, dict):
        return True
    if isinstance(schema.get("enum"), list) and not any(
        type(value) is type(member) and value == member for member in schema["enum"]
    ):
        return False
    kinds = schema.get("type")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    allowed = [JSON_TYPES[kind] for kind in kinds if isinstance(kind, str) and kind in JSON_TYPES]
    if not allowed:
        return True
    if isinstance(value, bool):  # a bool is an int to Python, never a number to JSON Schema
        return any(bool in types for types in allowed)
    return any(isinstance(value, types) for types in allowed)


def _expected(schema: object) -> str:
    assert isinstance(schema, dict)  # only a schema can refuse a value
    if isinstance(schema.get("enum"), list):
        return "one of " + ", ".join(repr(member) for member in schema["enum"][:10])
    kinds = schema.get("type")
    return " or ".join(kinds) if isinstance(kinds, list) else str(kinds)


class _Checker:
    def __init__(self, tools: Tools) -> None:
        self.tools = tools
        self.report = Report()
        self.functions: dict[str, Interface] = {}  # a name bound to a stub by an import
        self.modules: dict[str, str | None] = {}  # a name bound to `servers` (None) or to one server's package
        self.reached: dict[tuple[str, str], Reach] = {}

    def run(self, tree: ast.Module) -> Report:
        rebound = self._bound_otherwise(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                self._import_from(node)
            elif isinstance(node, ast.Import):
                self._import(node)
        for name in rebound:
            self.functions.pop(name, None)
            self.modules.pop(name, None)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                self._call(node)
        self.report.manifest = sorted(self.reached.values(), key=lambda reach: (reach.server, reach.tool))
        self.report.findings.sort(key=lambda finding: finding.line)
        return self.report

    @staticmethod
    def _bound_otherwise(tree: ast.Module) -> set[str]:
        """Names the code binds by anything but an import: calls through them are not resolved."""
        names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
                names.add(node.id)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
        return names

    def _reach(self, interface: Interface) -> Interface:
        self.reached[interface.server.name, interface.tool.name] = _reach(interface)
        return interface

    def _find(self, kind: FindingKind, node: ast.AST, message: str, interface: Interface | None = None) -> None:
        self.report.findings.append(
            Finding(
                kind=kind,
                line=getattr(node, "lineno", 0),
                message=message,
                server=interface.server.name if interface else "",
                tool=interface.tool.name if interface else "",
                signature=interface.signature if interface else "",
            )
        )

    def _server(self, ident: str, node: ast.AST) -> dict[str, Interface] | None:
        server = self.tools.get(ident)
        if server is None:
            hint = _nearest(ident, list(self.tools))
            self._find("unknown_server", node, f"there is no server `{ident}` in this session.{hint}")
        return server

    def _tool(self, server_ident: str, ident: str, node: ast.AST) -> Interface | None:
        server = self.tools[server_ident]
        interface = server.get(ident)
        if interface is None:
            hint = _nearest(ident, list(server))
            self._find("unknown_tool", node, f"server `{server_ident}` has no tool `{ident}`.{hint}")
            return None
        return self._reach(interface)

    def _import_from(self, node: ast.ImportFrom) -> None:
        parts = (node.module or "").split(".")
        if node.level or parts[0] != "servers":
            return
        if len(parts) == 1:  # from servers import crm, search_tools
            for alias in node.names:
                if alias.name == "*" or alias.name in RUNTIME_NAMES:
                    continue
                if self._server(alias.name, node) is not None:
                    self.modules[alias.asname or alias.name] = alias.name
            return
        if self._server(parts[1], node) is None:
            return
        if len(parts) == 3 and self._tool(parts[1], parts[2], node) is None:
            return
        for alias in node.names:
            if alias.name == "*":
                for each in self.tools[parts[1]].values():
                    self.functions[each.ident] = self._reach(each)
            elif (interface := self._tool(parts[1], alias.name, node)) is not None:
                self.functions[alias.asname or alias.name] = interface

    def _import(self, node: ast.Import) -> None:
        for alias in node.names:
            parts = alias.name.split(".")
            if parts[0] != "servers":
                continue
            if len(parts) > 1 and self._server(parts[1], node) is None:
                continue
            if len(parts) > 2:
                self._tool(parts[1], parts[2], node)
            if alias.asname is not None:
                self.modules[alias.asname] = parts[1] if len(parts) == 2 else None
            else:
                self.modules["servers"] = None

    def _resolve(self, func: ast.expr) -> Interface | None:
        """The stub a call's callee names: `tool`, `crm.tool`, `servers.crm.tool`, `servers.crm.tool.tool`."""
        if isinstance(func, ast.Name):
            return self.functions.get(func.id)
        chain: list[str] = []
        while isinstance(func, ast.Attribute):
            chain.insert(0, func.attr)
            func = func.value
        if not isinstance(func, ast.Name) or func.id not in self.modules:
            return None
        server_ident = self.modules[func.id]
        if server_ident is None:  # servers.<server>.<tool>
            if not chain or chain[0] in RUNTIME_NAMES or self._server(chain[0], func) is None:
                return None
            server_ident, chain = chain[0], chain[1:]
        if not chain:
            return None
        if len(chain) == 2 and chain[0] != chain[1]:
            return None
        return self._tool(server_ident, chain[0], func)

    def _call(self, call: ast.Call) -> None:
        interface = self._resolve(call.func)
        if interface is None:
            return
        parameters = {parameter.ident: parameter for parameter in interface.parameters}
        required = [parameter for parameter in interface.parameters if parameter.required]
        given: dict[str, tuple[Parameter, ast.expr]] = {}
        starred = any(isinstance(arg, ast.Starred) for arg in call.args)
        spread = any(keyword.arg is None for keyword in call.keywords)
        name = f"{interface.server_ident}.{interface.ident}"
        if not starred:
            if len(call.args) > len(required):
                self._find(
                    "too_many_arguments",
                    call,
                    f"{name} takes {len(required)} positional argument(s), {len(call.args)} given: "
                    f"{interface.signature}",
                    interface,
                )
            given.update({p.ident: (p, arg) for p, arg in zip(required, call.args, strict=False)})
        for keyword in call.keywords:
            if keyword.arg is None:
                continue
            parameter = parameters.get(keyword.arg)
            if parameter is None:
                hint = _nearest(keyword.arg, list(parameters))
                self._find(
                    "unknown_argument",
                    keyword,
                    f"{name} has no parameter `{keyword.arg}`.{hint} {interface.signature}",
                    interface,
                )
            else:
                given[parameter.ident] = (parameter, keyword.value)
        if not (starred or spread):
            missing = [parameter.ident for parameter in required if parameter.ident not in given]
            if missing:
                self._find(
                    "missing_argument",
                    call,
                    f"{name} is missing required argument(s) {', '.join(f'`{m}`' for m in missing)}: "
                    f"{interface.signature}",
                    interface,
                )
        for parameter, value in given.values():
            literal = _literal(value)
            if literal is _UNKNOWN or (literal is None and not parameter.required):
                continue
            if not _fits(literal, parameter.schema):
                self._find(
                    "wrong_type",
                    value,
                    f"{name}: `{parameter.ident}` expects {_expected(parameter.schema)}, got "
                    f"{type(literal).__name__} {literal!r:.60}: {interface.signature}",
                    interface,
                )

"""What a session may do: which tools it may call (allowlists, read-only), how much (quotas), with which arguments
(the tool's inputSchema), and an optional static pre-check of its code.

Every refusal happens here, before anything reaches an MCP server, and names what was wrong. The static pre-check
is defence in depth only: the sandbox is the security boundary, and code can always reach a module by other means.
"""

from __future__ import annotations

import ast
import functools
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import jsonschema
import jsonschema.exceptions
from jsonschema.protocols import Validator
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from controller.catalog import CatalogSnapshot, ToolInfo


Preflight = Literal["enforce", "warn", "off"]


class PolicyRefusal(Exception):
    """A tool call refused by the controller; `kind` matches the sandbox's ToolError subclasses.

    `audited` is what the audit log may say: argument problems name the argument, never its value.
    """

    def __init__(self, kind: str, message: str, audited: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.audited = audited or message


@functools.lru_cache(maxsize=4096)
def _validator(schema_json: str) -> Validator | None:
    """A validator for a tool's inputSchema; None when the server's schema is itself invalid (nothing to hold to)."""
    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.exceptions.SchemaError:
        return None
    validator: Validator = cls(schema)
    return validator


# Drafts in which type, properties, required and additionalProperties mean what `_plain_check` assumes.
PLAIN_DRAFTS = frozenset({
    "https://json-schema.org/draft/2020-12/schema", "https://json-schema.org/draft/2019-09/schema",
    "http://json-schema.org/draft-07/schema", "http://json-schema.org/draft-06/schema",
    "http://json-schema.org/draft-04/schema",
})  # fmt: skip
ANNOTATIONS = frozenset({"title", "description", "default", "examples", "format", "$comment", "deprecated"})
PLAIN_KEYS = ANNOTATIONS | {"$schema", "type", "properties", "required", "additionalProperties"}
PROPERTY_KEYS = ANNOTATIONS | {"type"}
# Python types of JSON values by schema type; bool, an int to Python, is only a "boolean". An "integer" here is an
# int only: 1.0 is one from draft 6 on, and is left to jsonschema.
PYTHON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,), "null": (type(None),),
    "array": (list,), "object": (dict,),
}  # fmt: skip
Rule = tuple[tuple[type, ...], bool]  # the Python types a property's value may have, and whether a bool is one


@functools.lru_cache(maxsize=4096)
def _plain_check(schema_json: str) -> Callable[[dict[str, Any]], bool] | None:
    """For the schema most tools have (an object of typed properties, nothing else), a check that needs no
    validator: True means the arguments fit it, False that jsonschema must say why. None for any other schema.

    jsonschema takes ~15 us to validate even a one-field object (~50 us cold, between two calls of a loop), this
    ~1 us. It never answers True where jsonschema would find a problem: the test suite compares the two.
    """
    schema = json.loads(schema_json)
    if not isinstance(schema, dict) or not schema.keys() <= PLAIN_KEYS or schema.get("type", "object") != "object":
        return None
    if "$schema" in schema and str(schema["$schema"]).rstrip("#") not in PLAIN_DRAFTS:
        return None
    properties, required = schema.get("properties", {}), schema.get("required", [])
    additional = schema.get("additionalProperties", True)
    if not isinstance(properties, dict) or not isinstance(additional, bool) or not isinstance(required, list):
        return None
    if not all(isinstance(name, str) for name in required):
        return None
    rules: dict[str, Rule] = {}
    for name, subschema in properties.items():
        if not isinstance(subschema, dict) or not subschema.keys() <= PROPERTY_KEYS:
            return None
        kinds = subschema.get("type", list(PYTHON_TYPES))
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if not isinstance(kinds, list) or not kinds or not all(isinstance(k, str) and k in PYTHON_TYPES for k in kinds):
            return None
        rules[name] = (tuple(t for kind in kinds for t in PYTHON_TYPES[kind]), "boolean" in kinds)
    needed = frozenset(required)

    def check(arguments: dict[str, Any]) -> bool:
        if not needed <= arguments.keys():
            return False
        for name, value in arguments.items():
            rule = rules.get(name)
            if rule is None:
                if not additional:
                    return False
            elif not isinstance(value, rule[0]) or (isinstance(value, bool) and not rule[1]):
                return False
        return True

    return check


def argument_problem(tool: ToolInfo, arguments: dict[str, Any]) -> str | None:
    """The first way `arguments` break the tool's inputSchema, naming the field; None when they fit."""
    plain = _plain_check(tool.input_schema_key)
    if plain is not None and plain(arguments):
        return None
    validator = _validator(tool.input_schema_key)
    if validator is None:
        return None
    error = jsonschema.exceptions.best_match(validator.iter_errors(arguments))
    if error is None:
        return None
    where = ".".join(str(part) for part in error.absolute_path)
    return f"argument {where!r}: {error.message}" if where else error.message


class Policy(BaseModel):
    """What a session's code may do beyond its server allowlist; every field has a server-wide default."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    tools: list[str] | None = Field(
        default=None, description='Tools the code may call, as "server/tool"; default: every tool of its servers.'
    )
    read_only: bool = Field(
        default=False,
        description="Only tools annotated readOnlyHint, by the config or by a server it trusts (`trust_annotations`).",
    )
    max_tool_calls_per_execution: int = Field(default=1000, ge=0, description="Tool calls one execution may make.")
    max_tool_calls: int = Field(default=100_000, ge=0, description="Tool calls over the session's lifetime.")
    max_concurrent_tool_calls: int = Field(default=16, ge=1, description="Tool calls in flight at once.")
    max_result_bytes_per_execution: int = Field(
        default=256 * 1024 * 1024, ge=0, description="Bytes of tool results one execution may receive."
    )
    denied_imports: list[str] = Field(
        default_factory=list, description="Modules the static pre-check refuses (defence in depth, not a boundary)."
    )
    preflight: Preflight = Field(
        default="enforce",
        description="Python code is checked against the stubs before it runs: refused on a finding (enforce), run "
        "with the findings in the response (warn), or not checked (off). A request may choose for itself.",
    )
    on_definition_change: Literal["serve", "quarantine"] = Field(
        default="serve",
        description="A tool whose definition changed since it was pinned: `serve` it, or refuse its calls until "
        "an operator accepts the change (server-wide: its old stub is served meanwhile).",
    )

    def within(self, server_wide: Policy) -> Policy:
        """This (requested) policy, no looser than the server-wide one: quotas take the lower, denials add up."""
        return Policy(
            tools=self.tools if self.tools is not None else server_wide.tools,
            read_only=self.read_only or server_wide.read_only,
            max_tool_calls_per_execution=min(
                self.max_tool_calls_per_execution, server_wide.max_tool_calls_per_execution
            ),
            max_tool_calls=min(self.max_tool_calls, server_wide.max_tool_calls),
            max_concurrent_tool_calls=min(self.max_concurrent_tool_calls, server_wide.max_concurrent_tool_calls),
            max_result_bytes_per_execution=min(
                self.max_result_bytes_per_execution, server_wide.max_result_bytes_per_execution
            ),
            denied_imports=sorted({*self.denied_imports, *server_wide.denied_imports}),
            # Not a limit but a help to the code's author: the session's own choice stands.
            preflight=self.preflight if "preflight" in self.model_fields_set else server_wide.preflight,
            on_definition_change="quarantine"
            if "quarantine" in (self.on_definition_change, server_wide.on_definition_change)
            else "serve",
        )


def check_call(
    snapshot: CatalogSnapshot,
    allowed: frozenset[str] | None,
    policy: Policy,
    server: Any,
    tool: Any,
    arguments: Any,
) -> ToolInfo:
    """The tool to call, if this session may call it with these arguments.

    Raises:
        PolicyRefusal: a malformed request, a server or tool outside the allowlists, a tool that is not read-only
            in a read-only session, an unknown tool, invalid arguments.
    """
    if not isinstance(server, str) or not isinstance(tool, str) or not isinstance(arguments, dict):
        raise PolicyRefusal("invalid_arguments", "a tool call needs a server name, a tool name and an arguments object")
    if allowed is not None and server not in allowed:
        raise PolicyRefusal("refused", f"server {server!r} is not allowed in this session")
    if policy.tools is not None and f"{server}/{tool}" not in policy.tools:
        raise PolicyRefusal("refused", f"{server}.{tool} is not among this session's allowed tools")
    info = snapshot.tool(server, tool)
    if info is None:
        known = "unknown server" if snapshot.server(server) is None else "no such tool"
        raise PolicyRefusal("refused", f"{server}.{tool}: {known}")
    if policy.read_only and info.annotations.get("readOnlyHint") is not True:
        raise PolicyRefusal("refused", f"{server}.{tool} is not marked read-only and this session is read-only")
    if policy.on_definition_change == "quarantine" and (server, tool) in snapshot.changed:
        raise PolicyRefusal("refused", f"{server}.{tool} changed its definition; an operator must accept the change")
    try:
        json.dumps(arguments, ensure_ascii=False, allow_nan=False).encode()
    except (UnicodeEncodeError, ValueError, RecursionError):
        # Lone surrogates, NaN or absurd nesting would break the MCP connection every session shares.
        raise PolicyRefusal("invalid_arguments", f"{server}.{tool}: arguments must be valid JSON text") from None
    problem = argument_problem(info, arguments)
    if problem is not None:
        where = problem.split(":", 1)[0] if problem.startswith("argument ") else "arguments"
        raise PolicyRefusal("invalid_arguments", f"{server}.{tool}: {problem}", f"{server}.{tool}: {where} invalid")
    return info


def denied_imports(code: str, denied: frozenset[str]) -> list[str]:
    """Where `code` imports a denied module (statements, `__import__("x")`, `importlib.import_module("x")`).

    Code that does not parse is not refused here: the interpreter reports its SyntaxError.
    """
    if not denied:
        return []
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return []
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            function = node.func
            called = function.id if isinstance(function, ast.Name) else getattr(function, "attr", "")
            if called in ("__import__", "import_module") and isinstance(node.args[0].value, str):
                names = [node.args[0].value]
        found += [f"line {node.lineno}: {name}" for name in names if name.split(".")[0] in denied]  # type: ignore[attr-defined]
    return found

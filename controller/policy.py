"""What a session may call: its server allowlist, the tool's existence, and arguments valid for its inputSchema.

Every refusal happens here, before anything reaches an MCP server, and names what was wrong.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import jsonschema
import jsonschema.exceptions
from jsonschema.protocols import Validator

from controller.catalog import CatalogSnapshot, ToolInfo


class PolicyRefusal(Exception):
    """A tool call refused by the controller; `kind` matches the sandbox's ToolError subclasses."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


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


def argument_problem(tool: ToolInfo, arguments: dict[str, Any]) -> str | None:
    """The first way `arguments` break the tool's inputSchema, naming the field; None when they fit."""
    validator = _validator(json.dumps(tool.input_schema, sort_keys=True))
    if validator is None:
        return None
    error = jsonschema.exceptions.best_match(validator.iter_errors(arguments))
    if error is None:
        return None
    where = ".".join(str(part) for part in error.absolute_path)
    return f"argument {where!r}: {error.message}" if where else error.message


def check_call(
    snapshot: CatalogSnapshot, allowed: frozenset[str] | None, server: Any, tool: Any, arguments: Any
) -> ToolInfo:
    """The tool to call, if this session may call it with these arguments.

    Raises:
        PolicyRefusal: a malformed request, a server outside the allowlist, an unknown tool, invalid arguments.
    """
    if not isinstance(server, str) or not isinstance(tool, str) or not isinstance(arguments, dict):
        raise PolicyRefusal("invalid_arguments", "a tool call needs a server name, a tool name and an arguments object")
    if allowed is not None and server not in allowed:
        raise PolicyRefusal("refused", f"server {server!r} is not allowed in this session")
    info = snapshot.tool(server, tool)
    if info is None:
        known = "unknown server" if snapshot.server(server) is None else "no such tool"
        raise PolicyRefusal("refused", f"{server}.{tool}: {known}")
    problem = argument_problem(info, arguments)
    if problem is not None:
        raise PolicyRefusal("invalid_arguments", f"{server}.{tool}: {problem}")
    return info


REDACTED = "[redacted]"


def redact(value: Any, secrets: frozenset[str]) -> Any:
    """`value` with every configured secret replaced, in every string at any depth (keys included)."""
    if not secrets:
        return value
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, list):
        return [redact(item, secrets) for item in value]
    if isinstance(value, dict):
        return {redact(key, secrets): redact(item, secrets) for key, item in value.items()}
    return value

"""The stubs generator: typed, deterministic stubs that stay harmless whatever the servers call things.

The generated tree is imported here against a fake `mcpx_runtime.tools` that records calls: this tests the
generator only; the real runtime is tested with the real sandbox elsewhere.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import os
import stat
import sys
import types
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from inline_snapshot import snapshot

from controller import stubgen, tsstubs
from controller.catalog import CatalogSnapshot, ServerInfo, ToolInfo

GET_CURRENT_TIME = ToolInfo(
    "time",
    "get_current_time",
    "Get current time in a specific timezone.",
    input_schema={
        "type": "object",
        "properties": {"timezone": {"type": "string", "description": "IANA timezone name (e.g. 'Europe/London')."}},
        "required": ["timezone"],
    },
    output_schema={
        "type": "object",
        "properties": {"timezone": {"type": "string"}, "datetime": {"type": "string"}, "is_dst": {"type": "boolean"}},
        "required": ["timezone", "datetime", "is_dst"],
    },
)
SEARCH_FILES = ToolInfo(
    "files",
    "searchFiles",
    "Search files by name and content.\n\nMatches come best first; `truncated` says whether more were found.",
    title="Search files",
    input_schema={
        "type": "object",
        "properties": {
            "query": {"type": "string", "description": "Words to look for."},
            "kind": {"enum": ["file", "directory"], "default": "file", "description": "Only entries of this kind."},
            "limit": {"type": "integer", "default": 20, "description": "At most this many matches."},
            "filter": {
                "type": "object",
                "description": "Narrow the search.",
                "properties": {
                    "extensions": {"type": "array", "items": {"type": "string"}},
                    "modified after": {"type": "string", "format": "date-time"},
                    "size": {"type": "object", "properties": {"min": {"type": "integer"}, "max": {"type": "integer"}}},
                },
                "required": ["extensions"],
            },
            "caseSensitive": {"type": "boolean"},
            "from": {"type": ["string", "null"], "description": "Directory to start from,\nrelative to the root."},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        },
        "required": ["query"],
    },
    output_schema={
        "type": "object",
        "properties": {
            "matches": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "path": {"type": "string"},
                        "score": {"type": "number"},
                        "lines": {"type": "array", "items": {"type": "integer"}},
                    },
                    "required": ["path"],
                },
            },
            "truncated": {"type": "boolean"},
        },
        "required": ["matches"],
    },
)
CATALOG = CatalogSnapshot(
    (
        ServerInfo("files", "Search and read the project's files.\nPaths are relative to the root.", (SEARCH_FILES,)),
        ServerInfo("time", "Time and timezone conversion.", (GET_CURRENT_TIME,)),
    )
)

# Text a hostile server might send, each aimed at a way of turning text into code or breaking the file.
NASTY = (
    'x"""; import os',
    "x'''; import os",
    '"""',
    '"',
    '""""',
    "\\",
    '\\"""',
    'ends with a quote"',
    "ends with a backslash\\",
    "a\rb\r\nc\u2028d\u2029e\x85f\x0bg\x0ch\x1ci",
    "nul\x00byte",
    "lone \ud800 surrogate",
    "# comment\nimport os",
    "__import__('os').system('id')",
    "\n# -*- coding: utf-7 -*-\n+ACIAIgAi- import os",
    "\u202eright-to-left override\u202c and \ufeffBOM",
    "{0} {x} %s f'{x}'",
    "\t\ttabs\t",
    "",
    "x" * 5000,
)
NAMES = (
    'x"""; import os',
    "__import__('os').system('id')",
    "class",
    "match",
    "print",
    "list",
    "type",
    "search_tools",
    "SERVERS",
    "__init__",
    "_private",
    "",
    "2fa",
    "日本語",
    "中文",
    "café",
    "cafe",
    "Foo",
    "foo",
    "fooBar",
    "foo_bar",
    "foo-bar",
    "../../etc/passwd",
    "nul\x00",
    "\ud800",
    "\u2028",
)


def nasty_schema() -> dict[str, Any]:
    nested: dict[str, Any] = {"type": "string"}
    for _ in range(50):
        nested = {"type": "object", "properties": {"deeper": nested}}
    return {
        "type": "object",
        "properties": {
            **{name: {"type": "string", "description": text} for name, text in zip(NAMES, NASTY, strict=False)},
            "enum of strings": {"enum": list(NASTY)},
            "enum of mixed": {"enum": [1, True, None, "1", 1]},
            "enum with a float": {"enum": [1.5, "a"]},
            "quoted default": {"type": "string", "default": "'); import os; ('"},
            "infinite default": {"type": "number", "default": float("inf")},
            "huge default": {"type": "integer", "default": 10**300},
            "mistyped default": {"type": "integer", "default": "1; import os"},
            "object default": {"default": {"__class__": "x"}},
            "deep": nested,
            "null first": {"type": ["null", "integer"]},
            "only null": {"type": "null"},
            "variants": {"anyOf": [{"type": "null"}, {"enum": ["a"]}, {"type": "object", "properties": {"x": {}}}]},
            "map": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": ["string", "null"]}}},
            "bad items": {"type": "array", "items": True},
            "bad type": {"type": 5},
            "empty anyOf": {"anyOf": []},
            "ref": {"$ref": "#/definitions/x"},
            "keys": {"type": "object", "properties": {name: {"enum": list(NASTY[:4])} for name in NAMES}},
        },
        "required": ["class", "match", "not a property", "class", 5],
    }


def hostile_catalog() -> CatalogSnapshot:
    servers = []
    for server_index, server_name in enumerate((*NAMES[:12], "evil", "Evil", "servers")):
        description = NASTY[server_index % len(NASTY)]
        tools = [
            ToolInfo(
                server_name,
                name,
                NASTY[index % len(NASTY)],
                title=NASTY[(index + 1) % len(NASTY)],
                input_schema={"type": "object"},
            )
            for index, name in enumerate(NAMES)
        ]
        tools.append(
            ToolInfo(server_name, "everything", NASTY[0], input_schema=nasty_schema(), output_schema=nasty_schema())
        )
        tools.append(ToolInfo(server_name, "malformed", input_schema={"properties": ["a"], "required": "abc"}))
        tools.append(ToolInfo(server_name, "malformed", "listed twice: one of the two is kept, whatever the order"))
        servers.append(ServerInfo(server_name, description, tuple(tools)))
    return CatalogSnapshot(tuple(servers))


@dataclass
class FakeRuntime:
    """Stands in for `mcpx_runtime.tools`: records every call the stubs make."""

    calls: list[tuple[str, str, dict[str, Any], tuple[str, ...]]] = field(default_factory=list)

    def call_tool(self, server: str, tool: str, arguments: dict[str, Any], omit_none: tuple[str, ...] = ()) -> Any:
        self.calls.append((server, tool, arguments, omit_none))
        return {"called": tool}

    @staticmethod
    def search_tools(query: str, detail: str = "description") -> list[dict[str, Any]]:
        return []


@pytest.fixture
def runtime(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeRuntime]:
    """A fake `mcpx_runtime.tools` for the stubs to import; afterwards, every imported stub is forgotten."""
    fake = FakeRuntime()
    tools = types.ModuleType("mcpx_runtime.tools")
    vars(tools).update({name: type(name, (Exception,), {}) for name in stubgen.RUNTIME_EXPORTS})
    vars(tools).update(call_tool=fake.call_tool, search_tools=fake.search_tools)
    package = types.ModuleType("mcpx_runtime")
    vars(package).update(__path__=[], tools=tools)
    monkeypatch.setitem(sys.modules, "mcpx_runtime", package)
    monkeypatch.setitem(sys.modules, "mcpx_runtime.tools", tools)
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    finders = set(sys.path_importer_cache)
    yield fake
    for name in [name for name in sys.modules if name == "servers" or name.startswith("servers.")]:
        del sys.modules[name]
    for path in set(sys.path_importer_cache) - finders:
        del sys.path_importer_cache[path]


def mount(files: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Write the tree and put it on sys.path, as the sandbox does with /tools."""
    tree = stubgen.write_tree(files, tmp_path / "stubs", "tree")
    monkeypatch.syspath_prepend(str(tree))
    return tree


Event = tuple[str, tuple[Any, ...]]
_events: list[Event] | None = None  # recording while not None
_hooked = False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _events is not None:
        _events.append((event, args))


@contextmanager
def audited() -> Iterator[list[Event]]:
    """Record audit events meanwhile (a hook cannot be removed: one is added for the run and idles in between)."""
    global _events, _hooked
    if not _hooked:
        sys.addaudithook(_audit)
        _hooked = True
    events: list[Event] = []
    _events = events
    try:
        yield events
    finally:
        _events = None


def module_name(path: str) -> str:
    return path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def function(files: dict[str, str], path: str) -> ast.FunctionDef:
    return next(node for node in ast.parse(files[path]).body if isinstance(node, ast.FunctionDef))


# --- what agents read -----------------------------------------------------------------------------------------


def test_a_tool_with_an_output_schema_becomes_a_typed_function_returning_a_typeddict() -> None:
    assert stubgen.render(CATALOG)["servers/time/get_current_time.py"] == snapshot('''\
# Generated by mcpx from the MCP catalog; do not edit.
from __future__ import annotations

from typing import Required, TypedDict

from mcpx_runtime.tools import call_tool as _call

__all__ = ['get_current_time', 'GetCurrentTimeResult']


GetCurrentTimeResult = TypedDict(
    'GetCurrentTimeResult',
    {
        'datetime': Required[str],
        'is_dst': Required[bool],
        'timezone': Required[str],
    },
    total=False,
)


def get_current_time(timezone: str) -> GetCurrentTimeResult:
    """Get current time in a specific timezone.

    Args:
        timezone: IANA timezone name (e.g. 'Europe/London').

    MCP tool 'get_current_time' of server 'time'.
    """
    return _call('time', 'get_current_time', {'timezone': timezone}, omit_none=())
''')


def test_nested_objects_enums_arrays_and_optional_parameters_are_typed_and_keyword_only() -> None:
    assert stubgen.render(CATALOG)["servers/files/search_files.py"] == snapshot('''\
# Generated by mcpx from the MCP catalog; do not edit.
from __future__ import annotations

from typing import Literal, Required, TypedDict

from mcpx_runtime.tools import call_tool as _call

__all__ = [
    'search_files',
    'SearchFilesFilter',
    'SearchFilesFilterSize',
    'SearchFilesResult',
    'SearchFilesResultMatchesItem',
]


SearchFilesResultMatchesItem = TypedDict(
    'SearchFilesResultMatchesItem',
    {
        'lines': list[int],
        'path': Required[str],
        'score': float,
    },
    total=False,
)


SearchFilesResult = TypedDict(
    'SearchFilesResult',
    {
        'matches': Required[list[SearchFilesResultMatchesItem]],
        'truncated': bool,
    },
    total=False,
)


SearchFilesFilterSize = TypedDict(
    'SearchFilesFilterSize',
    {
        'max': int,
        'min': int,
    },
    total=False,
)


SearchFilesFilter = TypedDict(
    'SearchFilesFilter',
    {
        'extensions': Required[list[str]],
        'modified after': str,
        'size': SearchFilesFilterSize,
    },
    total=False,
)


def search_files(
    query: str,
    *,
    case_sensitive: bool | None = None,
    filter: SearchFilesFilter | None = None,
    from_: str | None = None,
    kind: Literal['file', 'directory'] = 'file',
    labels: dict[str, str] | None = None,
    limit: int = 20,
) -> SearchFilesResult:
    """Search files

    Search files by name and content.

    Matches come best first; `truncated` says whether more were found.

    Args:
        query: Words to look for.
        case_sensitive: (No description.) (sent as 'caseSensitive')
        filter: Narrow the search.
        from_: Directory to start from,
            relative to the root. (sent as 'from')
        kind: Only entries of this kind.
        labels: (No description.)
        limit: At most this many matches.

    MCP tool 'searchFiles' of server 'files'.
    """
    return _call(
        'files', 'searchFiles',
        {
            'query': query,
            'caseSensitive': case_sensitive,
            'filter': filter,
            'from': from_,
            'kind': kind,
            'labels': labels,
            'limit': limit,
        },
        omit_none=('caseSensitive', 'filter', 'from', 'labels'),
    )
''')


def test_packages_list_servers_and_tools_with_one_line_descriptions_and_reexport_them() -> None:
    files = stubgen.render(CATALOG)
    assert sorted(files) == snapshot(
        [
            "servers/__init__.py",
            "servers/files/__init__.py",
            "servers/files/search_files.py",
            "servers/time/__init__.py",
            "servers/time/get_current_time.py",
        ]
    )
    assert files["servers/__init__.py"] == snapshot('''\
# Generated by mcpx from the MCP catalog; do not edit.
"""The MCP servers this session may use, one package each: `from servers.<server> import <tool>`.

SERVERS below lists them with one line each; `servers/<server>/__init__.py` lists a server's tools.
Every tool is a typed function; its file has the parameters and the full description.
`search_tools(query, detail="name"|"description"|"full")` finds tools by what they do.
A call returns its result; `await tool(...)` or `asyncio.gather(a(...), b(...))` runs calls at once,
and `parallel(tool, [{...}, ...])` does so from plain code.
A failed call raises `ToolError` (or a subclass) with the server's message.
"""

from mcpx_runtime.tools import (
    InvalidArguments,
    InvalidResult,
    QuotaExceeded,
    ServerUnavailable,
    ToolError,
    ToolNotAllowed,
    ToolTimeout,
    search_tools,
    parallel,
)

SERVERS: dict[str, str] = {
    'files': "Search and read the project's files.",
    'time': 'Time and timezone conversion.',
}

__all__ = [
    'SERVERS',
    'InvalidArguments',
    'InvalidResult',
    'QuotaExceeded',
    'ServerUnavailable',
    'ToolError',
    'ToolNotAllowed',
    'ToolTimeout',
    'search_tools',
    'parallel',
]
''')
    assert files["servers/files/__init__.py"] == snapshot('''\
# Generated by mcpx from the MCP catalog; do not edit.
"""Search and read the project's files.
Paths are relative to the root.

Tools:
- search_files: Search files by name and content.
"""

from servers.files.search_files import search_files

__all__ = ['search_files']
''')


def test_signature_is_the_stub_signature_on_one_line() -> None:
    assert stubgen.signature(CATALOG, "time", "get_current_time") == snapshot(
        "get_current_time(timezone: str) -> GetCurrentTimeResult"
    )
    assert stubgen.signature(CATALOG, "files", "searchFiles") == snapshot(
        "search_files(query: str, *, case_sensitive: bool | None = None, filter: SearchFilesFilter | None = None, "
        "from_: str | None = None, kind: Literal['file', 'directory'] = 'file', labels: dict[str, str] | None = None, "
        "limit: int = 20) -> SearchFilesResult"
    )
    assert stubgen.stub_path(CATALOG, "files", "searchFiles") == "servers/files/search_files.py"
    with pytest.raises(KeyError):
        stubgen.signature(CATALOG, "time", "no_such_tool")


def test_stubs_pass_wire_names_to_the_runtime_and_omit_only_unset_optional_arguments(
    runtime: FakeRuntime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mount(stubgen.render(CATALOG), tmp_path, monkeypatch)
    from servers.files import search_files  # type: ignore[import-not-found]
    from servers.time import get_current_time  # type: ignore[import-not-found]

    assert get_current_time("Europe/Paris") == {"called": "get_current_time"}
    search_files("todo", from_="src", case_sensitive=True)
    assert runtime.calls == [
        ("time", "get_current_time", {"timezone": "Europe/Paris"}, ()),
        (
            "files",
            "searchFiles",
            {
                "query": "todo",
                "caseSensitive": True,
                "filter": None,
                "from": "src",
                "kind": "file",
                "labels": None,
                "limit": 20,
            },
            ("caseSensitive", "filter", "from", "labels"),
        ),
    ]


def test_the_sandbox_runtime_has_every_name_the_stubs_import(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent.parent / "sandbox-image"))
    try:
        real = importlib.import_module("mcpx_runtime.tools")
    finally:  # the runtime is the sandbox's: leave no trace of it in this process
        for name in [name for name in sys.modules if name.partition(".")[0] == "mcpx_runtime"]:
            del sys.modules[name]
    assert [name for name in (*stubgen.RUNTIME_EXPORTS, "call_tool") if not hasattr(real, name)] == []
    assert list(inspect.signature(real.call_tool).parameters) == ["server", "tool", "arguments", "omit_none"]


# --- identifiers ----------------------------------------------------------------------------------------------


def test_identifiers_are_sanitized_escaped_and_deduplicated_in_wire_name_order() -> None:
    tools = tuple(ToolInfo("s", name) for name in NAMES)
    assert stubgen.identifiers(CatalogSnapshot((ServerInfo("s", tools=tools),))) == snapshot(
        {
            ("s", "cafe"): ("s", "cafe"),
            ("s", "café"): ("s", "cafe_2"),
            ("s", "class"): ("s", "class_"),
            ("s", "../../etc/passwd"): ("s", "etc_passwd"),
            ("s", "foo"): ("s", "foo"),
            ("s", "Foo"): ("s", "foo_2"),
            ("s", "foo_bar"): ("s", "foo_bar"),
            ("s", "foo-bar"): ("s", "foo_bar_2"),
            ("s", "fooBar"): ("s", "foo_bar_3"),
            ("s", "__import__('os').system('id')"): ("s", "import_os_system_id"),
            ("s", "__init__"): ("s", "init"),
            ("s", "list"): ("s", "list_"),
            ("s", "match"): ("s", "match_"),
            ("s", "nul\x00"): ("s", "nul"),
            ("s", "print"): ("s", "print_"),
            ("s", "_private"): ("s", "private"),
            ("s", "search_tools"): ("s", "search_tools_"),
            ("s", "SERVERS"): ("s", "servers_"),
            ("s", ""): ("s", "tool"),
            ("s", "\u2028"): ("s", "tool_2"),
            ("s", "2fa"): ("s", "tool_2fa"),
            ("s", "中文"): ("s", "tool_3"),
            ("s", "日本語"): ("s", "tool_4"),
            ("s", "\ud800"): ("s", "tool_5"),
            ("s", "type"): ("s", "type_"),
            ("s", 'x"""; import os'): ("s", "x_import_os"),
        }
    )


def test_server_identifiers_avoid_names_the_servers_package_exports() -> None:
    servers = tuple(ServerInfo(name, tools=(ToolInfo(name, "t"),)) for name in ("search_tools", "SERVERS", "match"))
    assert stubgen.identifiers(CatalogSnapshot(servers)) == snapshot(
        {
            ("match", "t"): ("match_", "t"),
            ("search_tools", "t"): ("search_tools_", "t"),
            ("SERVERS", "t"): ("servers", "t"),
        }
    )


def test_parameters_escape_hard_keywords_only_and_never_collide() -> None:
    properties = {
        name: {"type": "string"} for name in ("class", "type", "match", "id", "fooBar", "foo_bar", "", "_call")
    }
    tool = ToolInfo("s", "t", input_schema={"type": "object", "properties": properties, "required": ["fooBar"]})
    catalog = CatalogSnapshot((ServerInfo("s", tools=(tool,)),))
    assert stubgen.signature(catalog, "s", "t") == snapshot(
        "t(foo_bar_2: str, *, arg: str | None = None, call: str | None = None, class_: str | None = None, "
        "foo_bar: str | None = None, id: str | None = None, match: str | None = None, type: str | None = None) -> Any"
    )


# --- hostile catalogs -----------------------------------------------------------------------------------------


def test_every_file_of_a_hostile_catalog_compiles_and_keeps_the_text_out_of_code() -> None:
    files = stubgen.render(hostile_catalog())
    assert len(files) > 300
    for path, source in files.items():
        compile(source, path, "exec", dont_inherit=True)
        source.encode()  # no lone surrogate survives
        assert "\x00" not in source
        lines = source.splitlines()
        assert lines[0] == stubgen.HEADER.strip()
        assert not lines[1].lstrip().startswith("#")  # so no server text can be read as a coding declaration
        for node in ast.walk(ast.parse(source)):
            assert not isinstance(node, ast.Attribute | ast.Lambda | ast.Import)
            if isinstance(node, ast.Call):
                assert isinstance(node.func, ast.Name)
                assert node.func.id in ("TypedDict", "_call")


def test_docstrings_read_back_as_the_server_text_with_line_breaks_normalized_and_control_characters_dropped() -> None:
    tools = tuple(ToolInfo("s", f"t{index}", text) for index, text in enumerate(NASTY))
    files = stubgen.render(CatalogSnapshot((ServerInfo("s", tools=tools),)))
    for index, text in enumerate(NASTY):
        raw = ast.get_docstring(function(files, f"servers/s/t{index}.py"), clean=False) or ""
        assert all(c in "\n\t" or unicodedata.category(c)[0] != "C" for c in raw)
        lines = (
            "".join(c for c in line if c == "\t" or unicodedata.category(c)[0] != "C") for line in text.splitlines()
        )
        expected = "\n".join(line.rstrip() for line in lines).strip("\n") or "(No description.)"
        assert expected in raw.replace("\n    ", "\n")
    assert "a\nb\nc\nd\ne\nf\ng\nh\ni" in (ast.get_docstring(function(files, "servers/s/t9.py")) or "")


def test_listings_keep_one_short_line_of_a_long_description() -> None:
    servers = (ServerInfo("s", "x" * 5000 + "\nsecond line", (ToolInfo("s", "t", "First sentence. Second one."),)),)
    files = stubgen.render(CatalogSnapshot(servers))
    assert "    's': '" + "x" * 119 + "…',\n" in files["servers/__init__.py"]
    assert "- t: First sentence.\n" in files["servers/s/__init__.py"]
    assert "x" * 5000 + "\nsecond line" in files["servers/s/__init__.py"]


def test_schema_defaults_become_literals_only_when_they_fit_the_schema(
    runtime: FakeRuntime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    properties: dict[str, Any] = {
        "quoted": {"type": "string", "default": "'); import os; ('"},
        "count": {"type": "integer", "default": -3},
        "ratio": {"type": "number", "default": 0.5},
        "flag": {"type": "boolean", "default": False},
        "mode": {"enum": ["a", "b"], "default": "b"},
        "infinite": {"type": "number", "default": float("inf")},
        "nan": {"type": "number", "default": float("nan")},
        "huge": {"type": "integer", "default": 10**300},
        "mistyped": {"type": "integer", "default": "1; import os"},
        "bool for int": {"type": "integer", "default": True},
        "not in enum": {"enum": ["a"], "default": "b"},
        "object": {"default": {"__class__": "x"}},
        "long": {"type": "string", "default": "x" * 1000},
    }
    tool = ToolInfo("s", "t", input_schema={"type": "object", "properties": properties})
    mount(stubgen.render(CatalogSnapshot((ServerInfo("s", tools=(tool,)),))), tmp_path, monkeypatch)
    from servers.s.t import t  # type: ignore[import-not-found]

    assert {name: parameter.default for name, parameter in inspect.signature(t).parameters.items()} == snapshot(
        {
            "bool_for_int": None,
            "count": -3,
            "flag": False,
            "huge": None,
            "infinite": None,
            "long": None,
            "mistyped": None,
            "mode": "b",
            "nan": None,
            "not_in_enum": None,
            "object": None,
            "quoted": "'); import os; ('",
            "ratio": 0.5,
        }
    )


def test_importing_a_hostile_tree_only_defines_names_and_calls_reach_the_right_wire_names(
    runtime: FakeRuntime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog = hostile_catalog()
    files = stubgen.render(catalog)
    tree = mount(files, tmp_path, monkeypatch).resolve()
    with audited() as events:
        modules = {path: importlib.import_module(module_name(path)) for path in files}

    assert runtime.calls == []
    assert {name for name, _ in events} <= {"import", "open", "compile", "exec", "os.listdir", "sys._getframe"}
    for name, args in events:
        if name == "open":
            assert Path(args[0]).resolve().is_relative_to(tree)
            assert args[1] == "r"
        if name == "exec":
            assert Path(args[0].co_filename).resolve().is_relative_to(tree)
        if name == "import":
            assert args[0] == "servers" or args[0].startswith("servers.")
    servers = modules["servers/__init__.py"]
    assert servers.search_tools == runtime.search_tools
    assert set(servers.SERVERS) == {server for server, _ in stubgen.identifiers(catalog).values()}

    for (server_wire, tool_wire), (server, tool) in stubgen.identifiers(catalog).items():
        stub = getattr(modules[f"servers/{server}/{tool}.py"], tool)
        assert getattr(modules[f"servers/{server}/__init__.py"], tool) is stub
        parameters = inspect.signature(stub).parameters.values()
        values = {parameter.name: object() for parameter in parameters}
        positional = [values[p.name] for p in parameters if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
        stub(*positional, **{p.name: values[p.name] for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY})

        called_server, called_tool, arguments, omit_none = runtime.calls.pop()
        assert (called_server, called_tool) == (server_wire, tool_wire)
        schema = catalog.tool(server_wire, tool_wire).input_schema  # type: ignore[union-attr]
        declared: dict[str, Any] = schema["properties"] if isinstance(schema.get("properties"), dict) else {}
        listed: list[Any] = schema["required"] if isinstance(schema.get("required"), list) else []
        required = {name for name in listed if isinstance(name, str)}
        assert set(arguments) == set(declared) | required
        assert sorted(map(id, arguments.values())) == sorted(map(id, values.values()))
        assert set(omit_none) <= set(declared) - required


# --- determinism ----------------------------------------------------------------------------------------------


def reordered(catalog: CatalogSnapshot) -> CatalogSnapshot:
    """The same catalog listed backwards, with every JSON object's keys reversed."""

    def backwards(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: backwards(value[key]) for key in reversed(value)}
        return [backwards(item) for item in value] if isinstance(value, list) else value

    return CatalogSnapshot(
        tuple(
            replace(
                server,
                tools=tuple(
                    replace(
                        tool, input_schema=backwards(tool.input_schema), output_schema=backwards(tool.output_schema)
                    )
                    for tool in reversed(server.tools)
                ),
            )
            for server in reversed(catalog.servers)
        )
    )


def test_rendering_is_deterministic_and_independent_of_listing_order() -> None:
    catalog = hostile_catalog()
    files = stubgen.render(catalog)
    assert stubgen.render(catalog) == files
    assert stubgen.render(reordered(catalog)) == files
    assert stubgen.identifiers(reordered(catalog)) == stubgen.identifiers(catalog)
    assert stubgen.render(reordered(CATALOG)) == stubgen.render(CATALOG)


def test_a_new_tool_does_not_rename_a_tool_whose_name_already_was_its_identifier() -> None:
    before = CatalogSnapshot((ServerInfo("s", tools=(ToolInfo("s", "foo_bar"),)),))
    after = CatalogSnapshot((ServerInfo("s", tools=(ToolInfo("s", "foo_bar"), ToolInfo("s", "Foo-Bar"))),))
    assert stubgen.identifiers(before)["s", "foo_bar"] == stubgen.identifiers(after)["s", "foo_bar"] == ("s", "foo_bar")


# --- writing --------------------------------------------------------------------------------------------------


def test_write_tree_writes_once_readable_by_any_uid_and_leaves_no_temporary_directory(tmp_path: Path) -> None:
    files = stubgen.render(CATALOG)
    umask = os.umask(0o077)
    try:
        tree = stubgen.write_tree(files, tmp_path, "abc123")
    finally:
        os.umask(umask)
    assert tree == tmp_path / "abc123"
    written = {path.relative_to(tree).as_posix(): path for path in tree.rglob("*")}
    assert {name: path.read_text() for name, path in written.items() if path.is_file()} == files
    modes = {stat.S_IMODE(path.stat().st_mode) for path in written.values() if path.is_dir()} | {
        stat.S_IMODE(tree.stat().st_mode)
    }
    assert modes == {0o755}
    assert {stat.S_IMODE(path.stat().st_mode) for path in written.values() if path.is_file()} == {0o644}

    assert stubgen.write_tree({"other.py": ""}, tmp_path, "abc123") == tree
    assert not (tree / "other.py").exists()
    assert [path.name for path in tmp_path.iterdir()] == ["abc123"]


@pytest.mark.parametrize("name", ["/etc/x.py", "../x.py", "servers/../../x.py", ""])
def test_write_tree_refuses_paths_outside_the_tree_and_leaves_nothing_behind(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="relative path"):
        stubgen.write_tree({"servers/a.py": "", name: ""}, tmp_path, "abc")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("digest", ["", "..", "../x", "a/b", ".hidden"])
def test_write_tree_refuses_a_digest_that_is_not_a_plain_name(tmp_path: Path, digest: str) -> None:
    with pytest.raises(ValueError, match="digest"):
        stubgen.write_tree({}, tmp_path, digest)


# --- paths that could fail to be written ------------------------------------------------------------------------

# Wire names whose files a naive generator could not write, or would write on top of each other: longer than any
# file-name limit, path separators, NUL, dot names, reserved files, names equal but for case or after sanitising.
AWKWARD_NAMES = (
    "A" * 5_000, "x" * 256, "y" * 255, "z" * 128, "a/b", "../../etc/passwd", "/abs", "nul\x00byte", ".", "..",
    "...", "__init__", "__init__.py", "index", "index.ts", "__pycache__", "Foo", "foo", "FOO", "fOO",
    "a.b", "a-b", "a_b", "a b", "ǅ", "ß", "ss", "Å", "A\u030a", "-", "", "con", "aux", "nul",
)  # fmt: skip


def awkward_catalog() -> CatalogSnapshot:
    servers = [ServerInfo(name, tools=tuple(ToolInfo(name, tool) for tool in AWKWARD_NAMES)) for name in ("s", "S")]
    return CatalogSnapshot((*servers, ServerInfo("x" * 300, tools=(ToolInfo("x" * 300, "t"),))))


def test_every_awkward_name_gets_a_short_file_of_its_own_that_calls_it_by_its_wire_name(tmp_path: Path) -> None:
    catalog = awkward_catalog()
    files = stubgen.render(catalog) | tsstubs.render(catalog)
    tree = stubgen.write_tree(files, tmp_path, "awkward")
    written = {path.relative_to(tree).as_posix() for path in tree.rglob("*") if path.is_file()}
    assert written == set(files)
    assert max(len(part.encode()) for path in files for part in path.split("/")) <= stubgen.MAX_IDENT + 8
    folded = {path.casefold() for path in files}
    assert len(folded) == len(files)  # nothing collides on a case-insensitive file system either
    names = stubgen.identifiers(catalog)
    assert len(set(names.values())) == len(names) == 2 * len(set(AWKWARD_NAMES)) + 1
    for (server, tool), (server_ident, tool_ident) in names.items():
        assert tool_ident not in ("index", "__init__")
        source = files[f"servers/{server_ident}/{tool_ident}.py"]
        assert f"_call({server!r}, {tool!r}," in source.replace("\n        ", "").replace("(\n", "(")


def test_long_identifiers_keep_a_prefix_and_a_hash_of_the_wire_name() -> None:
    long_names = ("A" * 5_000, "x" * 256, "x" * 257)
    catalog = CatalogSnapshot((ServerInfo("s", tools=tuple(ToolInfo("s", name) for name in long_names)),))
    idents = [ident for _, ident in stubgen.identifiers(catalog).values()]
    assert all(len(ident) <= stubgen.MAX_IDENT for ident in idents)
    assert len(set(idents)) == 3
    assert stubgen.identifiers(catalog) == stubgen.identifiers(CatalogSnapshot(catalog.servers[::-1]))
    short = "q" * stubgen.MAX_IDENT
    assert stubgen.identifiers(CatalogSnapshot((ServerInfo("s", tools=(ToolInfo("s", short),)),)))[("s", short)] == (
        "s",
        short,
    )


def test_tool_names_that_would_shadow_the_agents_own_names_are_renamed(
    runtime: FakeRuntime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shadowing = ("search_tools", "os", "sys", "builtins", "servers", "SERVERS", "json", "mcpx_runtime", "index")
    catalog = CatalogSnapshot((ServerInfo("evil", tools=tuple(ToolInfo("evil", name) for name in shadowing)),))
    idents = {tool: ident for (_, tool), (_, ident) in stubgen.identifiers(catalog).items()}
    assert idents == {name: name.lower() + "_" for name in shadowing if name != "servers"} | {"servers": "servers_2"}
    mount(stubgen.render(catalog), tmp_path, monkeypatch)
    namespace: dict[str, Any] = {}
    exec("from servers.evil import *", namespace)  # the generated tree, as an agent imports it
    reserved = {*stubgen.RUNTIME_EXPORTS, "SERVERS", "servers", "os", "sys", "builtins", "json", "index"}
    assert reserved.isdisjoint(namespace)
    namespace["search_tools_"]()
    assert runtime.calls[-1][:2] == ("evil", "search_tools")


def test_a_tree_the_host_cannot_write_is_a_typed_error_that_leaves_nothing(tmp_path: Path) -> None:
    files = stubgen.render(CATALOG)
    blocker = tmp_path / "file"
    blocker.write_text("")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "abc").write_text("a file where the tree belongs")
    for root in (blocker / "stubs", Path("/proc/mcpx-stubs"), tmp_path / "taken"):
        with pytest.raises(stubgen.StubsUnwritable):
            stubgen.write_tree(files, root, "abc")
    assert sorted(path.name for path in (tmp_path / "taken").iterdir()) == ["abc"]


def test_a_stub_file_that_cannot_be_created_fails_the_write_and_leaves_nothing(tmp_path: Path) -> None:
    files = {"servers/__init__.py": "", "servers/a/__init__.py": "", "servers/a/" + "n" * 300 + ".py": ""}
    with pytest.raises(stubgen.StubsUnwritable, match="File name too long"):
        stubgen.write_tree(files, tmp_path, "abc")
    assert list(tmp_path.iterdir()) == []

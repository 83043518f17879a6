"""Property-based fuzzing of the HTTP API against its own OpenAPI document: no 5xx, every response as documented.

The schema is read from the live server. Every documented operation is fuzzed with schema-valid requests, and those
with a body or a query also with schema-invalid ones; then one real session is fuzzed with code and workspace paths,
and a controller with API keys with requests that carry none. Settings are bounded for CI and derandomized, so a
failure reproduces run after run (the report ends with a curl command).

Operations are listed here rather than collected from the schema: pytest collects before the server is up, and
schemathesis' lazy `from_fixture` loader needs pytest internals that pytest 9.2 removed (`Node._nodeid`).
`test_every_documented_operation_is_fuzzed` keeps the list in step with the API.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import schemathesis
from hypothesis import example, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from tests.conftest import LiveServer, SessionFactory, make_settings

OPERATIONS = [
    "GET /healthz",
    "GET /readyz",
    "GET /metrics",
    "GET /v1/sessions",
    "POST /v1/sessions",
    "GET /v1/sessions/{session_id}",
    "DELETE /v1/sessions/{session_id}",
    "POST /v1/sessions/{session_id}/executions",
    "GET /v1/sessions/{session_id}/files",
    "GET /v1/sessions/{session_id}/files/{path}",
    "PUT /v1/sessions/{session_id}/files/{path}",
    "DELETE /v1/sessions/{session_id}/files/{path}",
    "GET /v1/tools",
    "GET /v1/tools/search",
    "GET /v1/tools/{server}/{tool}",
    "POST /v1/tools/{server}/{tool}/accept",
]
# Only a body or a query can break the schema: path parameters and headers are strings of any content.
WITH_BODY_OR_QUERY = [
    "POST /v1/sessions",
    "POST /v1/sessions/{session_id}/executions",
    "GET /v1/tools/search",
    "GET /v1/tools/{server}/{tool}",
]
CHECKS = ["not_a_server_error", "status_code_conformance", "content_type_conformance", "response_schema_conformance"]
JSON_ONLY = {"accept": "application/json"}  # the text/event-stream variant of executions is not fuzzed
FUZZ = settings(max_examples=25, deadline=None, derandomize=True, database=None)
API_KEY = "fuzz-key-0123456789abcdef"


def load_schema(server: LiveServer) -> schemathesis.BaseSchema:
    config = schemathesis.Config.from_dict(
        {"checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}}, "request-timeout": 120}
    )
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json", config=config)


@pytest.fixture(scope="module")
def api_schema(server: LiveServer) -> schemathesis.BaseSchema:
    return load_schema(server)


@pytest.fixture(scope="module")
def keyed_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[schemathesis.BaseSchema]:
    """The schema of a controller that requires API keys (no MCP servers: requests stop at authentication)."""
    state = tmp_path_factory.mktemp("fuzz-keyed")
    no_servers = state / "servers.json"
    no_servers.write_text('{"mcpServers": {}}')
    settings = make_settings(
        state / "state", servers_file=no_servers, controller_id=f"fuzz{id(state) % 10000}", api_keys=f"k:{API_KEY}"
    )
    with LiveServer(settings) as live:
        yield load_schema(live)


@pytest.fixture
def sweep(api: httpx.Client) -> Iterator[None]:
    """Deletes every session that appeared during the test (the fuzzer's), leaving earlier ones alone."""
    before = {entry["id"] for entry in api.get("/v1/sessions").json()["sessions"]}
    yield
    for entry in api.get("/v1/sessions").json()["sessions"]:
        if entry["id"] not in before:
            api.delete(f"/v1/sessions/{entry['id']}")


def test_every_documented_operation_is_fuzzed(api_schema: schemathesis.BaseSchema):
    documented = [result.ok() for result in api_schema.get_all_operations()]
    assert sorted(operation.label for operation in documented) == sorted(OPERATIONS)
    negatable = [operation.label for operation in documented if operation.body or operation.query]
    assert sorted(negatable) == sorted(WITH_BODY_OR_QUERY)


def fuzz_operation(
    schema: schemathesis.BaseSchema, label: str, mode: GenerationMode, after: Callable[[schemathesis.Response], None]
) -> None:
    operation = schema.find_operation_by_label(label)
    assert operation is not None
    headers = JSON_ONLY if "accept" in {parameter.name for parameter in operation.headers} else None

    @FUZZ
    @given(case=operation.as_strategy(mode, headers=headers))
    def fuzz(case: schemathesis.Case) -> None:
        response = case.call()
        case.validate_response(response)
        after(response)

    fuzz()


@pytest.mark.parametrize(
    ("label", "mode"),
    [pytest.param(label, GenerationMode.POSITIVE, id=f"{label} valid") for label in OPERATIONS]
    + [pytest.param(label, GenerationMode.NEGATIVE, id=f"{label} invalid") for label in WITH_BODY_OR_QUERY],
)
def test_operation_answers_as_documented_and_never_with_a_server_error(
    api_schema: schemathesis.BaseSchema, api: httpx.Client, sweep: None, label: str, mode: GenerationMode
):
    def after(response: schemathesis.Response) -> None:
        if label == "POST /v1/sessions" and response.status_code == 201:
            # One sandbox at a time, however many sessions the fuzzer asks for.
            api.delete(f"/v1/sessions/{response.json()['id']}")

    fuzz_operation(api_schema, label, mode, after)


@pytest.mark.parametrize("label", [label for label in OPERATIONS if label.split()[1].startswith("/v1/")])
@pytest.mark.docker
def test_requests_without_a_valid_key_are_refused_as_documented(keyed_schema: schemathesis.BaseSchema, label: str):
    def after(response: schemathesis.Response) -> None:
        assert response.status_code == 401, response.text

    fuzz_operation(keyed_schema, label, GenerationMode.POSITIVE, after)


@pytest.mark.parametrize("label", ["POST /v1/sessions", "POST /v1/sessions/{session_id}/executions"])
def test_a_body_that_is_not_utf8_is_refused_as_documented(api_schema: schemathesis.BaseSchema, label: str):
    operation = api_schema.find_operation_by_label(label)
    assert operation is not None
    path = {"session_id": "0"} if "{session_id}" in label else None
    operation.Case(
        path_parameters=path, headers=JSON_ONLY, body=b"\xff", media_type="application/json"
    ).call_and_validate()


LIMIT_EDGES = [
    {"cpus": 1e-10},
    {"cpus": 0.001},
    {"memory_mb": 64},
    {"memory_mb": 64, "runtime": "runc"},
    {"timeout_s": 5e-324},
    {"ttl_s": 5e-324},
    {"servers": []},
    {"policy": {"max_concurrent_tool_calls": 10**30, "max_result_bytes_per_execution": 0}},
]


@pytest.mark.parametrize("body", LIMIT_EDGES, ids=json.dumps)
def test_sessions_at_the_edges_of_their_limits_work_or_are_refused(
    api_schema: schemathesis.BaseSchema, api: httpx.Client, sweep: None, body: dict[str, Any]
):
    create = api_schema["/v1/sessions"]["POST"].Case(body=body).call_and_validate()
    if create.status_code != 201:
        return
    session = {"session_id": create.json()["id"]}
    execute = api_schema["/v1/sessions/{session_id}/executions"]["POST"]
    execute.Case(path_parameters=session, headers=JSON_ONLY, body={"code": "6 * 7"}).call_and_validate()
    api_schema["/v1/sessions/{session_id}"]["DELETE"].Case(path_parameters=session).call_and_validate()


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
SNIPPETS = [
    "x = 6 * 7\nprint('hello')\nx",
    "raise ValueError('boom')",
    "import sys; sys.exit(3)",
    "import os; os._exit(1)",
    "while True: pass",
    "print('y' * 200_000)",
    "import json; print(json.dumps({'rows': list(range(20_000))}))",
    "float('nan')",
    "{1, 2, 3}",
    "b'\\xff\\x00'",
    "10 ** 5000",
    "print('\\udcff\\x00\\x1b[2J')",
    "import sys; sys.stderr.write('err\\n' * 1000)",
    "import asyncio\nawait asyncio.sleep(0)\n1",
    "from servers.time import get_current_time\nget_current_time(timezone='UTC')",
    "from servers.time import get_current_time\nget_current_time(timezone=5)",
    "import socket; socket.create_connection(('1.1.1.1', 53), timeout=1)",
    "open('/workspace/fuzz.txt', 'w').write('x' * 1000)",
]
CODE = st.one_of(
    st.sampled_from(SNIPPETS),
    st.text(max_size=200),
    JSON_VALUES.map(repr),
    JSON_VALUES.map(lambda value: f"print({json.dumps(value)!r})"),
)
EXECUTION_BODIES = st.fixed_dictionaries(
    # A small timeout: generated code may loop forever, and each overrun costs a sandbox restart.
    {"code": CODE, "timeout_s": st.floats(min_value=0.05, max_value=3.0)},
    optional={
        "max_output_tokens": st.integers(min_value=16, max_value=4000),
        "strategy": st.sampled_from(["truncate", "summarize", "sample"]),
    },
)


def with_examples(examples: list[dict[str, Any]]) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Every one of `examples` (keyword arguments of the test) tried on each run, before the generated ones."""

    def decorate(test: Callable[..., None]) -> Callable[..., None]:
        for arguments in examples:
            test = example(**arguments)(test)
        return test

    return decorate


def test_executions_in_a_real_session_answer_as_documented(
    api_schema: schemathesis.BaseSchema, new_session: SessionFactory
):
    operation = api_schema["/v1/sessions/{session_id}/executions"]["POST"]
    session_id = new_session()

    @FUZZ
    @with_examples([{"body": {"code": snippet, "timeout_s": 1.0, "max_output_tokens": 64}} for snippet in SNIPPETS])
    @given(body=EXECUTION_BODIES)
    def fuzz(body: dict[str, Any]) -> None:
        case = operation.Case(path_parameters={"session_id": session_id}, headers=JSON_ONLY, body=body)
        response = case.call_and_validate()
        assert response.status_code == 200, response.text

    fuzz()


EDGE_PATHS = [
    "..",
    "../escape.txt",
    "a/../../escape.txt",
    "/etc/passwd",
    ".",
    "a//b.txt",
    "%2e%2e/escape.txt",
    "n" * 300,
    "d/" * 100 + "deep.txt",
    "lost+found",
    ".mcpx/outputs/1/stdout.txt",
    " ",
    "nested/dir/file.txt",
    "nested",
    "nul\0byte",
]
PATHS = st.one_of(
    st.sampled_from(EDGE_PATHS),
    st.text(min_size=1, max_size=40),
    st.lists(st.text(st.characters(exclude_characters="/"), min_size=1, max_size=12), min_size=1, max_size=5).map(
        "/".join
    ),
)


def test_workspace_files_of_a_real_session_answer_as_documented(
    api_schema: schemathesis.BaseSchema, new_session: SessionFactory
):
    files = "/v1/sessions/{session_id}/files/{path}"
    upload, download, delete = (api_schema[files][method] for method in ("PUT", "GET", "DELETE"))
    listing = api_schema["/v1/sessions/{session_id}/files"]["GET"]
    session_id = new_session()

    @FUZZ
    @with_examples([{"path": path, "content": b"edge"} for path in EDGE_PATHS])
    @given(path=PATHS, content=st.binary(max_size=2048))
    def fuzz(path: str, content: bytes) -> None:
        # Wholly percent-encoded: HTTP clients resolve `.` and `..` segments and merge slashes; the server must see
        # the path as generated.
        where = {"session_id": session_id, "path": quote(path, safe="").replace(".", "%2E")}
        written = upload.Case(path_parameters=where, body=content, media_type="application/octet-stream")
        stored = written.call_and_validate().status_code == 201
        listed = listing.Case(path_parameters={"session_id": session_id}).call_and_validate()
        read = download.Case(path_parameters=where).call_and_validate()
        if stored:
            assert read.content == content
            assert str(PurePosixPath(path)) in {entry["path"] for entry in listed.json()["files"]}
        delete.Case(path_parameters=where).call_and_validate()

    fuzz()

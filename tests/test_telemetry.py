"""Traces, metrics and logs of a real controller: spans from HTTP request to MCP tool call, the trace context crossing
the sandbox bridge and reaching the MCP server, Prometheus exposition, OTLP export, JSON logs."""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from controller.anomalies import Thresholds
from controller.config import Settings
from controller.telemetry import JsonFormatter, Telemetry, child_of, parse_traceparent
from tests.conftest import ROOT, TIME_SERVER, LiveServer, execute, make_settings, wait_until

TOKEN = "metrics-token-5f1d0c2a"
CALLER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
# Every label a metric may carry.
LOW_CARDINALITY = {"server", "tool", "outcome", "kind", "warm", "le"}
pytestmark = pytest.mark.docker


class Traced:
    """A live controller whose telemetry goes to in-memory readers."""

    def __init__(self, settings: Settings, spans: InMemorySpanExporter, metrics: InMemoryMetricReader) -> None:
        self.settings = settings
        self.spans = spans
        self.metrics = metrics

    def finished(self, name: str, count: int = 1) -> list[ReadableSpan]:
        """The finished spans of that name, once there are `count` (server spans end after their response)."""
        wait_until(lambda: len(self.named(name)) >= count, 10, f"{count} {name!r} spans")
        return self.named(name)

    def named(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.spans.get_finished_spans() if span.name == name]


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Traced, httpx.Client]]:
    servers = {
        "time": {"command": str(TIME_SERVER)},
        "traced": {"command": sys.executable, "args": ["-m", "tests.servers.traced"], "cwd": str(ROOT)},
    }
    config = tmp_path_factory.mktemp("traced") / "servers.json"
    config.write_text(json.dumps({"mcpServers": servers}))
    settings = make_settings(
        tmp_path_factory.mktemp("state"),
        servers_file=config,
        metrics_token=TOKEN,
        anomalies=Thresholds(refusals=2, refusal_window_s=600),
    )
    spans, metrics = InMemorySpanExporter(), InMemoryMetricReader()
    telemetry = Telemetry("test", span_exporter=spans, metric_reader=metrics)
    with LiveServer(settings, telemetry) as live, httpx.Client(base_url=live.url, timeout=120) as api:
        yield Traced(settings, spans, metrics), api


def new_session(api: httpx.Client, **body: Any) -> str:
    response = api.post("/v1/sessions", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def traceparent_of(span: ReadableSpan) -> str:
    context = span.get_span_context()
    assert context is not None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    context = span.get_span_context()
    assert context is not None
    return context.span_id


def test_a_request_is_traced_to_each_tool_call_and_the_context_crosses_the_bridge_to_the_server(traced):
    spy, api = traced
    session = new_session(api)
    code = (
        "import mcpx_runtime.tools as runtime\n"
        "from servers.time import get_current_time\n"
        "from servers.traced import traceparent\n"
        "get_current_time(timezone='UTC')\n"
        "{'sandbox': runtime.traceparent, 'server': traceparent()['traceparent']}"
    )
    response = api.post(f"/v1/sessions/{session}/executions", json={"code": code}, headers={"traceparent": CALLER})
    assert response.status_code == 200, response.text
    seen = response.json()["result"]

    [create] = [s for s in spy.finished("session.create") if s.attributes["mcpx.session"] == session]
    [create_request] = [s for s in spy.finished("POST /v1/sessions") if span_id(s) == parent_id(create)]
    assert create_request.attributes["http.response.status_code"] == 201
    [execution] = [s for s in spy.finished("execution") if s.attributes["mcpx.session"] == session]
    [request] = [
        s for s in spy.finished("POST /v1/sessions/{session_id}/executions") if span_id(s) == parent_id(execution)
    ]
    # The caller's trace continues: its context is the request span's parent.
    assert f"{request.context.trace_id:032x}" == CALLER.split("-")[1]
    assert parent_id(request) == int(CALLER.split("-")[2], 16)
    assert execution.context.trace_id == request.context.trace_id
    # What the sandbox held is the execution span, carried over the bridge in `execute`.
    assert seen["sandbox"] == traceparent_of(execution)
    calls = [s for s in spy.finished("tool_call", 2) if s.attributes["mcpx.session"] == session]
    assert sorted(s.attributes["tool"] for s in calls) == ["get_current_time", "traceparent"]
    assert all(parent_id(call) == span_id(execution) for call in calls)
    assert all(call.context.trace_id == execution.context.trace_id for call in calls)
    # The MCP server received the tool-call span's context in the request's `_meta`.
    [to_traced] = [call for call in calls if call.attributes["tool"] == "traceparent"]
    assert seen["server"] == traceparent_of(to_traced)


def test_the_sandbox_context_parents_tool_calls_only_within_the_execution_trace(traced):
    spy, api = traced
    session = new_session(api)
    code = (
        "import mcpx_runtime.tools as runtime\n"
        "from servers.traced import traceparent\n"
        "trace_id = runtime.traceparent.split('-')[1]\n"
        "claims = [f'00-{trace_id}-1234567890abcdef-00', '00-' + 'ab' * 16 + '-' + 'cd' * 8 + '-01',\n"
        "          'garbage\\n-\\x00', 12345, '0' * 100_000, f'00-{trace_id}-0000000000000000-01']\n"
        "received = []\n"
        "for claim in claims:\n"
        "    runtime.traceparent = claim\n"
        "    received.append(traceparent()['traceparent'])\n"
        "received"
    )
    result = execute(api, session, code)
    assert result["error"] is None, result["error"]
    [execution] = [s for s in spy.finished("execution") if s.attributes["mcpx.session"] == session]
    calls = sorted(
        (s for s in spy.finished("tool_call") if s.attributes["mcpx.session"] == session), key=lambda s: s.start_time
    )
    assert len(calls) == 6 == len(result["result"])
    assert all(call.context.trace_id == execution.context.trace_id for call in calls)
    # A well-formed context of the execution's own trace parents the call (and cannot turn sampling off)...
    assert parent_id(calls[0]) == 0x1234567890ABCDEF and calls[0].context.trace_flags.sampled
    # ...a foreign trace, a malformed value, a number, a huge string or a zero span id are ignored.
    assert [parent_id(call) for call in calls[1:]] == [span_id(execution)] * 5
    assert result["result"] == [traceparent_of(call) for call in calls]


def test_typescript_tool_calls_carry_the_execution_context_and_the_sandbox_may_narrow_it(traced):
    spy, api = traced
    session = new_session(api)
    code = (
        'import { traceparent } from "servers/traced";\n'
        'const m = require("mcpx-runtime");\n'
        "const first = (await traceparent({}) as any).traceparent;\n"
        'm.trace(`00-${first.split("-")[1]}-1234567890abcdef-01`);\n'
        "[first, (await traceparent({}) as any).traceparent]"
    )
    result = execute(api, session, code, language="typescript")
    assert result["error"] is None, result["error"]
    [execution] = [s for s in spy.finished("execution") if s.attributes["mcpx.session"] == session]
    calls = sorted(
        (s for s in spy.finished("tool_call", 2) if s.attributes["mcpx.session"] == session), key=lambda s: s.start_time
    )
    assert result["result"] == [traceparent_of(call) for call in calls]
    assert [parent_id(call) for call in calls] == [span_id(execution), 0x1234567890ABCDEF]


def families(text: str) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def test_metrics_are_exposed_with_low_cardinality_labels_only(traced):
    spy, api = traced
    assert api.get("/metrics").status_code == 401
    assert api.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    open_session = new_session(api)
    narrow = new_session(api, servers=["time"])
    result = execute(api, open_session, "from servers.time import get_current_time\nget_current_time(timezone='UTC')")
    assert result["error"] is None
    failed = "from servers.time import get_current_time\nget_current_time(timezone='Mars/Olympus_Mons')"
    assert execute(api, open_session, failed)["error"]["type"] == "ToolError"
    refused = "from mcpx_runtime.tools import call_tool\ncall_tool('traced', 'traceparent', {})"
    for _ in range(2):  # the second refusal reaches the anomaly threshold of this server
        assert execute(api, narrow, refused)["error"]["type"] == "ToolNotAllowed"
    assert execute(api, narrow, "while True: pass", timeout_s=1)["error"]["kind"] == "timeout"

    response = api.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    found = families(response.text)
    for name in (
        "mcpx_sessions_active",
        "mcpx_pool_size",
        "mcpx_session_create_duration_seconds",
        "mcpx_execution_duration_seconds",
        "mcpx_tool_call_duration_seconds",
        "mcpx_tool_call_errors",
        "mcpx_tokens_returned",
        "mcpx_tokens_saved",
        "mcpx_sandbox_failures",
        "mcpx_policy_refusals",
        "mcpx_anomalies",
    ):
        assert name in found, f"{name} missing from {sorted(found)}"
    samples = [sample for name, family in found.items() if name.startswith("mcpx_") for sample in family.samples]
    for sample in samples:
        assert set(sample.labels) <= LOW_CARDINALITY, sample
        assert not {open_session, narrow} & set(sample.labels.values()), sample

    def value(name: str, **labels: str) -> float:
        return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())

    assert value("mcpx_sessions_active") >= 2
    assert value("mcpx_tool_call_errors_total", server="time", tool="get_current_time") >= 1
    assert value("mcpx_tool_call_duration_seconds_count", server="time", outcome="ok") >= 1
    assert value("mcpx_policy_refusals_total", kind="refused") >= 2
    assert value("mcpx_sandbox_failures_total", kind="timeout") == 1
    assert value("mcpx_execution_duration_seconds_count", outcome="timeout") == 1
    assert value("mcpx_anomalies_total", kind="policy_refusals") >= 1
    audit = spy.settings.state_dir / "audit.log"
    events = [json.loads(line) for line in audit.read_text().splitlines()]
    anomalies = [e for e in events if e["event"] == "anomaly.detected" and e["session"] == narrow]
    assert {(e["kind"], e["scope"]) for e in anomalies} >= {("policy_refusals", "session")}
    # The in-memory reader sees the same instruments.
    data = spy.metrics.get_metrics_data()
    assert data is not None
    names = {metric.name for rm in data.resource_metrics for sm in rm.scope_metrics for metric in sm.metrics}
    assert {"mcpx.tool_call.duration", "mcpx.policy.refusals", "mcpx.anomalies", "mcpx.sessions.active"} <= names


def test_traceparents_are_parsed_strictly():
    good = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert parse_traceparent(good) == ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", "01")
    for bad in (
        None,
        42,
        good.upper(),
        "01" + good[2:],
        good + "-",
        good.replace("0af7651916cd43dd8448eb211c80319c", "0" * 32),
        good.replace("b7ad6b7169203331", "0" * 16),
        " " + good[1:],
    ):
        assert parse_traceparent(bad) is None, bad
    execution = "00-11111111111111111111111111111111-2222222222222222-01"
    assert child_of("00-11111111111111111111111111111111-3333333333333333-00", execution) == (
        "00-11111111111111111111111111111111-3333333333333333-01"
    )
    assert child_of(good, execution) == execution
    assert child_of(good, "") == ""


def test_without_an_exporter_no_span_is_recorded_yet_the_context_flows_on():
    telemetry = Telemetry("test")
    assert not telemetry.recording
    caller_trace, caller_span, _ = CALLER.split("-")[1:]
    record = logging.LogRecord("controller.x", logging.INFO, __file__, 1, "hello", (), None)
    with telemetry.span("execution", {"mcpx.session": "s"}, CALLER) as execution:
        outer = parse_traceparent(telemetry.traceparent())
        with telemetry.span("tool_call", {"tool": "t"}):
            inner = parse_traceparent(telemetry.traceparent())
            logged = json.loads(JsonFormatter().format(record))
    assert not execution.is_recording()
    # The caller's trace and sampling flag continue through each level, every span with an id of its own.
    assert outer is not None and inner is not None
    assert outer[0] == inner[0] == caller_trace and outer[2] == inner[2] == "01"
    assert len({caller_span, outer[1], inner[1]}) == 3
    assert (logged["trace_id"], logged["span_id"]) == (inner[0], inner[1])
    with telemetry.span("execution", {}, CALLER[:-2] + "00"):
        assert telemetry.traceparent().endswith("-00")
    with telemetry.span("execution", {}):
        root = parse_traceparent(telemetry.traceparent())
    assert root is not None and root[0] != caller_trace and root[2] == "01"
    assert telemetry.traceparent() == ""
    telemetry.shutdown()


class Collector(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[str, str, int]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, self.headers["Content-Type"], len(body)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_traces_and_metrics_are_exported_over_otlp_when_an_endpoint_is_set(tmp_path: Path):
    assert make_settings(tmp_path).otlp({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}) == (
        "http://collector:4318"
    )
    assert make_settings(tmp_path, otlp_endpoint="http://ours:4318").otlp({}) == "http://ours:4318"
    assert make_settings(tmp_path).otlp({}) is None
    collector = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    try:
        telemetry = Telemetry("test", otlp_endpoint=f"http://127.0.0.1:{collector.server_port}/")
        with telemetry.span("execution", {"mcpx.session": "s"}):
            telemetry.refused("quota")
        telemetry.shutdown()  # flushes both exporters
    finally:
        collector.shutdown()
        collector.server_close()
    paths = {path: (kind, size) for path, kind, size in Collector.received}
    assert set(paths) == {"/v1/traces", "/v1/metrics"}
    assert all(kind == "application/x-protobuf" and size > 0 for kind, size in paths.values())


def test_json_logs_carry_the_current_trace_and_span_ids():
    spans = InMemorySpanExporter()
    telemetry = Telemetry("test", span_exporter=spans)
    formatter = JsonFormatter()
    record = logging.LogRecord("controller.x", logging.INFO, __file__, 1, "hello %s", ("world",), None)
    assert "trace_id" not in json.loads(formatter.format(record))
    with telemetry.span("execution", {}):
        line = json.loads(formatter.format(record))
    [span] = spans.get_finished_spans()
    assert line["message"] == "hello world" and line["level"] == "info" and line["logger"] == "controller.x"
    assert line["trace_id"] == f"{span.context.trace_id:032x}"
    assert line["span_id"] == f"{span.context.span_id:016x}"
    telemetry.shutdown()

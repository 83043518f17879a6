"""Telemetry: OpenTelemetry traces and metrics, their Prometheus exposition, and JSON logs carrying trace ids.

One `Telemetry` per app, with its own providers and its own Prometheus registry: nothing is installed globally, so
one process may hold many apps (tests do). Traces follow request ▶ session ▶ execution ▶ tool call; the execution's
W3C `traceparent` crosses the bridge in `execute`, comes back in each `tools/call`, and goes on to the MCP server
in the request's `_meta`. What the sandbox sends back is only ever used to parent a span of the same trace.

Metric labels are low-cardinality by construction: kinds and outcomes from fixed sets, and server and tool names
from the catalog (never what a sandbox asked for); never session ids, tenants or error messages.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from contextlib import AbstractContextManager, contextmanager
from contextvars import Token
from datetime import UTC, datetime
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
UNTRACED_PATHS = frozenset({"/metrics", "/healthz", "/readyz"})
# Seconds; from a warm claim (milliseconds) to a cold gVisor boot and long executions (minutes).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

Message = MutableMapping[str, Any]
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def parse_traceparent(value: object) -> tuple[str, str, str] | None:
    """(trace id, span id, flags) of a well-formed W3C traceparent (version 00, ids not all zero), else None."""
    if not isinstance(value, str) or len(value) != 55:
        return None
    match = TRACEPARENT.match(value)
    if match is None:
        return None
    trace_id, span_id, flags = match.groups()
    if not trace_id.strip("0") or not span_id.strip("0"):
        return None
    return trace_id, span_id, flags


def child_of(claimed: object, execution: str) -> str:
    """The parent of a tool-call span: the sandbox's `claimed` context when it is well formed and in the
    execution's own trace (its sampling flags ignored), else the execution span itself."""
    ours, theirs = parse_traceparent(execution), parse_traceparent(claimed)
    if ours is None or theirs is None or theirs[0] != ours[0]:
        return execution
    return f"00-{ours[0]}-{theirs[1]}-{ours[2]}"


def _parent_of(traceparent: str) -> SpanContext | None:
    parsed = parse_traceparent(traceparent)
    if parsed is None:
        return None
    trace_id, span_id, flags = parsed
    return SpanContext(int(trace_id, 16), int(span_id, 16), is_remote=True, trace_flags=TraceFlags(int(flags, 16)))


class _Current(AbstractContextManager[trace.Span]):
    """A span that is not recorded, current for a block: all there is to do is to attach and detach it."""

    _token: Token[otel_context.Context]

    def __init__(self, span: trace.Span) -> None:
        self._span = span

    def __enter__(self) -> trace.Span:
        self._token = otel_context.attach(trace.set_span_in_context(self._span))
        return self._span

    def __exit__(self, *_: object) -> None:
        otel_context.detach(self._token)


def _traceparent_of(span: trace.Span) -> str:
    context = span.get_span_context()
    if not context.is_valid:
        return ""
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


class Telemetry:
    """Tracer, meter and instruments of one app. `otlp_endpoint` (base URL) adds OTLP/HTTP export of both;
    tests pass their own `span_exporter` and `metric_reader`. Call `shutdown()` at the end (flushes exports)."""

    def __init__(
        self,
        service: str,
        otlp_endpoint: str | None = None,
        span_exporter: SpanExporter | None = None,
        metric_reader: MetricReader | None = None,
    ) -> None:
        resource = Resource.create({"service.name": "mcpx", "service.instance.id": service})
        self.tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        # With nowhere to send spans, none is recorded (a recorded one costs ~0.1 ms per tool call): the ids and
        # the caller's sampling flag still flow to logs, the sandbox and MCP servers.
        self.recording = bool(otlp_endpoint) or span_exporter is not None
        self._ids = RandomIdGenerator()
        self.registry = CollectorRegistry(auto_describe=True)
        readers: list[MetricReader] = [PrometheusMetricReader(scope_info_enabled=False, registry=self.registry)]
        if otlp_endpoint:
            base = otlp_endpoint.rstrip("/")
            self.tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(f"{base}/v1/traces")))
            readers.append(PeriodicExportingMetricReader(OTLPMetricExporter(f"{base}/v1/metrics")))
        if span_exporter is not None:
            self.tracer_provider.add_span_processor(SimpleSpanProcessor(span_exporter))
        if metric_reader is not None:
            readers.append(metric_reader)
        self.meter_provider = MeterProvider(metric_readers=readers, resource=resource, shutdown_on_exit=False)
        self.tracer = self.tracer_provider.get_tracer("mcpx")
        meter = self.meter_provider.get_meter("mcpx")
        self.meter = meter
        self._session_create = meter.create_histogram(
            "mcpx.session.create.duration", "s", "Time to create a session (a warm claim or a cold start)",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )  # fmt: skip
        self._execution = meter.create_histogram(
            "mcpx.execution.duration", "s", "Duration of executions, by outcome",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )  # fmt: skip
        self._tool_call = meter.create_histogram(
            "mcpx.tool_call.duration", "s", "Latency of tool calls sent to MCP servers, by server, tool and outcome",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )  # fmt: skip
        self._tool_errors = meter.create_counter(
            "mcpx.tool_call.errors", "{call}", "Tool calls that failed, by server, tool and kind"
        )
        self._tokens_returned = meter.create_counter(
            "mcpx.tokens.returned", "{token}", "Tokens of shaped execution responses"
        )
        self._tokens_saved = meter.create_up_down_counter(
            "mcpx.tokens.saved", "{token}", "Tokens saved against direct tool calling (negative when code cost more)"
        )
        self._sandbox_failures = meter.create_counter(
            "mcpx.sandbox.failures", "{execution}", "Executions ended by a timeout, an OOM or a sandbox crash"
        )
        self._refusals = meter.create_counter("mcpx.policy.refusals", "{refusal}", "Policy refusals, by kind")
        self._anomalies = meter.create_counter("mcpx.anomalies", "{anomaly}", "Anomalies detected, by kind")
        self._removals_deferred = meter.create_counter(
            "mcpx.sandbox.removals_deferred", "{sandbox}", "Sandbox removals the engine refused, left to the reaper"
        )

    def gauge(self, name: str, description: str, read: Callable[[], int]) -> None:
        """An observable gauge that calls `read` at each collection."""

        def observe(_options: CallbackOptions) -> list[Observation]:
            return [Observation(read())]

        self.meter.create_observable_gauge(name, [observe], "1", description)

    # --- spans -------------------------------------------------------------------------------------------------

    @contextmanager
    def span(
        self, name: str, attributes: Mapping[str, str | int | float | bool], parent: str | None = None
    ) -> Iterator[trace.Span]:
        """A span, current for the block; `parent` (a traceparent) overrides the current context. An exception
        leaving the block marks the span as an error (by its type only)."""
        with self.current(name, _parent_of(parent) if parent else None, attributes) as span:
            try:
                yield span
            except BaseException as exc:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise

    def current(
        self,
        name: str,
        parent: SpanContext | None,
        attributes: Mapping[str, str | int | float | bool],
        kind: SpanKind = SpanKind.INTERNAL,
    ) -> AbstractContextManager[trace.Span]:
        """A new span, current while the block runs: a child of `parent` (default: the current span), or the
        root of a new trace. The block sets the span's status itself; an exception leaving it only ends it."""
        if self.recording:
            context = trace.set_span_in_context(NonRecordingSpan(parent)) if parent is not None else None
            return self.tracer.start_as_current_span(
                name, context, kind, dict(attributes), record_exception=False, set_status_on_exception=False
            )
        if parent is None:
            parent = trace.get_current_span().get_span_context()
        trace_id = parent.trace_id if parent.is_valid else self._ids.generate_trace_id()
        flags = parent.trace_flags if parent.is_valid else TraceFlags(TraceFlags.SAMPLED)
        return _Current(NonRecordingSpan(SpanContext(trace_id, self._ids.generate_span_id(), False, flags)))

    @staticmethod
    def traceparent() -> str:
        """The current span as a W3C traceparent ("" outside any span)."""
        return _traceparent_of(trace.get_current_span())

    @staticmethod
    def fail(span: trace.Span, kind: str) -> None:
        span.set_attribute("error.type", kind)
        span.set_status(Status(StatusCode.ERROR, kind))

    # --- metrics -----------------------------------------------------------------------------------------------

    def session_created(self, seconds: float, warm: bool) -> None:
        self._session_create.record(seconds, {"warm": warm})

    def execution_finished(self, seconds: float, outcome: str) -> None:
        self._execution.record(seconds, {"outcome": outcome})
        if outcome in ("timeout", "oom", "crash"):
            self._sandbox_failures.add(1, {"kind": outcome})

    def tool_called(self, server: str, tool: str, seconds: float, error_kind: str | None) -> None:
        labels = {"server": server, "tool": tool}
        self._tool_call.record(seconds, {**labels, "outcome": error_kind or "ok"})
        if error_kind is not None:
            self._tool_errors.add(1, {**labels, "kind": error_kind})

    def tokens(self, returned: int, saved: int) -> None:
        self._tokens_returned.add(returned)
        self._tokens_saved.add(saved)

    def refused(self, kind: str) -> None:
        self._refusals.add(1, {"kind": kind})

    def anomaly(self, kind: str) -> None:
        self._anomalies.add(1, {"kind": kind})

    def removal_deferred(self) -> None:
        self._removals_deferred.add(1)

    def exposition(self) -> tuple[bytes, str]:
        """The metrics in Prometheus' text format, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


class TracingMiddleware:
    """ASGI middleware: one server span per HTTP request, named by its route template (never by ids), continuing
    the caller's W3C trace context when it sends one. The span ends when the response body does (streams too)."""

    def __init__(self, app: ASGIApp, telemetry: Telemetry) -> None:
        self.app = app
        self.telemetry = telemetry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNTRACED_PATHS:
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1"): value.decode("latin-1") for key, value in scope.get("headers", [])}
        caller = _parent_of(headers.get("traceparent", ""))
        method = str(scope["method"])
        with self.telemetry.current(method, caller, {"http.request.method": method}, SpanKind.SERVER) as span:

            async def sending(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(Status(StatusCode.ERROR))
                await send(message)

            try:
                await self.app(scope, receive, sending)
            except BaseException as exc:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise
            finally:
                route = getattr(scope.get("route"), "path", None)
                if isinstance(route, str):
                    span.update_name(f"{method} {route}")
                    span.set_attribute("http.route", route)


class JsonFormatter(logging.Formatter):
    """One JSON object per log record, with the trace and span ids of the span current when it was logged."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            entry["trace_id"] = f"{context.trace_id:032x}"
            entry["span_id"] = f"{context.span_id:016x}"
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def log_json() -> None:
    """Send every log record (uvicorn's too, when it is given no config of its own) to stderr as JSON."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    logging.root.handlers = [handler]

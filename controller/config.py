"""Settings: one object, built in `main()` or by a test, passed down. Environment variables use the MCPX_ prefix."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from controller.anomalies import Thresholds
from controller.errors import ConfigError
from controller.policy import Policy
from controller.tenants import TenantConfig

# `${...}` as MCP clients write it: `${VAR}` and `${VAR:-default}` (Claude Code), `${env:VAR}` (VS Code, Cursor).
# Any other `${`, an unterminated one included, is refused rather than kept as text.
REFERENCE = re.compile(r"\$\{([^}]*)\}|\$\{")
VARIABLE = re.compile(r"(?:env:)?([A-Za-z_][A-Za-z0-9_]*)(?::-([^${]*))?")
# A replica's name: a DNS label short enough that `<name>.<16 hex>` session ids fit in 63-character label values.
REPLICA_NAME = r"[a-z0-9][a-z0-9-]{0,30}"
ReplicaName = Annotated[str, Field(pattern=f"^{REPLICA_NAME}$")]


class StdioServer(BaseModel):
    """An MCP server the controller starts as a subprocess and talks to over stdin/stdout."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["stdio"] = "stdio"
    command: str = Field(min_length=1)
    args: tuple[str, ...] = ()
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    description: str | None = None
    timeout_s: float = Field(default=60.0, gt=0)
    annotations: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """The operator's annotations per tool (`{"tool": {"readOnlyHint": true}}`): they win over the server's own."""
    trust_annotations: bool = False
    """Whether the server's own annotations (hints the MCP spec calls untrusted) count, e.g. for `read_only`."""


class HttpServer(BaseModel):
    """An MCP server reached over streamable HTTP."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["http", "streamable-http"] = "http"
    url: str = Field(pattern=r"^https?://")
    headers: dict[str, str] = Field(default_factory=dict)
    description: str | None = None
    timeout_s: float = Field(default=60.0, gt=0)
    annotations: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """The operator's annotations per tool (`{"tool": {"readOnlyHint": true}}`): they win over the server's own."""
    trust_annotations: bool = False
    """Whether the server's own annotations (hints the MCP spec calls untrusted) count, e.g. for `read_only`."""


# The `type` MCP clients write beside an entry, and the key that entry must then have.
TRANSPORTS = {"stdio": "command", "http": "url", "streamable-http": "url"}


def _transport(entry: Any) -> str | None:
    if isinstance(entry, Mapping):
        return "stdio" if "command" in entry else "http" if "url" in entry else None
    return None


def type_problem(entry: Any) -> str | None:
    """What is wrong with an entry's `type` for its shape, if anything."""
    if not isinstance(entry, Mapping) or "type" not in entry:
        return None
    kind = entry["type"]
    if kind == "sse":
        return (
            "type 'sse' (the HTTP+SSE transport MCP replaced in 2025) is not supported: give the server's "
            'streamable HTTP endpoint as `url` with "type": "http"'
        )
    if kind not in TRANSPORTS:
        return f"unknown type {kind!r}: expected one of {', '.join(map(repr, TRANSPORTS))}"
    needed = TRANSPORTS[kind]
    other = "url" if needed == "command" else "command"
    if needed not in entry or other in entry:
        return f"type {kind!r} needs `{needed}`" + (f", not `{other}`" if other in entry else "")
    return None


ServerConfig = Annotated[
    Annotated[StdioServer, Tag("stdio")] | Annotated[HttpServer, Tag("http")],
    Discriminator(_transport, custom_error_type="server", custom_error_message="needs `command` or `url`"),
]
ServerName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")]
_SERVERS = TypeAdapter(dict[ServerName, ServerConfig])


def expand(value: Any, environ: Mapping[str, str], where: str) -> Any:
    """Replace `${VAR}`, `${VAR:-default}` (the default when VAR is unset or empty) and `${env:VAR}` in every
    string of a config value; values are inserted as they are, never expanded again, and a default holds no `$`,
    `{` or `}`. A `$` not followed by `{` is plain text; there is no escape (MCP clients have none).

    Raises:
        ConfigError: a variable without a default is not set, or a `${...}` is of no supported form.
    """
    if isinstance(value, str):

        def lookup(match: re.Match[str]) -> str:
            reference = match.group(1)
            variable = VARIABLE.fullmatch(reference) if reference is not None else None
            if variable is None:
                raise ConfigError(
                    f"{where}: {match.group(0)!r} is not a supported reference: "
                    "write ${VAR}, ${VAR:-default} or ${env:VAR}"
                )
            name, default = variable.group(1), variable.group(2)
            if default is not None:
                return environ.get(name) or default
            if name not in environ:
                raise ConfigError(f"{where}: environment variable {name} is not set")
            return environ[name]

        return REFERENCE.sub(lookup, value)
    if isinstance(value, list):
        return [expand(item, environ, where) for item in value]
    if isinstance(value, dict):
        return {key: expand(item, environ, f"{where}.{key}") for key, item in value.items()}
    return value


def parse_servers(document: Any, environ: Mapping[str, str]) -> dict[str, StdioServer | HttpServer]:
    """Validate an `{"mcpServers": {...}}` document (or VS Code's `{"servers": {...}}`), expanding `${VAR}` from
    `environ`.

    Raises:
        ConfigError: naming the server and the field at fault.
    """
    key = "servers" if isinstance(document, dict) and "mcpServers" not in document else "mcpServers"
    if not isinstance(document, dict) or not isinstance(document.get(key), dict):
        raise ConfigError('the server config must be a JSON object with an "mcpServers" object')
    entries = {name: expand(entry, environ, f"server {name!r}") for name, entry in document[key].items()}
    problems = [f"server {name!r}: {problem}" for name, entry in entries.items() if (problem := type_problem(entry))]
    if problems:
        raise ConfigError("invalid server config: " + "; ".join(problems))
    try:
        return _SERVERS.validate_python(entries)
    except ValidationError as exc:
        for error in exc.errors():
            name, *field = [str(part) for part in error["loc"] if part not in ("stdio", "http")]
            at = f" field {'.'.join(field)!r}" if field else ""
            problems.append(f"server {name!r}{at}: {error['msg']}")
        raise ConfigError("invalid server config: " + "; ".join(problems)) from None


def load_servers(path: Path, environ: Mapping[str, str]) -> dict[str, StdioServer | HttpServer]:
    """Read an mcpServers JSON file. Raises: ConfigError."""
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the server config {path}: {exc}") from exc
    return parse_servers(document, environ)


def demo_servers() -> dict[str, StdioServer | HttpServer]:
    """The built-in demo servers: what `make run` serves when no config is given."""
    return {
        name: StdioServer(command=sys.executable, args=("-m", f"controller.demo.{name}"), trust_annotations=True)
        for name in ("docstore", "crm", "deploys")
    }


def secrets_of(servers: Mapping[str, StdioServer | HttpServer]) -> set[str]:
    """The credential values a config hands to servers (env and header values); none may reach a sandbox."""
    values: set[str] = set()
    for server in servers.values():
        values.update((server.env if isinstance(server, StdioServer) else server.headers).values())
    return {value for value in values if len(value) >= 4}


class CatalogLimits(BaseModel):
    """What one server's tool listing may hold; a tool over a limit is quarantined (no stub, refused, reported)."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    max_name_chars: int = Field(default=128, ge=1)
    """Longest tool name (names must also be made of `A-Z a-z 0-9 _ . -`, as the MCP spec says)."""
    max_description_bytes: int = Field(default=16 * 1024, ge=0)
    """Largest tool description (and title), UTF-8 bytes."""
    max_schema_bytes: int = Field(default=64 * 1024, ge=2)
    """Largest inputSchema, outputSchema or annotations object, as JSON bytes."""
    max_schema_depth: int = Field(default=32, ge=1)
    """Deepest nesting of objects and arrays in a schema."""
    max_schema_properties: int = Field(default=512, ge=0)
    """Most properties, at all depths, in a schema."""
    max_tools_per_server: int = Field(default=1000, ge=0)
    """Most tools served from one server (the first by name); the rest are quarantined."""
    max_catalog_bytes: int = Field(default=16 * 1024 * 1024, ge=0)
    """Most bytes of tool definitions over all servers; tools past it are quarantined."""


class Limits(BaseModel):
    """Resource limits of one session; a request may ask for others up to the `max_*` settings."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    timeout_s: float = 30.0
    """Default time limit of one execution, in seconds."""
    memory_mb: int = 512
    """Memory of the sandbox (no swap), in MiB."""
    cpus: float = 1.0
    """CPU quota of the sandbox, in cores."""
    ttl_s: float = 900.0
    """Idle time after which a session is deleted, in seconds."""


class Settings(BaseSettings):
    """Every setting of the controller; defaults run on one laptop."""

    model_config = SettingsConfigDict(
        env_prefix="MCPX_", env_nested_delimiter="__", frozen=True, use_attribute_docstrings=True
    )

    host: str = "127.0.0.1"
    """Address the HTTP API binds to."""
    port: int = 8080
    """Port of the HTTP API."""
    http_keepalive_s: int = Field(default=75, ge=1)
    """How long an idle HTTP connection stays open for its next request, and a request's head may take to arrive;
    longer than clients keep idle connections (httpx 5 s, aiohttp 15 s, load balancers 60 s), so that none sends a
    request on a connection the server is closing."""
    controller_id: ReplicaName = "mcpx"
    """This replica's name: in every sandbox's `mcpx.controller` label (containers with it are this controller's, and
    only those are reaped) and in every session id it makes (`<name>.<16 hex digits>`). Unique per replica: in a
    StatefulSet, the pod's name."""
    peers: dict[ReplicaName, Annotated[str, Field(pattern=r"^https?://[^/?#{}]+/?$")]] = Field(default_factory=dict)
    """Other replicas by name, as JSON: `{"mcpx-1": "http://10.0.0.7:8080"}`; requests for their sessions are
    forwarded to them."""
    peer_url: str | None = Field(default=None, pattern=r"^https?://[^/?#{}]*\{replica\}[^/?#{}]*/?$")
    """URL of a sibling replica, `{replica}` standing for its name, e.g. `http://{replica}.mcpx-replicas:8080` (a
    StatefulSet's headless Service). Siblings are the replicas named `<stem>-<ordinal>` with this one's stem."""
    forward_connect_timeout_s: float = Field(default=2.0, gt=0)
    """How long a request for another replica's session may wait to connect to it before failing with 503."""
    state_dir: Path = Path("/var/lib/mcpx")
    """Where session sockets and workspaces live on the host."""
    image: str = "mcpx-sandbox:latest"
    """The sandbox image."""
    docker_host: str | None = None
    """Docker endpoint (e.g. unix:///var/run/docker.sock); default from the Docker environment."""
    require_gvisor: bool = False
    """Refuse to start sessions unless Docker has the `runsc` runtime."""
    runtime: str | None = None
    """Force a container runtime (`runsc` or `runc`); default: runsc when registered, else runc."""
    defaults: Limits = Limits()
    """Limits of a session that does not ask for others."""
    max_timeout_s: float = 600.0
    """Largest execution time limit a request may ask for."""
    max_memory_mb: int = 8192
    """Largest sandbox memory a request may ask for."""
    max_cpus: float = 4.0
    """Largest CPU quota a request may ask for."""
    max_ttl_s: float = 86400.0
    """Largest idle TTL a request may ask for."""
    max_sessions: int = 64
    """Sessions this controller runs at once."""
    max_code_bytes: int = 1024 * 1024
    """Largest code a request may submit."""
    max_frame_bytes: int = 16 * 1024 * 1024
    """Largest single message on a session socket."""
    bridge_idle_timeout_s: float = Field(default=10.0, gt=0)
    """How long a frame on a session socket may stay unfinished, and a new call connection may send none, before the
    connection is closed."""
    bridge_max_violations: int = Field(default=100, ge=1)
    """Protocol violations (malformed or unexpected frames) after which a session socket connection is closed."""
    max_output_bytes: int = 4 * 1024 * 1024
    """Captured stdout (and stderr) per execution; past it the middle is dropped, with a marker."""
    kill_grace_s: float = 1.0
    """After a timeout's interrupt, how long the code may take to stop before its interpreter is killed."""
    start_timeout_s: float = 30.0
    """How long a new sandbox may take to connect to its socket."""
    pids_limit: int = 256
    """Processes in a sandbox (a cgroup limit under runc, an nproc limit inside gVisor)."""
    tmp_size_mb: int = 64
    """Size of the sandbox's /tmp (tmpfs, counted against its memory)."""
    workspace_size_mb: int = 1024
    """Size cap of a session's workspace (a loop-mounted ext4 file when the host allows, else unenforced)."""
    warm_pool_size: int = Field(default=2, ge=0)
    """Sandboxes kept started for sessions of the default profile, so creating one is a claim, not a boot."""
    reap_interval_s: float = 5.0
    """How often idle and expired sessions are looked for."""
    max_age_s: float = Field(default=86400.0, gt=0)
    """Lifetime of a sandbox from its start, however busy; the sandbox also ends itself then, controller or not."""
    reconnect_s: float = Field(default=30.0, gt=0)
    """How long a sandbox that lost its controller waits for it to come back (and re-adopt it) before it exits."""
    drain_timeout_s: float = Field(default=30.0, ge=0)
    """At shutdown, how long running executions may take to finish before their sandboxes go."""
    handover: bool = False
    """At shutdown, leave the sessions' sandboxes running for the next start of this controller to re-adopt."""
    max_output_tokens: int = Field(default=4000, ge=16)
    """Default token budget of an execution's response (stdout, stderr, result, error and tool calls together)."""
    output_strategy: Literal["truncate", "summarize", "sample"] = "truncate"
    """Default way to fit output over its budget: head and tail, JSON shape, or representative lines."""
    api_keys: str | None = Field(default=None, repr=False)
    """API keys as `tenant:key,tenant:key` (at least 16 characters each); without any, only loopback is served."""
    api_keys_file: Path | None = None
    """A file of `tenant:key` lines, read at start (in addition to MCPX_API_KEYS)."""
    tenants: dict[str, TenantConfig] = Field(default_factory=dict)
    """Per-tenant restrictions as JSON: `{"team-a": {"servers": ["crm"], "max_sessions": 4, "policy": {...}}}`."""
    max_upload_bytes: int = 64 * 1024 * 1024
    """Largest file a client may upload into a workspace."""
    max_json_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    """Largest JSON request body (every route but file uploads, `/mcp` included), counted as it arrives: 413."""
    sse_keepalive_s: float = Field(default=15.0, gt=0)
    """Seconds of silence after which an event stream sends a `: keepalive` comment, so idle proxies keep it open."""
    policy: Policy = Policy()
    """Server-wide tool-call policy and quotas; a session may ask for a stricter one, never a looser one."""
    audit_log: Path | None = None
    """The audit log (JSON lines, appended); default: `audit.log` in the state dir."""
    servers_file: Path | None = None
    """The mcpServers JSON file (`mcpx serve --config`); without one, the built-in demo servers run."""
    connect_timeout_s: float = 30.0
    """How long the controller waits at start for MCP servers before serving without the slow ones."""
    otlp_endpoint: str | None = Field(default=None, pattern=r"^https?://")
    """Base URL of an OTLP/HTTP collector for traces and metrics; default: OTEL_EXPORTER_OTLP_ENDPOINT, else none."""
    metrics_token: str | None = Field(default=None, repr=False)
    """Bearer token `/metrics` requires; without one it is open, like `/healthz` (counts and server/tool names)."""
    log_format: Literal["text", "json"] = "text"
    """`json`: one JSON object per log line, with the trace and span ids of the current span."""
    anomalies: Thresholds = Thresholds()
    """Thresholds of the anomaly detectors (per session and per tenant), which raise audit events and a metric."""
    catalog: CatalogLimits = CatalogLimits()
    """Limits on what MCP servers list, checked before anything else reads it."""
    operators: list[str] = Field(default_factory=list)
    """Tenants that may accept a changed tool definition (`POST /v1/tools/{server}/{tool}/accept`); without API
    keys, the one caller may."""

    def servers(self, environ: Mapping[str, str] | None = None) -> dict[str, StdioServer | HttpServer]:
        """The configured MCP servers. Raises: ConfigError."""
        if self.servers_file is None:
            return demo_servers()
        return load_servers(self.servers_file, os.environ if environ is None else environ)

    def otlp(self, environ: Mapping[str, str] | None = None) -> str | None:
        """The OTLP/HTTP base URL traces and metrics go to, if any."""
        return self.otlp_endpoint or (os.environ if environ is None else environ).get("OTEL_EXPORTER_OTLP_ENDPOINT")


def reference() -> str:
    """The configuration reference as a Markdown table, generated from `Settings` (the README embeds it)."""
    rows = ["| environment variable | default | meaning |", "|---|---|---|"]

    def add(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            variable = f"{prefix}{name.upper()}"
            nested = info.annotation if isinstance(info.annotation, type) else None
            if (
                nested is not None
                and issubclass(nested, BaseModel)
                and name in ("defaults", "policy", "anomalies", "catalog")
            ):
                add(nested, f"{variable}__")
                continue
            default = info.get_default(call_default_factory=True)
            shown = "" if default is None or default in ({}, []) else f"`{json.dumps(default, default=str)}`"
            meaning = " ".join((info.description or "").split()).replace("|", "\\|")
            rows.append(f"| `{variable}` | {shown} | {meaning} |")

    add(Settings, "MCPX_")
    return "\n".join(rows) + "\n"

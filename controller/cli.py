"""The `mcpx` command line: `serve` runs the controller; the other commands talk to one over HTTP (through
`controller.client`) or check and build what it needs on this host.

Exit codes: 0 ok; 1 the code (or a check, or a build) failed; 2 usage or configuration error; 3 the server is
unreachable or answered with an HTTP error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from pydantic import BaseModel

from controller.client import (
    ExecutionResult,
    MCPXClient,
    MCPXClientError,
    OutputEvent,
    Readiness,
    ResultEvent,
    ToolCallEvent,
)
from controller.errors import ConfigError
from controller.versions import components, missing_fixes, runsc_version

if TYPE_CHECKING:
    from controller.config import Settings

logger = logging.getLogger(__name__)
DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_IMAGE = "mcpx-sandbox:latest"
BUILD_SCRIPT = Path(__file__).resolve().parents[1] / "sandbox-image" / "build.sh"
OK, CODE_FAILED, USAGE, HTTP_FAILED = 0, 1, 2, 3
KEY_FILE = "api-key"  # in the state dir: the key `mcpx serve --generate-key` made


def serve(args: argparse.Namespace) -> int:
    # Imported here: the API pulls in FastAPI, Docker and the MCP SDK, which the client commands do not need.
    from controller import serving
    from controller.api import create_app
    from controller.config import Settings

    given = (("host", args.host), ("port", args.port), ("servers_file", args.config))
    settings = Settings(**{key: value for key, value in given if value is not None})
    try:
        if args.generate_key:
            settings = settings.model_copy(update={"api_keys_file": local_key(settings)})
        app = create_app(settings)
        # Taken before anything starts: a second controller on this state dir stops here, having touched nothing.
        app.state.manager.state_lock.acquire()
    except ConfigError as exc:
        print(f"mcpx: {exc}", file=sys.stderr)
        return USAGE
    logs: dict[str, Any] = {}
    if settings.log_format == "json":
        from controller.telemetry import log_json

        log_json()
        logs["log_config"] = None  # uvicorn's records go to the root logger's JSON handler
    if args.generate_key:
        print(f"mcpx: API keys are required; tenant `local` has the one in {settings.api_keys_file}", file=sys.stderr)
    elif not app.state.tenants.enabled:
        logger.warning(
            "no API keys: any local process can use every session (its code, files and tools) through "
            "http://%s:%d; require keys with MCPX_API_KEYS or `mcpx serve --generate-key`",
            settings.host,
            settings.port,
        )
    print(f"mcpx: serving on http://{settings.host}:{settings.port}", file=sys.stderr)
    started = serving.serve(serving.server_config(app, settings, log_level=args.log_level, **logs))
    return OK if started else CODE_FAILED


def local_key(settings: Settings) -> Path:
    """The state dir's generated API key file (`local:<key>`): created with a random key, readable by its owner
    only, when missing; kept across restarts, so clients keep their key.

    Raises:
        ConfigError: an API keys file is configured already, or the key file is readable by others.
    """
    if settings.api_keys_file is not None:
        raise ConfigError("--generate-key writes its own keys file: unset MCPX_API_KEYS_FILE, or leave out the flag")
    path = settings.state_dir / KEY_FILE
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            raise ConfigError(f"{path} is readable by others: `chmod 600` it, or remove it for a new key") from None
        return path
    with os.fdopen(fd, "w") as file:
        file.write(f"local:{secrets.token_urlsafe(32)}\n")
    return path


# Output


def emit_json(value: Any, stream: TextIO | None = None) -> None:
    data = value.model_dump(mode="json", by_alias=True) if isinstance(value, BaseModel) else value
    print(json.dumps(data, ensure_ascii=False, default=str), file=stream or sys.stdout, flush=True)


def fail(args: argparse.Namespace, code: int, error: str, detail: str) -> int:
    """Report an error on stderr (as JSON with `--json`) and return the exit code."""
    if args.json:
        emit_json({"error": error, "detail": detail}, sys.stderr)
    else:
        print(f"mcpx: {detail}", file=sys.stderr)
    return code


def http_failure(args: argparse.Namespace, exc: MCPXClientError) -> int:
    hint = " (is `mcpx serve` running there? see --url / MCPX_URL)" if exc.error == "unreachable" else ""
    if args.json:
        emit_json({"status": exc.status, "error": exc.error, "detail": exc.detail + hint}, sys.stderr)
    else:
        print(f"mcpx: {exc}{hint}", file=sys.stderr)
    return HTTP_FAILED


def client(args: argparse.Namespace) -> MCPXClient:
    return MCPXClient(args.url, api_key=args.api_key)


def over_http(args: argparse.Namespace, command: Callable[[MCPXClient], Awaitable[int]]) -> int:
    """Run one async command with a client; HTTP failures become exit code 3."""

    async def run() -> int:
        async with client(args) as mcpx:
            return await command(mcpx)

    try:
        return asyncio.run(run())
    except MCPXClientError as exc:
        return http_failure(args, exc)


# exec


def show_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def show_result(result: ExecutionResult, output_shown: bool, named_session: bool) -> int:
    """Print a result: output (unless it was streamed), the value, then notes and the error on stderr."""
    if not output_shown:
        sys.stdout.write(result.stdout)
        sys.stderr.write(result.stderr)
    if result.result is not None:
        if result.stdout and not result.stdout.endswith("\n"):
            sys.stdout.write("\n")
        print(show_value(result.result))
    sys.stdout.flush()
    for part, path in sorted(result.full_output.items()):
        print(
            f"mcpx: {part} was cut to fit the token budget; the full text is in the workspace: {path}", file=sys.stderr
        )
    if result.error is not None:
        error = result.error
        text = error.traceback.rstrip() or f"{error.type}: {error.message}"
        print(text if error.kind == "exception" else f"{text} ({error.kind})", file=sys.stderr)
    if result.state_reset and named_session:
        print("mcpx: the interpreter was restarted: the session's variables are gone", file=sys.stderr)
    return CODE_FAILED if result.error is not None else OK


async def run_code(args: argparse.Namespace, mcpx: MCPXClient, session_id: str, code: str) -> int:
    options = {
        "timeout_s": args.timeout,
        "max_output_tokens": args.max_output_tokens,
        "strategy": args.strategy,
        "language": args.language,
    }
    if not args.stream:
        result = await mcpx.execute(session_id, code, **options)
        if args.json:
            emit_json(result)
            return CODE_FAILED if result.error is not None else OK
        return show_result(result, output_shown=False, named_session=args.session is not None)
    async with aclosing(mcpx.stream(session_id, code, **options)) as events:
        async for event in events:
            if args.json:
                kind = {OutputEvent: "output", ToolCallEvent: "tool_call", ResultEvent: "result"}[type(event)]
                emit_json({"event": kind, **event.model_dump(mode="json")})
            elif isinstance(event, OutputEvent):
                stream = sys.stdout if event.stream == "stdout" else sys.stderr
                stream.write(event.text)
                stream.flush()
            if isinstance(event, ResultEvent):
                if args.json:
                    return CODE_FAILED if event.result.error is not None else OK
                return show_result(event.result, output_shown=True, named_session=args.session is not None)
    raise MCPXClientError(0, "stream_incomplete", "the stream ended without a result")


def exec_code(args: argparse.Namespace) -> int:
    try:
        code = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        return fail(args, USAGE, "bad_file", f"cannot read {args.file}: {exc}")
    if args.language is None:
        args.language = "typescript" if Path(args.file).suffix in (".ts", ".mts") else "python"
    fresh = {"runtime": args.runtime, "memory_mb": args.memory_mb, "servers": args.servers}
    if args.session is not None and any(value is not None for value in fresh.values()):
        return fail(args, USAGE, "usage", "--runtime, --memory-mb and --servers apply to a fresh session only")

    async def command(mcpx: MCPXClient) -> int:
        if args.session is not None:
            return await run_code(args, mcpx, args.session, code)
        servers = args.servers.split(",") if args.servers is not None else None
        session = await mcpx.create_session(runtime=args.runtime, memory_mb=args.memory_mb, servers=servers)
        try:
            return await run_code(args, mcpx, session.id, code)
        finally:
            try:
                await mcpx.delete_session(session.id)
            except MCPXClientError as exc:
                print(f"mcpx: could not delete session {session.id}: {exc}", file=sys.stderr)

    return over_http(args, command)


# tools


def tools_ls(args: argparse.Namespace) -> int:
    async def command(mcpx: MCPXClient) -> int:
        listing = await mcpx.tools()
        if args.json:
            emit_json(listing)
            return OK
        for server in listing.servers:
            print(f"{server.name} ({server.state})" + (f": {server.description}" if server.description else ""))
            width = max((len(tool.name) for tool in server.tools), default=0)
            for tool in server.tools:
                print(f"  {tool.name:<{width}}  {tool.description}".rstrip())
        for down in listing.unavailable:
            print(f"{down.name} ({down.state}): unavailable" + (f": {down.error}" if down.error else ""))
        tokens = listing.tokens
        if tokens:
            print(
                f"{tokens.get('tools', 0)} tools: {tokens.get('definitions', 0):,} tokens of definitions upfront "
                f"for direct tool calling, {tokens.get('listing', 0):,} to read this listing"
            )
        return OK

    return over_http(args, command)


def tools_search(args: argparse.Namespace) -> int:
    async def command(mcpx: MCPXClient) -> int:
        hits = await mcpx.search_tools(" ".join(args.query), args.detail, args.limit, args.language)
        if args.json:
            emit_json([hit.model_dump(mode="json", by_alias=True, exclude_none=True) for hit in hits])
            return OK
        if not hits:
            print("no matching tools", file=sys.stderr)
        for hit in hits:
            name = f"{hit.server}/{hit.tool}" if hit.server and hit.tool else hit.import_path
            print(name + (f"  {hit.description.splitlines()[0]}" if hit.description else ""))
            if hit.signature:
                print(f"    {hit.signature}")
        return OK

    return over_http(args, command)


def tools_show(args: argparse.Namespace) -> int:
    async def command(mcpx: MCPXClient) -> int:
        detail = await mcpx.tool(args.server, args.tool, args.language)
        if args.json:
            emit_json(detail)
            return OK
        print(f"# {detail.server}/{detail.tool}: import from /tools/{detail.path}")
        print(detail.source.rstrip())
        return OK

    return over_http(args, command)


# sessions


def sessions_ls(args: argparse.Namespace) -> int:
    async def command(mcpx: MCPXClient) -> int:
        sessions = await mcpx.list_sessions()
        if args.json:
            emit_json({"sessions": [session.model_dump(mode="json") for session in sessions]})
            return OK
        if not sessions:
            print("no sessions", file=sys.stderr)
            return OK
        rows = [("ID", "RUNTIME", "STATE", "EXECUTIONS", "IDLE", "CREATED")]
        rows += [
            (
                s.id,
                s.runtime,
                s.state,
                str(s.executions),
                f"{s.idle_s:.0f}s",
                s.created_at.isoformat(timespec="seconds"),
            )
            for s in sessions
        ]
        widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
        for row in rows:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        return OK

    return over_http(args, command)


def sessions_rm(args: argparse.Namespace) -> int:
    async def command(mcpx: MCPXClient) -> int:
        deleted: list[str] = []
        failed: list[dict[str, Any]] = []
        for session_id in args.ids:
            try:
                await mcpx.delete_session(session_id)
            except MCPXClientError as exc:
                if exc.status == 0:
                    raise
                failed.append({"id": session_id, "status": exc.status, "error": exc.error, "detail": exc.detail})
                if not args.json:
                    print(f"mcpx: {session_id}: {exc.error}: {exc.detail}", file=sys.stderr)
            else:
                deleted.append(session_id)
                if not args.json:
                    print(f"deleted {session_id}")
        if args.json:
            emit_json({"deleted": deleted, "failed": failed})
        return HTTP_FAILED if failed else OK

    return over_http(args, command)


# image build


class Progress:
    """Lines of a long-running command, each prefixed with the elapsed time; on a terminal, a status line ticks
    while the command is quiet (debootstrap and `docker build` steps may be for a minute)."""

    def __init__(self, stream: TextIO, status: str) -> None:
        self.stream = stream
        self.status = status
        self.started = time.monotonic()
        self.live = stream.isatty()
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._ticker = threading.Thread(target=self._tick, daemon=True)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def line(self, text: str) -> None:
        with self._lock:
            clear = "\r\x1b[K" if self.live else ""
            self.stream.write(f"{clear}[{self.elapsed:6.1f}s] {text}\n")
            self._status_line()
            self.stream.flush()

    def __enter__(self) -> Progress:
        if self.live:
            self._ticker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        if self.live:
            self._ticker.join()
            with self._lock:
                self.stream.write("\r\x1b[K")
                self.stream.flush()

    def _status_line(self) -> None:
        if self.live:
            self.stream.write(f"\r\x1b[K[{self.elapsed:6.1f}s] {self.status}")

    def _tick(self) -> None:
        while not self._done.wait(1.0):
            with self._lock:
                self._status_line()
                self.stream.flush()


def image_build(args: argparse.Namespace) -> int:
    if not BUILD_SCRIPT.is_file():
        return fail(
            args, USAGE, "no_build_script", f"{BUILD_SCRIPT} is missing: build the image from a source checkout"
        )
    image = args.image or os.environ.get("MCPX_IMAGE") or DEFAULT_IMAGE
    env = {**os.environ, "IMAGE": image}
    if args.base is not None:
        env["BASE"] = args.base
    if args.python_only:
        env["TYPESCRIPT"] = "0"
    command = ["bash", str(BUILD_SCRIPT), *(["--if-missing"] if args.if_missing else [])]
    # With --json, stdout carries only the summary; the progress goes to stderr.
    with (
        Progress(sys.stderr if args.json else sys.stdout, f"building {image}…") as progress,
        subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            encoding="utf-8",
            errors="replace",
        ) as build,
    ):
        assert build.stdout is not None
        try:
            for line in build.stdout:
                progress.line(line.rstrip("\n"))
        except KeyboardInterrupt:
            build.terminate()  # docker build stops when its client goes; the exit of `with` waits for it
            raise
        returncode = build.wait()
        elapsed = round(progress.elapsed, 1)
    summary = {"image": image, "base": args.base, "ok": returncode == 0, "returncode": returncode, "elapsed_s": elapsed}
    if args.json:
        emit_json(summary)
    elif returncode == 0:
        print(f"mcpx: {image} is ready ({elapsed} s)")
    else:
        print(f"mcpx: building {image} failed with exit code {returncode} after {elapsed} s", file=sys.stderr)
    return OK if returncode == 0 else CODE_FAILED


# doctor


@dataclass
class Check:
    """One thing `mcpx doctor` looked at; `fix` says what to do when it failed."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


def docker_command(args: list[str]) -> subprocess.CompletedProcess[str]:
    """Run the docker CLI (DOCKER, as build.sh; MCPX_DOCKER_HOST as the controller's endpoint)."""
    env = dict(os.environ)
    if os.environ.get("MCPX_DOCKER_HOST"):
        env["DOCKER_HOST"] = os.environ["MCPX_DOCKER_HOST"]
    return subprocess.run(
        [os.environ.get("DOCKER", "docker"), *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


def docker_checks(image: str) -> list[Check]:
    try:
        info = docker_command(["info", "--format", "{{json .}}"])
    except FileNotFoundError:
        return [Check("docker", False, "the docker CLI is not installed", "run `make host` (installs docker.io)")]
    except subprocess.TimeoutExpired:
        return [Check("docker", False, "`docker info` did not answer in 60 s", "check dockerd (`make host`)")]
    try:
        facts = json.loads(info.stdout or "{}")
    except ValueError:
        facts = {}
    if info.returncode != 0 or not facts.get("ServerVersion"):
        reason = (info.stderr.strip().splitlines() or ["no answer"])[-1]
        return [Check("docker", False, f"Docker is unreachable: {reason}", "start dockerd: `make host`")]
    checks = [Check("docker", True, f"Docker {facts['ServerVersion']} answers")]
    runsc = (facts.get("Runtimes") or {}).get("runsc")
    if runsc is None:
        checks.append(Check("gvisor", False, "runsc is not registered with Docker", "run `make host`"))
    else:
        flags = runsc.get("runtimeArgs") or []
        missing = [flag for flag in ("--network=none", "--host-uds=open", "--oci-seccomp") if flag not in flags]
        if missing:
            fix = "run `make host` (it merges the runtime into /etc/docker/daemon.json)"
            checks.append(Check("gvisor", False, f"runsc is registered without {' '.join(missing)}", fix))
        else:
            checks.append(Check("gvisor", True, f"runsc is registered ({runsc.get('path', 'runsc')})"))
    checks.append(version_check(facts, (runsc or {}).get("path")))
    try:
        found = docker_command(["image", "inspect", "--format", "{{.Size}}", image])
    except subprocess.TimeoutExpired:
        return [*checks, Check("image", False, "`docker image inspect` did not answer in 60 s", "check dockerd")]
    if found.returncode != 0:
        checks.append(Check("image", False, f"{image} is missing", f"run `mcpx image build` (IMAGE={image})"))
    else:
        size = int(found.stdout.strip() or 0)
        checks.append(Check("image", True, f"{image} is present ({size / 1e6:.0f} MB)"))
    return checks


def version_check(facts: dict[str, Any], runsc_path: str | None) -> Check:
    """Docker's, runc's and runsc's versions; fails when a component lacks a known security fix."""
    runsc = ""
    if runsc_path:
        try:
            runsc = runsc_version(subprocess.run([runsc_path, "--version"], capture_output=True, text=True).stdout)
        except OSError:
            runsc = ""
    found = components(facts, runsc)
    detail = ", ".join(f"{name} {version or '(unknown)'}" for name, version in found.items())
    missing = missing_fixes(found)
    if missing:
        return Check("versions", False, f"{detail}; {'; '.join(missing)}", "upgrade runc: `make host`")
    return Check("versions", True, detail)


async def server_checks(args: argparse.Namespace) -> list[Check]:
    fix_server = f"start it: `mcpx serve` (or pass the right --url; tried {args.url})"
    try:
        async with client(args) as mcpx:
            readiness = await mcpx.ready()
        checks = [Check("server", True, f"{args.url} is ready (runtime {readiness.runtime})")]
    except MCPXClientError as exc:
        if exc.status == 0:
            return [Check("server", False, f"{args.url}: {exc.error}: {exc.detail}", fix_server)]
        if exc.status == 401:
            return [Check("server", False, f"{args.url}: {exc.detail}", "pass --api-key or set MCPX_API_KEY")]
        fix = "see the checks above; `mcpx image build` if the image is missing"
        checks = [Check("server", False, f"{args.url} is not ready: {exc.detail}", fix)]
        try:
            readiness = Readiness.model_validate({"status": exc.error, **(exc.body or {})})
        except ValueError:
            return checks
    for server in readiness.servers:
        if server.state == "ready":
            checks.append(Check(f"mcp:{server.name}", True, f"ready, {server.tools} tools ({server.protocol})"))
        else:
            reason = f"{server.state}" + (f": {server.error}" if server.error else "")
            fix = "check its entry in the --config file (command/url, env) and that it starts by hand"
            checks.append(Check(f"mcp:{server.name}", False, reason, fix))
    return checks


def doctor(args: argparse.Namespace) -> int:
    image = args.image or os.environ.get("MCPX_IMAGE") or DEFAULT_IMAGE
    checks = docker_checks(image)
    if args.url_given:
        checks += asyncio.run(server_checks(args))
    healthy = all(check.ok for check in checks)
    if args.json:
        emit_json({"ok": healthy, "checks": [asdict(check) for check in checks]})
    else:
        width = max(len(check.name) for check in checks)
        for check in checks:
            fix = f" -> {check.fix}" if not check.ok and check.fix else ""
            print(f"{'ok' if check.ok else 'FAIL':<4}  {check.name:<{width}}  {check.detail}{fix}")
    return OK if healthy else CODE_FAILED


# Arguments


def positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return value


def parser() -> argparse.ArgumentParser:
    # Global options work before or after the command: defaults live on the root parser only.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url", default=argparse.SUPPRESS, help=f"the mcpx server (default: MCPX_URL or {DEFAULT_URL})"
    )
    common.add_argument("--api-key", default=argparse.SUPPRESS, help="bearer API key (default: MCPX_API_KEY)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")

    root = argparse.ArgumentParser(
        prog="mcpx",
        description="Run AI-agent code next to MCP tools, in sandboxes.",
        epilog="exit codes: 0 ok, 1 code/check/build failed, 2 usage or config error, 3 server unreachable/HTTP error",
    )
    root.add_argument("--url", default=None, help=f"the mcpx server (default: MCPX_URL or {DEFAULT_URL})")
    root.add_argument("--api-key", default=None, help="bearer API key (default: MCPX_API_KEY)")
    root.add_argument("--json", action="store_true", default=False, help="machine-readable output")
    commands = root.add_subparsers(dest="command", required=True)

    serve_parser = commands.add_parser("serve", help="serve the HTTP API")
    serve_parser.add_argument("--host", help="address to bind (default: MCPX_HOST or 127.0.0.1)")
    serve_parser.add_argument("--port", type=int, help="port to bind (default: MCPX_PORT or 8080)")
    serve_parser.add_argument("--config", type=Path, help="mcpServers JSON file (default: the built-in demo servers)")
    serve_parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve_parser.add_argument(
        "--generate-key",
        action="store_true",
        help=f"require an API key: tenant `local`'s, made once into STATE_DIR/{KEY_FILE} (mode 0600)",
    )
    serve_parser.set_defaults(handler=serve)

    exec_parser = commands.add_parser(
        "exec", parents=[common], help="run code in a fresh session (deleted afterwards) or in --session ID"
    )
    exec_parser.add_argument("file", metavar="FILE|-", help="source file, or - for stdin")
    exec_parser.add_argument(
        "--language", choices=["python", "typescript"], help="language of the code (default: from FILE's suffix)"
    )
    exec_parser.add_argument("--session", metavar="ID", help="run in this existing session (kept afterwards)")
    exec_parser.add_argument("--timeout", type=positive_float, metavar="S", help="time limit of the execution")
    exec_parser.add_argument("--max-output-tokens", type=int, metavar="N", help="token budget of the output")
    exec_parser.add_argument("--strategy", choices=["truncate", "summarize", "sample"], help="how output is cut")
    exec_parser.add_argument("--stream", action="store_true", help="print output as it happens")
    exec_parser.add_argument("--runtime", choices=["runsc", "runc"], help="runtime of the fresh session")
    exec_parser.add_argument("--memory-mb", type=int, metavar="MB", help="memory of the fresh session")
    exec_parser.add_argument("--servers", metavar="A,B", help="MCP servers the fresh session may call")
    exec_parser.set_defaults(handler=exec_code)

    tools_parser = commands.add_parser("tools", help="the tool catalog")
    tools = tools_parser.add_subparsers(dest="action", required=True)
    tools.add_parser("ls", parents=[common], help="servers and their tools").set_defaults(handler=tools_ls)
    search = tools.add_parser("search", parents=[common], help="find tools by what they do")
    search.add_argument("query", nargs="+", metavar="QUERY")
    search.add_argument("--detail", choices=["name", "description", "full"], default="description")
    search.add_argument("--limit", type=int, default=10)
    search.add_argument("--language", choices=["python", "typescript"], default="python", help="of the signatures")
    search.set_defaults(handler=tools_search)
    show = tools.add_parser("show", parents=[common], help="one tool's stub (what sandbox code imports)")
    show.add_argument("server", metavar="SERVER")
    show.add_argument("tool", metavar="TOOL")
    show.add_argument("--language", choices=["python", "typescript"], default="python", help="of the stub")
    show.set_defaults(handler=tools_show)

    sessions_parser = commands.add_parser("sessions", help="sessions of your tenant")
    sessions = sessions_parser.add_subparsers(dest="action", required=True)
    sessions.add_parser("ls", parents=[common], help="list sessions").set_defaults(handler=sessions_ls)
    remove = sessions.add_parser("rm", parents=[common], help="delete sessions")
    remove.add_argument("ids", nargs="+", metavar="ID")
    remove.set_defaults(handler=sessions_rm)

    image_parser = commands.add_parser("image", help="the sandbox image")
    image = image_parser.add_subparsers(dest="action", required=True)
    build = image.add_parser("build", parents=[common], help="build it with sandbox-image/build.sh")
    build.add_argument("--base", help="base image (default: a local debootstrap'd Debian; e.g. python:3.11-slim)")
    build.add_argument("--image", help=f"image to build (default: MCPX_IMAGE or {DEFAULT_IMAGE})")
    build.add_argument("--if-missing", action="store_true", help="only when missing or stale")
    build.add_argument("--python-only", action="store_true", help="without Node.js: no TypeScript executions")
    build.set_defaults(handler=image_build)

    doctor_parser = commands.add_parser(
        "doctor", parents=[common], help="check Docker, gVisor, the image and (with --url) the server"
    )
    doctor_parser.add_argument("--image", help=f"image to look for (default: MCPX_IMAGE or {DEFAULT_IMAGE})")
    doctor_parser.set_defaults(handler=doctor)
    return root


def exit_code(exc: SystemExit) -> int:
    return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else USAGE)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:  # usage errors and --help: return the code, so main() is callable in-process
        return exit_code(exc)
    args.url_given = args.url is not None or "MCPX_URL" in os.environ
    args.url = args.url or os.environ.get("MCPX_URL") or DEFAULT_URL
    args.api_key = args.api_key or os.environ.get("MCPX_API_KEY") or None
    level = getattr(args, "log_level", "warning")
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.url.startswith(("http://", "https://")):
        return fail(args, USAGE, "usage", f"--url must be an http:// or https:// URL, not {args.url!r}")
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

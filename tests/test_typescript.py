"""TypeScript executions in real sandboxes: the same bridge, tools, limits and isolation as Python."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, SECRET, LiveServer, SessionFactory, check_typescript, execute, make_settings

# Feeds mcpx_node/wire.js's LineReader (limit 12 bytes) the chunks given as hex on argv; prints what it made of them.
LINE_READER = """
const { LineReader } = require(process.argv[1]);
const reader = new LineReader(12);
const out = [];
for (const chunk of process.argv.slice(2)) {
  try { out.push(reader.feed(Buffer.from(chunk, "hex"))); } catch (e) { out.push(e.constructor.name); }
}
console.log(JSON.stringify(out));
"""


def ts(api: httpx.Client, session: str, code: str, **body: Any) -> dict[str, Any]:
    return execute(api, session, code, language="typescript", **body)


def ok(api: httpx.Client, session: str, code: str, language: str = "typescript") -> Any:
    reply = execute(api, session, code, language=language)
    assert reply["error"] is None, reply
    return reply["result"]


def test_typescript_runs_with_top_level_await_console_log_and_state_across_executions(
    api: httpx.Client, new_session: SessionFactory
):
    session = new_session()
    first = ts(api, session, "const twice = async (x: number): Promise<number> => 2 * x;\nlet n: number = 20;")
    assert first["error"] is None
    reply = ts(api, session, 'const [a, b] = await Promise.all([twice(n), twice(1)]);\nconsole.log("sum", a + b);\na')
    assert (reply["result"], reply["stdout"], reply["error"], reply["state_reset"]) == (40, "sum 42\n", None, False)
    err = ts(api, session, 'console.error("to stderr");\nconst o: {x: number} = {x: n};\no')
    assert (err["result"], err["stderr"]) == ({"x": 20}, "to stderr\n")


def test_the_python_state_survives_typescript_executions_in_the_same_session(
    api: httpx.Client, new_session: SessionFactory
):
    session = new_session()
    execute(api, session, "kept = 7")
    assert ok(api, session, "1 + 1") == 2
    assert ok(api, session, "kept", language="python") == 7


def test_an_exception_is_reported_with_its_type_message_and_the_cells_frames(
    api: httpx.Client, new_session: SessionFactory
):
    session = new_session()
    reply = ts(api, session, "function boom(): never {\n  throw new RangeError('too far');\n}\nboom()")
    error = reply["error"]
    assert (error["kind"], error["type"], error["message"]) == ("exception", "RangeError", "too far")
    assert "cell-" in error["traceback"]
    assert "mcpx_node" not in error["traceback"]
    syntax = ts(api, session, "const = 1")
    assert (syntax["error"]["kind"], syntax["error"]["type"]) == ("exception", "SyntaxError")


TIME_CALLS = {
    "python": "from servers.time import convert_time, get_current_time\n"
    "now = get_current_time(timezone='UTC')\n"
    "[now['timezone'], convert_time(source_timezone='UTC', time='12:00', target_timezone='Asia/Tokyo')]",
    "typescript": 'import { convert_time, get_current_time } from "servers/time";\n'
    'const now = await get_current_time({ timezone: "UTC" });\n'
    '[now.timezone, await convert_time({ source_timezone: "UTC", time: "12:00", target_timezone: "Asia/Tokyo" })]',
}
EVERYTHING_CALLS = {
    "python": "from servers.everything import echo, get_sum, get_structured_content\n"
    "[echo(message='hi'), get_sum(a=2, b=3), get_structured_content(location='New York')]",
    "typescript": 'import { echo, get_sum, get_structured_content } from "servers/everything";\n'
    '[await echo({ message: "hi" }), await get_sum({ a: 2, b: 3 }), '
    'await get_structured_content({ location: "New York" })]',
}


@pytest.mark.docker
def test_the_node_line_reader_joins_split_lines_and_refuses_long_ones() -> None:
    chunks = [b'{"a":1}\n{"b":', b'"\xc3', b'\xa9"}\n[1]\nno\n\n{"c"', b":2}\n", b'{"d":"' + b"x" * 10, b"\n"]
    wire = str(ROOT / "sandbox-image" / "mcpx_node" / "wire.js")
    ran = subprocess.run(["node", "-e", LINE_READER, wire, *(c.hex() for c in chunks)], capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    # A character split between chunks is whole; anything but an object is null; a line past 12 bytes is refused,
    # and so is what follows it (the stream cannot be resynchronised).
    refused = "FrameTooLarge"
    assert json.loads(ran.stdout) == [[{"a": 1}], [], [{"b": "é"}, None, None, None], [{"c": 2}], refused, refused]


@pytest.mark.parametrize("calls", [TIME_CALLS, EVERYTHING_CALLS], ids=["time", "everything"])
def test_tool_calls_from_typescript_get_the_same_results_as_from_python(
    api: httpx.Client, new_session: SessionFactory, calls: dict[str, str]
):
    session = new_session(servers=["time", "everything"])
    python, typescript = (execute(api, session, calls[language], language=language) for language in calls)
    assert python["error"] is None and typescript["error"] is None, (python, typescript)
    assert typescript["result"] == python["result"]
    assert [call["tool"] for call in typescript["tool_calls"]] == [call["tool"] for call in python["tool_calls"]]
    assert typescript["tokens"]["tool_results"] == python["tokens"]["tool_results"] > 0


def test_concurrent_calls_share_the_workers_connection_and_each_gets_its_own_reply(
    api: httpx.Client, new_session: SessionFactory
):
    code = (
        'const m = require("mcpx-runtime");\n'
        "const order: string[] = [];\n"
        'const slow = m.callTool("hostile", "sleep", { s: 0.5 }).then(() => order.push("slow"));\n'
        'const echoes = await Promise.all([0, 1, 2, 3, 4, 5, 6, 7].map((i) => m.callTool("everything", "echo", '
        "{ message: String(i) })));\n"
        'order.push("echoes");\n'
        "await slow;\n"
        "[echoes, order]"
    )
    reply = ts(api, new_session(), code)
    assert reply["error"] is None, reply["error"]
    # The replies came back out of order, each to its own call.
    assert reply["result"] == [[f"Echo: {i}" for i in range(8)], ["echoes", "slow"]]
    assert len(reply["tool_calls"]) == 9


OVERSIZED = {
    "python": "from servers.everything import echo\nfrom servers import ToolError\n"
    "try:\n    echo(message='x' * 17 * 2**20)\nexcept ToolError as e:\n    print(type(e).__name__, e)\n"
    "echo(message='after')",
    "typescript": 'import { echo } from "servers/everything";\nimport { ToolError } from "servers";\n'
    'try { await echo({ message: "x".repeat(17 * 2 ** 20) }); } catch (e) {\n'
    "  if (!(e instanceof ToolError)) throw e;\n  console.log(e.name, e.message);\n}\n"
    'await echo({ message: "after" })',
}


@pytest.mark.parametrize("language", ["python", "typescript"])
def test_a_request_over_the_frame_limit_is_refused_in_the_sandbox_and_the_connection_lives_on(
    api: httpx.Client, new_session: SessionFactory, language: str
):
    reply = execute(api, new_session(servers=["everything"]), OVERSIZED[language], language=language)
    assert reply["error"] is None, reply["error"]
    assert reply["stdout"].startswith("ToolError the request is 1"), reply["stdout"][:200]
    assert "byte frame limit" in reply["stdout"]
    assert reply["result"] == "Echo: after"
    assert [call["tool"] for call in reply["tool_calls"]] == ["echo"]


def test_a_tool_error_is_a_tool_error_with_its_kind_and_the_servers_message(
    api: httpx.Client, new_session: SessionFactory
):
    session = new_session(servers=["time"])
    code = (
        'import { get_current_time } from "servers/time";\nimport { ToolError } from "servers";\n'
        'try { await get_current_time({ timezone: "Mars/Base" }); } catch (e) {\n'
        "  if (!(e instanceof ToolError)) throw e;\n  console.log(e.name, e.kind, e.server, e.tool, e.message);\n}"
    )
    reply = ts(api, session, code)
    assert reply["stdout"].startswith("ToolError tool_error time get_current_time ")
    assert "Mars/Base" in reply["stdout"]
    refused = ts(api, session, 'const m = require("mcpx-runtime");\nawait m.callTool("hostile", "fail", {})')
    assert (refused["error"]["type"], refused["error"]["kind"]) == ("ToolNotAllowed", "exception")
    call = 'import { get_current_time } from "servers/time";\nawait get_current_time({ timezone: 5 } as any)'
    invalid = ts(api, session, call)
    assert invalid["error"]["type"] == "InvalidArguments"


def test_search_tools_from_typescript_gives_typescript_imports_and_signatures(
    api: httpx.Client, new_session: SessionFactory
):
    session = new_session(servers=["time"])
    hits = ok(api, session, 'import { searchTools } from "servers";\nawait searchTools("current time", "full", 1)')
    assert hits[0]["import"] == 'import { get_current_time } from "servers/time"'
    assert hits[0]["signature"].startswith('get_current_time(input: {"timezone": string}): Promise<{"datetime": string')


def test_an_infinite_loop_times_out_and_the_typescript_state_survives(
    api: httpx.Client, new_session: SessionFactory, runtime: str
):
    session = new_session(runtime=runtime)
    ts(api, session, "let kept = 42;")
    reply = ts(api, session, "while (true) {}", timeout_s=2)
    assert (reply["error"]["kind"], reply["error"]["type"], reply["state_reset"]) == ("timeout", "TimeoutError", False)
    assert ok(api, session, "kept") == 42


def test_an_await_that_outlasts_the_timeout_is_stopped_and_the_state_survives(
    api: httpx.Client, new_session: SessionFactory
):
    session = new_session()
    ts(api, session, "var kept = 'yes';")
    reply = ts(api, session, "await new Promise((resolve) => setTimeout(resolve, 60_000));", timeout_s=2)
    assert (reply["error"]["kind"], reply["state_reset"]) == ("timeout", False)
    assert ok(api, session, "kept") == "yes"


def test_ignoring_sigint_does_not_escape_the_timeout(api: httpx.Client, new_session: SessionFactory):
    session = new_session()
    reply = ts(api, session, "process.on('SIGINT', () => {});\nawait null;\nwhile (true) {}", timeout_s=2)
    assert (reply["error"]["kind"], reply["state_reset"]) == ("timeout", True)
    assert ok(api, session, "6 * 7") == 42


def test_a_memory_bomb_is_reported_as_oom_and_the_session_recovers(
    api: httpx.Client, new_session: SessionFactory, runtime: str
):
    session = new_session(runtime=runtime, memory_mb=256)
    code = "const hog: Buffer[] = [];\nwhile (true) hog.push(Buffer.alloc(10 * 1024 * 1024, 1));"
    reply = ts(api, session, code, timeout_s=30)
    assert (reply["error"]["kind"], reply["state_reset"]) == ("oom", True), reply
    assert ok(api, session, "1 + 1") == 2
    code = "const big: number[][] = [];\nwhile (true) big.push(new Array(1e6).fill(1.5));"
    heap = ts(api, session, code, timeout_s=30)
    assert heap["error"]["kind"] == "oom", heap


def test_process_exit_is_a_crash_and_the_next_execution_works(api: httpx.Client, new_session: SessionFactory):
    session = new_session()
    reply = ts(api, session, "process.exit(3)")
    assert (reply["error"]["kind"], reply["state_reset"]) == ("crash", True)
    assert "status 3" in reply["error"]["message"]
    assert ok(api, session, "'alive'") == "alive"


def test_files_written_from_typescript_are_in_the_workspace_for_python(api: httpx.Client, new_session: SessionFactory):
    session = new_session()
    ts(api, session, 'import { writeFileSync } from "fs";\nwriteFileSync("from-ts.txt", "hello");')
    assert ok(api, session, "open('/workspace/from-ts.txt').read()", language="python") == "hello"


# --- isolation: the core checks of tests/security, from TypeScript ------------------------------------------------


def test_typescript_has_no_network(api: httpx.Client, new_session: SessionFactory, runtime: str):
    session = new_session(runtime=runtime)
    code = (
        'import * as net from "net";\n'
        "const outcome = await new Promise<string>((resolve) => {\n"
        '  const socket = net.connect({ host: "1.1.1.1", port: 53, timeout: 3000 });\n'
        '  socket.on("connect", () => resolve("connected"));\n'
        '  socket.on("timeout", () => resolve("timeout"));\n'
        '  socket.on("error", (e: any) => resolve(e.code));\n});\n'
        'const dns = await import("dns");\n'
        'const lookup = await dns.promises.lookup("example.com").then(() => "resolved", (e: any) => e.code);\n'
        "[outcome, lookup]"
    )
    outcome, lookup = ok(api, session, code)
    assert outcome != "connected" and lookup != "resolved"


def test_typescript_cannot_write_the_tools_or_the_root_filesystem(
    api: httpx.Client, new_session: SessionFactory, runtime: str
):
    session = new_session(runtime=runtime)
    code = (
        'import * as fs from "fs";\nconst codes: string[] = [];\n'
        'for (const path of ["/tools/servers/index.ts", "/tools/x.ts", "/opt/mcpx/node/runtime.js", "/etc/x"]) {\n'
        '  try { fs.writeFileSync(path, "pwned"); codes.push("written"); } catch (e: any) { codes.push(e.code); }\n'
        "}\ncodes"
    )
    assert all(code in ("EROFS", "EACCES", "EPERM") for code in ok(api, session, code))


def test_typescript_sees_no_secret_and_runs_as_an_unprivileged_user(
    api: httpx.Client, new_session: SessionFactory, runtime: str
):
    session = new_session(runtime=runtime)
    env = ok(api, session, "process.env")
    assert SECRET not in json.dumps(env)
    assert ok(api, session, "[process.getuid!(), process.getgid!()]") == [65532, 65532]


# --- the stubs, parsed by the real TypeScript compiler -----------------------------------------------------------


def test_the_typescript_stubs_of_the_real_servers_parse_only_declare_and_type_check(
    api: httpx.Client, new_session: SessionFactory, settings: Any
):
    new_session(servers=["time", "everything", "hostile"])
    stubs = settings.state_dir / "stubs"
    [tree] = [
        tree
        for tree in stubs.iterdir()
        if {entry.name for entry in (tree / "servers").iterdir() if entry.is_dir()} == {"everything", "hostile", "time"}
    ]
    checked = check_typescript(tree)
    assert checked["problems"] == []
    assert checked["files"] == 1 + 3 + 2 + 13 + 15  # the root, a module per server, a file per served tool


def test_importing_every_hostile_typescript_stub_runs_nothing(
    api: httpx.Client, new_session: SessionFactory, hostile_log: Path
):
    session = new_session(servers=["hostile"])
    before = hostile_log.read_text() if hostile_log.exists() else ""
    code = (
        'import * as fs from "fs";\nconst loaded: Record<string, string[]> = {};\n'
        'for (const file of fs.readdirSync("/tools/servers/hostile").filter((f: string) => f.endsWith(".ts"))) {\n'
        '  loaded[file] = Object.keys(require("servers/hostile/" + file.slice(0, -3))).sort();\n}\n'
        'const listed = Object.keys(require("servers").SERVERS);\n'
        '[loaded, listed, fs.existsSync("/tmp/pwned")]'
    )
    loaded, listed, pwned = ok(api, session, code)
    assert listed == ["hostile"] and pwned is False
    assert len(loaded) == 16  # 15 tools (2 of 17 are quarantined for their names) and index.ts
    assert all(len(names) >= 1 for names in loaded.values())
    assert (hostile_log.read_text() if hostile_log.exists() else "") == before


# --- the API around TypeScript -----------------------------------------------------------------------------------


def test_the_tools_api_renders_a_tools_typescript_stub_and_signature(api: httpx.Client):
    detail = api.get("/v1/tools/time/get_current_time", params={"language": "typescript"}).json()
    assert detail["path"] == "servers/time/get_current_time.ts"
    assert "export async function get_current_time(input: GetCurrentTimeInput)" in detail["source"]
    assert detail["signature"].startswith('get_current_time(input: {"timezone": string}): Promise<')
    python = api.get("/v1/tools/time/get_current_time").json()
    assert python["signature"].startswith("get_current_time(timezone: str)")
    hits = api.get("/v1/tools/search", params={"q": "current time", "limit": 1, "language": "typescript"}).json()
    assert hits[0]["import"] == 'import { get_current_time } from "servers/time"'
    assert api.get("/v1/tools/search", params={"q": "x", "language": "go"}).status_code == 422


def test_an_unknown_language_is_refused(api: httpx.Client, new_session: SessionFactory):
    session = new_session()
    response = api.post(f"/v1/sessions/{session}/executions", json={"code": "1", "language": "ruby"})
    assert response.status_code == 422


def test_typescript_is_refused_when_the_policy_denies_imports(api: httpx.Client, new_session: SessionFactory):
    session = new_session(policy={"denied_imports": ["subprocess"]})
    reply = ts(api, session, "1 + 1")
    assert (reply["error"]["kind"], reply["error"]["type"]) == ("policy", "PolicyRefusal")


@pytest.mark.skipif(not os.environ.get("MCPX_TEST_PYTHON_IMAGE"), reason="set MCPX_TEST_PYTHON_IMAGE to an image "
                    "built with TYPESCRIPT=0")  # fmt: skip
def test_a_python_only_image_refuses_typescript_with_a_clear_error(tmp_path: Path, servers_file: Path):
    settings = make_settings(tmp_path, image=os.environ["MCPX_TEST_PYTHON_IMAGE"], servers_file=servers_file)
    with LiveServer(settings) as live, httpx.Client(base_url=live.url, timeout=120) as client:
        session = client.post("/v1/sessions", json={"servers": ["time"]}).json()["id"]
        try:
            refused = client.post(f"/v1/sessions/{session}/executions", json={"code": "1", "language": "typescript"})
            assert refused.status_code == 422
            assert refused.json() == {
                "error": "language_unavailable",
                "detail": "cannot run typescript: this sandbox image has no TypeScript runtime",
            }
            python = client.post(f"/v1/sessions/{session}/executions", json={"code": "6 * 7"}).json()
            assert (python["result"], python["state_reset"]) == (42, False)
        finally:
            client.delete(f"/v1/sessions/{session}")

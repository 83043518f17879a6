"""Credentials must stay with the controller: neither its own environment nor the secrets of the MCP config reach a
sandbox, a tool result, an error, an API response or the audit log."""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import re
import secrets
import textwrap
from typing import Any
from urllib.parse import quote, unquote

import docker
import httpx
import pytest

from controller.config import Settings
from tests.conftest import SECRET, SessionFactory, execute
from tests.security.conftest import Attack
from tests.servers.hostile import ENCODINGS

# Sandbox-side: every place code can read that could carry a leaked value, searched for each needle.
SWEEP = textwrap.dedent(
    """
    import os

    def sweep(needles):
        needles = [needle.encode() for needle in needles]
        hits, read = set(), 0

        def check(where, data):
            for needle in needles:
                if needle in data:
                    hits.add(where)

        check("os.environ", "\\0".join(f"{k}={v}" for k, v in os.environ.items()).encode())
        for pid in [entry for entry in os.listdir("/proc") if entry.isdigit()] + ["self", "thread-self"]:
            for name in ("environ", "cmdline", "mountinfo", "status"):
                try:
                    with open(f"/proc/{pid}/{name}", "rb") as source:
                        check(f"/proc/{pid}/{name}", source.read())
                        read += 1
                except OSError:
                    pass
        for root in ("/tools", "/run", "/workspace", "/tmp", "/opt/mcpx", "/etc", "/home", "/root", "/var/tmp"):
            for directory, _, files in os.walk(root):
                for name in files:
                    path = os.path.join(directory, name)
                    try:
                        with open(path, "rb") as source:
                            check(path, source.read(1 << 20))
                            read += 1
                    except OSError:
                        pass
        return sorted(hits), read
    """
)


def result(reply: dict[str, Any]) -> Any:
    assert reply["error"] is None, reply["error"]
    return reply["result"]


@pytest.fixture
def canary(monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """A credential-like variable planted in the controller's own environment (the live server runs in this
    process) before any session of the test starts."""
    name = f"MCPX_CANARY_{secrets.token_hex(4).upper()}"
    value = f"canary-{secrets.token_hex(12)}"
    monkeypatch.setenv(name, value)
    return name, value


def test_the_controllers_own_environment_never_reaches_the_sandbox(attack: Attack, canary: tuple[str, str]):
    name, value = canary
    hits, read = result(attack(f"{SWEEP}\nsweep([{name!r}, {value!r}])"))
    assert read > 50, "the sweep read almost nothing: it proves nothing"
    assert hits == []


def test_the_configured_secret_is_nowhere_the_sandbox_can_read(attack: Attack):
    hits, read, in_search = result(
        attack(
            f"{SWEEP}\n"
            "from servers import search_tools\n"
            "import json\n"
            f"found = json.dumps(search_tools('', detail='full', limit=100)).count({SECRET!r})\n"
            f"sweep([{SECRET!r}]) + (found,)"
        )
    )
    assert read > 50
    assert hits == []
    assert in_search == 0


def test_the_sandbox_container_configuration_holds_no_credential(
    new_session: SessionFactory, runtime: str, docker_client: docker.DockerClient, canary: tuple[str, str]
):
    session = new_session(runtime=runtime)
    (container,) = docker_client.containers.list(filters={"label": f"mcpx.session={session}"})
    configuration = json.dumps(container.attrs)
    assert SECRET not in configuration
    assert canary[0] not in configuration
    assert canary[1] not in configuration
    names = {entry.split("=", 1)[0] for entry in container.attrs["Config"]["Env"]}
    assert names <= {"PATH", "PYTHONPATH", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "LANG", "HOME"} | {
        "MCPX_SOCKET",
        "MCPX_MAX_FRAME",
        "MCPX_MAX_OUTPUT",
        "MCPX_KILL_GRACE_S",
        "MCPX_RECONNECT_S",
        "MCPX_EXPIRES_AT",
    }, names


def test_tool_results_echoing_the_secret_are_redacted_in_values_keys_and_substrings(attack: Attack):
    reply = attack(
        textwrap.dedent(
            f"""
            from servers.hostile import echo_env
            from mcpx_runtime.tools import call_tool
            env = echo_env()["env"]
            echoed = call_tool("hostile", "my-tool", {{"k": "pre-" + {SECRET!r} + "-post", {SECRET!r}: [{SECRET!r}]}})
            env["SECRET_TOKEN"], echoed
            """
        )
    )
    token, echoed = result(reply)
    assert token == "[redacted]"
    assert echoed == {"tool": "my-tool", "arguments": {"k": "pre-[redacted]-post", "[redacted]": ["[redacted]"]}}
    # The code itself holds the secret (the test planted it); what came back from the server does not.
    assert json.dumps(reply["result"]).count(SECRET) == 0


def test_a_server_error_echoing_the_secret_is_redacted(attack: Attack):
    reply = attack(f"from servers.time import get_current_time\nget_current_time(timezone={SECRET!r})")
    error = reply["error"]
    assert error["type"] == "ToolError"
    assert "No time zone found with key [redacted]" in error["message"]
    assert SECRET not in error["message"]


def test_no_api_response_carries_the_secret(api: httpx.Client, new_session: SessionFactory):
    listing = api.get("/v1/tools").json()
    routes = ["/healthz", "/readyz", "/openapi.json", "/v1/tools", "/v1/tools/search?q=&detail=full&limit=100"]
    routes += [
        f"/v1/tools/{server['name']}/{quote(tool['name'], safe='')}"
        for server in listing["servers"]
        if server["name"] in ("hostile", "everything_http")
        for tool in server["tools"]
        if "/" not in tool["name"]  # the route cannot address a name with a slash (it 404s), so nothing to leak
    ]
    session = new_session(runtime="runc")
    routes.append(f"/v1/sessions/{session}")
    leaks = {}
    for route in routes:
        response = api.get(route)
        assert response.status_code == 200, (route, response.text)
        if SECRET in response.text:
            leaks[route] = response.text.index(SECRET)
    assert len(routes) > 20
    assert leaks == {}
    for code in ("from servers.hostile import echo_env\necho_env()", "from servers.hostile import fail\nfail()"):
        assert SECRET not in json.dumps(execute(api, session, code))


def test_the_secret_never_reaches_the_audit_log(api: httpx.Client, new_session: SessionFactory, settings: Settings):
    execute(
        api,
        new_session(runtime="runc"),
        "from servers.hostile import echo_env\nfrom servers.time import get_current_time\n"
        f"echo_env()\nget_current_time(timezone={SECRET!r})",
    )
    audit = (settings.audit_log or settings.state_dir / "audit.log").read_text()
    assert "tool.called" in audit
    assert SECRET not in audit


def test_argument_values_of_a_refused_call_never_reach_the_audit_log(
    api: httpx.Client, new_session: SessionFactory, settings: Settings
):
    marker = f"private-{secrets.token_hex(8)}"
    session = new_session(runtime="runc", servers=["hostile"])
    reply = execute(api, session, f"from servers.hostile import sleep\nsleep(s={marker!r})", preflight="off")
    assert reply["error"]["type"] == "InvalidArguments"
    audit = (settings.audit_log or settings.state_dir / "audit.log").read_text()
    assert marker not in audit


def decodings(text: str) -> list[bytes]:
    """Everything `text` could be hiding the secret as: itself in any case and reversed, percent-decoded, hex runs
    decoded, and every base64 run (either alphabet) decoded from each of its first four characters."""
    found = [text.lower().encode(), text[::-1].lower().encode(), unquote(text).lower().encode()]
    found += [unquote(text[::-1]).lower().encode()]
    found += [bytes.fromhex(run[: len(run) // 2 * 2]) for run in re.findall(r"[0-9a-fA-F]{2,}", text)]
    for run in re.findall(r"[A-Za-z0-9+/_-]{4,}", text):
        run = run.replace("-", "+").replace("_", "/")
        for start in range(4):
            tail = run[start:]
            tail = tail[: len(tail) - (len(tail) % 4 == 1)]  # a lone last character holds no whole byte
            with contextlib.suppress(binascii.Error):
                found.append(base64.b64decode(tail + "=" * (-len(tail) % 4), validate=True))
    return found


def test_a_secret_the_server_reflects_encoded_is_redacted_in_every_form(attack: Attack):
    forms = [(name, 0) for name in ENCODINGS if not name.endswith("embedded")]
    forms += [(name, shift) for name in ENCODINGS if name.endswith("embedded") for shift in range(3)]
    reply = attack(
        f"from servers.hostile import reflect\n[reflect(encoding=name, shift=shift) for name, shift in {forms!r}]",
        servers=["hostile"],
    )
    texts = result(reply)
    assert len(texts) == len(forms) == 20
    leaked = {}
    for (name, shift), text in zip(forms, texts, strict=True):
        assert text.startswith("before ") and text.endswith(" after"), (name, text)
        assert "[redacted]" in text, (name, text)
        if any(SECRET.lower().encode() in decoded for decoded in decodings(text)):
            leaked[f"{name}@{shift}"] = text
    assert leaked == {}
    assert [call["ok"] for call in reply["tool_calls"]] == [True] * len(forms)


def test_the_leak_check_finds_every_form_the_server_can_send():
    # What the sandbox would have read unredacted: each form must be found, or the test above proves nothing.
    missed = []
    for name, encode in ENCODINGS.items():
        for shift in range(3):
            if not any(
                SECRET.lower().encode() in decoded for decoded in decodings(f"before {encode(SECRET, shift)} after")
            ):
                missed.append((name, shift))
    assert missed == []

"""Pre-flight: code checked against the stubs before it runs, and the effect manifest of what it can reach."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from controller import preflight, stubgen
from controller.catalog import CatalogSnapshot, ServerInfo, ToolInfo
from tests.conftest import SessionFactory, execute


def schema(properties: dict[str, object], required: list[str]) -> dict[str, object]:
    return {"type": "object", "properties": properties, "required": required}


CRM = ServerInfo(
    name="crm",
    tools=(
        ToolInfo(
            server="crm",
            name="add_note",
            input_schema=schema({"record_id": {"type": "string"}, "text": {"type": "string"}}, ["record_id", "text"]),
            annotations={"destructiveHint": False},
        ),
        ToolInfo(
            server="crm",
            name="search_records",
            input_schema=schema(
                {
                    "query": {"type": "string"},
                    "limit": {"type": "integer"},
                    "kind": {"type": "string", "enum": ["account", "contact"]},
                    "exact": {"type": "boolean"},
                },
                ["query"],
            ),
            annotations={"readOnlyHint": True},
        ),
        ToolInfo(server="crm", name="delete-record", input_schema=schema({"id": {"type": "string"}}, ["id"])),
    ),
)
TOOLS = stubgen.interfaces(CatalogSnapshot(servers=(CRM,)))


def kinds(code: str) -> list[str]:
    return [finding.kind for finding in preflight.check(code, TOOLS).findings]


def messages(code: str) -> str:
    return "\n".join(finding.message for finding in preflight.check(code, TOOLS).findings)


@pytest.mark.parametrize(
    "code",
    [
        "from servers.crm import add_note\nadd_note(record_id='a', text='b')",
        "from servers.crm import add_note\nadd_note('a', 'b')",
        "from servers.crm.add_note import add_note as note\nnote(record_id='a', text='b')",
        "import servers.crm as crm\ncrm.search_records(query='x', limit=5, kind='account', exact=True)",
        "import servers\nservers.crm.delete_record(id='a')",
        "from servers import crm, search_tools\ncrm.add_note(record_id='a', text=str(1))",
        "from servers.crm import *\nsearch_records(query='x', limit=None)",
        "from servers.crm import search_records\nargs = {'query': 'x'}\nsearch_records(**args)",
        "from servers.crm import add_note\nadd_note(*['a', 'b'])",
        "from servers.crm import add_note\nadd_note = print\nadd_note(nothing=1)",  # bound again: not resolved
        "from servers.crm import search_records\nq = 'x'\nsearch_records(query=q, limit=q)",  # not a literal
        "import os\nos.getcwd()",
        "def (broken",  # running it reports the SyntaxError
    ],
)
def test_code_that_calls_tools_rightly_or_dynamically_passes(code: str):
    assert kinds(code) == []


@pytest.mark.parametrize(
    ("code", "kind", "hint"),
    [
        ("from servers.crn import add_note", "unknown_server", "Did you mean `crm`?"),
        ("import servers.crm_x", "unknown_server", ""),
        ("from servers.crm import add_notes", "unknown_tool", "Did you mean `add_note`?"),
        ("import servers\nservers.crm.add_notes(record_id='a', text='b')", "unknown_tool", "`add_note`"),
        ("from servers import crm\ncrm.serch_records(query='x')", "unknown_tool", "`search_records`"),
        ("from servers.crm import add_note\nadd_note(record_id='a', text='b', tex='c')", "unknown_argument", "`text`"),
        ("from servers.crm import add_note\nadd_note(record_id='a')", "missing_argument", "`text`"),
        ("from servers.crm import add_note\nadd_note('a', 'b', 'c')", "too_many_arguments", "2 positional"),
        ("from servers.crm import search_records\nsearch_records(query=5)", "wrong_type", "expects string"),
        ("from servers.crm import search_records\nsearch_records(query='x', limit='5')", "wrong_type", "integer"),
        ("from servers.crm import search_records\nsearch_records(query='x', limit=True)", "wrong_type", "bool"),
        ("from servers.crm import search_records\nsearch_records(query='x', kind='lead')", "wrong_type", "one of"),
        ("from servers.crm import search_records\nsearch_records(query=['x'])", "wrong_type", "list"),
        ("from servers.crm import add_note\ndef f():\n    add_note(record_id=1, text='b')", "wrong_type", "int"),
    ],
)
def test_every_kind_of_mistake_is_found_with_the_signature_and_the_nearest_name(code: str, kind: str, hint: str):
    findings = preflight.check(code, TOOLS).findings
    assert [finding.kind for finding in findings] == [kind]
    assert hint in findings[0].message
    if kind not in ("unknown_server", "unknown_tool"):
        assert findings[0].signature and findings[0].signature in findings[0].message


def test_findings_carry_their_line():
    code = "from servers.crm import add_note\n\nadd_note(record_id='a')\nadd_note(record_id='a', text=1)"
    assert [(f.line, f.kind) for f in preflight.check(code, TOOLS).findings] == [
        (3, "missing_argument"),
        (4, "wrong_type"),
    ]


def test_the_manifest_lists_what_the_code_reaches_read_only_or_destructive():
    code = "from servers.crm import search_records, add_note\nimport servers\nservers.crm.delete_record(id='x')"
    manifest = [reach.model_dump() for reach in preflight.check(code, TOOLS).manifest]
    assert manifest == [
        {"server": "crm", "tool": "add_note", "read_only": False, "destructive": False},
        {"server": "crm", "tool": "delete-record", "read_only": False, "destructive": True},
        {"server": "crm", "tool": "search_records", "read_only": True, "destructive": False},
    ]


# --- against the real engine, the demo servers and the hostile one ------------------------------------------


def hostile_calls(log: Path) -> list[str]:
    return log.read_text().splitlines()


@pytest.mark.docker
@pytest.mark.parametrize(
    "call",
    ["echo_env(nothing=1)", "sleep()", "sleep(s='long')", "sleep(1, 2)", "import servers\nservers.hostile.slep(s=1)"],
)
def test_a_refused_execution_runs_nothing_and_calls_no_tool(
    api: httpx.Client, new_session: SessionFactory, hostile_log: Path, call: str
):
    session = new_session(servers=["hostile"])
    before = hostile_calls(hostile_log)
    code = f"from servers.hostile import echo_env, sleep\nprint('ran')\nsleep(s=0)\n{call}"
    reply = execute(api, session, code)
    assert reply["error"]["kind"] == "preflight" and len(reply["preflight"]) == 1
    assert reply["stdout"] == "" and reply["tool_calls"] == []
    assert reply["preflight"] and reply["error"]["message"].startswith("line ")
    assert hostile_calls(hostile_log) == before
    assert execute(api, session, "'ran' in dir()")["result"] is False


@pytest.mark.docker
def test_warn_runs_the_code_and_reports_the_findings(api: httpx.Client, new_session: SessionFactory):
    code = "from servers.crm import search_records\ntry:\n    search_records(qeury='x')\nexcept Exception as e:\n"
    code += "    print(type(e).__name__)"
    reply = execute(api, new_session(servers=["crm"]), code, preflight="warn")
    assert reply["error"] is None and reply["stdout"] == "TypeError\n"
    assert [finding["kind"] for finding in reply["preflight"]] == ["unknown_argument"]
    assert "`query`" in reply["preflight"][0]["message"]


@pytest.mark.docker
def test_a_session_policy_can_turn_the_check_off(api: httpx.Client, new_session: SessionFactory):
    session = new_session(servers=["crm"], policy={"preflight": "off"})
    reply = execute(api, session, "from servers.crm import search_records\nsearch_records(qeury='x')")
    assert reply["error"]["type"] == "TypeError" and reply["preflight"] == []


@pytest.mark.docker
def test_a_dry_run_returns_the_manifest_and_runs_nothing(api: httpx.Client, new_session: SessionFactory):
    session = new_session(servers=["crm", "docstore"])
    code = (
        "from servers.crm import search_records, add_note\nfrom servers.docstore import get_document\n"
        "x = 1\nadd_note(record_id='ACC-0001', text='dry')"
    )
    reply = execute(api, session, code, dry_run=True)
    assert reply["error"] is None and reply["preflight"] == [] and reply["tool_calls"] == []
    reached = {(r["server"], r["tool"]): (r["read_only"], r["destructive"]) for r in reply["manifest"]}
    assert set(reached) == {("crm", "search_records"), ("crm", "add_note"), ("docstore", "get_document")}
    assert execute(api, session, "'x' in dir()")["result"] is False


@pytest.mark.docker
def test_every_response_carries_the_manifest(api: httpx.Client, new_session: SessionFactory):
    reply = execute(api, new_session(servers=["time"]), "from servers.time import get_current_time\n1")
    assert reply["result"] == 1
    assert [(r["server"], r["tool"]) for r in reply["manifest"]] == [("time", "get_current_time")]


@pytest.mark.docker
def test_the_readme_s_agent_view_is_refused_then_runs_once_fixed(api: httpx.Client, new_session: SessionFactory):
    session = new_session(servers=["crm"])
    hits = api.get("/v1/tools/search", params={"q": "attach a note to an account"}).json()
    assert hits[0]["import"] == "servers.crm.add_note"
    assert hits[0]["signature"].startswith("add_note(record_id: str, text: str)")
    wrong = execute(api, session, 'from servers.crm import add_note\nadd_note(record_id="ACC-0001", txt="called")')
    assert wrong["error"]["kind"] == "preflight"
    assert [finding["kind"] for finding in wrong["preflight"]] == ["unknown_argument", "missing_argument"]
    assert "line 2: crm.add_note has no parameter `txt`. Did you mean `text`?" in wrong["error"]["message"]
    fixed = execute(api, session, 'from servers.crm import add_note\nadd_note(record_id="ACC-0001", text="called")')
    assert fixed["error"] is None and len(fixed["tool_calls"]) == 1

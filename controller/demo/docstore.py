"""Demo MCP server: a read-only document store of meeting transcripts, reports and spreadsheets.

    python -m controller.demo.docstore                                    # stdio
    python -m controller.demo.docstore --transport streamable-http --port 8931

The corpus (`documents.build_corpus`) is generated in memory at start from a fixed seed: a ~200,000-character
meeting transcript, a 10,000-row orders sheet and more. Unknown ids and misuse are `ToolError`s, which reach the
client as `is_error` results with the message.
"""

from __future__ import annotations

import difflib
import inspect
import re
import sys
import time
from collections.abc import Sequence
from typing import Annotated, Any

from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from controller.demo import parse_args, serve
from controller.demo.documents import Corpus, Entry, Kind, build_corpus

SNIPPETS_PER_MATCH = 3
SNIPPET_CHARS = 240
READ_ONLY = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)
INSTRUCTIONS = (
    "A document store for Brightwave, a B2B analytics vendor: meeting transcripts, reports and spreadsheets. "
    "Start with list_documents or search_documents; read text with get_document and tables with get_sheet. "
    "Some documents are very large (a ~200,000-character transcript, a 10,000-row sheet): prefer processing them in "
    "code over reading them whole."
)


class DocumentInfo(BaseModel):
    """One document as list_documents shows it, without its content."""

    id: str = Field(description="Pass to get_document, or to get_sheet for kind 'sheet'.")
    title: str
    kind: Kind
    size_chars: int = Field(description="Length of the full text get_document returns.")
    rows: int | None = Field(default=None, description="Number of data rows, for sheets only.")


class DocumentList(BaseModel):
    documents: list[DocumentInfo]


class Document(BaseModel):
    """A document with its full text."""

    id: str
    title: str
    kind: Kind
    content: str = Field(description="Full text: transcripts and reports as plain text or Markdown, sheets as CSV.")


class Sheet(BaseModel):
    """A spreadsheet: column names, then every row."""

    id: str
    title: str
    columns: list[str]
    # Cells are `Any` in the schema: an anyOf per cell makes a client's outputSchema check of the 10,000-row
    # sheet about three times slower (1.7 s against 0.6 s, measured in-process).
    rows: list[list[Any]] = Field(
        description="One list per row, values in `columns` order: strings (dates as YYYY-MM-DD), numbers, or null."
    )
    row_count: int


class SearchMatch(BaseModel):
    """A document that contains every query word."""

    document_id: str
    title: str
    kind: Kind
    occurrences: int = Field(description="How many times the query's words occur in the document, in total.")
    snippets: list[str] = Field(description=f"Up to {SNIPPETS_PER_MATCH} matching lines, shortened.")


class SearchResults(BaseModel):
    query: str
    total_documents: int = Field(description="Documents that matched, before `limit` was applied.")
    matches: list[SearchMatch]


class DocumentStore:
    """The corpus, indexed for lookup and case-insensitive search."""

    def __init__(self, corpus: Corpus) -> None:
        self.entries = {entry.id: entry for entry in corpus.entries}
        # The corpus is ASCII, so an offset into the lower-cased text is the same offset into the original.
        self._folded = {entry.id: entry.content.lower() for entry in corpus.entries}

    def listing(self, kind: Kind | None) -> DocumentList:
        return DocumentList(
            documents=[
                DocumentInfo(
                    id=e.id, title=e.title, kind=e.kind, size_chars=len(e.content), rows=len(e.rows) if e.rows else None
                )
                for e in self.entries.values()
                if kind is None or e.kind == kind
            ]
        )

    def entry(self, document_id: str) -> Entry:
        """The document with this id.

        Raises:
            ToolError: no document has it; the message suggests near misses.
        """
        if (entry := self.entries.get(document_id)) is not None:
            return entry
        close = difflib.get_close_matches(document_id, list(self.entries), n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ToolError(
            f"Unknown document id {document_id!r}.{hint} Call list_documents to see the ids "
            "(they look like 'transcript-01', 'report-01', 'sheet-01')."
        )

    def search(self, query: str, limit: int) -> SearchResults:
        """Documents holding a word starting with each query word (`renew` finds "renewal", `date` not "update")."""
        words = list(dict.fromkeys(query.lower().split()))
        if not words:
            raise ToolError("The query is empty: pass one or more words to search for.")
        patterns = [re.compile(rf"\b{re.escape(word)}") for word in words]
        matches = []
        for document_id, text in self._folded.items():
            if all(pattern.search(text) for pattern in patterns):
                entry = self.entries[document_id]
                counts = [len(pattern.findall(text)) for pattern in patterns]
                rarest = patterns[counts.index(min(counts))]
                snippets = _snippets(entry.content, text, patterns, rarest)
                matches.append(SearchMatch(document_id=entry.id, title=entry.title, kind=entry.kind,
                                           occurrences=sum(counts), snippets=snippets))  # fmt: skip
        matches.sort(key=lambda match: -match.occurrences)
        return SearchResults(query=query, total_documents=len(matches), matches=matches[:limit])


def _snippets(content: str, folded: str, patterns: list[re.Pattern[str]], rarest: re.Pattern[str]) -> list[str]:
    """The first lines matching every pattern (else the rarest one), each cut to a window around the rarest."""
    found: list[str] = []
    for wanted in (patterns, [rarest]):
        for hit in rarest.finditer(folded):
            line_start = folded.rfind("\n", 0, hit.start()) + 1
            line_end = len(folded) if (end := folded.find("\n", hit.start())) < 0 else end
            line = folded[line_start:line_end]
            if all(pattern.search(line) for pattern in wanted):
                snippet = _window(content[line_start:line_end], hit.start() - line_start)
                if snippet not in found:
                    found.append(snippet)
            if len(found) == SNIPPETS_PER_MATCH:
                return found
        if found:
            break
    return found


def _window(line: str, at: int) -> str:
    if len(line) <= SNIPPET_CHARS:
        return line
    start = max(0, min(at - SNIPPET_CHARS // 3, len(line) - SNIPPET_CHARS))
    text = line[start : start + SNIPPET_CHARS]
    return ("..." if start else "") + text + ("..." if start + SNIPPET_CHARS < len(line) else "")


def create_server(corpus: Corpus) -> MCPServer[Any]:
    """The docstore over `corpus`, its four tools registered; the caller picks the transport."""
    store = DocumentStore(corpus)
    server: MCPServer[Any] = MCPServer(
        name="docstore",
        title="Document store",
        description="Document store: meeting transcripts, reports and spreadsheets",
        instructions=INSTRUCTIONS,
        version="1.0.0",
        log_level="WARNING",
    )

    async def list_documents(kind: Kind | None = None) -> DocumentList:
        """List the documents in the store: meeting transcripts, reports and spreadsheets ("sheets").

        Returns each document's id, title, kind, size in characters and, for sheets, the number of rows.
        Pass `kind` ("transcript", "report" or "sheet") to list only that kind. Read a document with
        get_document (any kind, full text) or get_sheet (sheets only, as columns and rows).
        """
        return store.listing(kind)

    async def get_document(document_id: str) -> Document:
        """Return one document's full text by id.

        Transcripts are lines of `[HH:MM:SS] Speaker Name: words` under a header listing the attendees and
        agenda; reports are Markdown; sheets come back as CSV (use get_sheet for typed rows). Texts can be very
        long: the full-day customer onsite transcript is about 200,000 characters (~50,000 tokens).
        Fails with an error naming the id if no document has it.
        """
        entry = store.entry(document_id)
        return Document(id=entry.id, title=entry.title, kind=entry.kind, content=entry.content)

    async def get_sheet(sheet_id: str) -> Sheet:
        """Return a spreadsheet as `columns` (names) and `rows` (one list of cell values per row, in column order).

        Cells are strings, numbers, or null for empty cells; dates are ISO `YYYY-MM-DD` strings. Every row is
        returned: the orders sheet has 10,000. Only for ids of kind "sheet"; fails with an error otherwise.
        """
        entry = store.entry(sheet_id)
        if entry.kind != "sheet":
            raise ToolError(f"{sheet_id!r} is a {entry.kind}, not a sheet: read it with get_document instead.")
        return Sheet(id=entry.id, title=entry.title, columns=list(entry.columns), rows=entry.rows,
                     row_count=len(entry.rows))  # fmt: skip

    async def search_documents(
        query: Annotated[str, Field(description="Words to find, e.g. 'renewal date' or 'Kestrel Freight'.")],
        limit: Annotated[int, Field(ge=1, le=50, description="Most documents to return.")] = 10,
    ) -> SearchResults:
        """Case-insensitive full-text search over every document, sheets included.

        A document matches when it contains every word of `query` (anywhere, not necessarily together). Returns
        up to `limit` documents, most occurrences first, each with up to 3 snippets: the lines holding all the
        words (a transcript turn, a report line or a CSV row), shortened around the first hit.
        """
        return store.search(query, limit)

    for tool in (list_documents, get_document, get_sheet, search_documents):
        server.add_tool(tool, description=_describe(tool), annotations=READ_ONLY)
    return server


def _describe(tool: Any) -> str:
    """The tool's docstring without Python's indentation: it is what the agent reads."""
    return inspect.cleandoc(tool.__doc__ or "")


def main(argv: Sequence[str] | None = None) -> None:
    """Generate the corpus, then serve it on stdio or streamable HTTP until the client or a signal ends it."""
    args = parse_args("python -m controller.demo.docstore", INSTRUCTIONS, argv)
    started = time.perf_counter()
    corpus = build_corpus()
    server = create_server(corpus)
    largest = max(corpus.entries, key=lambda e: len(e.content) if e.kind == "transcript" else 0)
    elapsed = time.perf_counter() - started
    summary = f"{len(corpus.entries)} documents ({largest.id}: {len(largest.content):,} chars) in {elapsed:.2f} s"
    print(f"docstore: generated {summary}; serving on {args.transport}", file=sys.stderr, flush=True)
    serve(server, args)


if __name__ == "__main__":
    main()

"""Progressive disclosure: listings and search over the catalog, so agents read only the tools they need."""

from __future__ import annotations

import functools
import itertools
import math
import re
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Container
from dataclasses import dataclass
from typing import Any, Literal

from controller import stubgen, tsstubs
from controller.catalog import CatalogSnapshot, ServerInfo, ToolInfo
from controller.shaping import Tokens

Detail = Literal["name", "description", "full"]
Language = Literal["python", "typescript"]
WORD = re.compile(r"[a-z0-9]+")
# Where a query word is found matters: a hit in the tool's name says more than one in its description, which says
# more than one in a parameter's. (field, weight, length normalisation b): names are short and equally so.
FIELDS = (
    ("name", 3.0, 0.2),
    ("title", 1.5, 0.2),
    ("server", 2.0, 0.0),
    ("description", 1.0, 0.75),
    ("parameters", 0.8, 0.75),
    ("output", 0.3, 0.75),
    ("server_description", 0.2, 0.75),
)
K1 = 2.0
PHRASE_WEIGHT = 1.0
# A request is a few words; past this, text is ignored, so a huge query costs no more than a long one.
QUERY_CHARS = 1000
# Negating prefixes: `uncommitted` changes are about commits when no tool says "uncommitted".
PREFIXES = ("un", "non", "re")
# Indexes kept, one per catalog digest: the full catalog and the views of sessions' server allowlists.
INDEXES_KEPT = 32
# A synonym found stands for the query's own word at this share.
SYNONYM_WEIGHT = 0.9
# How deep the words of nested inputSchema/outputSchema properties are read.
SCHEMA_DEPTH = 4
STOPWORDS = frozenset({
    "a", "about", "all", "an", "and", "any", "anything", "are", "as", "at", "be", "by", "can", "do", "does", "each",
    "every", "everything", "for", "from", "how", "i", "if", "in", "into", "is", "it", "its", "just", "me", "my",
    "of", "on", "or", "our", "please", "should", "so", "some", "something", "than", "that", "the", "their", "them",
    "then", "there", "these", "this", "those", "to", "up", "us", "was", "we", "what", "when", "where", "which",
    "who", "will", "with", "you", "your"
})  # fmt: skip
# Words agents use for what tool descriptions say otherwise; each group is one concept, looked up by stem.
SYNONYMS = (
    "folder directory dir",
    "rename move",
    "delete remove erase drop forget wipe discard purge",
    "create make new",
    "show display view print see inspect",
    "get fetch retrieve obtain load read open",
    "find search look lookup locate query",
    "history log",
    "stage add index",
    "unstage reset",
    "switch checkout",
    "remember memorize memory recall",
    "save write store persist record",
    "link connect relation relationship relate",
    "fact observation note",
    "person people entity node",
    "sql database db table postgres postgresql select",
    "timezone zone tz",
    "now current",
    "convert translate",
    "compress zip gzip",
    "sum plus total addition",
    "environment env variable var",
    "image picture photo png jpeg jpg logo media",
    "audio sound mp3 wav media",
    "echo repeat",
    "size big biggest large largest small",
    "difference diff compare change patch",
    "metadata info information stat detail permission",
    "recursive recursively tree nested",
    "edit modify replace update",
    "list enumerate ls",
    "multiple several many",
    "simultaneously together concurrently parallel once",
    "start trigger launch begin kick",
    "task operation job",
)


def one_line(text: str, limit: int = 120) -> str:
    """The first sentence or line of a description, bounded."""
    line = " ".join(text.strip().lstrip("#").strip().split("\n", 1)[0].split())
    sentence = re.split(r"(?<=[.!?])\s", line, maxsplit=1)[0]
    return sentence if len(sentence) <= limit else sentence[: limit - 1].rstrip() + "…"


@functools.lru_cache(maxsize=4096)
def stem(word: str) -> str:
    """A light English stemmer: plurals, -ed, -ing, -ion and a final e go, so `staged`, `stages` and `staging`
    meet at `stag`, and `deletion`, `deleted` and `deletes` at `delet`."""
    if len(word) <= 3 or not word.isalpha():
        return word
    for suffix, replacement in (("ies", "y"), ("ied", "y"), ("sses", "ss"), ("xes", "x"), ("ches", "ch")):
        if word.endswith(suffix):
            return stem(word[: -len(suffix)] + replacement) if replacement != "y" else word[: -len(suffix)] + "y"
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    for suffix in ("ing", "ed", "ion"):
        base = word[: -len(suffix)]
        if word.endswith(suffix) and len(base) >= 3 and re.search("[aeiouy]", base):
            if suffix == "ion" and not base.endswith(("t", "s")):
                break
            word = base[:-1] if len(base) > 3 and base[-1] == base[-2] and base[-1] not in "lsz" else base
            break
    return word[:-1] if len(word) > 3 and word.endswith("e") else word


def terms(text: str) -> list[str]:
    """The stems of `text`'s words, in order: camelCase, snake_case and kebab-case names split into words."""
    split = re.sub(r"([a-z])([A-Z])", r"\1 \2", text).lower()
    return [stem(word) for word in WORD.findall(split) if len(word) > 1 and word not in STOPWORDS]


Query = tuple[dict[str, float], ...]  # per query word: the stems that stand for it, with their weights


def _schema_text(schema: Any, depth: int = 0) -> list[str]:
    """Property names, descriptions and enum values of a JSON schema, nested ones too (to SCHEMA_DEPTH)."""
    if not isinstance(schema, dict) or depth > SCHEMA_DEPTH:
        return []
    enum = schema.get("enum")  # server input: whatever its type
    text = [str(schema.get("description", "")), " ".join(map(str, enum)) if isinstance(enum, list) else ""]
    properties = schema.get("properties")
    for name, sub in properties.items() if isinstance(properties, dict) else ():
        text += [str(name), *_schema_text(sub, depth + 1)]
    text += _schema_text(schema.get("items"), depth + 1)
    return text


def _fields(server: ServerInfo, tool: ToolInfo) -> dict[str, list[str]]:
    return {
        "name": terms(tool.name),
        "title": terms(tool.title or ""),
        "server": terms(tool.server),
        "description": terms(tool.description),
        # [2:]: the schema's own description and enum, which an object's schema rarely has, are the tool's words.
        "parameters": terms(" ".join(_schema_text(tool.input_schema)[2:])),
        "output": terms(" ".join(_schema_text(tool.output_schema)[2:])),
        "server_description": terms(server.description),
    }


@dataclass(frozen=True)
class Index:
    """BM25F over the catalog's tools: each tool's stems with their field-weighted, length-normalised frequency, and
    each stem's inverse document frequency."""

    tools: tuple[ToolInfo, ...]
    frequencies: tuple[dict[str, float], ...]
    pairs: tuple[frozenset[tuple[str, str]], ...]  # adjacent stems of the name, title and description
    idf: dict[str, float]

    @classmethod
    def of(cls, snapshot: CatalogSnapshot) -> Index:
        pairs = [(server, tool) for server in snapshot.servers for tool in server.tools]
        documents = [_fields(server, tool) for server, tool in pairs]
        average = {
            field: sum(len(document[field]) for document in documents) / max(len(documents), 1) or 1.0
            for field, _, _ in FIELDS
        }
        frequencies = []
        for document in documents:
            frequency: defaultdict[str, float] = defaultdict(float)
            for field, weight, b in FIELDS:
                norm = 1 - b + b * len(document[field]) / average[field]
                for term, count in Counter(document[field]).items():
                    frequency[term] += weight * count / norm
            frequencies.append(dict(frequency))
        total, seen = len(pairs), Counter(term for frequency in frequencies for term in frequency)
        idf = {term: math.log(1 + (total - n + 0.5) / (n + 0.5)) for term, n in seen.items()}
        adjacent = tuple(
            frozenset(
                pair for field in ("name", "title", "description") for pair in itertools.pairwise(document[field])
            )
            for document in documents
        )
        return cls(tuple(tool for _, tool in pairs), tuple(frequencies), adjacent, idf)

    def score(self, position: int, query: Query) -> float:
        """Each query word counts once, as itself or as its best-scoring synonym, all of them weighed by the
        commonest one's inverse document frequency (as Lucene's synonym query does); two query words that the tool's
        name or description has side by side (`commit history` and `commit logs`) gain PHRASE_WEIGHT."""
        frequencies, idf, adjacent = self.frequencies[position], self.idf, self.pairs[position]
        phrases = sum(
            max((w1 * w2 for t1, w1 in first.items() for t2, w2 in second.items() if (t1, t2) in adjacent), default=0.0)
            for first, second in itertools.pairwise(query)
        )
        total = 0.0
        for concept in query:
            # A concept is as rare as its commonest word: a rare synonym must not outweigh the query's own word.
            rarity = min((idf[term] for term in concept if term in idf), default=0.0)
            total += max(
                (
                    weight * rarity * frequencies[term] / (K1 + frequencies[term])
                    for term, weight in concept.items()
                    if term in frequencies
                ),
                default=0.0,
            )
        return PHRASE_WEIGHT * phrases + total  # fmt: skip


_indexes: OrderedDict[str, Index] = OrderedDict()


def index_of(snapshot: CatalogSnapshot) -> Index:
    """The snapshot's index, built once per catalog digest (a session's view is a catalog of its own)."""
    index = _indexes.get(snapshot.digest)
    if index is None:
        index = _indexes[snapshot.digest] = Index.of(snapshot)
        while len(_indexes) > INDEXES_KEPT:
            _indexes.popitem(last=False)
    return index


SYNONYM_OF: dict[str, tuple[str, ...]] = {}
for _group in SYNONYMS:
    _stems = tuple(dict.fromkeys(stem(word) for word in _group.split()))
    for _stem in _stems:
        SYNONYM_OF[_stem] = tuple(dict.fromkeys((*SYNONYM_OF.get(_stem, ()), *(s for s in _stems if s != _stem))))


def expand(query: str, vocabulary: Container[str]) -> Query:
    """One concept per distinct query word: its stem (weight 1) and its synonyms (SYNONYM_WEIGHT). A word the
    catalog lacks stands for itself without a negating prefix (`uncommitted`). Only the first QUERY_CHARS count."""
    concepts: dict[str, dict[str, float]] = {}
    for term in terms(query[:QUERY_CHARS]):
        if term not in vocabulary:
            term = next((term[len(p) :] for p in PREFIXES if term.startswith(p) and term[len(p) :] in vocabulary), term)
        concept = {term: 1.0}
        for synonym in SYNONYM_OF.get(term, ()):
            concept.setdefault(synonym, SYNONYM_WEIGHT)
        concepts.setdefault(term, concept)
    return tuple(concepts.values())


def rank(snapshot: CatalogSnapshot, query: str) -> list[ToolInfo]:
    """The tools matching `query`, best first (every tool, in catalog order, for a query without words)."""
    index = index_of(snapshot)
    wanted = expand(query, index.idf)
    if not wanted:
        return list(index.tools)
    scored = [(index.score(position, wanted), position) for position in range(len(index.tools))]
    return [index.tools[position] for points, position in sorted(scored, key=lambda pair: -pair[0]) if points > 0]


def describe(
    snapshot: CatalogSnapshot,
    names: dict[tuple[str, str], tuple[str, str]],
    tool: ToolInfo,
    detail: Detail,
    language: Language = "python",
) -> dict[str, Any]:
    server_id, tool_id = names[(tool.server, tool.name)]
    # Every word here is read by a model: the import path and the signature are all code needs; wire names and
    # schemas come with "full".
    entry: dict[str, Any] = {"import": f"servers.{server_id}.{tool_id}"}
    if language == "typescript":
        entry["import"] = f'import {{ {tsstubs.ident(tool_id)} }} from "servers/{server_id}"'
    if detail == "description":
        # The signature saves the second lookup (the stub or GET /v1/tools/{server}/{tool}) most calls need.
        entry["signature"] = signature(snapshot, tool.server, tool.name, language)
        entry["description"] = one_line(tool.description)
    if detail == "full":
        entry["server"], entry["tool"], entry["description"] = tool.server, tool.name, tool.description
        entry["signature"] = signature(snapshot, tool.server, tool.name, language)
        entry["input_schema"] = tool.input_schema
    return entry


def signature(snapshot: CatalogSnapshot, server: str, tool: str, language: Language) -> str:
    """The tool's stub signature in `language`, on one line.

    Raises:
        KeyError: the catalog has no such tool.
    """
    render = tsstubs.signature if language == "typescript" else stubgen.signature
    return render(snapshot, server, tool)


def search(
    snapshot: CatalogSnapshot,
    query: str,
    detail: Detail = "description",
    limit: int = 10,
    language: Language = "python",
) -> list[dict[str, Any]]:
    """The best-matching tools for `query`, best first (every tool, in order, for an empty query); import lines
    and signatures in `language`."""
    hits = rank(snapshot, query)
    names = stubgen.identifiers(snapshot)
    return [describe(snapshot, names, tool, detail, language) for tool in hits[: max(limit, 0)]]


def listing(snapshot: CatalogSnapshot) -> list[dict[str, Any]]:
    """Servers with their tools' one-line descriptions: what `GET /v1/tools` shows."""
    return [
        {
            "name": server.name,
            "description": one_line(server.description),
            "tools": [{"name": tool.name, "description": one_line(tool.description)} for tool in server.tools],
        }
        for server in snapshot.servers
    ]


def token_costs(snapshot: CatalogSnapshot, tokens: Tokens) -> dict[str, int]:
    """What discovery costs a model: every definition loaded upfront (a direct-tool-calling client) against the
    listing files an agent reads first and the size of one stub it opens next."""
    files = stubgen.render(snapshot)
    listing = sum(tokens.count(source) for path, source in files.items() if path.endswith("__init__.py"))
    stubs = [tokens.count(source) for path, source in files.items() if not path.endswith("__init__.py")]
    definitions = [tool.wire() for server in snapshot.servers for tool in server.tools]
    return {
        "tools": len(definitions),
        "definitions": tokens.count_json(definitions) if definitions else 0,
        "listing": listing,
        "stub_mean": round(sum(stubs) / len(stubs)) if stubs else 0,
    }

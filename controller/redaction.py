"""Configured secrets taken out of what MCP servers answer, before anything reaches a sandbox.

A server may reflect a credential it holds in another form than it was given, so each secret is redacted as written
and in every letter case, reversed, with any of its characters percent-encoded (either hex case), as hex (either
case), and as base64 (standard or URL-safe alphabet, padded or not, and inside a longer base64 text at each of the
three alignments its bytes can have there). The encoded forms are of the secret's UTF-8 bytes.
"""

from __future__ import annotations

import base64
import functools
import re
from dataclasses import dataclass
from typing import Any

REDACTED = "[redacted]"
BASE64_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_")


@dataclass(frozen=True)
class Forms:
    """How to find a set of secrets. Python's `re` scans quickly only for a pattern with a literal start, so the
    caseless forms are found with `str.find` in lowercased text, and percent-encoded ones by expression only near a
    `%`."""

    caseless: tuple[str, ...]  # lowercase: as written, reversed, hex
    percent: tuple[re.Pattern[str], ...]  # any letter case, any character of it percent-encoded (forward, reversed)
    reach: int  # the longest percent-encoded form, in characters
    base64: tuple[re.Pattern[str], ...]
    base64_run: re.Pattern[str]  # a run of base64 characters long enough to hold one: most text has none
    shortest: int  # no shorter text can hold any form


def redact(value: Any, secrets: frozenset[str]) -> Any:
    """`value` with every configured secret replaced, in any of its forms, in every string at any depth (keys
    included)."""
    if not secrets:
        return value
    return _walk(value, forms_of(secrets))


def _walk(value: Any, forms: Forms) -> Any:
    if isinstance(value, str):
        return redact_text(value, forms)
    if isinstance(value, list):
        return [_walk(item, forms) for item in value]
    if isinstance(value, dict):
        return {_walk(key, forms): _walk(item, forms) for key, item in value.items()}
    return value


def redact_text(text: str, forms: Forms) -> str:
    if len(text) < forms.shortest:
        return text
    spans = _spans(text, forms)
    if not spans:
        return text
    spans.sort()
    parts, at = [], 0
    for start, end in spans:
        if end <= at:
            continue
        if start >= at:
            parts += [text[at:start], REDACTED]
        at = end
    parts.append(text[at:])
    return "".join(parts)


def _spans(text: str, forms: Forms) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    lowered = text.lower()
    if len(lowered) != len(text):  # a character whose lowercase is longer: positions would not match
        return [match.span() for pattern in forms.percent for match in pattern.finditer(text)]
    for form in forms.caseless:
        at = lowered.find(form)
        while at >= 0:
            spans.append((at, at + len(form)))
            at = lowered.find(form, at + 1)
    for start, end in _near(text, "%", forms.reach):
        spans += [match.span() for pattern in forms.percent for match in pattern.finditer(text, start, end)]
    if forms.base64_run.search(text) is None:
        return spans
    for pattern in forms.base64:
        for match in pattern.finditer(text):
            start, end = match.span()
            # The character before holds the secret's first bits too (at two of the three alignments).
            spans.append((start - 1 if start and text[start - 1] in BASE64_CHARS else start, end))
    return spans


def _near(text: str, char: str, reach: int) -> list[tuple[int, int]]:
    """The stretches of `text` within `reach` characters of `char`, merged."""
    stretches: list[tuple[int, int]] = []
    at = text.find(char)
    while at >= 0:
        start, end = max(at - reach, 0), min(at + reach, len(text))
        if stretches and start <= stretches[-1][1]:
            stretches[-1] = (stretches[-1][0], end)
        else:
            stretches.append((start, end))
        at = text.find(char, at + 1)
    return stretches


@functools.lru_cache(maxsize=16)
def forms_of(secrets: frozenset[str]) -> Forms:
    ordered = sorted(secrets)
    caseless = [form for secret in ordered for form in (secret.lower(), secret[::-1].lower(), secret.encode().hex())]
    percent = [_percent_encodable(text) for secret in ordered for text in (secret, secret[::-1])]
    cores = [_base64_core(secret.encode(), shift) for secret in ordered for shift in range(3)]
    base64_shortest = min(len(core) for core, _ in cores)
    return Forms(
        caseless=tuple(caseless),
        percent=tuple(re.compile(pattern, re.IGNORECASE) for pattern in percent),
        reach=max(len(secret.encode()) * 3 for secret in ordered),
        base64=tuple(re.compile(pattern) for _, pattern in cores),
        base64_run=re.compile(f"[A-Za-z0-9+/_-]{{{base64_shortest},}}"),
        shortest=min(base64_shortest, *(len(secret) for secret in ordered)),
    )


def _percent_encodable(text: str) -> str:
    """`text`, each character as itself or percent-encoded (`+` for a space, as forms do)."""
    parts = []
    for char in text:
        options = [re.escape(char), "".join(f"%{byte:02x}" for byte in char.encode())]
        if char == " ":
            options.append(r"\+")
        parts.append(f"(?:{'|'.join(options)})")
    return "".join(parts)


def _base64_core(data: bytes, shift: int) -> tuple[str, str]:
    """The base64 of `data` after `shift` other bytes: the characters made of its bits alone, and a pattern for
    them in either alphabet that takes along the character shared with the next byte, and any padding."""
    encoded = base64.b64encode(bytes(shift) + data).decode()
    first, end = -(-8 * shift // 6), 8 * (shift + len(data)) // 6
    core = encoded[first:end]
    either = "".join({"+": "[+-]", "/": "[/_]"}.get(char, char) for char in core)
    return core, f"{either}[A-Za-z0-9+/_-]?={{0,2}}"

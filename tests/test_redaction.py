"""Redaction of configured secrets in every form a server might reflect them in (pure: no server needed)."""

from __future__ import annotations

import pytest

from controller.redaction import REDACTED, redact
from tests.servers.hostile import ENCODINGS

SECRETS = ["sk-test-7c1f0e9b2d4a", "pässwörd with space", "abcd"]


@pytest.mark.parametrize("secret", SECRETS)
@pytest.mark.parametrize("name", list(ENCODINGS))
@pytest.mark.parametrize("shift", [0, 1, 2])
def test_every_form_of_a_secret_is_redacted_amid_other_text(secret: str, name: str, shift: int) -> None:
    encoded = ENCODINGS[name](secret, shift)
    redacted = redact(f"before {encoded} after", frozenset({secret, "another-secret"}))
    assert redacted.startswith("before ") and redacted.endswith(" after")
    assert REDACTED in redacted
    assert encoded not in redacted


def test_redaction_reaches_keys_and_nested_values_and_leaves_the_rest_alone() -> None:
    secret = "sk-test-7c1f0e9b2d4a"
    value = {secret.upper(): [1, None, {"x": "a " + secret[::-1]}], "plain": "nothing here", "n": 3.5}
    assert redact(value, frozenset({secret})) == {
        REDACTED: [1, None, {"x": f"a {REDACTED}"}],
        "plain": "nothing here",
        "n": 3.5,
    }
    assert redact(value, frozenset()) is value


def test_a_text_whose_lowercase_is_longer_is_still_redacted() -> None:
    secret = "sk-test-7c1f0e9b2d4a"
    assert redact("İ " + secret.upper() + " İ", frozenset({secret})) == f"İ {REDACTED} İ"


def test_overlapping_matches_become_one_marker() -> None:
    assert redact("x aaaa-aaaa-aaaa y", frozenset({"aaaa-aaaa"})) == f"x {REDACTED} y"
    secret = "abab-cdcd"
    assert redact(f"x{secret}{secret}y", frozenset({secret})) == f"x{REDACTED}{REDACTED}y"

"""Confidence gating: token -> character mapping, box tokens, confidence and the exit rule,
on hand-built token pieces and log-probs."""

from __future__ import annotations

import math

import pytest

from actors.gating import (
    Gate,
    Passes,
    box_token_indices,
    char_spans,
    confidence,
    decide,
    default_tau,
    result,
    should_exit,
)
from actors.rewards.extract import FALLBACK_ANSWER


def prefixes(pieces: list[str]) -> list[str]:
    return ["".join(pieces[: i + 1]) for i in range(len(pieces))]


def test_char_spans_of_plain_pieces():
    assert char_spans(prefixes(["ab", "c", "", "de"])) == [(0, 2), (2, 3), (3, 3), (3, 5)]


def test_char_spans_share_a_split_multibyte_character():
    # Token 1 holds the first byte of "é" (decodes to U+FFFD); token 2 completes it.
    assert char_spans(["x", "x\ufffd", "xé", "xéy"]) == [(0, 1), (1, 2), (1, 2), (2, 3)]


def test_box_tokens_exact_and_straddling():
    pieces = ["\\boxed{", "A", "B", "}"]
    text = "".join(pieces)
    assert box_token_indices(text, char_spans(prefixes(pieces))) == [1, 2]
    pieces = ["Sure ", "\\boxed{A", "B}", " ok"]
    text = "".join(pieces)
    assert box_token_indices(text, char_spans(prefixes(pieces))) == [1, 2]


def test_box_tokens_nested_braces_and_first_box_only():
    pieces = ["\\boxed{", "\\frac{1", "}{2}", "}", " \\boxed{", "3", "}"]
    text = "".join(pieces)
    assert box_token_indices(text, char_spans(prefixes(pieces))) == [1, 2]


def test_no_box_or_empty_box_has_no_tokens():
    assert box_token_indices("plain", char_spans(["plain"])) is None
    pieces = ["\\boxed{", "}"]
    assert box_token_indices("\\boxed{}", char_spans(prefixes(pieces))) is None
    assert box_token_indices("\\boxed{A", char_spans(["\\boxed{A"])) is None


def test_confidence_is_exp_mean_logprob():
    assert confidence([-0.1, -0.2, -0.3], [1, 2]) == pytest.approx(math.exp(-0.25))
    assert confidence([-0.1], []) is None
    assert confidence([-0.1], None) is None


def test_threshold_edges():
    tau = math.exp(-0.03)
    at = confidence([-0.03], [0])
    assert at == tau and should_exit("A", at, tau)
    below = confidence([-0.0300001], [0])
    assert not should_exit("A", below, tau)
    assert should_exit("A", 1.0, 0.97)
    assert not should_exit(None, 1.0, 0.97)
    assert not should_exit("A", None, 0.97)


def test_fallback_never_exits_early():
    assert not should_exit(FALLBACK_ANSWER, 1.0, 0.5)
    assert not should_exit("let's analyze the problem step by step", 1.0, 0.5)


def test_decide_on_a_first_pass():
    pieces = ["\\boxed{", "B", "}"]
    gate = decide("".join(pieces), prefixes(pieces), [-2.0, -0.01, -3.0], tau=0.97)
    assert gate.answer == "B"
    assert gate.confidence == pytest.approx(math.exp(-0.01))
    assert gate.exit
    gate = decide("".join(pieces), prefixes(pieces), [-0.0, -0.5, -0.0], tau=0.97)
    assert gate.confidence == pytest.approx(math.exp(-0.5)) and not gate.exit


def test_default_tau_per_family():
    assert default_tau("qwen2_5_vl") == 0.97
    assert default_tau("qwen3_vl") == 0.98
    assert default_tau("qwen3_vl", 0.5) == 0.5


def test_result_per_mode():
    confident = Passes("\\boxed{A}", 4, Gate("A", 0.99, True), "x</think>\\boxed{B}", 6)
    unsure = Passes("\\boxed{A}", 4, Gate("A", 0.5, False), "x</think>\\boxed{C}", 6)
    assert result(confident, "direct").answer == "A"
    assert result(confident, "gated").answer == "A"
    assert not result(confident, "gated").thought
    think = result(confident, "always_think")
    assert think.answer == "B" and think.thought and think.tokens == 10
    assert think.text == "\\boxed{A}<think>x</think>\\boxed{B}"
    assert result(unsure, "gated").answer == "C" and result(unsure, "gated").thought
    assert result(unsure, "direct").tokens == 4
    with pytest.raises(ValueError, match="think pass"):
        result(Passes("\\boxed{A}", 4, Gate("A", 0.5, False)), "gated")

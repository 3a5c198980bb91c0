"""Graders: exact match, numbers, ROUGE-L, temporal IoU, grounded QA, sub-action credit."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.rewards.graders import (
    exact_match,
    lcs_length,
    numeric_match,
    option_letter,
    parse_number,
    rouge_l,
)
from actors.rewards.temporal import (
    Phase,
    grounded_qa,
    parse_phases,
    parse_span,
    parse_spans,
    span_iou,
    subaction_credit,
    temporal_iou,
)

OPTIONS = ["A. a cat", "B. a dog", "C. a bird"]


# ----------------------------------------------------------------- exact match


@pytest.mark.parametrize("pred", ["B", "b", "(B)", "B.", "B. a dog", "B) dog", "Option B", "a dog"])
def test_option_letter_forms_match(pred):
    assert exact_match(pred, "B", OPTIONS) == 1.0


@pytest.mark.parametrize("pred", ["A", "C. a bird", "a cat", "D", "", "BB", "dog or cat"])
def test_wrong_or_unresolvable_options_score_zero(pred):
    assert exact_match(pred, "B", OPTIONS) == 0.0


def test_option_letter_out_of_range_is_none():
    assert option_letter("D", OPTIONS) is None
    assert option_letter("d", ()) == "D"


def test_gold_given_as_option_text():
    assert exact_match("B", "a dog", OPTIONS) == 1.0


def test_yes_no_and_plain_text():
    assert exact_match("Yes, it does.", "yes") == 1.0
    assert exact_match("YES", "Yes") == 1.0
    assert exact_match("No", "yes") == 0.0
    assert exact_match("Nothing happens", "no") == 0.0
    assert exact_match(r"\text{The Red Car.}", "red car") == 1.0
    assert exact_match("blue car", "red car") == 0.0
    assert exact_match(None, "red car") == 0.0


# ----------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    ("pred", "gold", "expected"),
    [
        ("1,234.5", "1234.5", 1.0),
        ("42 m", "42", 1.0),
        ("50%", "50", 1.0),
        ("1/4", "0.25", 1.0),
        ("3.14159", "3.14", 1.0),  # agrees to 2 decimals
        ("3.2", "3.14", 0.0),
        ("3 or 4", "3", 0.0),  # two numbers: ambiguous
        ("no idea", "3", 0.0),
        ("1e400", "1", 0.0),  # not finite
        ("9" * 5000, "9", 0.0),  # absurdly long number
        (None, "3", 0.0),
    ],
)
def test_numeric_match(pred, gold, expected):
    assert numeric_match(pred, gold) == expected


def test_parse_number_strict_needs_the_whole_text():
    assert parse_number(r"\sqrt{2}") == 2.0
    assert parse_number(r"\sqrt{2}", strict=True) is None
    assert parse_number("-0.5", strict=True) == -0.5


# ----------------------------------------------------------------- ROUGE-L


def test_rouge_l_hand_computed():
    # LCS "the cat on the mat" = 5 of 6 tokens on both sides -> F1 = 5/6.
    assert rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    # LCS 2; P = 2/4, R = 2/2 -> F1 = 2/3.
    assert rouge_l("a b c d", "a c") == pytest.approx(2 / 3)
    assert rouge_l("", "a c") == 0.0
    assert rouge_l(None, "a c") == 0.0
    assert rouge_l("Pick up THE cup!", "pick up the cup") == 1.0


def test_lcs_classic_example():
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4


def _lcs_dp(a: list[str], b: list[str]) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a, 1):
        for j, y in enumerate(b, 1):
            table[i][j] = (
                table[i - 1][j - 1] + 1 if x == y else max(table[i - 1][j], table[i][j - 1])
            )
    return table[-1][-1]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.sampled_from("abcd"), max_size=25), st.lists(st.sampled_from("abcd"), max_size=25)
)
def test_bit_parallel_lcs_equals_dynamic_programming(a, b):
    assert lcs_length(a, b) == _lcs_dp(a, b)


def test_rouge_l_on_100kb_is_fast():
    pred = "word " * 20_000 + "the cup"
    start = time.perf_counter()
    score = rouge_l(pred, "pick up the cup")
    assert time.perf_counter() - start < 0.5
    # LCS 2 ("the cup"), P = 2/20002, R = 2/4.
    p, r = 2 / 20_002, 2 / 4
    assert score == pytest.approx(2 * p * r / (p + r))


# ----------------------------------------------------------------- temporal IoU


def test_span_forms():
    text = "[1.5, 3] (4s, 2s) 5 to 7 1:30 - 2:00 10 seconds to 12 seconds"
    assert parse_spans(text) == [(1.5, 3.0), (2.0, 4.0), (5.0, 7.0), (90.0, 120.0), (10.0, 12.0)]
    assert parse_span("no span here") is None


def test_iou_hand_computed():
    assert span_iou((2, 6), (4, 8)) == pytest.approx(2 / 6)
    assert temporal_iou("[2, 6]", [(4, 8)]) == pytest.approx(1 / 3)
    assert temporal_iou("[6, 2]", [(4, 8)]) == pytest.approx(1 / 3)  # reversed ends swapped
    assert temporal_iou("0:10 to 0:20", [(10, 20)]) == 1.0


def test_iou_degenerate_cases():
    assert temporal_iou("[3, 3]", [(0, 10)]) == 0.0  # zero-length prediction
    assert temporal_iou("[3, 3]", [(3, 3)]) == 0.0  # zero-length union
    assert temporal_iou("[0, 1]", [(5, 6)]) == 0.0
    assert temporal_iou("somewhere", [(0, 1)]) == 0.0
    assert temporal_iou("[0, 1]", []) == 0.0
    assert temporal_iou(None, [(0, 1)]) == 0.0


def test_several_ground_truth_spans_take_the_best():
    # vs (0, 4): 2/6; vs (3, 7): 3/5.
    assert temporal_iou("[2, 6]", [(0, 4), (3, 7)]) == pytest.approx(0.6)


def test_span_parsing_on_long_blank_runs_is_fast():
    for text in ["1" + " " * 100_000, "1 s" * 30_000, "[" + "1, " * 30_000, "1" * 100_000]:
        start = time.perf_counter()
        parse_spans(text)
        assert time.perf_counter() - start < 0.5


# ----------------------------------------------------------------- grounded QA


def test_grounded_qa_hand_computed():
    spans = [(2.0, 6.0)]
    assert grounded_qa("B <> [2, 4]", "B", spans, OPTIONS) == pytest.approx(1.5)
    assert grounded_qa("A <> [2, 6]", "B", spans, OPTIONS) == pytest.approx(1.0)
    assert grounded_qa("B, [2.0, 6.0]", "B", spans, OPTIONS) == pytest.approx(2.0)
    assert grounded_qa("B <> somewhere", "B", spans, OPTIONS) == pytest.approx(1.0)
    assert grounded_qa("garbage", "B", spans, OPTIONS) == 0.0
    assert grounded_qa(None, "B", spans, OPTIONS) == 0.0


# ----------------------------------------------------------------- sub-actions

GOLD_PHASES = [Phase("pick up the cup", 0, 2), Phase("pour water", 2, 6), Phase("drink", 6, 8)]


def test_parse_phases_strips_list_markers():
    phases = parse_phases("1. Pick up cup [0, 2]\n- pour water: 2 to 5\nStep 3: drink (5, 8)")
    assert phases == [
        Phase("pick up cup", 0.0, 2.0),
        Phase("pour water", 2.0, 5.0),
        Phase("drink", 5.0, 8.0),
    ]


def test_subaction_graduated_credit_hand_computed():
    pred = "1. pick up cup [0, 2]\n2. pour water [2, 5]\n3. drink: 5 to 8"
    # Credits: 0.5 + 0.5 * tIoU -> 1.0, 0.5 + 0.5 * 3/4, 0.5 + 0.5 * 2/3; mean over 3 phases.
    expected = (1.0 + 0.875 + (0.5 + 0.5 * 2 / 3)) / 3
    assert subaction_credit(pred, GOLD_PHASES) == pytest.approx(expected)


def test_subaction_order_matters():
    pred = "pour water [2, 6]\npick up the cup [0, 2]"
    # Only one of the two can be matched in order: 1.0 / max(3 gold, 2 predicted).
    assert subaction_credit(pred, GOLD_PHASES) == pytest.approx(1 / 3)


def test_subaction_names_without_time_overlap_still_earn_the_naming_half():
    pred = "pick up the cup [10, 11]; pour water [12, 13]; drink [14, 15]"
    assert subaction_credit(pred, GOLD_PHASES) == pytest.approx(0.5)


def test_subaction_extra_phases_cost_credit():
    pred = "pick up the cup [0, 2]\npour water [2, 6]\ndrink [6, 8]\ndance [8, 9]\nsing [9, 10]"
    assert subaction_credit(pred, GOLD_PHASES) == pytest.approx(3 / 5)


def test_subaction_without_spans_scores_zero():
    assert subaction_credit("pick up the cup, pour water, drink", GOLD_PHASES) == 0.0
    assert subaction_credit(None, GOLD_PHASES) == 0.0
    assert subaction_credit("a [0, 1]", []) == 0.0

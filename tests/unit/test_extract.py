"""Answer extraction: balanced boxes, the two answers, answer tags, direct answers, fallback."""

from __future__ import annotations

import time

import pytest

from actors.rewards.extract import (
    FALLBACK_ANSWER,
    extract_direct_answer,
    extract_tagged_answer,
    extract_two_answers,
    find_boxes,
    is_fallback,
    single_box,
)


def contents(text: str) -> list[str]:
    return [b.content for b in find_boxes(text)]


def test_nested_braces_stay_inside_the_box():
    assert contents(r"\boxed{\frac{1}{2}}") == [r"\frac{1}{2}"]
    assert contents(r"x \boxed{a \boxed{b}} y \boxed{c}") == [r"a \boxed{b}", "c"]


def test_box_positions_cover_the_whole_box():
    text = r"ab\boxed{X}cd"
    (box,) = find_boxes(text)
    assert (box.start, box.end) == (2, 11)
    assert text[box.start : box.end] == r"\boxed{X}"


def test_unclosed_and_stray_braces():
    assert contents(r"\boxed{A") == []
    assert contents(r"\boxed{A}} \boxed{B") == ["A"]
    assert contents(r"} { \boxed{C} {") == ["C"]
    assert contents(r"\boxed {spaced}") == ["spaced"]


def test_single_box_needs_exactly_one():
    assert single_box(r" \boxed{ A } ") == "A"
    assert single_box("no box") is None
    assert single_box(r"\boxed{A}\boxed{B}") is None


def test_two_answers_standard_and_boxes_inside_reasoning():
    answers = extract_two_answers(r"\boxed{A}<think>maybe \boxed{Z}</think>\boxed{B}")
    assert (answers.a1, answers.a2) == ("A", "B")


def test_two_answers_fallback_first():
    text = rf"\boxed{{{FALLBACK_ANSWER}}}<think>count</think>\boxed{{3}}"
    answers = extract_two_answers(text)
    assert answers.a1 == FALLBACK_ANSWER
    assert answers.a2 == "3"


def test_two_answers_ambiguous_regions_give_none():
    answers = extract_two_answers(r"\boxed{A}\boxed{B}<think>x</think>\boxed{C}")
    assert (answers.a1, answers.a2) == (None, "C")
    answers = extract_two_answers(r"\boxed{A}<think>x</think>\boxed{C}\boxed{D}")
    assert (answers.a1, answers.a2) == ("A", None)
    answers = extract_two_answers(r"\boxed{A}<think>x</think> nothing")
    assert (answers.a1, answers.a2) == ("A", None)


def test_two_answers_without_think_tags():
    assert extract_two_answers(r"\boxed{A}") == extract_two_answers(r" \boxed{A} ")
    answers = extract_two_answers(r"\boxed{A}")
    assert (answers.a1, answers.a2) == ("A", None)
    answers = extract_two_answers(r"\boxed{A} reasoning </think>\boxed{B}")
    assert (answers.a1, answers.a2) == ("A", "B")
    answers = extract_two_answers(r"\boxed{A}<think>a</think>\boxed{X}</think>\boxed{B}")
    assert answers.a2 == "B"


def test_tagged_answer():
    assert extract_tagged_answer("<think>x</think><answer> B </answer>") == "B"
    assert extract_tagged_answer(r"<answer>\boxed{42}</answer>") == "42"
    assert extract_tagged_answer("<answer>A</answer><answer>C</answer>") == "C"
    assert extract_tagged_answer("<think>x</think> B") is None
    assert extract_tagged_answer("</answer> B <answer>") is None


def test_direct_answer():
    assert extract_direct_answer(" B ") == "B"
    assert extract_direct_answer(r"The answer: \boxed{B}") == "B"
    assert extract_direct_answer(r"\boxed{A} or \boxed{B}") is None


@pytest.mark.parametrize(
    "answer",
    [
        FALLBACK_ANSWER,
        "let's analyze the problem step by step",
        r"\text{Let's analyze the problem step by step.}",
        "Let’s  analyze the problem step by step.",
    ],
)
def test_fallback_variants(answer):
    assert is_fallback(answer)


def test_not_fallback():
    assert not is_fallback("A")
    assert not is_fallback(None)
    assert not is_fallback("Let's analyze the problem")


@pytest.mark.parametrize(
    "text",
    [
        "\\boxed{" * 15_000,
        "{" * 100_000,
        "}" * 100_000,
        "{}\\boxed{" * 12_000,
        "\\boxed{x}" * 11_000,
        "<think>" * 14_000 + "</think>" * 1_000,
    ],
)
def test_100kb_adversarial_text_is_fast(text):
    # Linear scanning takes milliseconds here; quadratic backtracking over 100 KB takes minutes.
    # The bound is loose so a loaded machine cannot fail it, tight enough to catch the latter.
    start = time.perf_counter()
    find_boxes(text)
    extract_two_answers(text)
    extract_tagged_answer(text)
    assert time.perf_counter() - start < 10.0

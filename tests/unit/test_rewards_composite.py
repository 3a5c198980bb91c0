"""Format rewards, the composite score per output format, T-GRPO contrast, group filter."""

from __future__ import annotations

import time

import pytest

from actors.rewards import (
    FALLBACK_ANSWER,
    Phase,
    RewardTarget,
    has_signal,
    is_correct,
    score_completion,
    temporal_contrast,
)
from actors.rewards.format import (
    answer_twice_format,
    direct_format,
    think_answer_format,
    thinking_answer_format,
)
from actors.rewards.math_grader import MAX_MATH_CHARS, MathVerifier
from system.config import RewardsConfig, TGRPOConfig

MC = RewardTarget.from_fields("multiple_choice", "B", ["A. a cat", "B. a dog"])
DEFAULT = RewardsConfig()


def twice(a1: str, a2: str, think: str = "the dog barks") -> str:
    return rf"\boxed{{{a1}}}<think>{think}</think>\boxed{{{a2}}}"


class RefusingVerifier(MathVerifier):
    def equal(self, gold: str, pred: str, timeout_s: float) -> bool:
        raise AssertionError("math-verify child should not be needed here")


class RecordingVerifier(MathVerifier):
    """Answers "not equal" at once and records what reached it."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []

    def equal(self, gold: str, pred: str, timeout_s: float) -> bool:
        self.asked.append(pred)
        return False


# ----------------------------------------------------------------- format


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (twice("A", "B"), 1.0),
        ("\n" + r"\boxed{A} <think> x \boxed{C} </think>" + "\n" + r"\boxed{B}" + "\n", 1.0),
        (r"\boxed{A}<think>  </think>\boxed{B}", 0.0),  # empty reasoning
        (r"\boxed{A}\boxed{A}<think>x</think>\boxed{B}", 0.0),  # three boxes
        (r"\boxed{A}<think>x</think>\boxed{B}\boxed{C}", 0.0),
        (r"\boxed{A}<think>x</think>", 0.0),  # missing final box
        (r"<think>x</think>\boxed{B}", 0.0),  # missing first box
        (r"\boxed{A}<think>x</think>\boxed{B} trailing words", 0.0),
        (r"Sure! \boxed{A}<think>x</think>\boxed{B}", 0.0),
        (r"\boxed{A}<think>x<think>y</think>\boxed{B}", 0.0),  # two opening tags
        (r"\boxed{A}</think>x<think>\boxed{B}", 0.0),  # tags reversed
        (r"\boxed{A <think>x</think>}\boxed{B}", 0.0),  # box straddles the reasoning
        (r"\boxed{A}<think>x</think>\boxed{B", 0.0),  # unbalanced brace
        (r"\boxed{}<think>x</think>\boxed{B}", 0.0),  # empty answer
    ],
)
def test_answer_twice_format(text, expected):
    assert answer_twice_format(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>a</think> <answer>B</answer>", 1.0),
        ("\n<think>a</think>\n<answer>B</answer>\n", 1.0),
        ("<think>a</think> so <answer>B</answer>", 0.0),
        ("<answer>B</answer><think>a</think>", 0.0),
        ("<think>a</think><answer> </answer>", 0.0),
        ("<think>a</think><answer>B</answer><answer>C</answer>", 0.0),
        ("B", 0.0),
    ],
)
def test_think_answer_format(text, expected):
    assert think_answer_format(text) == expected


def test_direct_format():
    assert direct_format(r" \boxed{B} ") == 1.0
    assert direct_format("B") == 0.0
    assert direct_format(r"It is \boxed{B}") == 0.0
    assert direct_format(r"\boxed{B}<think>x</think>") == 0.0


# ----------------------------------------------------------------- composite


def test_both_answers_right():
    score = score_completion(twice("B", "B"), MC, DEFAULT)
    assert score.total == pytest.approx(0.9 + 1.1 + 1.0)
    assert score.components == {"task_a1": 1.0, "task_a2": 1.0, "format": 1.0, "fallback": 0.0}
    assert score.correct and score.accuracy == 1.0


def test_fallback_then_right_earns_the_bonus():
    score = score_completion(twice(FALLBACK_ANSWER, "B"), MC, DEFAULT)
    assert score.total == pytest.approx(1.1 + 1.0 + 0.3)
    assert score.components["fallback"] == 1.0


def test_fallback_then_wrong_earns_only_format():
    score = score_completion(twice(FALLBACK_ANSWER, "A"), MC, DEFAULT)
    assert score.total == pytest.approx(1.0)
    assert score.components["fallback"] == 0.0
    assert not score.correct and score.accuracy == 0.0


def test_right_then_changed_to_wrong():
    score = score_completion(twice("B", "A"), MC, DEFAULT)
    assert score.total == pytest.approx(0.9 + 1.0)
    assert not score.correct


def test_malformed_completions():
    three = r"\boxed{B}\boxed{B}<think>x</think>\boxed{B}"
    assert score_completion(three, MC, DEFAULT).total == pytest.approx(1.1)
    assert score_completion(r"\boxed{B}", MC, DEFAULT).total == pytest.approx(0.9)
    assert score_completion("", MC, DEFAULT).total == 0.0
    unbalanced = r"\boxed{B}<think>x</think>\boxed{B"
    assert score_completion(unbalanced, MC, DEFAULT).total == pytest.approx(0.9)


def test_weights_come_from_the_config():
    config = RewardsConfig(w_a1=0.5, w_a2=2.0, w_format=0.25, w_fallback=1.0)
    score = score_completion(twice(FALLBACK_ANSWER, "B"), MC, config)
    assert score.total == pytest.approx(2.0 + 0.25 + 1.0)


def test_temporal_grounding_composite():
    target = RewardTarget.from_fields("temporal_grounding", "[0, 10]")
    assert target.spans == ((0.0, 10.0),)
    score = score_completion(twice("[0, 5]", "[0.0, 10.0]"), target, DEFAULT)
    assert score.total == pytest.approx(0.9 * 0.5 + 1.1 * 1.0 + 1.0)
    assert score.correct


def test_grounded_qa_accuracy_is_scaled_to_one():
    target = RewardTarget.from_fields("grounded_qa", "B", ["A. a cat", "B. a dog"], [[2, 6]])
    score = score_completion(twice("B <> [2, 6]", "B <> [2, 4]"), target, DEFAULT)
    assert score.components["task_a1"] == pytest.approx(2.0)
    assert score.components["task_a2"] == pytest.approx(1.5)
    assert score.accuracy == pytest.approx(0.75)
    assert score.correct  # right answer and tIoU >= 0.5


def test_math_composite_uses_the_fast_path():
    target = RewardTarget.from_fields("math", "1/2")
    score = score_completion(twice("0.5", "0.50"), target, DEFAULT, RefusingVerifier())
    assert score.total == pytest.approx(3.0)


def test_subaction_target_from_record_fields():
    phases = [
        {"name": "open door", "start": 0, "end": 2},
        {"name": "walk in", "start": 2, "end": 4},
    ]
    target = RewardTarget.from_fields("subaction", "", phases=phases)
    text = twice(FALLBACK_ANSWER, "open door [0, 2]\nwalk in [2, 3]")
    score = score_completion(text, target, DEFAULT)
    # a2 credit: (1.0 + (0.5 + 0.5 * 1/2)) / 2 = 0.875 -> correct -> fallback bonus.
    assert score.components["task_a2"] == pytest.approx(0.875)
    assert score.total == pytest.approx(1.1 * 0.875 + 1.0 + 0.3)


def test_target_from_phase_objects_with_a_clip_offset():
    phases = [Phase("open door", 10.0, 12.0)]
    target = RewardTarget.from_fields(
        "subaction", "", phases=phases, spans=[[11, 13]], time_offset=10.0
    )
    assert target.phases == (Phase("open door", 0.0, 2.0),)
    assert target.spans == ((1.0, 3.0),)


def test_think_answer_and_direct_formats():
    think = RewardsConfig(format="think_answer")
    score = score_completion("<think>it barks</think><answer>B</answer>", MC, think)
    assert score.total == pytest.approx(2.0)
    assert score.components == {"task": 1.0, "format": 1.0}
    assert score_completion("<think>x</think> B", MC, think).total == 0.0
    direct = RewardsConfig(format="direct")
    assert score_completion(r"\boxed{B}", MC, direct).total == pytest.approx(2.0)
    assert score_completion("B", MC, direct).total == pytest.approx(1.0)


def test_pause_and_think_thinking_answer_format():
    good = "<thinking>The kettle boiled.</thinking> <answer>Pour the water.</answer>"
    assert thinking_answer_format(good) == 1.0
    assert think_answer_format(good) == 0.0  # the other template's tags
    assert thinking_answer_format("<think>x</think><answer>y</answer>") == 0.0
    assert thinking_answer_format("<answer>y</answer><thinking>x</thinking>") == 0.0
    assert thinking_answer_format("<thinking>x</thinking><answer> </answer>") == 0.0
    target = RewardTarget.from_fields("free_form", "Pour the hot water into the cup.")
    config = RewardsConfig(format="thinking_answer")
    score = score_completion(
        "<thinking>It boiled.</thinking><answer>Pour the hot water into the cup.</answer>",
        target, config,
    )  # fmt: skip
    assert score.components == {"task": 1.0, "format": 1.0}
    assert score_completion("Pour the hot water into the cup.", target, config).total < 1.0


def test_unknown_problem_type_is_rejected():
    with pytest.raises(ValueError, match="problem_type"):
        RewardTarget.from_fields("essay", "x")


def test_is_correct_thresholds():
    assert is_correct(1.0, "multiple_choice") and not is_correct(0.99, "numerical")
    assert is_correct(0.5, "temporal_grounding") and not is_correct(0.49, "temporal_grounding")
    assert is_correct(1.5, "grounded_qa") and not is_correct(1.0, "grounded_qa")


@pytest.mark.parametrize(
    "target",
    [
        MC,
        RewardTarget.from_fields("numerical", "42"),
        RewardTarget.from_fields("math", "42"),
        RewardTarget.from_fields("temporal_grounding", "", spans=[[1, 2]]),
        RewardTarget.from_fields("free_form", "pick up the cup"),
        RewardTarget.from_fields("subaction", "", phases=[{"name": "a", "start": 0, "end": 1}]),
    ],
)
def test_100kb_outputs_are_fast_and_never_raise(target):
    texts = [
        twice("B", "1" + "0" * 5000),  # huge number
        "\\boxed{" * 15_000,
        twice("x", "y " * 50_000),
        twice("[0, 1]", "a [0, 1] " * 10_000),
        "<think>" + "{" * 100_000,
    ]
    verifier = RecordingVerifier()
    start = time.perf_counter()
    for text in texts:
        score = score_completion(text, target, DEFAULT, verifier)
        assert 0.0 <= score.total <= 3.3
    assert time.perf_counter() - start < 1.0
    assert all(len(pred) <= MAX_MATH_CHARS for pred in verifier.asked)


# ----------------------------------------------------------------- T-GRPO


def test_contrast_holds_bonus_goes_to_accurate_ordered_rollouts():
    # ordered mean 0.3875 >= 0.8 * shuffled mean 0.25.
    result = temporal_contrast([1.0, 0.05, 0.5, 0.0], [0.5, 0.0], TGRPOConfig())
    assert result.holds
    assert result.bonuses == [0.3, 0.0, 0.3, 0.0]


def test_contrast_fails_no_bonus():
    # ordered mean 0.1 < 0.8 * shuffled mean 0.5.
    result = temporal_contrast([0.2, 0.0], [1.0, 0.0], TGRPOConfig())
    assert not result.holds
    assert result.bonuses == [0.0, 0.0]


def test_contrast_boundary_and_all_wrong():
    assert temporal_contrast([0.8, 0.8], [1.0], TGRPOConfig()).holds  # equality holds
    all_wrong = temporal_contrast([0.0, 0.0], [0.0], TGRPOConfig())
    assert all_wrong.holds and all_wrong.bonuses == [0.0, 0.0]


def test_contrast_settings_from_config():
    config = TGRPOConfig(bonus=0.5, ratio=1.0, min_accuracy=0.5)
    result = temporal_contrast([1.0, 0.5, 0.6], [0.7], config)  # mean 0.7 >= 0.7
    assert result.bonuses == [0.5, 0.0, 0.5]


def test_contrast_needs_both_sides():
    with pytest.raises(ValueError):
        temporal_contrast([1.0], [], TGRPOConfig())


# ----------------------------------------------------------------- group filter


def test_group_filter():
    assert not has_signal([3.0, 3.0, 3.0])
    assert not has_signal([1.0, 1.0 + 1e-9])
    assert has_signal([0.0, 0.3])
    assert not has_signal([])
    assert not has_signal([0.0, 0.05], tolerance=0.1)

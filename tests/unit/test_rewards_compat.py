"""`rewards.compat: videoauto_r1` against totals produced by running the released VideoAuto-R1
reward code (tests/data/videoauto_r1_compat.json says how), and the default mode's deliberate
differences from it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from actors.rewards import RewardTarget, score_completion
from actors.rewards.compat_videoauto import FALLBACK_BONUS
from system.config import RewardsConfig

DATA = json.loads((Path(__file__).parents[1] / "data" / "videoauto_r1_compat.json").read_text())
CASES = {case["id"]: case for case in DATA["cases"]}
W_A1, W_A2, W_FORMAT = DATA["upstream"]["reward_weights"]
COMPAT = RewardsConfig(compat="videoauto_r1", w_a1=W_A1, w_a2=W_A2, w_format=W_FORMAT)
DEFAULT = RewardsConfig(w_a1=W_A1, w_a2=W_A2, w_format=W_FORMAT)

# Completions the two modes score differently on purpose (docs/rewards.md has the table).
DEFAULT_DIFFERS = [
    "mc_single_box_no_think",
    "mc_truncated_in_think",
    "mc_empty_think",
    "mc_fallback_lowercase",
    "mc_fallback_other_wording",
    "mc_letter_with_period",
    "mc_text_wrapped",
    "num_close_not_equal",
    "math_bare_latex",
    "math_two_level_nesting",
    "tg_units_on_numbers",
    "tg_between_and",
    "tg_fallback_iou_0_6",
    "gqa_no_separator",
]


def target_of(case: dict) -> RewardTarget:
    t = case["target"]
    return RewardTarget.from_fields(t["problem_type"], t["answer"], t["options"], t["spans"])


def test_data_file_says_where_it_came_from():
    upstream, produced = DATA["upstream"], DATA["produced"]
    assert upstream["repo"].endswith("IVUL-KAUST/VideoAuto-R1")
    assert len(upstream["commit"]) == 40 and produced["date"] and produced["command"]
    assert upstream["reward_funcs"] == ["accuracy_boxed1", "accuracy_boxed2", "format_twice_boxed"]
    assert len(CASES) >= 30


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_compat_total_equals_upstream(case_id):
    case = CASES[case_id]
    score = score_completion(case["completion"], target_of(case), COMPAT)
    assert score.total == pytest.approx(case["total"], abs=1e-9)
    # Upstream's trainer adds the rewards as float32; that rounding is all that separates them.
    assert score.total == pytest.approx(case["total_float32"], abs=1e-6)
    parts, up = score.components, case["upstream_rewards"]
    assert parts["task_a1"] == pytest.approx(up["accuracy_boxed1"], abs=1e-12)
    bonus = FALLBACK_BONUS if parts["fallback"] else 0.0
    assert parts["task_a2"] + bonus == pytest.approx(up["accuracy_boxed2"], abs=1e-12)
    assert parts["format"] == up["format_twice_boxed"]


@pytest.mark.parametrize("case_id", DEFAULT_DIFFERS)
def test_default_mode_differs_where_documented(case_id):
    case = CASES[case_id]
    score = score_completion(case["completion"], target_of(case), DEFAULT)
    assert abs(score.total - case["total"]) > 1e-3


def test_default_mode_unchanged_on_examples():
    single = CASES["mc_single_box_no_think"]
    assert score_completion(single["completion"], target_of(single), DEFAULT).total == 0.9
    empty_think = CASES["mc_empty_think"]
    assert score_completion(empty_think["completion"], target_of(empty_think), DEFAULT).total == 2.0
    same = CASES["mc_correct_twice"]
    assert score_completion(same["completion"], target_of(same), DEFAULT).total == 3.0


def test_compat_fails_at_load_where_it_cannot_reproduce_upstream():
    with pytest.raises(ValidationError, match=r"rewards\.format"):
        RewardsConfig(compat="videoauto_r1", format="think_answer")
    with pytest.raises(ValidationError, match=r"rewards\.w_fallback"):
        RewardsConfig(compat="videoauto_r1", w_fallback=0.5)
    assert RewardsConfig().compat == "reelrl"


def test_compat_names_problem_types_without_an_upstream_grader():
    target = RewardTarget.from_fields("subaction", phases=[{"name": "pour", "start": 0, "end": 2}])
    with pytest.raises(ValueError, match="subaction"):
        score_completion(r"\boxed{pour [0, 2]}<think>x</think>\boxed{pour [0, 2]}", target, COMPAT)

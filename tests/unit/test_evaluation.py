"""Held-out evaluation math: graded rows, per-mode and per-task figures with standard errors,
and the paired gain between two checkpoints, against hand-computed numbers."""

from __future__ import annotations

import math

import pytest

from actors.evaluation import score_row
from actors.gating import Inference
from actors.rewards import FALLBACK_ANSWER
from system.data.records import Record
from system.reporting.evaluation import gating_curve, mean_se, paired_gain, summarize


def _row(rid: str, task: str, rewards: dict[str, float], thought: bool = False) -> dict:
    kind = "temporal_grounding" if task == "appear" else "multiple_choice"
    return {
        "id": rid,
        "task": task,
        "problem_type": kind,
        "modes": {
            m: {"reward": r, "correct": r >= (0.5 if task == "appear" else 1.0),
                "thought": thought and m != "direct", "tokens": 10 if m == "direct" else 30}
            for m, r in rewards.items()
        },
    }  # fmt: skip


def test_mean_se_hand_computed():
    mean, se = mean_se([1.0, 0.0, 1.0, 0.0])
    assert mean == 0.5
    assert se == pytest.approx(math.sqrt((4 * 0.25 / 3) / 4))
    assert mean_se([0.7]) == (0.7, 0.0) and mean_se([]) == (0.0, 0.0)


def test_score_row_grades_each_mode_on_the_reward_scale():
    record = Record(
        id="g1", video="v.mp4", problem_type="temporal_grounding", question="When?",
        answer="[2.0, 4.0]", spans=[(2.0, 4.0)], source="synthetic/appear",
    )  # fmt: skip
    row = score_row(
        record,
        {
            "direct": Inference("[2.0, 4.0]", False, 0.99, 8, "x"),
            "always_think": Inference("[3.0, 4.0]", True, 0.99, 20, "y"),
            "gated": Inference(None, True, 0.5, 20, "z"),
        },
    )
    assert row["task"] == "appear" and row["problem_type"] == "temporal_grounding"
    direct = {"reward": 1.0, "correct": True, "thought": False, "confidence": 0.99, "tokens": 8}
    assert row["modes"]["direct"] == direct
    assert row["modes"]["always_think"]["reward"] == pytest.approx(0.5)
    assert row["modes"]["always_think"]["correct"]  # tIoU 0.5 counts (R@0.5)
    gated = {"reward": 0.0, "correct": False, "thought": True, "confidence": 0.5, "tokens": 20}
    assert row["modes"]["gated"] == gated
    assert row["first"] == {"answer": "[2.0, 4.0]", "confidence": 0.99}  # the direct pass


def test_summarize_per_mode_and_per_task():
    rows = [
        _row("a", "direction", {"direct": 1.0, "gated": 1.0}, thought=False),
        _row("b", "direction", {"direct": 0.0, "gated": 1.0}, thought=True),
        _row("c", "appear", {"direct": 0.4, "gated": 0.8}, thought=True),
    ]
    figures = summarize(rows, ["direct", "gated"])
    d, g = figures["direct"], figures["gated"]
    assert d["n"] == 3 and d["reward"] == pytest.approx(1.4 / 3)
    assert d["accuracy"] == pytest.approx(1 / 3) and g["accuracy"] == 1.0
    assert d["think_ratio"] == 0.0 and g["think_ratio"] == pytest.approx(2 / 3)
    assert d["grounding_n"] == 1 and d["miou"] == pytest.approx(0.4) and g["r@0.7"] == 1.0
    assert d["mean_response_length"] == 10 and g["mean_response_length"] == 30
    assert d["tasks"]["direction"] == {
        "n": 2, "reward": 0.5, "reward_se": 0.5, "accuracy": 0.5, "think_ratio": 0.0,
    }  # fmt: skip
    assert g["tasks"]["appear"]["reward"] == pytest.approx(0.8)


def test_paired_gain_uses_the_questions_both_graded():
    before = [
        _row(i, "direction", {"gated": r}) for i, r in zip("abcd", [0, 0, 1, 0.5], strict=True)
    ]
    after = [_row(i, "direction", {"gated": r}) for i, r in zip("abce", [1, 0, 1, 1], strict=True)]
    gain = paired_gain(before, after, "gated")
    diffs = [1.0, 0.0, 0.0]  # d only before, e only after: not paired
    mean, se = mean_se(diffs)
    assert gain == {"n": 3, "gain": pytest.approx(mean), "se": pytest.approx(se),
                    "z": pytest.approx(mean / se)}  # fmt: skip
    same = paired_gain(before, before, "gated")
    assert same["gain"] == 0.0 and same["z"] == 0.0


def test_gating_curve_answers_like_direct_above_tau_and_like_always_think_below():
    rows = [
        _row("a", "count", {"direct": 1.0, "always_think": 0.0}, thought=True),
        _row("b", "count", {"direct": 0.0, "always_think": 1.0}, thought=True),
        _row("c", "count", {"direct": 1.0, "always_think": 1.0}, thought=True),
    ]
    rows[0]["first"] = {"answer": "2", "confidence": 0.95}
    rows[1]["first"] = {"answer": "1", "confidence": 0.6}
    rows[2]["first"] = {"answer": FALLBACK_ANSWER, "confidence": 0.99}  # never exits
    curve = {c["tau"]: c for c in gating_curve(rows, taus=(0.5, 0.9, 0.99))}
    # tau 0.5: a and b exit (direct: 1 + 0), c thinks (1) -> 2/3, thinks on 1 of 3.
    assert curve[0.5]["reward"] == pytest.approx(2 / 3)
    assert curve[0.5]["think_ratio"] == pytest.approx(1 / 3)
    assert curve[0.5]["tokens"] == pytest.approx((10 + 10 + 30) / 3)
    # tau 0.9: only a exits -> 1 + 1 + 1.
    assert curve[0.9]["reward"] == 1.0 and curve[0.9]["think_ratio"] == pytest.approx(2 / 3)
    # tau 0.99: nothing exits -> always-think.
    assert curve[0.99]["reward"] == pytest.approx(2 / 3) and curve[0.99]["think_ratio"] == 1.0
    # A row without its first pass (evaluated in one mode only) is left out.
    extra = _row("d", "count", {"direct": 0.0, "always_think": 0.0})
    assert gating_curve([*rows, extra], taus=(0.9,)) == [curve[0.9]]
    assert gating_curve([extra]) == []  # rows of a run that did not keep its first passes

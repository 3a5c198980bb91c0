"""The run report from what a run wrote: markdown with the before/after table, the paired gain
and the gating note, PNG plots, and the stage that is compared."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from system.reporting.evaluation import summarize
from system.reporting.report import gating_split, load_stages, rl_comparison, write_report

MODES = ["direct", "always_think", "gated"]


def _rows(rewards: list[float], thought: list[bool]) -> list[dict]:
    return [
        {"id": f"q{i}", "task": "count" if i % 2 else "direction", "problem_type": "numerical",
         "modes": {m: {"reward": r, "correct": r >= 1.0, "thought": m == "always_think" or
                       (m == "gated" and t), "tokens": 5 if m == "direct" else 25}
                   for m in MODES},
         "first": {"answer": "2", "confidence": 0.5 if t else 0.99}}
        for i, (r, t) in enumerate(zip(rewards, thought, strict=True))
    ]  # fmt: skip


def _eval(step: int, rows: list[dict]) -> dict:
    return {"step": step, "stage": "rl", "tau": 0.97, "skipped_videos": 0,
            "modes": summarize(rows, MODES), "rows": rows}  # fmt: skip


def _run_dir(root: Path) -> Path:
    config = {"stages": [{"name": "sft", "algorithm": "sft", "total_steps": 3},
                         {"name": "rl", "algorithm": "grpo", "total_steps": 4}]}  # fmt: skip
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    sft, rl = root / "stages" / "sft", root / "stages" / "rl"
    (rl / "eval").mkdir(parents=True)
    sft.mkdir(parents=True)
    (sft / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "time": s, "stage": "sft", "loss": 3.0 / s}) + "\n"
        for s in (1, 2, 3)))  # fmt: skip
    (rl / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "time": 10 + s, "stage": "rl", "loss": 0.1, "reward_mean": s / 4,
                    "reward/format": 1.0, "reward/task_a2": s / 8, "response_length": 20 + s,
                    "weight_sync_s": 0.05, "lag": 3}) + "\n"
        for s in (1, 2, 3, 4)))  # fmt: skip
    before = _rows([0.0] * 6 + [1.0] * 2, [True] * 8)
    after = _rows([1.0] * 6 + [1.0, 0.0], [False, True] * 4)
    (rl / "eval" / "step_000000.json").write_text(json.dumps(_eval(0, before)))
    (rl / "eval" / "step_000004.json").write_text(json.dumps(_eval(4, after)))
    (rl / "accounting.json").write_text(json.dumps({"published": 20, "applied": 16}))
    return root


def test_gating_split_scores_early_exits_and_thought_questions_apart():
    rows = _rows([1.0] * 6 + [1.0, 0.0], [False, True] * 4)
    for i, r in enumerate(rows):
        r["modes"]["gated"]["confidence"] = 0.99 if i % 2 == 0 else 0.5 + i / 100
    split = gating_split(rows)
    assert split["early"] == {"n": 4.0, "direct": 1.0, "always_think": 1.0, "gated": 1.0,
                              "confidence": 0.99}  # fmt: skip
    assert split["thought"]["n"] == 4.0 and split["thought"]["gated"] == 0.75
    assert split["thought"]["confidence"] == pytest.approx(0.55)  # median of .51 .53 .55 .57
    assert gating_split([{**rows[0], "modes": {"direct": rows[0]["modes"]["direct"]}}]) is None


def test_report_compares_first_and_last_evaluation_of_the_rl_stage(tmp_path):
    run = _run_dir(tmp_path)
    comparison = rl_comparison(load_stages(run))
    assert comparison["stage"] == "rl"
    assert comparison["before"]["step"] == 0 and comparison["after"]["step"] == 4
    gain = comparison["gains"]["gated"]
    assert gain["n"] == 8 and gain["gain"] == pytest.approx((6 - 1) / 8)
    table = write_report(run)
    assert "gated" in table and f"{gain['gain']:+.3f}" in table and "8 held-out prompts" in table
    text = (run / "report.md").read_text()
    assert "| sft | sft | 3 | 1.000 |" in text and "| rl | grpo | 4 |" in text
    assert "thought on 50% of the questions" in text  # gated on the RL checkpoint
    assert "count 100%, direction 0%" in text
    assert "On the 4 questions it answered early the first answer scored 1.000" in text
    assert "| 0.97 | 1.00 | 0.250 | 0.50 | 0.875 | 15.0 |" in text  # the gating curve
    assert "### Per task, gated" in text and "published 20, applied 16" in text
    plots = sorted(p.name for p in (run / "plots").iterdir())
    assert plots == ["accuracy_per_task.png", "rl_eval.png", "rl_reward.png", "rl_system.png",
                     "rl_tasks.png", "sft_loss.png"]  # fmt: skip
    for name in plots:
        assert (run / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"(plots/{name})" in text


def test_report_without_evaluations_has_no_comparison(tmp_path):
    run = _run_dir(tmp_path)
    for path in (run / "stages" / "rl" / "eval").iterdir():
        path.unlink()
    assert write_report(run) is None
    assert "after SFT vs after RL" not in (run / "report.md").read_text()


def test_rolling_mean():
    from system.reporting.report import rolling_mean

    assert rolling_mean([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert rolling_mean([], 3) == []


def test_reward_band_is_two_standard_errors_of_the_window_mean():
    from system.reporting.report import rolling_band

    means, halves = rolling_band([1.0, 3.0, 5.0, 7.0], 2)
    assert means == [1.0, 2.0, 4.0, 6.0]
    # Windows of two values 2 apart: sample sd sqrt(2), SE 1, band 2 SE.
    assert halves == pytest.approx([0.0, 2.0, 2.0, 2.0])
    assert rolling_band([], 3) == ([], [])


def test_task_accuracy_at_every_evaluation(tmp_path):
    from system.reporting.report import task_accuracy

    stages = load_stages(_run_dir(tmp_path))
    per_task = task_accuracy(stages[1].evals, "gated")
    assert per_task == {"count": [(0, 0.25), (4, 0.75)], "direction": [(0, 0.25), (4, 1.0)]}

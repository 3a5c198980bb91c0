"""`reelrl bench peer`'s pieces: the shared settings reach reelrl's config, the figures are
taken over the steps after the first, the ratios, TRL's reward adapter, and the shared task
(prompts rendered by reelrl, graded by its reward, held-out evaluation of a checkpoint)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from system.benchmarks.peer import CONFIG, summarize
from system.benchmarks.peer_task import PeerSettings, PeerTask, paired, write_text_records
from system.benchmarks.peer_trl import reward_function, steady_figures
from system.config import load_config
from tests.fixtures.models import tiny_model_path


def test_the_shared_settings_reach_reelrls_config():
    settings = PeerSettings(steps=7, group_size=6, prompts_per_step=3, max_new_tokens=96,
                            temperature=0.7, lr=3e-5, beta=0.02, grad_clip=0.5)  # fmt: skip
    config = load_config(str(CONFIG), [*settings.reelrl_overrides(), "learner.num_ranks=1"])
    assert config.rollout.group_size == 6
    assert config.rollout.prompts_per_batch == config.learner.groups_per_step == 3
    assert config.rollout.sampling.max_new_tokens == 96
    assert config.rollout.sampling.temperature == 0.7 and config.rollout.sampling.top_p == 1.0
    opt = config.learner.optimizer
    assert (opt.lr, opt.warmup_steps, opt.grad_clip, tuple(opt.betas)) == (
        3e-5, 0, 0.5, (0.9, 0.999))  # fmt: skip
    grpo = config.learner.grpo
    assert (grpo.beta, grpo.clip_low, grpo.clip_high, grpo.iterations) == (0.02, 0.2, 0.28, 1)
    assert grpo.aggregation == "token_mean" and grpo.scale_by_std


def test_steady_figures_leave_the_first_step_out():
    figures = steady_figures([10.0, 12.0, 14.0, 16.0], [999.0, 100.0, 200.0, 300.0])
    assert figures["step_s"] == pytest.approx(2.0)
    assert figures["trained_tokens_per_s"] == pytest.approx(600.0 / 6.0)
    assert figures["steps_timed"] == 3
    with pytest.raises(RuntimeError, match="too few steps"):
        steady_figures([1.0], [5.0])


def test_summary_averages_rounds_and_gives_ratios():
    def row(step_s: float, tps: float, wall: float) -> dict:
        gain = {"gain": 0.1, "gain_se": 0.05, "z": 2.0}
        return {"step_s": step_s, "trained_tokens_per_s": tps, "wall_s": wall,
                "held_out_after": 0.5, "held_out_accuracy_after": 0.4, "held_out_gain": gain,
                "steps_timed": 2, "model": "m"}  # fmt: skip

    runs = {"reelrl": [row(1.0, 1000, 30), row(3.0, 500, 50)], "trl": [row(4.0, 250, 20)] * 2}
    out = summarize(runs, PeerSettings(steps=2), {"reward": 0.25, "accuracy": 0.2})
    assert out["reelrl"]["step_s"] == 2.0 and out["reelrl"]["trained_tokens_per_s"] == 750
    assert out["ratio_tokens_per_s"] == 3.0 and out["ratio_step_s"] == 2.0
    assert out["ratio_wall"] == 0.5 and out["held_out_before"] == 0.25
    assert len(out["trl"]["held_out_gain"]) == 2 and out["differences"]


def test_trl_reward_adapter_scores_each_completion_against_its_own_record():
    class Task:
        def score(self, index: int, text: str) -> float:
            return index * 10 + len(text)

    reward = reward_function(Task())  # type: ignore[arg-type]
    assert reward(["p", "p", "q"], ["a", "bb", "ccc"], index=[0, 0, 2], extra=1) == [1, 2, 23]


def test_paired_gain_and_its_z():
    out = paired([0.0, 0.0, 1.0, 1.0], [1.0, 0.0, 1.0, 1.0])
    assert out["gain"] == pytest.approx(0.25)
    assert out["gain_se"] == pytest.approx(0.25)  # sample std 0.5 over sqrt(4)
    assert out["z"] == pytest.approx(1.0)


def test_the_task_renders_reelrls_prompts_and_grades_with_its_reward(tmp_path: Path):
    model = tiny_model_path("qwen2_5_vl")
    train = write_text_records(tmp_path / "text.jsonl", 8, seed=0)
    held = write_text_records(tmp_path / "held.jsonl", 4, seed=1)
    config = load_config(str(CONFIG), [f"model.path={model}"])
    task = PeerTask(config, model, train, held)
    assert len(task.train_prompts) == 8 and len(task.held_out) == 4
    first = task.train[0]
    assert first.video is None and "<|vision_start|>" not in first.text
    assert first.text.rstrip().endswith("<|im_start|>assistant")
    assert first.record.question in first.text
    # Held-out questions are other ones than the training questions.
    assert not {p.record.question for p in task.held_out} & {p.record.question for p in task.train}
    answer = first.record.answer
    right = f"\\boxed{{{answer}}}<think>so</think>\\boxed{{{answer}}}"
    wrong = "\\boxed{Z}<think>so</think>\\boxed{Z}"
    assert task.score(0, right) > task.score(0, wrong) >= 0

    figures = task.evaluate(model, max_new_tokens=8)
    assert len(figures["rewards"]) == 4 and all(math.isfinite(r) for r in figures["rewards"])
    assert 0.0 <= figures["accuracy"] <= 1.0
    assert figures["reward"] == pytest.approx(sum(figures["rewards"]) / 4)

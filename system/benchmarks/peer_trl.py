"""The peer side of `reelrl bench peer`: Hugging Face TRL's `GRPOTrainer` on the prompts and
reward of the comparison (TRL is the optional `bench` extra: `pip install -e '.[bench]'`).

TRL receives each prompt exactly as reelrl's rollout renders it (chat template applied, so TRL
tokenizes it as plain text) and grades completions with reelrl's own reward function, so the
two trainers see the same task; only the trainer differs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from system.benchmarks.peer_task import PeerSettings, PeerTask

INSTALL_HINT = "reelrl bench peer needs Hugging Face TRL: pip install -e '.[bench]'"


@dataclass
class StepClock:
    """Wall time at the end of every optimizer step and the completion tokens each trained."""

    ends: list[float] = field(default_factory=list)
    tokens: list[float] = field(default_factory=list)


def require_trl() -> None:
    try:
        import trl  # noqa: F401
    except ImportError as exc:
        raise SystemExit(f"{INSTALL_HINT} ({exc})") from None


def reward_function(task: PeerTask) -> Callable[..., list[float]]:
    """A TRL reward function: each completion scored by reelrl's reward for its record (the
    dataset's `index` column names the record)."""

    def reelrl_reward(
        prompts: Sequence[str], completions: Sequence[str], index: Sequence[int], **_: Any
    ) -> list[float]:
        return [task.score(i, text) for i, text in zip(index, completions, strict=True)]

    return reelrl_reward


def train_trl(task: PeerTask, settings: PeerSettings, model: Path, out: Path) -> dict[str, Any]:
    """Train `model` with TRL's GRPOTrainer under `settings`; returns the timing figures and
    the directory of the trained model."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    clock = StepClock()
    batch = settings.group_size * settings.prompts_per_step

    class Clock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            clock.ends.append(time.monotonic())

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **_: Any) -> None:
            if logs and "completions/mean_length" in logs:
                clock.tokens.append(float(logs["completions/mean_length"]) * batch)

    torch.manual_seed(settings.seed)
    args = GRPOConfig(
        output_dir=str(out),
        max_steps=settings.steps,
        # One step = prompts_per_step prompts x group_size completions, one optimizer update.
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        num_generations=settings.group_size,
        num_iterations=1,
        max_completion_length=settings.max_new_tokens,
        temperature=settings.temperature,
        top_p=1.0,
        learning_rate=settings.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=settings.weight_decay,
        adam_beta1=settings.betas[0],
        adam_beta2=settings.betas[1],
        max_grad_norm=settings.grad_clip,
        beta=settings.beta,
        # reelrl's objective: token-mean over the step (DAPO), clip 0.2 / 0.28, rewards
        # scaled by the group's std.
        loss_type="dapo",
        epsilon=settings.clip_low,
        epsilon_high=settings.clip_high,
        scale_rewards="group",
        use_vllm=False,
        use_cpu=True,
        bf16=False,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=settings.seed,
        disable_tqdm=True,
    )
    rows = [{"prompt": text, "index": i} for i, text in enumerate(task.train_prompts)]
    started = time.monotonic()
    trainer = GRPOTrainer(
        model=str(model),
        reward_funcs=reward_function(task),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(str(model)),
        callbacks=[Clock()],
    )
    trainer.train()
    wall = time.monotonic() - started
    final = out / "final"
    trainer.save_model(str(final))
    AutoTokenizer.from_pretrained(str(model)).save_pretrained(str(final))
    return {**steady_figures(clock.ends, clock.tokens), "wall_s": wall, "model": str(final)}


def steady_figures(ends: Sequence[float], tokens: Sequence[float]) -> dict[str, float]:
    """Seconds per step and trained completion tokens/s over the steps after the first (which
    carries the warm-up), from each step's end time and tokens."""
    if len(ends) < 2 or len(tokens) < len(ends):
        raise RuntimeError(f"too few steps to time: {len(ends)} ended, {len(tokens)} logged")
    wall = ends[-1] - ends[0]
    steps = len(ends) - 1
    return {
        "step_s": wall / steps,
        "trained_tokens_per_s": sum(tokens[1 : len(ends)]) / wall,
        "steps_timed": float(steps),
    }

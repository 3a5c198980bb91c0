"""What both trainers of `reelrl bench peer` share: the settings, the text task (the synthetic
questions told in words, rendered by reelrl's prompt builder in the run's output format), the
reward (reelrl's own, per record) and the held-out evaluation (greedy decoding with
transformers, the same code for every checkpoint, whichever trainer produced it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from system.config import RunConfig
from system.reporting.evaluation import mean_se


@dataclass(frozen=True)
class PeerSettings:
    """The hyper-parameters both trainers are given (each maps them onto its own names)."""

    steps: int
    group_size: int = 8
    prompts_per_step: int = 4
    # The debug recipe's GRPO settings (configs/debug_cpu.yaml, stage rl): at temperature 1
    # this tiny model's samples are far worse than its greedy answers, and 20 steps on them
    # move the greedy (held-out) answers in either direction.
    max_new_tokens: int = 128
    temperature: float = 0.3
    lr: float = 1.0e-4
    beta: float = 0.04
    clip_low: float = 0.2
    clip_high: float = 0.28
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    seed: int = 0

    def reelrl_overrides(self) -> list[str]:
        """The same settings as reelrl config overrides."""
        return [
            f"rollout.group_size={self.group_size}",
            f"rollout.prompts_per_batch={self.prompts_per_step}",
            f"learner.groups_per_step={self.prompts_per_step}",
            f"rollout.sampling.max_new_tokens={self.max_new_tokens}",
            f"rollout.sampling.temperature={self.temperature}",
            "rollout.sampling.top_p=1.0",
            f"learner.optimizer.lr={self.lr}",
            "learner.optimizer.warmup_steps=0",
            f"learner.optimizer.weight_decay={self.weight_decay}",
            f"learner.optimizer.betas=[{self.betas[0]}, {self.betas[1]}]",
            f"learner.optimizer.grad_clip={self.grad_clip}",
            f"learner.grpo.beta={self.beta}",
            "learner.grpo.kl_estimator=k3",
            f"learner.grpo.clip_low={self.clip_low}",
            f"learner.grpo.clip_high={self.clip_high}",
            "learner.grpo.iterations=1",
            "learner.grpo.scale_by_std=true",
            "learner.grpo.aggregation=token_mean",
            f"seed={self.seed}",
        ]


class PeerTask:
    """Training and held-out prompts of the text task, rendered for `model`, with their
    reward targets."""

    def __init__(self, config: RunConfig, model: Path, train: Path, held_out: Path) -> None:
        from transformers import AutoProcessor

        from actors.inputs import prepare

        self.config = config
        processor = AutoProcessor.from_pretrained(str(model))
        fmt = config.rewards.format
        self.train, _ = prepare(_records(train), config, processor, fmt)
        self.held_out, _ = prepare(_records(held_out), config, processor, fmt)

    @property
    def train_prompts(self) -> list[str]:
        return [p.text for p in self.train]

    def score(self, index: int, completion: str) -> float:
        """reelrl's total reward of a completion for training prompt `index`."""
        from actors.rewards import score_completion

        return score_completion(completion, self.train[index].target, self.config.rewards).total

    def evaluate(self, model: Path, max_new_tokens: int, batch: int = 50) -> dict[str, Any]:
        """Greedy completions of the held-out prompts by `model`: mean total reward and
        accuracy with their standard errors, and each prompt's reward (for paired gains)."""
        import torch
        from transformers import AutoModelForImageTextToText, AutoTokenizer

        from actors.rewards import score_completion

        tokenizer = AutoTokenizer.from_pretrained(str(model), padding_side="left")
        net = AutoModelForImageTextToText.from_pretrained(str(model), dtype=torch.float32).eval()
        texts: list[str] = []
        for start in range(0, len(self.held_out), batch):
            chunk = [p.text for p in self.held_out[start : start + batch]]
            enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.no_grad():
                out = net.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
            new = out[:, enc["input_ids"].shape[1] :]  # [B, new tokens]
            texts += tokenizer.batch_decode(new, skip_special_tokens=True)
        scores = [
            score_completion(t, p.target, self.config.rewards)
            for t, p in zip(texts, self.held_out, strict=True)
        ]
        reward, reward_se = mean_se([s.total for s in scores])
        accuracy, accuracy_se = mean_se([float(s.correct) for s in scores])
        return {
            "reward": reward,
            "reward_se": reward_se,
            "accuracy": accuracy,
            "accuracy_se": accuracy_se,
            "rewards": [s.total for s in scores],
        }


def paired(before: list[float], after: list[float]) -> dict[str, float]:
    """Mean per-prompt gain after - before, its standard error and z."""
    gain, se = mean_se([a - b for a, b in zip(after, before, strict=True)])
    return {"gain": gain, "gain_se": se, "z": gain / se if se > 0 else 0.0}


def write_text_records(path: Path, count: int, seed: int) -> Path:
    """`count` synthetic text questions (the four tasks in turn) drawn with `seed`."""
    from system.data.synthetic import make_text_record

    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(make_text_record(i, seed)) for i in range(count)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _records(path: Path) -> list:
    from system.data.records import parse_record, read_items

    return [parse_record(item, where) for where, item in read_items(path)]

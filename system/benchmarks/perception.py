"""`reelrl bench perception`: how soon a model trained from random weights sees what the
synthetic video tasks ask about.

A probe is one question about a clip with four options: the colour of a still square, the side
(left or right half) it stands on, the way it moves (the `direction` task's clips), how many
times it changes colour (the `count` task's clips, whose length grows with the count, and the
same with the length drawn apart from the count: `count_fixed_length`). For each
probe, square size and rotary base (`TRIALS`), a fresh copy of the model (built at random,
seed 0, the debug recipe's shape unless `--size`) is trained on clips rendered on the fly, batch 8, AdamW at 2e-3 on every
weight (vision tower included), the option letter after the prompt being the only target; then
it answers 200 held-out clips (argmax over the four letters). The frames reach the model as in
the recipe: 8 frames sampled evenly, 112 px, the processor neither resampling nor resizing.

It isolates perception from the recipe (no reasoning text, no RL, one process, transformers
only) and answers, in minutes, whether a model size and a square size give the four tasks
something to learn from. docs/perception.md has the figures and what they mean for the debug
recipe.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from system.data import synthetic
from system.data.video import processor_kwargs

WORK = Path("runs/bench-perception")
LETTERS = "ABCD"
FRAMES = 8
BATCH = 8
LR = 2e-3
LARGE = 40
"""A square that fills whole visual tokens (28 px: 14 px patches merged 2x2), against the
tasks' 20 px (`synthetic.SQUARE`)."""
EVAL_SEED = 1_000_000
"""Held-out clips are drawn from seeds from here on; training clips from 0 up."""


@dataclass(frozen=True)
class Clip:
    frames: np.ndarray  # [T, H, W, 3] uint8, the whole clip at synthetic.FPS
    question: str
    options: tuple[str, ...]
    answer: int  # index into options


def colour_clip(rng: np.random.Generator, side: int) -> Clip:
    """A still square of one of the four colours at a random place."""
    name = str(rng.choice(list(synthetic.PALETTE)))
    frames = synthetic._canvas(3 * synthetic.FPS)
    x, y = rng.uniform(6, synthetic.SIZE - side - 6, size=2)
    for frame in frames:
        synthetic._draw(frame, x, y, synthetic.PALETTE[name], side)
    options = tuple(f"{L}. {c}" for L, c in zip(LETTERS, synthetic.PALETTE, strict=True))
    return Clip(frames, "What colour is the square?", options, list(synthetic.PALETTE).index(name))


def side_clip(rng: np.random.Generator, side: int) -> Clip:
    """A still red square wholly in the left or the right half (no square crosses the middle)."""
    right = bool(rng.integers(2))
    half = synthetic.SIZE // 2
    lo, hi = (half, synthetic.SIZE - side) if right else (0, half - side)
    x = rng.uniform(lo, hi)
    y = rng.uniform(6, synthetic.SIZE - side - 6)
    frames = synthetic._canvas(3 * synthetic.FPS)
    for frame in frames:
        synthetic._draw(frame, x, y, synthetic.PALETTE["red"], side)
    options = ("A. left", "B. right", "C. top", "D. bottom")
    return Clip(frames, "On which side of the picture is the square?", options, int(right))


def direction_clip(rng: np.random.Generator, side: int) -> Clip:
    """The `direction` task's clip, with a square of `side` px."""
    frames, rec = synthetic.render_direction(rng, side)
    return Clip(frames, rec["question"], tuple(rec["options"]), LETTERS.index(rec["answer"]))


COUNT_OPTIONS = ("A. 1", "B. 2", "C. 3", "D. 4")


def count_clip(rng: np.random.Generator, side: int, fixed_length: bool = False) -> Clip:
    """The `count` task's clip, with a square of `side` px; the answer (1-3) as a letter."""
    frames, rec = synthetic.render_count(rng, side, fixed_length=fixed_length)
    return Clip(frames, rec["question"], COUNT_OPTIONS, int(rec["answer"]) - 1)


def count_fixed_length_clip(rng: np.random.Generator, side: int) -> Clip:
    """The count clip lasting 6-8 s whatever the count: only the colours tell the answer."""
    return count_clip(rng, side, fixed_length=True)


PROBES: dict[str, Callable[[np.random.Generator, int], Clip]] = {
    "colour": colour_clip,
    "side": side_clip,
    "direction": direction_clip,
    "count": count_clip,
    "count_fixed_length": count_fixed_length_clip,
}
CHANCE = {
    "colour": 0.25,
    "side": 0.5,
    "direction": 0.25,
    "count": 1 / 3,
    "count_fixed_length": 1 / 3,
}


TRIALS: tuple[tuple[str, int, float | None], ...] = (
    ("colour", synthetic.SQUARE, None),
    ("colour", LARGE, None),
    ("side", LARGE, None),
    ("side", LARGE, 2.0),
    ("direction", LARGE, None),
    ("direction", LARGE, 2.0),
    ("count", synthetic.SQUARE, None),
    ("count_fixed_length", LARGE, None),
)
"""(probe, square px, the language model's rope theta or None for the built model's)."""


def model_dir(size: str, rope_theta: float | None = None) -> Path:
    """The random Qwen2.5-VL every trial starts from, built once per size (seed 0); with
    `rope_theta`, the same weights under another rotary base (weights do not depend on it)."""
    from system.data.tiny_model import build_tiny_model

    base = WORK / f"qwen2_5_vl-{size}"
    if not (base / "config.json").exists():
        print(build_tiny_model("qwen2_5_vl", base, size=size, seed=0), flush=True)
    if rope_theta is None:
        return base
    out = WORK / f"qwen2_5_vl-{size}-theta{rope_theta:g}"
    if not (out / "config.json").exists():
        shutil.copytree(base, out, dirs_exist_ok=True)
        config = json.loads((out / "config.json").read_text())
        config["text_config"]["rope_parameters"]["rope_theta"] = rope_theta
        (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def built_theta(path: Path) -> float:
    return json.loads((path / "config.json").read_text())["text_config"]["rope_parameters"][
        "rope_theta"
    ]


class Trial:
    """One probe at one square size: a fresh model, its processor, the batches."""

    def __init__(self, model_path: Path, probe: str, side: int, seed: int = 0):
        import torch
        import transformers

        torch.manual_seed(seed)
        self.probe, self.side = probe, side
        self.processor = transformers.AutoProcessor.from_pretrained(model_path)
        self.processor.tokenizer.padding_side = "left"
        self.model = transformers.AutoModelForImageTextToText.from_pretrained(
            model_path, dtype=torch.float32
        )
        tok = self.processor.tokenizer
        self.letters = [tok.convert_tokens_to_ids(L) for L in LETTERS]
        if tok.unk_token_id is not None and tok.unk_token_id in self.letters:
            raise ValueError(f"the tokenizer of {model_path} has no single token per letter")
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=LR, weight_decay=0.0)

    def batch(self, seeds: range) -> tuple[dict[str, Any], Any]:
        import torch

        texts, videos, metadata, answers = [], [], [], []
        for seed in seeds:
            clip = PROBES[self.probe](np.random.default_rng(seed), self.side)
            n = len(clip.frames)
            idx = np.linspace(0, n - 1, FRAMES).round().astype(int)
            question = f"{clip.question} {' '.join(clip.options)} Answer with the letter."
            messages = [
                {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}
            ]
            texts.append(
                self.processor.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=True
                )
            )
            videos.append(clip.frames[idx])
            fps = float(synthetic.FPS)
            metadata.append(
                {
                    "fps": fps,
                    "frames_indices": idx.tolist(),
                    "total_num_frames": n,
                    "duration": n / fps,
                }
            )
            answers.append(clip.answer)
        inputs = self.processor(
            text=texts,
            videos=videos,
            video_metadata=metadata,
            return_tensors="pt",
            padding=True,
            **processor_kwargs(),
        )
        return dict(inputs), torch.tensor(answers)

    def letter_logits(self, inputs: dict[str, Any]):
        return self.model(**inputs).logits[:, -1, self.letters]

    def step(self, index: int) -> float:
        import torch

        inputs, answers = self.batch(range(index * BATCH, (index + 1) * BATCH))
        loss = torch.nn.functional.cross_entropy(self.letter_logits(inputs), answers)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def accuracy(self, n: int) -> float:
        import torch

        self.model.eval()
        correct = 0
        with torch.no_grad():
            for start in range(EVAL_SEED, EVAL_SEED + n, 20):
                inputs, answers = self.batch(range(start, min(start + 20, EVAL_SEED + n)))
                correct += int((self.letter_logits(inputs).argmax(-1) == answers).sum())
        self.model.train()
        return correct / n


def run_trial(model_path: Path, probe: str, side: int, steps: int, eval_clips: int) -> dict:
    """Train a fresh copy of the model at `model_path` on one probe; accuracy before/after."""
    start = time.perf_counter()
    trial = Trial(model_path, probe, side)
    before = trial.accuracy(eval_clips)
    losses = [trial.step(i) for i in range(steps)]
    after = trial.accuracy(eval_clips)
    tail = losses[-max(1, steps // 10) :]
    return {
        "probe": probe,
        "square_px": side,
        "rope_theta": built_theta(model_path),
        "steps": steps,
        "accuracy_before": before,
        "accuracy_after": after,
        "chance": CHANCE[probe],
        "final_loss": float(np.mean(tail)),
        "seconds": time.perf_counter() - start,
    }


def run(args: argparse.Namespace) -> dict:
    quick = getattr(args, "quick", False)
    size = getattr(args, "size", "tiny")
    steps, eval_clips = (4, 20) if quick else (300, 200)
    print(
        f"perception probes: {size} Qwen2.5-VL from random weights, {steps} steps of batch "
        f"{BATCH}, lr {LR}, vision tower trained, {eval_clips} held-out clips each",
        flush=True,
    )
    print(
        f"{'probe':<10} {'square':>7} {'rope theta':>10} {'acc before':>11} {'acc after':>10} "
        f"{'chance':>7} {'loss':>6} {'s':>5}"
    )
    rows = []
    for probe, side, theta in TRIALS:
        row = run_trial(model_dir(size, theta), probe, side, steps, eval_clips)
        rows.append(row)
        print(
            f"{probe:<10} {side:>5}px {row['rope_theta']:>10g} {row['accuracy_before']:>11.3f} "
            f"{row['accuracy_after']:>10.3f} {row['chance']:>7.2f} {row['final_loss']:>6.3f} "
            f"{row['seconds']:>5.0f}",
            flush=True,
        )
    return {"model_size": size, "steps": steps, "eval_clips": eval_clips, "trials": rows}

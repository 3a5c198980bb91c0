"""Held-out evaluation in the three inference modes of VideoAuto-R1: direct (first answer
only), always-think (the think pass for every question) and gated (think only below tau).

Every question is asked in the answer -> think -> answer format. All modes share the greedy
first pass; the think pass runs once per question that some requested mode needs, and each
mode's answer is read from those passes (`actors.gating.result`) - with greedy decoding this
is exactly what running each mode on its own would produce, at a third of the cost. Reports
per mode: accuracy, temporal-grounding mIoU and R@0.3/0.5/0.7, think ratio and mean
response length (generated tokens). Records whose video cannot be decoded are skipped and
counted.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actors.engine import EngineRequest, RolloutEngine
from actors.gating import GatedInference, Inference, Mode, result
from actors.prompts import build_messages, render_prompt
from actors.rewards import is_correct, task_reward
from actors.rollout import reward_target
from system.config import RunConfig
from system.data import Record, resolve_video
from system.video import VideoError, decode_video

log = logging.getLogger("reelrl.eval")

RECALL_AT = (0.3, 0.5, 0.7)


def model_family(path: str | Path) -> str:
    """The family of an HF model directory, from its config's model_type."""
    model_type = json.loads((Path(path) / "config.json").read_text())["model_type"]
    if model_type not in ("qwen2_5_vl", "qwen3_vl"):
        raise ValueError(f"{path}: model_type {model_type!r} is not qwen2_5_vl or qwen3_vl")
    return model_type


@dataclass(frozen=True)
class Scored:
    """One answered question: its record and the task reward of the final answer."""

    record: Record
    inference: Inference
    reward: float


def mode_metrics(scored: Sequence[Scored]) -> dict[str, float]:
    """Accuracy, mIoU, R@k (temporal grounding only), think ratio, mean response length."""
    n = max(len(scored), 1)
    grounding = [s.reward for s in scored if s.record.problem_type == "temporal_grounding"]
    out: dict[str, float] = {
        "n": len(scored),
        "accuracy": sum(is_correct(s.reward, s.record.problem_type) for s in scored) / n,
        "think_ratio": sum(s.inference.thought for s in scored) / n,
        "mean_response_length": sum(s.inference.tokens for s in scored) / n,
        "grounding_n": len(grounding),
        "miou": sum(grounding) / len(grounding) if grounding else 0.0,
    }
    for k in RECALL_AT:
        hits = sum(iou >= k for iou in grounding)
        out[f"r@{k}"] = hits / len(grounding) if grounding else 0.0
    return out


def requests_for(
    records: Sequence[Record], config: RunConfig, processor: Any
) -> tuple[list[Record], list[EngineRequest], int]:
    """Prompts (answer-twice format) for the records whose video decodes; and the skip count."""
    kept, requests, skipped = [], [], 0
    for record in records:
        start, end = record.span or (None, None)
        path = resolve_video(record, config.data.root)
        try:
            video = decode_video(path, config.video, config.model.family, start, end)
        except VideoError as exc:
            log.warning("skipping %s: %s", record.id, exc)
            skipped += 1
            continue
        messages = build_messages(
            record.question, record.problem_type, "answer_twice", record.options or ()
        )
        kept.append(record)
        requests.append(EngineRequest(render_prompt(processor, messages), video.vllm_input()))
    return kept, requests, skipped


async def evaluate(
    engine: RolloutEngine,
    processor: Any,
    records: Sequence[Record],
    config: RunConfig,
    modes: Sequence[Mode],
    tau: float,
    first_max_tokens: int = 64,
    think_max_tokens: int = 512,
) -> dict[str, Any]:
    """Metrics per mode over `records` (see the module docstring)."""
    kept, requests, skipped = requests_for(records, config, processor)
    runner = GatedInference(engine, processor.tokenizer, tau, first_max_tokens, think_max_tokens)
    think: Mode = "always_think" if "always_think" in modes else "gated"
    if list(modes) == ["direct"]:
        think = "direct"
    passes = await runner.passes(requests, think=think)
    report: dict[str, Any] = {"tau": tau, "skipped_videos": skipped, "modes": {}}
    for mode in modes:
        scored = []
        for record, p in zip(kept, passes, strict=True):
            inference = result(p, mode)
            reward = task_reward(inference.answer, reward_target(record))
            scored.append(Scored(record, inference, reward))
        report["modes"][mode] = mode_metrics(scored)
    return report


def print_table(report: dict[str, Any]) -> None:
    """The per-mode figures as a fixed-width table."""
    cols = ["n", "accuracy", "miou", "r@0.3", "r@0.5", "r@0.7", "think_ratio"]
    cols.append("mean_response_length")
    print(f"{'mode':<14}" + "".join(f"{c:>12}" for c in cols[:-1]) + f"{'resp_len':>12}")
    for mode, m in report["modes"].items():
        cells = "".join(f"{m[c]:>12d}" if c == "n" else f"{m[c]:>12.3f}" for c in cols if c in m)
        print(f"{mode:<14}{cells}")
    print(f"tau={report['tau']}  skipped videos={report['skipped_videos']}")

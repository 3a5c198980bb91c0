"""Held-out evaluation in the three inference modes of VideoAuto-R1: direct (first answer
only), always-think (the think pass for every question) and gated (think only below tau).

Every question is asked in the answer -> think -> answer format. All modes share the greedy
first pass; the think pass runs once per question that some requested mode needs, and each
mode's answer is read from those passes (`actors.gating.result`) - with greedy decoding this
is exactly what running each mode on its own would produce, at a third of the cost. Each
question becomes a graded row (task reward of the final answer scaled to [0, 1], correct,
thought, tokens per mode); `summarize` turns rows into per-mode figures: mean task reward and
accuracy with standard errors, temporal-grounding mIoU and R@0.3/0.5/0.7, think ratio, mean
response length (generated tokens), and per-task reward / accuracy. `paired_gain` compares
two checkpoints on the same questions. Records whose video cannot be decoded are skipped and
counted.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from actors.engine import EngineRequest, RolloutEngine
from actors.gating import GatedInference, Inference, Mode, result, should_exit
from actors.prompts import build_messages, render_prompt
from actors.rewards import is_correct, task_reward
from actors.rewards.composite import MAX_TASK_REWARD
from actors.rollout import reward_target
from system.config import RunConfig
from system.data import DataError, Record, resolve_video
from system.video import VideoError, decode_video

log = logging.getLogger("reelrl.eval")

RECALL_AT = (0.3, 0.5, 0.7)


def model_family(path: str | Path) -> str:
    """The family of an HF model directory, from its config's model_type."""
    model_type = json.loads((Path(path) / "config.json").read_text())["model_type"]
    if model_type not in ("qwen2_5_vl", "qwen3_vl"):
        raise ValueError(f"{path}: model_type {model_type!r} is not qwen2_5_vl or qwen3_vl")
    return model_type


def task_name(record: Record) -> str:
    """The task a record belongs to: its source's last part ('synthetic/count' -> 'count'),
    else its problem type."""
    return record.source.rsplit("/", 1)[-1] if record.source else record.problem_type


def score_row(record: Record, inferences: dict[str, Inference]) -> dict[str, Any]:
    """One held-out question graded in every mode: task reward of the final answer scaled to
    [0, 1], whether it counts as correct, whether it thought, the first answer's confidence
    (None when the mode does not compute it), tokens generated."""
    target = reward_target(record)
    modes = {}
    for mode, inference in inferences.items():
        reward = task_reward(inference.answer, target)
        modes[mode] = {
            "reward": reward / MAX_TASK_REWARD[record.problem_type],
            "correct": is_correct(reward, record.problem_type),
            "thought": inference.thought,
            "confidence": inference.confidence,
            "tokens": inference.tokens,
        }
    row = {
        "id": record.id,
        "task": task_name(record),
        "problem_type": record.problem_type,
        "modes": modes,
    }
    first = inferences.get("direct")
    if first is not None:  # the shared first pass: what gating decides on
        row["first"] = {"answer": first.answer, "confidence": first.confidence}
    return row


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and its standard error (sample standard deviation / sqrt(n); 0 for n < 2)."""
    n = len(values)
    if n == 0:
        return 0.0, 0.0
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def mode_metrics(rows: Sequence[dict[str, Any]], mode: str) -> dict[str, Any]:
    """Figures of one mode over graded rows: mean task reward with its standard error,
    accuracy (with SE), temporal-grounding mIoU and R@k, think ratio, mean response length,
    and reward / accuracy per task."""
    cells = [r["modes"][mode] for r in rows]
    n = max(len(cells), 1)
    reward, reward_se = mean_se([c["reward"] for c in cells])
    accuracy, accuracy_se = mean_se([float(c["correct"]) for c in cells])
    grounding = [
        r["modes"][mode]["reward"] for r in rows if r["problem_type"] == "temporal_grounding"
    ]
    out: dict[str, Any] = {
        "n": len(cells),
        "reward": reward,
        "reward_se": reward_se,
        "accuracy": accuracy,
        "accuracy_se": accuracy_se,
        "think_ratio": sum(c["thought"] for c in cells) / n,
        "mean_response_length": sum(c["tokens"] for c in cells) / n,
        "grounding_n": len(grounding),
        "miou": sum(grounding) / len(grounding) if grounding else 0.0,
    }
    for k in RECALL_AT:
        hits = sum(iou >= k for iou in grounding)
        out[f"r@{k}"] = hits / len(grounding) if grounding else 0.0
    tasks: dict[str, dict[str, float]] = {}
    for task in sorted({r["task"] for r in rows}):
        mine = [r["modes"][mode] for r in rows if r["task"] == task]
        task_reward_mean, task_reward_se = mean_se([c["reward"] for c in mine])
        tasks[task] = {
            "n": len(mine),
            "reward": task_reward_mean,
            "reward_se": task_reward_se,
            "accuracy": sum(c["correct"] for c in mine) / len(mine),
            "think_ratio": sum(c["thought"] for c in mine) / len(mine),
        }
    out["tasks"] = tasks
    return out


def summarize(rows: Sequence[dict[str, Any]], modes: Sequence[str]) -> dict[str, Any]:
    """Per-mode figures (`mode_metrics`) of graded rows."""
    return {mode: mode_metrics(rows, mode) for mode in modes}


def paired_gain(
    before: Sequence[dict[str, Any]], after: Sequence[dict[str, Any]], mode: str
) -> dict[str, float]:
    """Mean task-reward gain from `before` to `after` on the questions both graded, with the
    standard error of the paired differences and the gain in standard errors (z)."""
    old = {r["id"]: r["modes"][mode]["reward"] for r in before}
    diffs = [r["modes"][mode]["reward"] - old[r["id"]] for r in after if r["id"] in old]
    gain, se = mean_se(diffs)
    z = gain / se if se > 0 else (math.inf if gain > 0 else 0.0)
    return {"n": len(diffs), "gain": gain, "se": se, "z": z}


GATING_TAUS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97, 0.99)


def gating_curve(
    rows: Sequence[dict[str, Any]], taus: Sequence[float] = GATING_TAUS
) -> list[dict[str, float]]:
    """The gated mode at other thresholds, from rows graded in direct and always-think mode
    (greedy passes are shared, so gated at tau answers exactly like direct where the first
    answer exits and like always-think elsewhere): per tau the think ratio, mean task reward
    and mean generated tokens. Rows without the first pass's record are left out; none left:
    an empty curve."""
    usable = [r for r in rows if "first" in r and {"direct", "always_think"} <= set(r["modes"])]
    if not usable:
        return []
    curve = []
    for tau in taus:
        picked = [
            r["modes"][
                "direct"
                if should_exit(r["first"]["answer"], r["first"]["confidence"], tau)
                else "always_think"
            ]
            for r in usable
        ]
        n = len(picked)
        curve.append(
            {
                "tau": tau,
                "think_ratio": sum(m["thought"] for m in picked) / n,
                "reward": sum(m["reward"] for m in picked) / n,
                "tokens": sum(m["tokens"] for m in picked) / n,
            }
        )
    return curve


def requests_for(
    records: Sequence[Record], config: RunConfig, processor: Any
) -> tuple[list[Record], list[EngineRequest], int]:
    """Prompts (answer-twice format) for the records whose video decodes; and the skip count."""
    kept, requests, skipped = [], [], 0
    for record in records:
        start, end = record.span or (None, None)
        try:
            path = resolve_video(record, config.data.root)
            video = decode_video(path, config.video, config.model.family, start, end)
        except (VideoError, DataError) as exc:
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
    rows = [
        score_row(record, {mode: result(p, mode) for mode in modes})
        for record, p in zip(kept, passes, strict=True)
    ]
    return {
        "tau": tau,
        "skipped_videos": skipped,
        "modes": summarize(rows, modes),
        "rows": rows,
    }


def print_table(report: dict[str, Any]) -> None:
    """The per-mode figures as a fixed-width table."""
    cols = ["n", "accuracy", "miou", "r@0.3", "r@0.5", "r@0.7", "think_ratio"]
    cols.append("mean_response_length")
    head = "".join(f"{c:>12}" for c in cols[:-1])
    print(f"{'mode':<14}{'reward':>16}" + head + f"{'resp_len':>12}")
    for mode, m in report["modes"].items():
        cells = "".join(f"{m[c]:>12d}" if c == "n" else f"{m[c]:>12.3f}" for c in cols if c in m)
        reward = f"{m['reward']:.3f}±{m['reward_se']:.3f}"
        print(f"{mode:<14}{reward:>16}{cells}")
    print(f"tau={report['tau']}  skipped videos={report['skipped_videos']}")

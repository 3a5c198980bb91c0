"""Held-out evaluation on a rollout engine in the three inference modes of VideoAuto-R1: direct
(first answer only), always-think (the think pass for every question) and gated (think only
below tau).

Every question is asked in the answer -> think -> answer format. All modes share the greedy
first pass; the think pass runs once per question that some requested mode needs, and each
mode's answer is read from those passes (`actors.gating.result`) - with greedy decoding this
is exactly what running each mode on its own would produce, at a third of the cost. Each
question becomes a graded row (task reward of the final answer scaled to [0, 1], correct,
thought, first-answer confidence, tokens per mode); the statistics over rows live in
`system.reporting.evaluation`. Records whose video cannot be decoded are skipped and counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from actors.engine import RolloutEngine
from actors.gating import GatedInference, Inference, Mode, result
from actors.inputs import prepare, reward_target
from actors.rewards import is_correct, task_reward
from actors.rewards.composite import MAX_TASK_REWARD
from system.config import RunConfig
from system.data.records import Record


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
    """Graded rows over `records` and the skip count (see the module docstring)."""
    prompts, skipped = prepare(records, config, processor, "answer_twice")
    kept = [p.record for p in prompts]
    requests = [p.request() for p in prompts]
    runner = GatedInference(engine, processor.tokenizer, tau, first_max_tokens, think_max_tokens)
    think: Mode = "always_think" if "always_think" in modes else "gated"
    if list(modes) == ["direct"]:
        think = "direct"
    passes = await runner.passes(requests, think=think)
    rows = [
        score_row(record, {mode: result(p, mode) for mode in modes})
        for record, p in zip(kept, passes, strict=True)
    ]
    return {"tau": tau, "skipped_videos": skipped, "rows": rows}

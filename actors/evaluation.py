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

from actors.engine import RolloutEngine, SampleSpec
from actors.gating import GatedInference, Inference, Mode, result
from actors.inputs import prepare, reward_target
from actors.rewards import is_correct, task_reward
from actors.rewards.composite import MAX_TASK_REWARD, graded_answers
from actors.rewards.judge import JudgeItem
from system.config import RunConfig
from system.data.records import Record

ANSWER_MODE = "answer"
"""The one mode of a run whose output format is not answer_twice: a greedy reply in it."""


def eval_modes(config: RunConfig) -> list[str]:
    """The modes a run is evaluated in: VideoAuto-R1's three (`eval.modes`) for the
    answer_twice format, else `answer`."""
    if config.rewards.format == "answer_twice":
        return list(config.eval.modes)
    return [ANSWER_MODE]


def task_name(record: Record) -> str:
    """The task a record belongs to: its category (Pause-and-Think's `Factual/Past`, ...)
    when it has one, else its source's last part ('synthetic/count' -> 'count'), else its
    problem type."""
    if record.meta.get("category"):
        return str(record.meta["category"])
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
    judge: Any = None,
) -> dict[str, Any]:
    """Graded rows over `records` and the skip count (see the module docstring)."""
    if config.rewards.format != "answer_twice":
        return await evaluate_answers(engine, processor, records, config, think_max_tokens, judge)
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


async def evaluate_answers(
    engine: RolloutEngine,
    processor: Any,
    records: Sequence[Record],
    config: RunConfig,
    max_tokens: int,
    judge: Any = None,
) -> dict[str, Any]:
    """Held-out evaluation in the run's own output format (not answer_twice): one greedy
    reply per question, its answer graded for the record's problem type, a free-form answer by
    `judge` (an `actors.judge.JudgeClient`; ROUGE-L without one, or for an answer it left
    unjudged). Rows as `score_row`'s, in the single mode `answer`; `task` is the record's
    category when it has one. The report names the judge."""
    prompts, skipped = prepare(records, config, processor, config.rewards.format)
    spec = SampleSpec(n=1, temperature=0.0, max_tokens=max_tokens)
    gens = await engine.generate([p.request() for p in prompts], spec)
    answers = []
    for gen in gens:
        found = graded_answers(gen.completions[0].text, config.rewards)
        answers.append(found[-1] if found else None)
    judged: dict[int, float | None] = {}
    if judge is not None:
        asks = [(i, JudgeItem(p.record.question, p.record.answer, a))
                for i, (p, a) in enumerate(zip(prompts, answers, strict=True))
                if a is not None and p.record.problem_type == "free_form"]  # fmt: skip
        scores = await judge.scores([item for _, item in asks])
        judged = {i: s for (i, _), s in zip(asks, scores, strict=True)}
    rows = []
    for i, (prompt, gen, answer) in enumerate(zip(prompts, gens, answers, strict=True)):
        record, completion = prompt.record, gen.completions[0]
        reward = judged.get(i)
        by_judge = reward is not None
        if reward is None:
            reward = task_reward(answer, prompt.target)
        rows.append({
            "id": record.id,
            "task": task_name(record),
            "problem_type": record.problem_type,
            "modes": {ANSWER_MODE: {
                "reward": reward / MAX_TASK_REWARD[record.problem_type],
                "correct": is_correct(reward, record.problem_type),
                "thought": "<think" in completion.text,
                "confidence": None,
                "tokens": len(completion.token_ids),
                "judged": by_judge,
            }},
        })  # fmt: skip
    out: dict[str, Any] = {"tau": None, "skipped_videos": skipped, "rows": rows}
    if judge is not None:
        out["judge"] = judge.label
    return out

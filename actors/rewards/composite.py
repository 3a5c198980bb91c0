"""The rollout actor's scoring entry point: a completion text and its record's target in, the
total reward and its named components out.

Task rewards per problem type (each a pure grader) are combined by output format:
answer_twice (VideoAuto-R1) R = w_a1*R_task(a1) + w_a2*R_task(a2) + w_format*R_fmt
+ w_fallback*R_fallback, where R_fallback = 1 only when a1 is the fallback phrase and a2 is
correct; think_answer (Video-R1) and direct R = R_task(answer) + w_format*R_fmt.
Components are unweighted so they can be logged and re-weighted; `total` is the weighted sum.
`rewards.compat: videoauto_r1` hands the whole score to compat_videoauto (upstream's rules).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from actors.rewards.compat_videoauto import score_videoauto_r1
from actors.rewards.extract import (
    extract_direct_answer,
    extract_tagged_answer,
    extract_two_answers,
    is_fallback,
)
from actors.rewards.format import FORMAT_REWARDS
from actors.rewards.graders import exact_match, numeric_match, rouge_l
from actors.rewards.math_grader import MathVerifier, math_match
from actors.rewards.temporal import (
    Phase,
    Span,
    grounded_qa,
    parse_spans,
    subaction_credit,
    temporal_iou,
)
from system.config import ProblemType, RewardsConfig

MAX_TASK_REWARD: dict[str, float] = {
    "multiple_choice": 1.0,
    "numerical": 1.0,
    "math": 1.0,
    "temporal_grounding": 1.0,
    "grounded_qa": 2.0,
    "free_form": 1.0,
    "subaction": 1.0,
}
"""Largest task reward per problem type (grounded QA adds answer and tIoU)."""

CORRECT_AT: dict[str, float] = {
    "multiple_choice": 1.0,
    "numerical": 1.0,
    "math": 1.0,
    "temporal_grounding": 0.5,
    "grounded_qa": 1.5,
    "free_form": 0.5,
    "subaction": 0.5,
}
"""Task reward at which an answer counts as correct: binary graders need 1; tIoU-based ones
the usual R@0.5 (grounded QA: right answer and tIoU >= 0.5); ROUGE-L and sub-action 0.5."""


@dataclass(frozen=True)
class RewardTarget:
    """What a completion is graded against: the plain fields of a dataset record."""

    problem_type: ProblemType
    answer: str = ""
    options: tuple[str, ...] = ()
    spans: tuple[Span, ...] = ()
    """Ground-truth [start, end] seconds (temporal grounding, grounded QA); several allowed."""
    phases: tuple[Phase, ...] = ()
    """Ordered annotated phases (sub-action records)."""

    @classmethod
    def from_fields(
        cls,
        problem_type: str,
        answer: str = "",
        options: Sequence[str] | None = None,
        spans: Iterable[Sequence[float]] | None = None,
        phases: Iterable[Mapping[str, Any] | Any] | None = None,
        time_offset: float = 0.0,
    ) -> RewardTarget:
        """Build from record fields (phases as dicts or objects with name/start/end).

        Spans missing for temporal grounding are parsed from `answer`. `time_offset` is
        subtracted from every ground-truth time, for a model shown a clip starting there.
        """
        if problem_type not in MAX_TASK_REWARD:
            raise ValueError(f"unknown problem_type {problem_type!r}")
        span_list = [(float(s[0]), float(s[1])) for s in spans or ()]
        if not span_list and problem_type == "temporal_grounding":
            span_list = parse_spans(answer)
        phase_list = [_phase(p) for p in phases or ()]
        return cls(
            problem_type=problem_type,  # type: ignore[arg-type]
            answer=answer,
            options=tuple(options or ()),
            spans=tuple((s - time_offset, e - time_offset) for s, e in span_list),
            phases=tuple(
                Phase(p.name, p.start - time_offset, p.end - time_offset) for p in phase_list
            ),
        )


def _phase(item: Mapping[str, Any] | Any) -> Phase:
    if isinstance(item, Mapping):
        return Phase(str(item["name"]), float(item["start"]), float(item["end"]))
    return Phase(str(item.name), float(item.start), float(item.end))


@dataclass(frozen=True)
class CompletionScore:
    """A scored completion: weighted total, unweighted components, and the final answer's grade."""

    total: float
    components: dict[str, float]
    accuracy: float
    """Task reward of the final answer scaled to [0, 1] (T-GRPO's accuracy)."""
    correct: bool
    """Whether the final answer counts as correct (accuracy metrics, T-GRPO)."""


def task_reward(
    answer: str | None,
    target: RewardTarget,
    math_timeout_s: float = 5.0,
    verifier: MathVerifier | None = None,
) -> float:
    """Grade one extracted answer for its problem type; None (no answer) scores 0."""
    if answer is None:
        return 0.0
    kind = target.problem_type
    if kind == "multiple_choice":
        return exact_match(answer, target.answer, target.options)
    if kind == "numerical":
        return numeric_match(answer, target.answer)
    if kind == "math":
        return math_match(answer, target.answer, math_timeout_s, verifier)
    if kind == "temporal_grounding":
        return temporal_iou(answer, target.spans)
    if kind == "grounded_qa":
        return grounded_qa(answer, target.answer, target.spans, target.options)
    if kind == "free_form":
        return rouge_l(answer, target.answer)
    return subaction_credit(answer, target.phases)


def is_correct(reward: float, problem_type: str) -> bool:
    """Whether a task reward counts as a correct answer for its problem type."""
    return reward >= CORRECT_AT[problem_type] - 1e-9


def graded_answers(text: str, config: RewardsConfig) -> list[str]:
    """The answers `score_completion` grades in `text` (both answers of answer_twice, else
    the one): what a judge is asked about, for free-form records."""
    if config.format == "answer_twice":
        answers = extract_two_answers(text)
        found = [answers.a1, answers.a2]
    elif config.format in ("think_answer", "thinking_answer"):
        found = [extract_tagged_answer(text)]
    else:
        found = [extract_direct_answer(text)]
    return [a for a in found if a is not None]


def score_completion(
    text: str,
    target: RewardTarget,
    config: RewardsConfig,
    verifier: MathVerifier | None = None,
    judged: Mapping[str, float] | None = None,
) -> CompletionScore:
    """Score a completion for its record under the configured output format and weights.
    `judged` (answer -> judge score in [0, 1]) grades the answers of a free-form record in
    place of ROUGE-L."""
    if config.compat == "videoauto_r1":
        upstream = score_videoauto_r1(text, target, config, verifier)
        return CompletionScore(
            total=upstream.total,
            components=upstream.components,
            accuracy=upstream.final / MAX_TASK_REWARD[target.problem_type],
            correct=is_correct(upstream.final, target.problem_type),
        )
    fmt = FORMAT_REWARDS[config.format](text)

    def grade(answer: str | None) -> float:
        if judged is not None and target.problem_type == "free_form" and answer in judged:
            return judged[answer]
        return task_reward(answer, target, config.math_timeout_s, verifier)

    if config.format == "answer_twice":
        answers = extract_two_answers(text)
        r_a1, r_a2 = grade(answers.a1), grade(answers.a2)
        final = r_a2
        fallback = float(is_fallback(answers.a1) and is_correct(r_a2, target.problem_type))
        components = {"task_a1": r_a1, "task_a2": r_a2, "format": fmt, "fallback": fallback}
        total = (
            config.w_a1 * r_a1
            + config.w_a2 * r_a2
            + config.w_format * fmt
            + config.w_fallback * fallback
        )
    else:
        answer = (
            extract_tagged_answer(text)
            if config.format in ("think_answer", "thinking_answer")
            else extract_direct_answer(text)
        )
        final = grade(answer)
        components = {"task": final, "format": fmt}
        total = final + config.w_format * fmt
    return CompletionScore(
        total=total,
        components=components,
        accuracy=final / MAX_TASK_REWARD[target.problem_type],
        correct=is_correct(final, target.problem_type),
    )

"""Reward functions: pure graders that map any model output text to a number.

`score_completion` is what a rollout actor calls per completion; `temporal_contrast` and
`has_signal` act on a whole prompt group. Modules: extract (answers from text), graders
(exact match, numbers, ROUGE-L), math_grader (math-verify with a deadline), temporal (tIoU,
grounded QA, sub-actions), format, composite, temporal_contrast, group_filter, and
compat_videoauto (the released VideoAuto-R1 scoring, `rewards.compat: videoauto_r1`).
"""

from actors.rewards.composite import (
    CompletionScore,
    ProblemType,
    RewardTarget,
    is_correct,
    score_completion,
    task_reward,
)
from actors.rewards.extract import FALLBACK_ANSWER
from actors.rewards.group_filter import has_signal
from actors.rewards.temporal import Phase
from actors.rewards.temporal_contrast import TemporalContrast, temporal_contrast

__all__ = [
    "FALLBACK_ANSWER",
    "CompletionScore",
    "Phase",
    "ProblemType",
    "RewardTarget",
    "TemporalContrast",
    "has_signal",
    "is_correct",
    "score_completion",
    "task_reward",
    "temporal_contrast",
]

"""T-GRPO temporal contrast (Video-R1): a group-level bonus for rollouts that did better on
the video in order than the same prompt did with its frames shuffled.

Semantics (as in Video-R1): the shuffled rollouts (G x shuffled_fraction) are scored but
never trained on. With p = mean accuracy of the ordered rollouts and p~ = mean accuracy of
the shuffled ones, the contrast holds when p >= ratio * p~ (ratio 0.8); then every ordered
rollout whose accuracy exceeds min_accuracy (0.1) gets +bonus (0.3) added to its reward.
When the contrast fails no rollout gets anything. Note the rule as published: a group whose
shuffled accuracy is 0 always satisfies it, and the bonus only reaches rollouts that were
(at least partly) right, so it never changes an all-wrong group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from system.config import TGRPOConfig


@dataclass(frozen=True)
class TemporalContrast:
    """Outcome for one prompt group."""

    bonuses: list[float]
    """Per ordered rollout, in order: `bonus` or 0.0 (add to that rollout's total)."""
    holds: bool
    """Whether ordered accuracy >= ratio x shuffled accuracy (logged as a rate)."""


def temporal_contrast(
    ordered_accuracy: Sequence[float], shuffled_accuracy: Sequence[float], config: TGRPOConfig
) -> TemporalContrast:
    """Per-rollout T-GRPO bonuses from ordered (G) and shuffled (~G/2) accuracies."""
    if not ordered_accuracy or not shuffled_accuracy:
        raise ValueError("temporal contrast needs ordered and shuffled rollouts")
    ordered_mean = sum(ordered_accuracy) / len(ordered_accuracy)
    shuffled_mean = sum(shuffled_accuracy) / len(shuffled_accuracy)
    holds = ordered_mean >= config.ratio * shuffled_mean
    bonuses = [
        config.bonus if holds and accuracy > config.min_accuracy else 0.0
        for accuracy in ordered_accuracy
    ]
    return TemporalContrast(bonuses=bonuses, holds=holds)

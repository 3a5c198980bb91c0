"""Group filter: a prompt group whose rewards are all equal (all right or all wrong) gives
GRPO zero advantage everywhere, so it is dropped before it reaches the queue."""

from __future__ import annotations

from collections.abc import Sequence

EQUAL_TOLERANCE = 1e-6
"""Rewards closer than this count as equal (float noise from weighted sums)."""


def has_signal(rewards: Sequence[float], tolerance: float = EQUAL_TOLERANCE) -> bool:
    """Whether a group's rewards differ by more than `tolerance` (an empty group has none)."""
    if not rewards:
        return False
    return max(rewards) - min(rewards) > tolerance

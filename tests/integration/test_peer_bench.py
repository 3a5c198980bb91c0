"""`reelrl bench peer --quick`: reelrl and TRL's GRPOTrainer each train the same start
checkpoint for the same steps on the text task, both trained models are evaluated, and the
figures and ratios are reported (their values belong to the host, not to the test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from system.reporting.metrics import read_metrics

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_quick_peer_benchmark_trains_both_systems_and_reports(tmp_path: Path):
    proc = subprocess.run(
        [sys.executable, "-m", "system.cli", "bench", "peer", "--quick", "--json"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "reelrl / TRL" in proc.stdout and "differs: generation" in proc.stdout
    steps = figures["settings"]["steps"]
    assert 0.0 <= figures["held_out_before"] <= 4.0
    for name in ("reelrl", "trl"):
        m = figures[name]
        (run,) = m["runs"]
        assert run["steps_timed"] == steps - 1  # the first step (warm-up) left out
        assert m["trained_tokens_per_s"] > 0 and 0 < m["step_s"] < m["wall_s"]
        assert (Path(run["model"]) / "config.json").is_file()
        assert (Path(run["model"]) / "model.safetensors").is_file()
        (gain,) = m["held_out_gain"]
        assert gain["gain"] == pytest.approx(m["held_out_after"] - figures["held_out_before"])
    ratio = figures["reelrl"]["trained_tokens_per_s"] / figures["trl"]["trained_tokens_per_s"]
    assert figures["ratio_tokens_per_s"] == pytest.approx(ratio)
    # reelrl trained exactly `steps` steps, on text prompts only.
    stage = Path(figures["reelrl"]["runs"][0]["model"]).parents[2]
    rows = read_metrics(stage / "metrics.jsonl")
    assert sum("loss" in r for r in rows) == steps
    assert any(r.get("rollout/groups_published_text", 0) > 0 for r in rows)
    assert not any(r.get("rollout/groups_published_video", 0) > 0 for r in rows)

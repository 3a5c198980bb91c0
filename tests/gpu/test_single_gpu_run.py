"""configs/single_gpu.yaml end to end on one GPU with the tiny model: learner and vLLM share
the device (colocated), the engine sleeps through each learner step and wakes for the weight
push (gloo: NCCL refuses two ranks on one device), and the accounting closes. Needs CUDA; skipped elsewhere."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def test_single_gpu_colocated_run(tmp_path):
    cmd = [
        sys.executable, "-m", "system.cli", "train", str(ROOT / "configs" / "single_gpu.yaml"),
        f"output_dir={tmp_path / 'out'}", "model.path=runs/models/tiny-qwen2_5_vl",
        "model.build_tiny=tiny", "model.dtype=float32", "data.synthetic.n_train=16",
        "data.synthetic.n_eval=8", "video.max_frames=8", "video.max_video_tokens=256",
        "rollout.sampling.max_new_tokens=24", "rollout.filter_equal_rewards=false",
        "rollout.max_model_len=2048", "learner.groups_per_step=4", "checkpoint.every_steps=2",
        "stages=[{name: rl, algorithm: grpo, total_steps: 3}]",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run,) = (tmp_path / "out").iterdir()
    rl = run / "stages" / "rl"
    assert (rl / "DONE").is_file()
    accounting = json.loads((rl / "accounting.json").read_text())
    assert accounting["closed"] and accounting["applied"] == 3 * 4, accounting
    rows = [json.loads(line) for line in (rl / "metrics.jsonl").read_text().splitlines()]
    versions = [r["rollout/weight_version"] for r in rows if "loss" in r]
    assert versions[-1] >= 2  # the engine woke up and took the weight pushes

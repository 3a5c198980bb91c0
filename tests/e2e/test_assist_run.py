"""The Pause-and-Think path end to end on CPU, in one stage mixing text, image and video
records: configs/debug_mix_cpu.yaml (debug_assist_cpu.yaml — the synthetic assistive task,
`thinking_answer` format, SFT then GRPO whose free-form answers are judged by the rule-based
stand-in — with the synthetic image tasks and text questions mixed in by weight), shortened,
on two learner ranks: the run finishes, every kind was published and trained (the ranks' vision
calls kept in step), the judge scored the rollouts' answers (none left unjudged), the group
accounting closes, and the report gives held-out figures per category, naming the judge as a
stand-in."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from system.reporting.metrics import read_metrics

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "debug_mix_cpu.yaml"
SHORT = [
    "stages[0].total_steps=40", "stages[1].total_steps=4", "eval.max_prompts=20",
    "data.synthetic.n_assist=80", "data.synthetic.n_assist_eval=20",
    "data.synthetic.n_image=24", "data.synthetic.n_text=24",
    # Every group published, even one whose rewards are all equal (after 40 SFT steps the
    # text questions' often are): each kind must reach the learner in this short stage.
    "rollout.filter_equal_rewards=false",
    # The debug config's synthetic video tasks are not trained here: a token set of them.
    "data.synthetic.n_train=4", "data.synthetic.n_eval=0",
]  # fmt: skip


def test_a_mixed_stage_trains_the_assistive_task_with_a_judge_and_reports_per_category(
    tmp_path: Path,
):
    proc = subprocess.run(
        [sys.executable, "-m", "system.cli", "train", str(CONFIG),
         f"output_dir={tmp_path / 'out'}", *SHORT],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "judged by rule-based stand-in" in proc.stdout
    (run,) = (tmp_path / "out").iterdir()
    rl = run / "stages" / "rl"
    accounting = json.loads((rl / "accounting.json").read_text())
    assert accounting["closed"] and accounting["published"] > 0
    rows = read_metrics(rl / "metrics.jsonl")
    # Every kind of the mix was published (and the stage's steps applied them all).
    for kind in ("video", "image", "text"):
        assert max(r.get(f"rollout/groups_published_{kind}", 0) for r in rows) > 0, kind
    assert accounting["dead_lettered"] == 0, accounting  # no group the learner refused
    judged = max(r.get("rollout/judge_answers", 0) for r in rows)
    assert judged > 0 and max(r.get("rollout/groups_unjudged", 0) for r in rows) == 0
    evals = sorted((rl / "eval").glob("step_*.json"))
    assert len(evals) == 2
    last = json.loads(evals[-1].read_text())
    assert set(last["modes"]) == {"answer"} and "stand-in" in last["judge"]
    assert set(last["modes"]["answer"]["tasks"]) == {"Factual/Past", "Future/Planning"}
    # Rows whose reply has an <answer> are judged; one without is graded 0 by the fallback.
    assert any(r["modes"]["answer"]["judged"] for r in last["rows"])
    report = (run / "report.md").read_text()
    assert "### Per task, answer" in report and "| Future/Planning |" in report
    assert "Free-form answers judged by rule-based stand-in" in report

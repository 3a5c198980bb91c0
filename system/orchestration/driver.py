"""The driver of `reelrl train`: the whole process topology is declared here, in one place.

`train()` validates the config (before anything starts; every path made absolute), prepares
the run directory and assets, connects to Ray, checks that every node that will run a role
sees the run directory, the model and the data (`storage`), starts or reaches the queue's
Redis, and runs the stages in order, each from the previous stage's HF export. A stage's
processes come from `Topology`: placement groups and learner ranks (DeepSpeed, one Ray actor per rank) for every stage, plus
rollout actors and the weight-sync group for GRPO stages. Actors and learner never spawn each
other. SIGINT/SIGTERM stop after the current step with a final checkpoint; `--resume RUN_DIR`
skips finished stages and continues the current one from its last committed checkpoint.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from system.config import RunConfig, StageConfig, load_config, stage_config
from system.orchestration.runtime import (
    QueueBackend,
    RunDirs,
    StopFlag,
    connect_ray,
    create_run_dir,
    leave_job_copy,
    preflight,
    prepare_assets,
    refuse_job_copy,
    start_queue_backend,
)
from system.orchestration.storage import check_shared_storage
from system.orchestration.topology import Topology
from system.reporting.metrics import MetricsLogger
from system.transport import checkpoint as ckpt

log = logging.getLogger("reelrl.driver")


@dataclass
class StageResult:
    """How a stage ended: its last step, its HF export, and whether a signal stopped it."""

    name: str
    step: int
    export: Path
    stopped: bool = False
    metrics: dict[str, float] = field(default_factory=dict)


def train(
    config_path: str, overrides: list[str], resume: str | None = None, base_dir: str | None = None
) -> Path:
    """Run every stage of the config; returns the run directory. Relative paths (the config's,
    `resume`) resolve against `base_dir`, by default the current directory."""
    # Fixed now, before Ray starts: every process of the run, on every node, gets the same
    # absolute paths, and the driver no longer needs its working directory.
    base = Path(base_dir).absolute() if base_dir else Path.cwd()
    config = load_config(config_path, overrides, base_dir=base)  # refused here, before anything
    resume = None if resume is None else str(base / resume)
    preflight(config)
    refuse_job_copy(config, resume)
    leave_job_copy()
    dirs = create_run_dir(config, resume)
    print(f"run directory: {dirs.root}", flush=True)
    prepare_assets(config)
    where = connect_ray(config, min_cpus=_cpus_needed(config))
    print(f"ray: {where}", flush=True)
    check_shared_storage(config, dirs.root)
    # After ray.init, which installs its own SIGTERM handler in this process.
    with StopFlag() as stop:
        backend = start_queue_backend(config, dirs)
        try:
            model_path = config.model.path
            for index, stage in enumerate(config.stages):
                result = _finished(dirs, stage) or run_stage(
                    config, index, model_path, dirs, backend, stop
                )
                model_path = str(result.export)
                if result.stopped:
                    print(f"stopped by {stop.reason}; resume with --resume {dirs.root}")
                    break
        finally:
            backend.stop()
    _report(dirs)
    return dirs.root


def _report(dirs: RunDirs) -> None:
    """Write report.md and the plots; print the summary table."""
    from system.reporting.report import write_report

    table = write_report(dirs.root)
    if table:
        print(table)
    print(f"report: {dirs.root / 'report.md'}", flush=True)


def run_stage(
    config: RunConfig,
    index: int,
    model_path: str,
    dirs: RunDirs,
    backend: QueueBackend,
    stop: StopFlag,
) -> StageResult:
    """Start the stage's processes, step to its total, checkpoint, and tear down."""
    stage = config.stages[index]
    cfg = stage_config(config, index)
    run_id = dirs.root.name
    cfg = cfg.model_copy(
        update={"name": run_id, "queue": cfg.queue.model_copy(update={"url": backend.url})}
    )
    print(f"stage {index + 1}/{len(config.stages)}: {stage.name} ({stage.algorithm}, "
          f"{stage.total_steps} steps) from {model_path}", flush=True)  # fmt: skip
    topology = Topology(cfg, stage, model_path, dirs, backend, stop=lambda: stop.requested)
    metrics_log = MetricsLogger(dirs.stage(stage.name), cfg.logging, stage.total_steps)
    try:
        topology.start()
        return _step_loop(cfg, stage, topology, metrics_log, dirs, stop)
    finally:
        metrics_log.close()
        topology.shutdown()


def _step_loop(
    cfg: RunConfig,
    stage: StageConfig,
    topology: Topology,
    metrics_log: MetricsLogger,
    dirs: RunDirs,
    stop: StopFlag,
) -> StageResult:
    step = topology.resume()
    topology.begin(step)
    evals = StageEvals(cfg, stage, topology, metrics_log, dirs)
    if not evals.done_any():
        evals.run(step)  # the previous stage's weights: the baseline RL is measured against
    last_checkpoint = step
    metrics: dict[str, float] = {}
    # One loop: a step, or at the end (or on a stop request) the final checkpoint. `checkpoint`
    # returns the learners' step afterwards: a rank that died while saving restarts the group
    # from the last committed checkpoint, and the loop goes on to redo the steps after it.
    while True:
        finishing = step >= stage.total_steps or stop.requested
        if finishing and (
            step > last_checkpoint or ckpt.latest(dirs.checkpoints(stage.name)) is None
        ):
            step = last_checkpoint = topology.checkpoint()
            finishing = step >= stage.total_steps or stop.requested
        if finishing:
            break
        stepped = topology.step()
        if stepped is None:  # a stop request interrupted the wait for rollout groups
            continue
        metrics, step = stepped, int(stepped["step"])
        metrics_log.log(step, metrics, stage=stage.name)
        if step % cfg.checkpoint.every_steps == 0:
            step = last_checkpoint = topology.checkpoint()
        if evals.periodic(step) and step < stage.total_steps:
            evals.run(step)
    if not stop.requested and evals.enabled:
        if step % cfg.weight_sync.every_steps:
            topology.push_weights(step)  # the engines evaluate the final weights
        evals.run(step)
    accounting = topology.finish()
    if accounting is not None:
        (dirs.stage(stage.name) / "accounting.json").write_text(json.dumps(accounting, indent=1))
        print("groups: " + ", ".join(f"{k} {v}" for k, v in accounting.items()), flush=True)
    export = _export_dir(dirs, stage)
    result = StageResult(stage.name, step, export, stopped=stop.requested, metrics=metrics)
    if not result.stopped:
        dirs.done_marker(stage.name).write_text(
            json.dumps({"step": step, "export": str(export), "finished_at": time.time()})
        )
    return result


class StageEvals:
    """Held-out evaluations of a GRPO stage on its rollout engines (`Topology.evaluate`): each
    saved as <stage>/eval/step_NNNNNN.json, its figures logged as `eval/<mode>/<name>`, and a
    line printed. SFT stages have no engines: their weights are evaluated at the start of the
    GRPO stage that follows."""

    def __init__(
        self,
        cfg: RunConfig,
        stage: StageConfig,
        topology: Topology,
        metrics_log: MetricsLogger,
        dirs: RunDirs,
    ) -> None:
        self.cfg, self.stage, self.topology, self.metrics_log = cfg, stage, topology, metrics_log
        self.dir = dirs.stage(stage.name) / "eval"
        self.enabled = stage.algorithm == "grpo" and cfg.eval.enabled and bool(cfg.data.eval)

    def done_any(self) -> bool:
        return not self.enabled or any(self.dir.glob("step_*.json"))

    def periodic(self, step: int) -> bool:
        every = self.cfg.eval.every_steps
        return self.enabled and every > 0 and step % every == 0

    def run(self, step: int) -> None:
        if not self.enabled:
            return
        started = time.monotonic()
        report = self.topology.evaluate()
        if report is None:
            return
        report.update(step=step, stage=self.stage.name, eval_s=time.monotonic() - started)
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"step_{step:06d}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=1, sort_keys=True))
        tmp.replace(path)
        flat = {
            f"eval/{mode}/{key}": float(value)
            for mode, figures in report["modes"].items()
            for key, value in figures.items()
            if isinstance(value, int | float)
        }
        self.metrics_log.record(step, flat, stage=self.stage.name)
        figures = "; ".join(
            f"{mode} reward {m['reward']:.3f}±{m['reward_se']:.3f} acc {m['accuracy']:.3f} "
            f"think {m['think_ratio']:.2f}"
            for mode, m in report["modes"].items()
        )
        n, seconds = len(report["rows"]), report["eval_s"]
        judge = f"; free-form answers judged by {report['judge']}" if report.get("judge") else ""
        print(f"[{self.stage.name}] eval at step {step} ({n} prompts, {seconds:.0f}s): "
              f"{figures}{judge}")  # fmt: skip


def _export_dir(dirs: RunDirs, stage: StageConfig) -> Path:
    latest = ckpt.latest(dirs.checkpoints(stage.name))
    if latest is None or not (latest / "hf" / "config.json").is_file():
        raise RuntimeError(
            f"stage {stage.name}: no HF export in its last checkpoint ({latest}); "
            "checkpoint.export_hf must stay on for stages to chain"
        )
    return latest / "hf"


def _finished(dirs: RunDirs, stage: StageConfig) -> StageResult | None:
    marker = dirs.done_marker(stage.name)
    if not marker.is_file():
        return None
    done = json.loads(marker.read_text())
    print(f"stage {stage.name}: already finished at step {done['step']}", flush=True)
    return StageResult(stage.name, int(done["step"]), Path(done["export"]))


def _cpus_needed(config: RunConfig) -> float:
    r = config.resources
    learners = config.learner.num_ranks * r.cpus_per_learner_rank
    engines = config.rollout.num_engines * r.cpus_per_engine
    return learners + engines + 1

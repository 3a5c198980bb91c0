"""The driver of `reelrl train`: the whole process topology is declared here, in one place.

`train()` validates the config (before anything starts), prepares the run directory and
assets, connects to Ray, starts or reaches the queue's Redis, and runs the stages in order,
each from the previous stage's HF export. A stage's processes come from `Topology`:
placement groups and learner ranks (DeepSpeed, one Ray actor per rank) for every stage, plus
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
from typing import Any

from system import checkpoint as ckpt
from system.config import RunConfig, StageConfig, load_config
from system.metrics import MetricsLogger
from system.runtime import (
    QueueBackend,
    RunDirs,
    RunSetupError,
    StopFlag,
    connect_ray,
    create_run_dir,
    preflight,
    prepare_assets,
    start_queue_backend,
)

log = logging.getLogger("reelrl.driver")


@dataclass
class StageResult:
    """How a stage ended: its last step, its HF export, and whether a signal stopped it."""

    name: str
    step: int
    export: Path
    stopped: bool = False
    metrics: dict[str, float] = field(default_factory=dict)


def train(config_path: str, overrides: list[str], resume: str | None = None) -> Path:
    """Run every stage of the config; returns the run directory."""
    config = load_config(config_path, overrides)  # refused here, before anything starts
    preflight(config)
    dirs = create_run_dir(config, resume)
    print(f"run directory: {dirs.root}", flush=True)
    prepare_assets(config)
    with StopFlag() as stop:
        where = connect_ray(config, min_cpus=_cpus_needed(config))
        print(f"ray: {where}", flush=True)
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
    return dirs.root


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
    cfg = config.for_stage(index)
    run_id = dirs.root.name
    cfg = cfg.model_copy(
        update={"name": run_id, "queue": cfg.queue.model_copy(update={"url": backend.url})}
    )
    print(f"stage {index + 1}/{len(config.stages)}: {stage.name} ({stage.algorithm}, "
          f"{stage.total_steps} steps) from {model_path}", flush=True)  # fmt: skip
    topology = Topology(cfg, stage, model_path, dirs, backend)
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
    last_checkpoint = step
    metrics: dict[str, float] = {}
    while step < stage.total_steps and not stop.requested:
        metrics = topology.step()
        step = int(metrics["step"])
        metrics_log.log(step, metrics, stage=stage.name)
        if step % cfg.checkpoint.every_steps == 0:
            topology.checkpoint()
            last_checkpoint = step
    if step > last_checkpoint or ckpt.latest(dirs.checkpoints(stage.name)) is None:
        topology.checkpoint()
    export = _export_dir(dirs, stage)
    result = StageResult(stage.name, step, export, stopped=stop.requested, metrics=metrics)
    if not result.stopped:
        dirs.done_marker(stage.name).write_text(
            json.dumps({"step": step, "export": str(export), "finished_at": time.time()})
        )
    return result


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


class Topology:
    """The processes of one stage: learner ranks (every stage) and, for GRPO, the rollout
    actors and their weight-sync group. Declared and torn down here only."""

    def __init__(
        self,
        config: RunConfig,
        stage: StageConfig,
        model_path: str,
        dirs: RunDirs,
        backend: QueueBackend,
    ) -> None:
        self.config = config
        self.stage = stage
        self.model_path = model_path
        self.dirs = dirs
        self.backend = backend
        self.learners: list[Any] = []
        self.groups: list[Any] = []

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        if self.stage.algorithm == "grpo":
            raise RunSetupError(
                f"stage {self.stage.name}: GRPO stages need the rollout actors, which this "
                "build of the driver does not start yet; run SFT stages only"
            )
        self._start_learners()

    def shutdown(self) -> None:
        import ray

        if self.learners:
            try:
                ray.get([w.shutdown.remote() for w in self.learners], timeout=60)
            except (ray.exceptions.RayError, TimeoutError) as exc:
                log.warning("learner shutdown: %s", exc)
        for actor in self.learners:
            ray.kill(actor)
        for group in self.groups:
            ray.util.remove_placement_group(group)
        self.learners, self.groups = [], []

    # ----------------------------------------------------------------- the stage

    def resume(self) -> int:
        """Load the last committed checkpoint on every rank; the step to continue from."""
        import ray

        resumed = ray.get([w.resume.remote() for w in self.learners])
        step = ray.get(self.learners[0].__ray_call__.remote(lambda w: w.global_step))
        if resumed[0]:
            print(f"stage {self.stage.name}: resumed at step {step}", flush=True)
        return int(step)

    def step(self) -> dict[str, float]:
        """One optimizer step on every rank; rank 0's metrics."""
        import ray

        return ray.get([w.step.remote() for w in self.learners])[0]

    def checkpoint(self) -> None:
        import ray

        paths = ray.get([w.save_checkpoint.remote() for w in self.learners])
        print(f"checkpoint: {paths[0]}", flush=True)

    # ----------------------------------------------------------------- placement

    def _start_learners(self) -> None:
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from learner.worker import LearnerWorker

        cfg, r = self.config, self.config.resources
        ranks = cfg.learner.num_ranks
        bundle = {"CPU": r.cpus_per_learner_rank}
        if r.gpus_per_learner_rank:
            bundle["GPU"] = r.gpus_per_learner_rank
        group = placement_group([dict(bundle) for _ in range(ranks)], strategy="PACK")
        self.groups.append(group)
        ray.get(group.ready(), timeout=300)
        addr, port = ray.get(
            _rendezvous.options(
                num_cpus=0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(group, 0),
            ).remote()
        )
        remote = ray.remote(LearnerWorker)
        env = {"DS_ACCELERATOR": "cuda" if r.gpus_per_learner_rank else "cpu"}
        env.update(self.backend.actor_env(cfg))
        self.learners = [
            remote.options(
                num_cpus=r.cpus_per_learner_rank,
                num_gpus=r.gpus_per_learner_rank,
                scheduling_strategy=PlacementGroupSchedulingStrategy(group, rank),
                runtime_env={"env_vars": env},
            ).remote(
                cfg,
                rank,
                ranks,
                addr,
                port,
                algorithm=self.stage.algorithm,
                model_path=self.model_path,
                checkpoint_dir=str(self.dirs.checkpoints(self.stage.name)),
            )
            for rank in range(ranks)
        ]


def _rendezvous_impl() -> tuple[str, int]:
    import socket

    import ray

    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    return ray.util.get_node_ip_address(), port


def _make_rendezvous() -> Any:
    import ray

    return ray.remote(_rendezvous_impl)


class _LazyRemote:
    """A Ray remote function created on first use, so importing this module needs no Ray."""

    def __init__(self, factory: Any) -> None:
        self._factory = factory
        self._fn: Any = None

    def options(self, **kwargs: Any) -> Any:
        if self._fn is None:
            self._fn = self._factory()
        return self._fn.options(**kwargs)


_rendezvous = _LazyRemote(_make_rendezvous)

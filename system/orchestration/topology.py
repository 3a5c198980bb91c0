"""The processes of one stage, declared in one place: placement groups, learner ranks
(DeepSpeed, one Ray actor per rank) and, for GRPO stages, the rollout actors and the
weight-sync group between learner rank 0 and every vLLM engine.

Order for GRPO: rollout actors start their engines; learner ranks start with rank 0 holding a
`LazySender` (the gloo/NCCL sender is built inside rank 0's process, where its sockets live);
the first export forms the weight-sync group and pushes the full weights; then the actors'
generation loops run while the driver steps the learner. After each step the driver records
the learner's version in Redis (the actors' admission control reads it) and, every
`weight_sync.every_steps`, exports the trainable weights to the engines. Colocated
(`resources.colocate`, one GPU shared): instead of free-running loops, the engines generate
the next step's groups, sleep through the learner step, and wake for the weight push.

Faults (a dead rollout actor, a failed weight push, a dead learner rank) are recovered by
`system.orchestration.recovery`; a stop request (SIGINT/SIGTERM) interrupts a step that waits for groups.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from system.config import RunConfig, StageConfig
from system.config.errors import WeightSyncError
from system.config.logs import library_env
from system.orchestration.colocation import Handover
from system.orchestration.placement import (
    LazySender,
    engine_bundles,
    placement,
    rendezvous,
    weight_sender,
)
from system.orchestration.recovery import (
    LearnerDied,
    actor_stats,
    collect,
    dead_actors,
    restart_learners,
    resync,
)
from system.orchestration.runtime import QueueBackend, RunDirs
from system.transport.keys import QueueKeys, publish_versions
from system.transport.redis_server import retrying

log = logging.getLogger("reelrl.driver")

# A learner step still waiting after this long prints what the rollout side is doing.
WAIT_REPORT_S = 60.0


class StageObserver(Protocol):
    """Watches a stage from the driver (fault injection, tests); see `observing`."""

    def began(self, topology: Topology, step: int) -> None:
        """The stage's processes are up and generating from `step`."""
        ...

    def stepped(self, topology: Topology, metrics: dict[str, float]) -> None:
        """A learner step completed; its weight push (when due) comes next."""
        ...


OBSERVERS: list[StageObserver] = []


@contextlib.contextmanager
def observing(observer: StageObserver) -> Iterator[StageObserver]:
    """Every `Topology` of this process reports to `observer` inside the block."""
    OBSERVERS.append(observer)
    try:
        yield observer
    finally:
        OBSERVERS.remove(observer)


class Topology:
    """Start, step, checkpoint and tear down one stage's processes (see module docstring)."""

    def __init__(
        self,
        config: RunConfig,
        stage: StageConfig,
        model_path: str,
        dirs: RunDirs,
        backend: QueueBackend,
        stop: Callable[[], bool] | None = None,
    ) -> None:
        self.config = config.model_copy(
            update={"model": config.model.model_copy(update={"path": model_path})}
        )
        self.stage = stage
        self.grpo = stage.algorithm == "grpo"
        self.colocated = self.grpo and config.resources.colocate
        # Engines release GPU memory while the learner steps; on CPU there is none to free and
        # colocated means only that generation and training alternate (no overlap).
        self.sleeps = self.colocated and config.resources.gpus_per_engine > 0
        self.dirs = dirs
        self.backend = backend
        self.learners: list[Any] = []
        self.actors: list[Any] = []
        self._actor_places: list[tuple[Any, list[int]]] = []
        """Each rollout actor's scheduling strategy and worker bundles (to replace one)."""
        self.actor_runs: list[Any] = []
        self.groups: list[Any] = []
        self.learner_group: Any = None
        self.redis: Any = None
        self.stop_requested = stop or (lambda: False)
        self.step_now = 0
        self.learner_restarts = 0
        self.recoveries: list[dict[str, Any]] = []
        """{"kind", "reason", "started", "finished"} per recovery (wall times)."""
        self._interrupting = False
        self._last_report = 0.0

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Start the stage's processes. The rollout engines and the learner ranks start side by
        side (each is mostly imports and model loading, tens of seconds); colocated on a GPU,
        the engines first, so vLLM sizes its memory before the learner takes any."""
        import ray

        self.learner_group = self._reserve_learners()  # first: whole nodes go to the learner
        starting = self._start_rollout_actors() if self.grpo else []
        if self.colocated:
            ray.get(starting)
            starting = []
            if self.sleeps:
                self._handover().release()  # asleep before the learner takes its share
        self.start_learners()
        ray.get(starting)
        print(self.placement_report(), flush=True)

    def placement_report(self) -> str:
        """Which node each learner rank and rollout actor runs on, from Ray."""
        import ray

        from system.orchestration.placement import describe_placement, node_of

        learners = ray.get([w.__ray_call__.remote(node_of) for w in self.learners])
        actors = ray.get([a.__ray_call__.remote(node_of) for a in self.actors])
        return describe_placement({"learner rank": learners, "rollout actor": actors})

    def begin(self, step: int) -> None:
        """After resume: push the learner's weights to the engines and start generating."""
        if not self.grpo:
            return
        self.step_now = step
        self.clear_interrupt()
        if self.sleeps:
            self._handover().refill(self.export_weights)
        else:
            self.export_weights()
        if not self.colocated:
            self.actor_runs = [a.run.remote() for a in self.actors]
        for observer in list(OBSERVERS):
            observer.began(self, step)

    def finish(self) -> dict[str, Any] | None:
        """Stop generating and return the stage's group accounting (GRPO only). Actor
        counters are read before the actors stop, so a batch in flight then is not counted
        as filtered; the queue figures are read after, when nothing changes any more."""
        if not self.grpo or not self.actors:
            return None
        import ray

        from system.reporting.accounting import read_balance

        stats = ray.get([a.stats.remote() for a in self.actors])
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors, self.actor_runs = [], []
        cfg = self.config
        return self._redis(
            "accounting", lambda: read_balance(self.redis, cfg.queue, cfg.name, stats)
        )

    def shutdown(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.stop_learners()
        for group in self.groups:
            ray.util.remove_placement_group(group)
        self.learners, self.actors, self.actor_runs, self.groups = [], [], [], []

    def stop_learners(self, graceful: bool = True) -> None:
        import ray

        if self.learners and graceful:
            try:
                ray.get([w.shutdown.remote() for w in self.learners], timeout=60)
            except (ray.exceptions.RayError, TimeoutError) as exc:
                log.warning("learner shutdown: %s", exc)
        for actor in self.learners:
            ray.kill(actor, no_restart=True)
        self.learners = []

    # ----------------------------------------------------------------- the stage

    def resume(self) -> int:
        """Load the last committed checkpoint on every rank; the step to continue from."""
        import ray

        resumed = ray.get([w.resume.remote() for w in self.learners])
        step = int(ray.get(self.learners[0].__ray_call__.remote(lambda w: w.global_step)))
        if resumed[0]:
            print(f"stage {self.stage.name}: resumed at step {step}", flush=True)
        self.step_now = step
        return step

    def step(self) -> dict[str, float] | None:
        """One optimizer step on every rank (and the weight push when due); the metrics, or
        None when a stop request interrupted the wait for groups. Recovers from dead rollout
        actors, failed weight pushes and dead learner ranks on the way (system.orchestration.recovery)."""
        while True:
            try:
                metrics = self._step_once()
            except LearnerDied as exc:
                restart_learners(self, str(exc))
                continue
            if "interrupted" not in metrics:
                return metrics
            if self.stop_requested():
                return None

    def _step_once(self) -> dict[str, float]:

        if self.colocated:
            self._generate_then_sleep()
        self._last_report = time.monotonic()
        refs = [w.step.remote() for w in self.learners]
        metrics = dict(collect(refs, on_wait=self._while_waiting)[0])
        if "interrupted" in metrics:
            self.clear_interrupt()
            if dead_actors(self.actor_runs):
                resync(self, "a rollout actor died and was restarted")
            return metrics
        self.step_now = int(metrics["step"])
        for observer in list(OBSERVERS):
            observer.stepped(self, metrics)
        if not self.grpo:
            return metrics
        if self.sleeps:  # weights woken for the push, the KV cache after it
            self._handover().refill(lambda: self._push_after_step(metrics))
        else:
            self._push_after_step(metrics)
        metrics.update(self.rollout_metrics())
        return metrics

    def _push_after_step(self, metrics: dict[str, float]) -> None:
        # A re-formed group pushes the whole version: that push is this step's weight sync.
        if dead_actors(self.actor_runs):
            metrics["weight_sync_s"] = resync(self, "a rollout actor died and was restarted")
        elif self.step_now % self.config.weight_sync.every_steps == 0:
            try:
                metrics["weight_sync_s"] = self.export_weights(full=False)
            except WeightSyncError as exc:
                metrics["weight_sync_s"] = resync(self, f"weight push failed: {exc}")

    def _handover(self) -> Handover:
        import ray

        return Handover(self.actors, ray.get)

    def push_weights(self, step: int) -> None:
        """Export the learner's weights to the engines now (outside the every_steps rhythm)."""
        import ray

        ray.get([w.export.remote() for w in self.learners])
        self._redis("versions", lambda: publish_versions(self.redis, self._keys(), weights=step))

    def evaluate(self) -> dict[str, Any] | None:
        """Held-out evaluation (`eval.max_prompts` of `data.eval`) on the engines' current
        weights, the records split across the rollout actors; graded rows and per-mode
        figures (actors.evaluation, system.reporting.evaluation). None when the stage has no engines or no eval data."""
        import ray

        from actors.evaluation import eval_modes
        from actors.gating import default_tau
        from system.data.records import split_records
        from system.reporting.evaluation import summarize

        cfg = self.config
        if not self.actors or not cfg.data.eval:
            return None
        records = split_records(cfg.data, "eval")[: cfg.eval.max_prompts]
        tau = default_tau(cfg.model.family, cfg.eval.tau)
        e, n, modes = cfg.eval, len(self.actors), eval_modes(cfg)
        parts = ray.get([
            a.evaluate.remote(records[i::n], modes, tau, e.first_max_tokens, e.think_max_tokens)
            for i, a in enumerate(self.actors)
        ])  # fmt: skip
        rows = [row for part in parts for row in part["rows"]]
        report = {
            "tau": tau,
            "weight_version": min(p["weight_version"] for p in parts),
            "skipped_videos": sum(p["skipped_videos"] for p in parts),
            "modes": summarize(rows, modes),
            "rows": rows,
        }
        if parts[0].get("judge"):
            report["judge"] = parts[0]["judge"]
        return report

    def checkpoint(self) -> int:
        """Save a checkpoint on every rank; the learners' step afterwards. A rank that dies
        while saving restarts the group from the last checkpoint that committed (this one if
        it did): the step returned is then that checkpoint's, and the caller redoes the rest."""
        try:
            paths = collect([w.save_checkpoint.remote() for w in self.learners])
        except LearnerDied as exc:
            restart_learners(self, f"{exc} (while checkpointing)")
        else:
            print(f"checkpoint: {paths[0]}", flush=True)
        return self.step_now

    def rollout_metrics(self) -> dict[str, float]:
        """Actor stats summed (rates, counts) or averaged (means), plus the queue's lag."""

        from system.transport.keys import read_stats

        stats = actor_stats(self.actors)
        out: dict[str, float] = {}
        keys = dict.fromkeys(k for s in stats for k in s)  # per-kind counts: some actors only
        for key in keys:
            values = [float(s.get(key, 0.0)) for s in stats]
            mean_like = key.endswith(("_mean", "_ratio", "_rate", "version", "length"))
            out[f"rollout/{key}"] = sum(values) / len(values) if mean_like else sum(values)
        cfg = self.config
        q = self._redis("stats", lambda: read_stats(self.redis, cfg.queue, cfg.name))
        # Lag: groups published and not yet delivered to the learner (the stream's length also
        # counts delivered entries kept until the checkpoint that acks them).
        out.update({"queue/length": q["length"], "queue/dead_letters": q["dead_letters"]})
        out["queue/lag"] = q["undelivered"]
        out["lag"] = float(q["undelivered"])
        return out

    # ----------------------------------------------------------------- waiting

    def _while_waiting(self) -> None:
        """While the ranks wait for groups: interrupt them on a stop request or a dead
        rollout actor; every WAIT_REPORT_S say what the rollout side is doing."""
        if not self.grpo:
            return
        if not self._interrupting and (self.stop_requested() or dead_actors(self.actor_runs)):
            self._interrupting = True
            self._redis("interrupt", lambda: self.redis.set(self._keys().interrupt, 1))
        if time.monotonic() - self._last_report >= WAIT_REPORT_S:
            self._last_report = time.monotonic()
            print(self._waiting_report(), flush=True)

    def _waiting_report(self) -> str:
        """Why a GRPO step is slow: what the actors generated and what the filter dropped."""
        m = self.rollout_metrics()
        generated = m["rollout/groups_published"] + m["rollout/groups_filtered"]
        line = (
            f"waiting for rollout groups: {generated:.0f} generated, "
            f"{m['rollout/groups_filtered']:.0f} filtered, "
            f"{m['rollout/groups_published']:.0f} published, {m['lag']:.0f} in the queue"
        )
        if generated and m["rollout/groups_published"] == 0:
            line += (
                " - every group had equal rewards (no learning signal); train the format "
                "first (an SFT stage) or set rollout.filter_equal_rewards=false"
            )
        return line

    def _generate_then_sleep(self) -> None:
        """Colocated mode (learner and engines share a GPU): the engines generate until the
        queue holds the next step's groups, then sleep, releasing their memory for the learner
        step; `step` wakes them before the weight push."""
        import ray

        from system.transport.keys import read_stats

        needed = self.config.learner.groups_per_step
        while read_stats(self.redis, self.config.queue, self.config.name)["undelivered"] < needed:
            ray.get([a.step.remote() for a in self.actors])
        if self.sleeps:
            self._handover().release()

    # ----------------------------------------------------------------- weights and recovery

    def export_weights(self, full: bool = True) -> float:
        """Export the learner's weights (all of them when `full`) as version `step_now` and
        record it for the actors' admission; seconds the export took."""
        exported = collect([w.export.remote(include_frozen=full) for w in self.learners])
        keys, step = self._keys(), self.step_now
        self._redis("versions", lambda: publish_versions(self.redis, keys, step, weights=step))
        return float(exported[0]["export_s"])

    def clear_interrupt(self) -> None:
        """Let the learner ranks wait for groups again (after an interrupted step)."""
        self._interrupting = False
        self._redis("clear interrupt", lambda: self.redis.delete(self._keys().interrupt))

    def _keys(self) -> QueueKeys:
        return QueueKeys.of(self.config.queue.stream_prefix, self.config.name)

    def _redis(self, what: str, fn: Callable[[], Any]) -> Any:
        return retrying(what, fn, self.config.queue.reconnect_max_s)

    # ----------------------------------------------------------------- placement

    def start_learners(self) -> None:
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from learner.worker import LearnerWorker

        cfg, r = self.config, self.config.resources
        ranks = cfg.learner.num_ranks
        if self.learner_group is None:
            self.learner_group = self._reserve_learners()
        group = self.learner_group
        addr, port, sync_port = rendezvous(group)
        sender = self.new_sender(addr, sync_port) if self.grpo else None
        env = {"DS_ACCELERATOR": "cuda" if r.gpus_per_learner_rank else "cpu"}
        env.update(self.backend.actor_env(cfg))
        env.update(library_env())
        remote = ray.remote(LearnerWorker)
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
                model_path=cfg.model.path,
                checkpoint_dir=str(self.dirs.checkpoints(self.stage.name)),
                sender=sender if rank == 0 else None,
            )
            for rank in range(ranks)
        ]

    def _reserve_learners(self) -> Any:
        """The learner ranks' placement group: one node (STRICT_PACK) when they fit one."""
        r = self.config.resources
        group = placement(
            self.config.learner.num_ranks, r.cpus_per_learner_rank, r.gpus_per_learner_rank,
            r.learner_node_label, role="learner",
        )  # fmt: skip
        self.groups.append(group)
        return group

    def _start_rollout_actors(self) -> list[Any]:
        """Create the rollout actors, packed in their own placement group; their `start`
        calls, not waited for."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from actors.rollout import remote_rollout_actor
        from system.data.records import load_shard
        from system.transport.redis_server import connect

        cfg, r = self.config, self.config.resources
        self.redis = connect(cfg.queue, password=self.backend.password)
        n = cfg.rollout.num_engines
        load_shard(cfg.data, 0, n)  # refuses here, not in every actor, too few records
        tp = cfg.rollout.tensor_parallel_size
        bundles, workers = engine_bundles(
            n, tp, r.cpus_per_engine, r.gpus_per_engine, r.rollout_node_label
        )
        group = placement(
            len(bundles), r.cpus_per_engine, r.gpus_per_engine, r.rollout_node_label,
            role="rollout", bundles=bundles,
        )  # fmt: skip
        self.groups.append(group)
        self._actor_places = [
            (
                PlacementGroupSchedulingStrategy(
                    group, bundles_of[0], placement_group_capture_child_tasks=len(bundles_of) > 1
                ),
                bundles_of,
            )
            for bundles_of in workers
        ]
        self.actors = [
            remote_rollout_actor(cfg, i, n, strategy, bundles_of)
            for i, (strategy, bundles_of) in enumerate(self._actor_places)
        ]
        return [a.start.remote() for a in self.actors]

    def replace_actor(self, index: int) -> Any:
        """A fresh rollout actor `index` in its placement-group bundle, in place of one Ray
        stopped restarting (recovery: its node left before the cluster marked it dead)."""
        import ray

        from actors.rollout import remote_rollout_actor

        try:
            ray.kill(self.actors[index], no_restart=True)
        except Exception as exc:  # already gone: nothing to stop
            log.debug("rollout actor %d was gone already: %s", index, exc)
        strategy, bundles_of = self._actor_places[index]
        n = len(self.actors)
        self.actors[index] = remote_rollout_actor(self.config, index, n, strategy, bundles_of)
        return self.actors[index]

    def new_sender(self, address: str, port: int) -> LazySender:
        from functools import partial

        from actors.weight_transfer import colocated_backend

        ws, workers = self.config.weight_sync, self.config.rollout.tensor_parallel_size
        r = self.config.resources
        backend = colocated_backend(ws.backend, r.colocate and r.gpus_per_engine > 0)
        return LazySender(
            partial(weight_sender, backend, list(self.actors), workers, address, port, ws.timeout_s)
        )

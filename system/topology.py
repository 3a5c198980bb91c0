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
"""

from __future__ import annotations

import logging
from typing import Any

from system.config import RunConfig, StageConfig
from system.runtime import QueueBackend, RunDirs

log = logging.getLogger("reelrl.driver")

# A learner step still waiting after this long prints what the rollout side is doing.
WAIT_REPORT_S = 60.0


class LazySender:
    """A picklable `WeightSender` that builds the real one (and connects it) on first use, in
    the process that uses it: learner rank 0."""

    def __init__(self, factory: Any) -> None:
        self._factory = factory
        self._sender: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"_factory": self._factory, "_sender": None}

    def _real(self) -> Any:
        if self._sender is None:
            sender = self._factory()
            sender.connect()
            self._sender = sender
        return self._sender

    def start(self, version: int, layout: Any = None) -> None:
        self._real().start(version, layout)

    def send_bucket(self, bucket: Any) -> None:
        self._real().send_bucket(bucket)

    def finish(self, version: int) -> None:
        self._real().finish(version)


def _weight_sender(
    backend: str, handles: list[Any], workers: int, address: str, port: int, timeout_s: float
) -> Any:
    from actors.weight_transfer import build_sender
    from actors.weight_transfer.control import RayEngineClient

    clients = [RayEngineClient(h, workers) for h in handles]
    return build_sender(backend, clients, address, port, timeout_s)


class Topology:
    """Start, step, checkpoint and tear down one stage's processes (see module docstring)."""

    def __init__(
        self,
        config: RunConfig,
        stage: StageConfig,
        model_path: str,
        dirs: RunDirs,
        backend: QueueBackend,
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
        self.actor_runs: list[Any] = []
        self.groups: list[Any] = []
        self.redis: Any = None

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        if self.grpo:
            self._start_rollout_actors()
        self._start_learners()

    def begin(self, step: int) -> None:
        """After resume: push the learner's weights to the engines and start generating."""
        if not self.grpo:
            return
        import ray

        from actors.rollout import learner_version_key, publish_weights_version

        ray.get([w.export.remote(include_frozen=True) for w in self.learners])
        prefix, run = self.config.queue.stream_prefix, self.config.name
        publish_weights_version(self.redis, prefix, run, step)
        self.redis.set(learner_version_key(prefix, run), step)
        if not self.colocated:
            self.actor_runs = [a.run.remote() for a in self.actors]

    def finish(self) -> dict[str, Any] | None:
        """Stop generating and return the stage's group accounting (GRPO only). Actor
        counters are read before the actors stop, so a batch in flight then is not counted
        as filtered; the queue figures are read after, when nothing changes any more."""
        if not self.grpo or not self.actors:
            return None
        import ray

        from system.accounting import read_balance

        stats = ray.get([a.stats.remote() for a in self.actors])
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors, self.actor_runs = [], []
        return read_balance(self.redis, self.config.queue, self.config.name, stats)

    def shutdown(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        if self.learners:
            try:
                ray.get([w.shutdown.remote() for w in self.learners], timeout=60)
            except (ray.exceptions.RayError, TimeoutError) as exc:
                log.warning("learner shutdown: %s", exc)
        for actor in self.learners:
            ray.kill(actor, no_restart=True)
        for group in self.groups:
            ray.util.remove_placement_group(group)
        self.learners, self.actors, self.actor_runs, self.groups = [], [], [], []

    # ----------------------------------------------------------------- the stage

    def resume(self) -> int:
        """Load the last committed checkpoint on every rank; the step to continue from."""
        import ray

        resumed = ray.get([w.resume.remote() for w in self.learners])
        step = int(ray.get(self.learners[0].__ray_call__.remote(lambda w: w.global_step)))
        if resumed[0]:
            print(f"stage {self.stage.name}: resumed at step {step}", flush=True)
        return step

    def step(self) -> dict[str, float]:
        """One optimizer step on every rank (and the weight push when due); the metrics."""
        import ray

        if self.colocated:
            self._generate_then_sleep()
        refs = [w.step.remote() for w in self.learners]
        while True:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=WAIT_REPORT_S)
            # A rank that failed leaves the others blocked in a collective: raise its error
            # now instead of waiting for them.
            for ref in ready:
                ray.get(ref)
            if len(ready) == len(refs):
                break
            self._check_actors()
            if self.grpo:
                print(self._waiting_report(), flush=True)
        metrics = dict(ray.get(refs)[0])
        if not self.grpo:
            return metrics
        from actors.rollout import learner_version_key, publish_weights_version

        step = int(metrics["step"])
        prefix, run = self.config.queue.stream_prefix, self.config.name
        if self.sleeps:
            ray.get([a.wake_up.remote() for a in self.actors])
        if step % self.config.weight_sync.every_steps == 0:
            exported = ray.get([w.export.remote() for w in self.learners])[0]
            metrics["weight_sync_s"] = exported["export_s"]
            publish_weights_version(self.redis, prefix, run, step)
        self.redis.set(learner_version_key(prefix, run), step)
        metrics.update(self.rollout_metrics())
        return metrics

    def push_weights(self, step: int) -> None:
        """Export the learner's weights to the engines now (outside the every_steps rhythm)."""
        import ray

        from actors.rollout import publish_weights_version

        ray.get([w.export.remote() for w in self.learners])
        publish_weights_version(self.redis, self.config.queue.stream_prefix, self.config.name, step)

    def evaluate(self) -> dict[str, Any] | None:
        """Held-out evaluation (`eval.max_prompts` of `data.eval`) on the engines' current
        weights, the records split across the rollout actors; graded rows and per-mode
        figures (system.evaluation). None when the stage has no engines or no eval data."""
        import ray

        from actors.gating import default_tau
        from system.data import load_split
        from system.evaluation import summarize

        cfg = self.config
        if not self.actors or not cfg.data.eval:
            return None
        records = [r for ds in load_split(cfg.data, "eval") for r in ds.records]
        records = records[: cfg.eval.max_prompts]
        tau = default_tau(cfg.model.family, cfg.eval.tau)
        e, n = cfg.eval, len(self.actors)
        parts = ray.get([
            a.evaluate.remote(records[i::n], e.modes, tau, e.first_max_tokens, e.think_max_tokens)
            for i, a in enumerate(self.actors)
        ])  # fmt: skip
        rows = [row for part in parts for row in part["rows"]]
        return {
            "tau": tau,
            "weight_version": min(p["weight_version"] for p in parts),
            "skipped_videos": sum(p["skipped_videos"] for p in parts),
            "modes": summarize(rows, e.modes),
            "rows": rows,
        }

    def checkpoint(self) -> None:
        import ray

        paths = ray.get([w.save_checkpoint.remote() for w in self.learners])
        print(f"checkpoint: {paths[0]}", flush=True)

    def rollout_metrics(self) -> dict[str, float]:
        """Actor stats summed (rates, counts) or averaged (means), plus the queue's lag."""
        import ray

        from system.queue import read_stats

        stats = ray.get([a.stats.remote() for a in self.actors])
        out: dict[str, float] = {}
        for key in stats[0]:
            values = [float(s[key]) for s in stats]
            mean_like = key.endswith(("_mean", "_ratio", "_rate", "version", "length"))
            out[f"rollout/{key}"] = sum(values) / len(values) if mean_like else sum(values)
        q = read_stats(self.redis, self.config.queue, self.config.name)
        out.update({"queue/lag": q["length"], "queue/dead_letters": q["dead_letters"]})
        out["lag"] = float(q["length"])
        return out

    def _generate_then_sleep(self) -> None:
        """Colocated mode (learner and engines share a GPU): the engines generate until the
        queue holds the next step's groups, then sleep, releasing their memory for the learner
        step; `step` wakes them before the weight push."""
        import ray

        from system.queue import read_stats

        needed = self.config.learner.groups_per_step
        while read_stats(self.redis, self.config.queue, self.config.name)["undelivered"] < needed:
            ray.get([a.step.remote() for a in self.actors])
        if self.sleeps:
            ray.get([a.sleep.remote() for a in self.actors])

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

    def _check_actors(self) -> None:
        """A rollout loop that ended has failed (they run forever): raise its error."""
        import ray

        if not self.actor_runs:
            return
        done, _ = ray.wait(self.actor_runs, timeout=0)
        for ref in done:
            ray.get(ref)  # raises the actor's error
            raise RuntimeError("a rollout actor's generation loop ended unexpectedly")

    # ----------------------------------------------------------------- placement

    def _placement(self, count: int, cpus: float, gpus: float) -> Any:
        import ray
        from ray.util.placement_group import placement_group

        bundle = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
        group = placement_group([dict(bundle) for _ in range(count)], strategy="PACK")
        self.groups.append(group)
        ray.get(group.ready(), timeout=300)
        return group

    def _rendezvous(self, group: Any) -> tuple[str, int, int]:
        """Rank 0's node address and two free ports there: torch.distributed's and the
        weight-sync group's (whose store the sender hosts in rank 0's process)."""
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        strategy = PlacementGroupSchedulingStrategy(group, 0)
        return ray.get(
            ray.remote(_node_address).options(num_cpus=0, scheduling_strategy=strategy).remote()
        )

    def _start_learners(self) -> None:
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from learner.worker import LearnerWorker

        cfg, r = self.config, self.config.resources
        ranks = cfg.learner.num_ranks
        group = self._placement(ranks, r.cpus_per_learner_rank, r.gpus_per_learner_rank)
        addr, port, sync_port = self._rendezvous(group)
        sender = self._sender(addr, sync_port) if self.grpo else None
        env = {"DS_ACCELERATOR": "cuda" if r.gpus_per_learner_rank else "cpu"}
        env.update(self.backend.actor_env(cfg))
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

    def _start_rollout_actors(self) -> None:
        import ray

        from actors.rollout import remote_rollout_actor
        from system.data import load_split
        from system.redis_server import connect

        cfg = self.config
        self.redis = connect(cfg.queue, password=self.backend.password)
        records = [r for ds in load_split(cfg.data, "train") for r in ds.records]
        n = cfg.rollout.num_engines
        if len(records) < n:
            raise ValueError(f"{len(records)} training records cannot feed {n} rollout engines")
        self.actors = [remote_rollout_actor(cfg, records[i::n], index=i) for i in range(n)]
        ray.get([a.start.remote() for a in self.actors])

    def _sender(self, address: str, port: int) -> LazySender:
        from functools import partial

        ws, workers = self.config.weight_sync, self.config.rollout.tensor_parallel_size
        return LazySender(
            partial(
                _weight_sender, ws.backend, list(self.actors), workers, address, port, ws.timeout_s
            )
        )


def _node_address() -> tuple[str, int, int]:
    """This node's IP and two free TCP ports on it."""
    import socket

    import ray

    with socket.socket() as a, socket.socket() as b:
        a.bind(("", 0))
        b.bind(("", 0))
        ports = a.getsockname()[1], b.getsockname()[1]
    return ray.util.get_node_ip_address(), *ports

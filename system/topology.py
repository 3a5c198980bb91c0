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

Recovery, without manual action (each one is recorded in `recoveries`):
- A rollout actor that dies is restarted by Ray (`rollout.max_restarts`). The driver asks the
  learner ranks to abandon the step they wait in (the queue's interrupt key), waits for the
  actor's engine, re-forms the weight-sync group with a new sender on rank 0, pushes the full
  weights to every engine and restarts the actor's loop; the restarted actor publishes
  nothing before it has those weights.
- A weight push that fails (`WeightSyncError`: an engine died or stalled past
  `weight_sync.timeout_s`) re-forms the group the same way and pushes again.
- A learner rank whose process dies takes the whole learner group down: the driver kills the
  other ranks, starts new ones (same consumer names), resumes them from the last committed
  checkpoint (their unacked groups are re-read, applied ones skipped), re-forms the
  weight-sync group and pushes those weights; at most `learner.max_restarts` times.
- A stop request (SIGINT/SIGTERM) interrupts a step that waits for groups the same way.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from system.config import RunConfig, StageConfig
from system.placement import LazySender, placement, rendezvous, weight_sender
from system.redis_server import retrying
from system.runtime import QueueBackend, RunDirs
from system.weight_sync import WeightSyncError

log = logging.getLogger("reelrl.driver")

# A learner step still waiting after this long prints what the rollout side is doing.
WAIT_REPORT_S = 60.0
# How often a waiting driver checks the stop flag and the rollout actors.
POLL_S = 1.0
# After one rank failed, how long the others get to fail too (a dead peer breaks their
# collectives) before the failure is classified.
GRACE_S = 30.0
# Longest wait for a restarted rollout actor's engine.
ACTOR_START_S = 900.0


class LearnerDied(RuntimeError):
    """A learner rank's process died (the learner group must be restarted)."""


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

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        if self.grpo:
            self._start_rollout_actors()
        self._start_learners()

    def begin(self, step: int) -> None:
        """After resume: push the learner's weights to the engines and start generating."""
        if not self.grpo:
            return
        self.step_now = step
        self._redis("clear interrupt", lambda: self.redis.delete(self._keys().interrupt))
        self._push_weights()
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

        from system.accounting import read_balance

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
        self._stop_learners()
        for group in self.groups:
            ray.util.remove_placement_group(group)
        self.learners, self.actors, self.actor_runs, self.groups = [], [], [], []

    def _stop_learners(self, graceful: bool = True) -> None:
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
        actors, failed weight pushes and dead learner ranks on the way (module docstring)."""
        while True:
            try:
                metrics = self._step_once()
            except LearnerDied as exc:
                self._restart_learners(str(exc))
                continue
            if "interrupted" not in metrics:
                return metrics
            if self.stop_requested():
                return None

    def _step_once(self) -> dict[str, float]:
        import ray

        if self.colocated:
            self._generate_then_sleep()
        self._last_report = time.monotonic()
        refs = [w.step.remote() for w in self.learners]
        metrics = dict(self._collect(refs, on_wait=self._while_waiting)[0])
        if "interrupted" in metrics:
            self._interrupting = False
            self._redis("clear interrupt", lambda: self.redis.delete(self._keys().interrupt))
            if self._dead_actors():
                self._resync("a rollout actor died and was restarted")
            return metrics
        self.step_now = int(metrics["step"])
        for observer in list(OBSERVERS):
            observer.stepped(self, metrics)
        if not self.grpo:
            return metrics
        if self.sleeps:
            ray.get([a.wake_up.remote() for a in self.actors])
        if self._dead_actors():
            self._resync("a rollout actor died and was restarted")
        elif self.step_now % self.config.weight_sync.every_steps == 0:
            try:
                metrics["weight_sync_s"] = self._push_weights(full=False)
            except WeightSyncError as exc:
                self._resync(f"weight push failed: {exc}")
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
        paths = self._collect([w.save_checkpoint.remote() for w in self.learners])
        print(f"checkpoint: {paths[0]}", flush=True)

    def rollout_metrics(self) -> dict[str, float]:
        """Actor stats summed (rates, counts) or averaged (means), plus the queue's lag."""

        from system.queue import read_stats

        stats = actor_stats(self.actors)
        out: dict[str, float] = {}
        for key in stats[0]:
            values = [float(s[key]) for s in stats]
            mean_like = key.endswith(("_mean", "_ratio", "_rate", "version", "length"))
            out[f"rollout/{key}"] = sum(values) / len(values) if mean_like else sum(values)
        cfg = self.config
        q = self._redis("stats", lambda: read_stats(self.redis, cfg.queue, cfg.name))
        out.update({"queue/lag": q["length"], "queue/dead_letters": q["dead_letters"]})
        out["lag"] = float(q["length"])
        return out

    # ----------------------------------------------------------------- waiting

    def _collect(self, refs: list[Any], on_wait: Callable[[], None] | None = None) -> list[Any]:
        """Every rank's result. On a failure the other ranks get `GRACE_S` to end too (a
        dead peer breaks their collectives); a rank whose process died raises `LearnerDied`,
        any other error is raised as it is (NonFiniteError, CheckpointError, ...)."""
        import ray

        while True:
            ready, pending = ray.wait(refs, num_returns=len(refs), timeout=POLL_S)
            if any(_error_of(r) is not None for r in ready):
                if pending:
                    ray.wait(pending, num_returns=len(pending), timeout=GRACE_S)
                errors = [e for e in map(_error_of, refs) if e is not None]
                died = [e for e in errors if isinstance(e, ray.exceptions.RayActorError)]
                if died:
                    raise LearnerDied(f"a learner rank died: {_first_line(died[0])}")
                raise errors[0]
            if not pending:
                return ray.get(refs)
            if on_wait is not None:
                on_wait()

    def _while_waiting(self) -> None:
        """While the ranks wait for groups: interrupt them on a stop request or a dead
        rollout actor; every WAIT_REPORT_S say what the rollout side is doing."""
        if not self.grpo:
            return
        if not self._interrupting and (self.stop_requested() or self._dead_actors()):
            self._interrupting = True
            self._redis("interrupt", lambda: self.redis.set(self._keys().interrupt, 1))
        if time.monotonic() - self._last_report >= WAIT_REPORT_S:
            self._last_report = time.monotonic()
            print(self._waiting_report(), flush=True)

    def _dead_actors(self) -> list[int]:
        """Indices of rollout actors whose loop ended because the process died (Ray restarts
        them); a loop that failed or ended otherwise raises."""
        import ray

        if not self.actor_runs:
            return []
        done, _ = ray.wait(self.actor_runs, num_returns=len(self.actor_runs), timeout=0)
        dead = []
        for ref in done:
            error = _error_of(ref)
            if error is None:
                raise RuntimeError("a rollout actor's generation loop ended unexpectedly")
            if not isinstance(error, ray.exceptions.RayActorError):
                raise error
            dead.append(self.actor_runs.index(ref))
        return dead

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

        from system.queue import read_stats

        needed = self.config.learner.groups_per_step
        while read_stats(self.redis, self.config.queue, self.config.name)["undelivered"] < needed:
            ray.get([a.step.remote() for a in self.actors])
        if self.sleeps:
            ray.get([a.sleep.remote() for a in self.actors])

    # ----------------------------------------------------------------- weights and recovery

    def _push_weights(self, full: bool = True) -> float:
        """Export the learner's weights (all of them when `full`) as version `step_now` and
        record it for the actors' admission; seconds the export took."""
        from actors.rollout import learner_version_key, publish_weights_version

        exported = self._collect([w.export.remote(include_frozen=full) for w in self.learners])
        prefix, run, step = self.config.queue.stream_prefix, self.config.name, self.step_now
        self._redis("versions", lambda: publish_weights_version(self.redis, prefix, run, step))
        self._redis("versions", lambda: self.redis.set(learner_version_key(prefix, run), step))
        return float(exported[0]["export_s"])

    def _resync(self, reason: str, attempts: int = 3) -> None:
        """Re-form the weight-sync group (every engine up, a new sender on rank 0), push the
        full weights and restart the loops of actors that died."""
        started = time.time()
        print(f"re-forming the weight-sync group: {reason}", flush=True)
        for attempt in range(1, attempts + 1):
            dead = self._dead_actors()
            self._await_actors()
            address, _, port = rendezvous(self.learner_group)
            self._collect([self.learners[0].replace_sender.remote(self._sender(address, port))])
            try:
                self._push_weights()
                break
            except WeightSyncError as exc:
                if attempt == attempts:
                    raise
                log.warning("weight push after re-forming the group failed: %s", exc)
        for i in dead:
            self.actor_runs[i] = self.actors[i].run.remote()
        self._record("weight_sync", reason, started)

    def _await_actors(self) -> None:
        """Wait until every rollout actor's engine is up (a restarted one starts it again),
        keeping the learner ranks' held queue entries fresh meanwhile."""
        import ray

        deadline = time.monotonic() + ACTOR_START_S
        refs = {i: a.start.remote() for i, a in enumerate(self.actors)}
        while refs:
            ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=10)
            for i, ref in [(i, r) for i, r in refs.items() if r in ready]:
                try:
                    ray.get(ref)
                    del refs[i]
                except ray.exceptions.ActorUnavailableError:
                    time.sleep(1.0)  # still restarting: ask again
                    refs[i] = self.actors[i].start.remote()
                except ray.exceptions.RayActorError as exc:
                    raise RuntimeError(
                        f"rollout actor {i} died for good ({_first_line(exc)}); it was "
                        f"restarted rollout.max_restarts={self.config.rollout.max_restarts} "
                        "times. Resume the run with --resume"
                    ) from None
            if refs and time.monotonic() > deadline:
                raise RuntimeError(
                    f"a restarted rollout actor's engine did not start in {ACTOR_START_S}s"
                )
            if refs:
                self._collect([w.touch.remote() for w in self.learners])

    def _restart_learners(self, reason: str) -> None:
        """Replace the whole learner group and resume it from the last checkpoint."""
        import ray

        limit = self.config.learner.max_restarts
        if self.learner_restarts >= limit:
            raise RuntimeError(
                f"{reason}; the learner group was already restarted learner.max_restarts="
                f"{limit} times. Resume the run with --resume"
            )
        self.learner_restarts += 1
        started = time.time()
        print(f"restarting the learner group ({reason})", flush=True)
        self._stop_learners(graceful=False)
        ray.util.remove_placement_group(self.learner_group)
        self.groups.remove(self.learner_group)
        self._start_learners()
        self.resume()
        if self.grpo:
            self._interrupting = False
            self._redis("clear interrupt", lambda: self.redis.delete(self._keys().interrupt))
            self._await_actors()
            self._push_weights()
        self._record("learner_restart", reason, started)

    def _record(self, kind: str, reason: str, started: float) -> None:
        event = {"kind": kind, "reason": reason, "started": started, "finished": time.time()}
        self.recoveries.append(event)
        print(f"recovered ({kind}) in {event['finished'] - started:.1f}s", flush=True)

    def _keys(self) -> Any:
        from system.queue import QueueKeys

        return QueueKeys.of(self.config.queue.stream_prefix, self.config.name)

    def _redis(self, what: str, fn: Callable[[], Any]) -> Any:
        return retrying(what, fn, self.config.queue.reconnect_max_s)

    # ----------------------------------------------------------------- placement

    def _start_learners(self) -> None:
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from learner.worker import LearnerWorker

        cfg, r = self.config, self.config.resources
        ranks = cfg.learner.num_ranks
        group = placement(ranks, r.cpus_per_learner_rank, r.gpus_per_learner_rank)
        self.groups.append(group)
        self.learner_group = group
        addr, port, sync_port = rendezvous(group)
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
                weight_sender, ws.backend, list(self.actors), workers, address, port, ws.timeout_s
            )
        )


def actor_stats(actors: list[Any], timeout_s: float = ACTOR_START_S) -> list[dict[str, float]]:
    """Every rollout actor's `stats()`, waiting for one Ray is restarting."""
    import ray

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return ray.get([a.stats.remote() for a in actors])
        except ray.exceptions.ActorUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def _error_of(ref: Any) -> BaseException | None:
    """The error a finished Ray call raised, or None when it succeeded."""
    import ray

    try:
        ray.get(ref, timeout=0)
    except ray.exceptions.RayError as exc:
        return exc
    return None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__

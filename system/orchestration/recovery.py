"""How a stage's processes recover from faults without manual action. The `Topology` declares
the processes; this module waits on them, classifies what failed and brings them back. Each
recovery is recorded in `Topology.recoveries` ({"kind", "reason", "started", "finished"}).

- A rollout actor that dies is restarted by Ray (`rollout.max_restarts`). The driver asks the
  learner ranks to abandon the step they wait in (the queue's interrupt key), waits for the
  actor's engine, re-forms the weight-sync group with a new sender on rank 0, pushes the full
  weights to every engine and restarts the actor's loop; the restarted actor publishes
  nothing before it has those weights (`resync`).
- A weight push that fails (`WeightSyncError`: an engine died or stalled past
  `weight_sync.timeout_s`) re-forms the group the same way and pushes again (`resync`).
- A learner rank whose process dies takes the whole learner group down (`collect` raises
  `LearnerDied`): the driver kills the other ranks, starts new ones (same consumer names),
  resumes them from the last committed checkpoint (their unacked groups are re-read, applied
  ones skipped), re-forms the weight-sync group and pushes those weights; at most
  `learner.max_restarts` times (`restart_learners`).
- A stop request (SIGINT/SIGTERM) interrupts a step that waits for groups the same way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from system.config import RunConfig
from system.config.errors import RecoveryError, WeightSyncError, first_line
from system.orchestration.placement import LazySender, rendezvous

log = logging.getLogger("reelrl.driver")

# How often a waiting driver checks the stop flag and the rollout actors.
POLL_S = 1.0
# After one rank failed, how long the others get to fail too (a dead peer breaks their
# collectives) before the failure is classified.
GRACE_S = 30.0
# Longest wait for a restarted rollout actor's engine.
ACTOR_START_S = 900.0


class Processes(Protocol):
    """What recovery reads and replaces of a stage's processes (`Topology` is the one
    implementation; recovery depends on this, not on the class)."""

    config: RunConfig
    grpo: bool
    learners: list[Any]
    """Learner rank actor handles."""
    learner_group: Any
    """The learners' placement group."""
    groups: list[Any]
    """Every placement group of the stage."""
    learner_restarts: int
    actors: list[Any]
    """Rollout actor handles."""
    actor_runs: list[Any]
    """The actors' generation-loop refs."""
    recoveries: list[dict[str, Any]]

    def start_learners(self) -> None: ...
    def stop_learners(self, graceful: bool = True) -> None: ...
    def resume(self) -> int: ...
    def new_sender(self, address: str, port: int) -> LazySender: ...
    def replace_actor(self, index: int) -> Any: ...
    def export_weights(self, full: bool = True) -> float: ...
    def clear_interrupt(self) -> None: ...


class LearnerDied(RuntimeError):
    """A learner rank's process died (the learner group must be restarted)."""


def collect(refs: list[Any], on_wait: Callable[[], None] | None = None) -> list[Any]:
    """Every rank's result. On a failure the other ranks get `GRACE_S` to end too (a dead
    peer breaks their collectives); a rank whose process died raises `LearnerDied`, any other
    error is raised as the rank raised it (NonFiniteError, CheckpointError, ...), its
    message first, not behind Ray's task header."""
    import ray

    while True:
        ready, pending = ray.wait(refs, num_returns=len(refs), timeout=POLL_S)
        if any(_error_of(r) is not None for r in ready):
            if pending:
                ray.wait(pending, num_returns=len(pending), timeout=GRACE_S)
            errors = [e for e in map(_error_of, refs) if e is not None]
            died = [e for e in errors if isinstance(e, ray.exceptions.RayActorError)]
            if died:
                raise LearnerDied(f"a learner rank died: {first_line(died[0])}")
            raise raised_by_rank(errors[0]) from errors[0]
        if not pending:
            return ray.get(refs)
        if on_wait is not None:
            on_wait()


def dead_actors(actor_runs: list[Any]) -> list[int]:
    """Indices of rollout actors whose loop ended because the process died (Ray restarts
    them); a loop that failed or ended otherwise raises."""
    import ray

    if not actor_runs:
        return []
    done, _ = ray.wait(actor_runs, num_returns=len(actor_runs), timeout=0)
    dead = []
    for ref in done:
        error = _error_of(ref)
        if error is None:
            raise RuntimeError("a rollout actor's generation loop ended unexpectedly")
        if not isinstance(error, ray.exceptions.RayActorError):
            raise error
        dead.append(actor_runs.index(ref))
    return dead


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


def resync(topology: Processes, reason: str, attempts: int = 3) -> float:
    """Re-form the weight-sync group (every engine up, a new sender on rank 0), push the
    full weights and restart the loops of actors that died; the push's seconds."""
    started = time.time()
    print(f"re-forming the weight-sync group: {reason}", flush=True)
    for attempt in range(1, attempts + 1):
        dead = dead_actors(topology.actor_runs)
        await_actors(topology)
        address, _, port = rendezvous(topology.learner_group)
        sender = topology.new_sender(address, port)
        collect([topology.learners[0].replace_sender.remote(sender)])
        try:
            pushed_s = topology.export_weights()
            break
        except WeightSyncError as exc:
            if attempt == attempts:
                raise
            log.warning("weight push after re-forming the group failed: %s", exc)
    for i in dead:
        topology.actor_runs[i] = topology.actors[i].run.remote()
    _record(topology, "weight_sync", reason, started)
    return pushed_s


def await_actors(topology: Processes) -> None:
    """Wait until every rollout actor's engine is up (a restarted one starts it again),
    keeping the learner ranks' held queue entries fresh meanwhile."""
    import ray

    actors = topology.actors
    deadline = time.monotonic() + ACTOR_START_S
    node = NodeWait(topology.config)
    replaced: dict[int, int] = {}
    refs = {i: a.start.remote() for i, a in enumerate(actors)}
    while refs:
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=10)
        for i, ref in [(i, r) for i, r in refs.items() if r in ready]:
            try:
                ray.get(ref)
                del refs[i]
            except ray.exceptions.ActorUnavailableError:
                node.check(i)
                time.sleep(1.0)  # still restarting: ask again
                refs[i] = actors[i].start.remote()
            except ray.exceptions.RayActorError as exc:
                if not node.replaceable(i, replaced):
                    raise RecoveryError(
                        f"rollout actor {i} died for good ({first_line(exc)}); it was "
                        f"restarted rollout.max_restarts={topology.config.rollout.max_restarts} "
                        "times. Resume the run with --resume"
                    ) from None
                # Pinned to a node pool: Ray may spend the actor's restarts on a node that
                # left before the cluster marks it dead. A fresh actor takes the next node
                # offering the label (the wait for one stays bounded by node_wait_s).
                replaced[i] = replaced.get(i, 0) + 1
                # Time for the cluster to mark the lost node dead, so that the fresh actor
                # waits for a node rather than being tried on the same one again.
                time.sleep(REPLACE_BACKOFF_S * replaced[i])
                print(
                    f"rollout actor {i}: Ray gave up restarting it ({first_line(exc)}); "
                    f"starting a fresh one ({replaced[i]} of {node.replacements})", flush=True,
                )  # fmt: skip
                refs[i] = topology.replace_actor(i).start.remote()
        for i in refs:
            node.check(i)
        if refs and time.monotonic() > deadline:
            raise RecoveryError(
                f"a restarted rollout actor's engine did not start in {ACTOR_START_S}s"
            )
        if refs:
            collect([w.touch.remote() for w in topology.learners])


REPLACE_BACKOFF_S = 5.0
"""Wait before replacing a rollout actor Ray gave up on, times the replacement's number."""


class NodeWait:
    """A rollout actor pinned to `resources.rollout_node_label` restarts only where a node
    offers the label. When none is alive (its node left the cluster), the run waits up to
    `resources.node_wait_s` for one to join — Ray then restarts the actor there — and otherwise
    stops with a clear error rather than waiting out the engine's start-up limit."""

    def __init__(self, config: RunConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.label = config.resources.rollout_node_label
        self.wait_s = config.resources.node_wait_s
        self.replacements = config.rollout.max_restarts
        """Fresh actors per index a recovery may start after Ray gave up on one."""
        self.clock = clock
        self.since: float | None = None

    def replaceable(self, index: int, replaced: dict[int, int]) -> bool:
        """Whether a rollout actor Ray stopped restarting gets a fresh one: only when the
        actors are pinned to a node pool (their node may have left), at most `replacements`
        times per actor."""
        return bool(self.label) and replaced.get(index, 0) < self.replacements

    def check(self, index: int) -> None:
        import ray

        if not self.label:
            return
        if any(n.get("Alive") and self.label in n["Resources"] for n in ray.nodes()):
            if self.since is not None:
                print(f"a node offering {self.label!r} joined: rollout actor {index} restarts "
                      "there", flush=True)  # fmt: skip
                self.since = None
            return
        now = self.clock()
        if self.since is None:
            self.since = now
            print(
                f"rollout actor {index}: no alive node offers {self.label!r} (the node it ran on "
                f"left the cluster); waiting up to {self.wait_s:.0f}s for one to join "
                "(resources.node_wait_s)", flush=True,
            )  # fmt: skip
        if now - self.since >= self.wait_s:
            raise RecoveryError(
                f"rollout actor {index} cannot restart: no alive node has offered "
                f"{self.label!r} (resources.rollout_node_label) for {self.wait_s:.0f}s "
                "(resources.node_wait_s); the node it ran on left the cluster. Bring a node "
                "with that resource back, then resume the run with --resume"
            )


def restart_learners(topology: Processes, reason: str) -> None:
    """Replace the whole learner group and resume it from the last checkpoint."""
    import ray

    limit = topology.config.learner.max_restarts
    if topology.learner_restarts >= limit:
        raise RecoveryError(
            f"{reason}; the learner group was already restarted learner.max_restarts="
            f"{limit} times. Resume the run with --resume"
        )
    topology.learner_restarts += 1
    started = time.time()
    print(f"restarting the learner group ({reason})", flush=True)
    topology.stop_learners(graceful=False)
    ray.util.remove_placement_group(topology.learner_group)
    topology.groups.remove(topology.learner_group)
    topology.learner_group = None  # start_learners reserves a new one
    topology.start_learners()
    topology.resume()
    if topology.grpo:
        topology.clear_interrupt()
        await_actors(topology)
        topology.export_weights()
    _record(topology, "learner_restart", reason, started)


def _record(topology: Processes, kind: str, reason: str, started: float) -> None:
    event = {"kind": kind, "reason": reason, "started": started, "finished": time.time()}
    topology.recoveries.append(event)
    print(f"recovered ({kind}) in {event['finished'] - started:.1f}s", flush=True)


def _error_of(ref: Any) -> BaseException | None:
    """The error a finished Ray call raised, or None when it succeeded."""
    import ray

    try:
        ray.get(ref, timeout=0)
    except ray.exceptions.RayError as exc:
        return exc
    return None


def raised_by_rank(error: BaseException) -> BaseException:
    """The exception a rank raised, unwrapped from Ray's `RayTaskError`."""
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, Exception) else error

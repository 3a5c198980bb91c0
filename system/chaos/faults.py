"""The faults `reelrl chaos` injects into a live GRPO stage that kill or stop a process or a
disk: a rollout actor, a learner rank, Redis (SIGKILL and SIGSTOP), the weight sender mid-
broadcast, an unwritable checkpoint directory; one class each (the base: `system.chaos.scene`;
faults in the data: `system.chaos.data_faults`). `FAULT_CLASSES` names them all.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

from system.chaos.data_faults import NaN, NaNStop, Poison
from system.chaos.ledger import Ledger
from system.chaos.report import Row
from system.chaos.scene import Fault, Scene, kill_later, pid_of, since
from system.config.errors import first_line

# ------------------------------------------------------------------------ 1. rollout actor


class RolloutKill(Fault):
    """SIGKILL a rollout actor while it generates: Ray restarts it, the driver re-forms the
    weight-sync group and pushes the weights before the actor may publish again."""

    name, number = "rollout_kill", 1

    def inject(self, scene: Scene) -> None:
        import ray

        pid = ray.get(scene.topology.actors[0].__ray_call__.remote(pid_of))
        # The kill waits in a thread for a batch in generation: the driver must keep
        # stepping meanwhile, or admission control would hold the actor back.
        threading.Thread(target=self._kill_when_generating, args=(scene, pid), daemon=True).start()

    def _kill_when_generating(self, scene: Scene, pid: int) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if scene.actor_stats()[0]["generating"]:
                self.generating = True
                break
            time.sleep(0.1)
        self.injected_at.append(time.time())
        os.kill(pid, signal.SIGKILL)

    def handled_at(self, scene: Scene) -> float | None:
        return self._recovery(scene, "weight_sync")

    def check(self, row: Row, ledger: Ledger) -> None:
        start, end = self.injected_at[0], self.handled or time.time()
        early = ledger.window(start, end)["published"]
        single = self.single_engine
        row.checks = {
            "killed mid-generation": self.generating,
            "restarted and re-synced": self.handled is not None,
            "nothing published before the new weights": early == 0 or not single,
        }
        row.detail = (
            f"actor killed while generating={self.generating}; weights pushed to the restarted "
            f"engine {self._took()} after the kill; groups published in between: {early}"
        )

    def _took(self) -> str:
        return "-" if self.handled is None else f"{self.handled - self.injected_at[0]:.1f}s"

    single_engine = True
    generating = False


# ------------------------------------------------------------------------ 2. learner rank


class LearnerKill(Fault):
    """SIGKILL learner rank 1 during the next step: the driver restarts the learner group from
    the last checkpoint; the ranks re-read their unacked groups and skip applied ones."""

    name, number = "learner_kill", 2

    def inject(self, scene: Scene) -> None:
        import ray

        pid = ray.get(scene.topology.learners[-1].pid.remote())
        self.injected_at.append(time.time())
        kill_later(pid, signal.SIGKILL, 1.0)

    def handled_at(self, scene: Scene) -> float | None:
        return self._recovery(scene, "learner_restart")

    def check(self, row: Row, ledger: Ledger) -> None:
        row.checks = {"learner group restarted": self.handled is not None}
        row.detail = (
            "rank killed 1 s into the next step; learner group restarted from its last "
            f"checkpoint {since(self)} after the kill"
        )


# ------------------------------------------------------------------------ 3./4. Redis


class RedisKill(Fault):
    """SIGKILL the embedded redis-server: its supervisor restarts it on the same AOF
    directory, port and password; producers and consumers reconnect by themselves."""

    name, number = "redis_kill", 3

    def ready(self, scene: Scene, metrics: dict[str, float]) -> bool:
        return scene.topology.backend.embedded is not None

    def inject(self, scene: Scene) -> None:
        backend = scene.topology.backend
        self.supervisor = backend.supervisor
        self.restarts_before = len(self.supervisor.restarts)
        self.injected_at.append(time.time())
        os.kill(backend.embedded.process.pid, signal.SIGKILL)

    def handled_at(self, scene: Scene) -> float | None:
        restarts = self.supervisor.restarts[self.restarts_before :]
        return restarts[0][1] if restarts else None

    def check(self, row: Row, ledger: Ledger) -> None:
        row.checks = {"server restarted": self.handled is not None}
        row.detail = f"redis-server SIGKILLed; answering again {since(self)} later (AOF reloaded)"


class RedisStop(Fault):
    """SIGSTOP the redis-server for longer than the clients' read timeout, then SIGCONT:
    producers time out, back off and log each retry; nothing is dropped."""

    name, number = "redis_stop", 4

    def ready(self, scene: Scene, metrics: dict[str, float]) -> bool:
        return scene.topology.backend.embedded is not None

    def inject(self, scene: Scene) -> None:
        backend = scene.topology.backend
        queue = scene.config.queue
        self.hold_s = queue.block_ms / 1000 + 5.0 + 3.0  # the socket timeout of `connect`, + 3
        self.retries_before = sum(s["queue_retries"] for s in scene.actor_stats())
        self.restarts_before = len(backend.supervisor.restarts)
        self.supervisor = backend.supervisor
        pid = backend.embedded.process.pid
        self.injected_at.append(time.time())
        os.kill(pid, signal.SIGSTOP)
        kill_later(pid, signal.SIGCONT, self.hold_s)
        self.retries = 0

    def observe(self, scene: Scene, metrics: dict[str, float]) -> None:
        super().observe(scene, metrics)
        retries = sum(s["queue_retries"] for s in scene.actor_stats()) - self.retries_before
        self.retries = max(self.retries, retries)

    def handled_at(self, scene: Scene) -> float | None:
        return self.injected_at[0] + self.hold_s

    def check(self, row: Row, ledger: Ledger) -> None:
        row.checks = {
            "producers backed off": self.retries > 0,
            "server not restarted": len(self.supervisor.restarts) == self.restarts_before,
        }
        row.detail = (
            f"redis-server stopped {self.hold_s:.0f}s (read timeout + 3 s); producer retries "
            f"with backoff: {self.retries}"
        )


# ------------------------------------------------------------------------ 5. weight sender


class DyingSender:
    """Wraps rank 0's sender: it announces the version (the engines block receiving its
    buckets), then at the first bucket waits `delay_s` and SIGKILLs its own process."""

    def __init__(self, inner: Any, delay_s: float) -> None:
        self.inner, self.delay_s = inner, delay_s
        self.announced = False

    def start(self, version: int, layout: Any = None) -> None:
        self.inner.start(version, layout)
        self.announced = layout is not None

    def send_bucket(self, bucket: Any) -> None:
        if not self.announced:  # per-bucket announcement: the engines learn of it only now
            stream = self.inner._real().stream
            info = stream.announce([bucket.entries], stream.version)
            stream.engines.submit(lambda client: client.update_weights(info))
        time.sleep(self.delay_s)
        os.kill(os.getpid(), signal.SIGKILL)

    def finish(self, version: int) -> None:
        self.inner.finish(version)

    def close(self) -> None:
        self.inner.close()


def _arm_dying_sender(worker: Any, delay_s: float) -> bool:
    if worker.sender is None:
        return False
    worker.sender = DyingSender(worker.sender, delay_s)
    return True


class SenderKill(Fault):
    """Kill the weight sender (learner rank 0's process) in the middle of a broadcast: the
    engines' receive fails within the transfer timeout and they keep their weights; the
    driver restarts the learner group, which re-forms the weight-sync group."""

    name, number = "sender_kill", 5
    DELAY_S = 1.0

    def inject(self, scene: Scene) -> None:
        before = scene.actor_stats()[0]
        self.failures_before = before["weight_update_failures"]
        self.version_before = before["weight_version"]
        self.timeout_s = scene.config.weight_sync.timeout_s
        self.failed: tuple[float, float] | None = None
        self.injected_at.append(time.time())
        scene.on_learners(_arm_dying_sender, self.DELAY_S)
        self.killed_at = self.injected_at[0]
        threading.Thread(target=self._watch, args=(scene,), daemon=True).start()

    def _watch(self, scene: Scene) -> None:
        """Poll the engine's failure counter until its receive has failed."""
        deadline = time.monotonic() + self.timeout_s + 60
        while time.monotonic() < deadline:
            stats = scene.actor_stats()[0]
            if stats["weight_update_failures"] > self.failures_before:
                self.failed = (stats["last_weight_update_failure"], stats["weight_version"])
                return
            time.sleep(0.5)

    def handled_at(self, scene: Scene) -> float | None:
        return self._recovery(scene, "learner_restart")

    def check(self, row: Row, ledger: Ledger) -> None:
        error_s = None if self.failed is None else self.failed[0] - self.injected_at[0]
        row.checks = {
            "engine errored within its timeout": error_s is not None
            and error_s <= self.DELAY_S + self.timeout_s + 10,
            "engine kept its weights": self.failed is not None
            and self.failed[1] == self.version_before,
            "group re-formed, training continued": self.handled is not None,
        }
        shown = "never" if error_s is None else f"{error_s:.1f}s"
        row.detail = (
            f"rank 0 killed mid-broadcast (engines waiting in the receive); engine error after "
            f"{shown} (timeout {self.timeout_s:.0f}s), engine stayed at v{self.version_before}; "
            f"learner group and weight-sync group re-formed {since(self)} after the kill"
        )


# ------------------------------------------------------------------------ 8. checkpoint


class CheckpointUnwritable(Fault):
    """The checkpoint directory cannot take the next checkpoint (a file where its directory
    must be created) just before it is written: every rank raises a `CheckpointError` naming
    the intact previous checkpoint, the run stops, that checkpoint loads, the operator clears
    the way and `--resume` continues from it."""

    name, number = "checkpoint", 8
    stops_run = True

    def ready(self, scene: Scene, metrics: dict[str, float]) -> bool:
        from system.transport.checkpoint import latest

        every = scene.config.checkpoint.every_steps
        real = scene.run_dir / "stages" / scene.topology.stage.name / "checkpoints"
        return int(metrics["step"]) % every == 0 and latest(real) is not None

    def inject(self, scene: Scene) -> None:
        from system.transport.checkpoint import latest, step_dir_name

        self.real = scene.run_dir / "stages" / scene.topology.stage.name / "checkpoints"
        self.previous = latest(self.real)
        self.error = ""
        self.loadable = False
        # The driver checkpoints this step next; its temp directory cannot be created.
        self.blocker = self.real / f".tmp-{step_dir_name(scene.topology.step_now)}"
        self.injected_at.append(time.time())
        self.blocker.write_text("a file where the checkpoint's directory must be\n")

    def stopped(self, exc: BaseException, scene: Scene) -> None:
        from system.transport.checkpoint import latest, read_state

        self.error = first_line(exc, limit=None)  # the whole line is checked below
        self.blocker.unlink()  # what the operator fixes before --resume
        path = latest(self.real)
        state = read_state(path)
        self.loadable = (
            path == self.previous
            and (path / "deepspeed").is_dir()
            and (path / "hf" / "config.json").is_file()
            and state.step > 0
        )

    def observe(self, scene: Scene, metrics: dict[str, float]) -> None:
        if self.handled is None and len(scene.began) and scene.began[-1] > self.injected_at[0]:
            self.handled = scene.began[-1]

    def check(self, row: Row, ledger: Ledger) -> None:
        row.checks = {
            "clear error": "could not be written" in self.error and "intact" in self.error,
            "previous checkpoint loadable": self.loadable,
            "resumed": self.handled is not None,
        }
        name = self.previous.name if self.previous else "-"
        row.detail = f"{self.error[:300]} -> {name} loads; --resume continued from it"


FAULT_CLASSES: dict[str, type[Fault]] = {
    cls.name: cls
    for cls in (
        Poison, RolloutKill, RedisKill, RedisStop, NaN, SenderKill, LearnerKill,
        CheckpointUnwritable, NaNStop,
    )
}  # fmt: skip

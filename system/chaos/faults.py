"""The faults `reelrl chaos` injects into a live GRPO stage, one class each.

A fault is injected from the driver's thread between two learner steps (`Harness.stepped`),
into the real processes: SIGKILL / SIGSTOP by process id, garbage written to the real stream,
a wrapper swapped into a learner rank's objective or weight sender through Ray. `ready` says
whether the fault can go now, `inject` does it, `observe` watches the steps after it,
`handled_at` is when the system had dealt with it (a recovery the topology recorded, the
restarted Redis, ...) and `check` fills the fault's row from what was observed and from the
`Ledger`. Recovery time is injection until the first learner step completed after
`handled_at`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from system.chaos.ledger import Ledger
from system.chaos.report import Row
from system.config.errors import first_line

log = logging.getLogger("reelrl.chaos")


@dataclasses.dataclass
class Scene:
    """What a fault acts on: the current stage's topology and the run's directory."""

    topology: Any = None
    run_dir: Path | None = None
    steps: list[tuple[float, dict[str, float]]] = dataclasses.field(default_factory=list)
    began: list[float] = dataclasses.field(default_factory=list)
    """Wall times at which a (resumed) GRPO stage began stepping."""

    @property
    def config(self) -> Any:
        return self.topology.config

    def chaos_dir(self) -> Path:
        path = self.run_dir / "chaos"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def actor_stats(self) -> list[dict[str, float]]:
        from system.orchestration.recovery import actor_stats

        return actor_stats(self.topology.actors)

    def on_learners(self, fn: Any, *args: Any) -> list[Any]:
        """`fn(worker, *args)` inside every learner rank (between steps, when they are idle)."""
        import ray

        return ray.get([w.__ray_call__.remote(fn, *args) for w in self.topology.learners])


class Fault:
    """Base of the faults (see the module docstring)."""

    name = ""
    number = 0
    stops_run = False

    def __init__(self) -> None:
        self.injected_at: list[float] = []
        self.handled: float | None = None
        self.detail = ""
        self.checks: dict[str, Any] = {}
        self.failure: str | None = None
        """Why the system did not get past this fault (a recovery or the run failed)."""

    def fail(self, reason: str) -> None:
        """Record the first reason the system failed while this fault acted."""
        if self.failure is None:
            self.failure = reason

    def ready(self, scene: Scene, metrics: dict[str, float]) -> bool:
        return True

    def inject(self, scene: Scene) -> None:
        raise NotImplementedError

    def observe(self, scene: Scene, metrics: dict[str, float]) -> None:
        """Called after every learner step once injected."""
        if self.handled is None:
            self.handled = self.handled_at(scene)

    def handled_at(self, scene: Scene) -> float | None:
        return self.injected_at[0] if self.injected_at else None

    def check(self, row: Row, ledger: Ledger) -> None:
        """Fill `row.checks` (name -> bool) and `row.detail`."""

    def stopped(self, exc: BaseException, scene: Scene) -> None:
        """The run stopped with `exc` after this fault (only for `stops_run` faults)."""

    def _recovery(self, scene: Scene, kind: str) -> float | None:
        start = self.injected_at[0] if self.injected_at else None
        for event in scene.topology.recoveries if scene.topology else []:
            if start is not None and event["kind"] == kind and event["started"] >= start:
                return event["finished"]
        return None


def _pid(actor: Any) -> int:
    return os.getpid()


def _kill_later(pid: int, sig: int, delay_s: float) -> threading.Timer:
    timer = threading.Timer(delay_s, os.kill, args=(pid, sig))
    timer.daemon = True
    timer.start()
    return timer


# ------------------------------------------------------------------------ 1. rollout actor


class RolloutKill(Fault):
    """SIGKILL a rollout actor while it generates: Ray restarts it, the driver re-forms the
    weight-sync group and pushes the weights before the actor may publish again."""

    name, number = "rollout_kill", 1

    def inject(self, scene: Scene) -> None:
        import ray

        pid = ray.get(scene.topology.actors[0].__ray_call__.remote(_pid))
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
        _kill_later(pid, signal.SIGKILL, 1.0)

    def handled_at(self, scene: Scene) -> float | None:
        return self._recovery(scene, "learner_restart")

    def check(self, row: Row, ledger: Ledger) -> None:
        row.checks = {"learner group restarted": self.handled is not None}
        row.detail = (
            "rank killed 1 s into the next step; learner group restarted from its last "
            f"checkpoint {_since(self)} after the kill"
        )


def _since(fault: Fault) -> str:
    if fault.handled is None or not fault.injected_at:
        return "(never)"
    return f"{fault.handled - fault.injected_at[0]:.1f}s"


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
        row.detail = f"redis-server SIGKILLed; answering again {_since(self)} later (AOF reloaded)"


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
        _kill_later(pid, signal.SIGCONT, self.hold_s)
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
            f"learner group and weight-sync group re-formed {_since(self)} after the kill"
        )


# ------------------------------------------------------------------------ 6. poison


def _insert_records(actor: Any, records: list[Any]) -> None:
    actor.records[actor._cursor : actor._cursor] = records


class Poison(Fault):
    """Garbage on the stream (undecodable payload, an entry without one), groups whose video
    is missing or corrupt (the learner's re-decode fails), and dataset records with a missing
    or corrupt video given to a rollout actor. The learner dead-letters the first four, the
    actor skips and counts the records; the run goes on."""

    name, number = "poison", 6

    def ready(self, scene: Scene, metrics: dict[str, float]) -> bool:
        from system.transport.queue import read_stats

        cfg = scene.config
        waiting = read_stats(scene.topology.redis, cfg.queue, cfg.name)["undelivered"]
        # The bad-video groups carry the current weight version; they must be read within
        # max_staleness steps, or they are dead-lettered as stale before their video is read.
        soon = waiting <= cfg.learner.groups_per_step * cfg.rollout.max_staleness
        return soon and self._template(scene) is not None

    def _template(self, scene: Scene) -> Any:
        from system.transport.protocol import ProtocolError, decode_group
        from system.transport.queue import QueueKeys

        cfg = scene.config
        keys = QueueKeys.of(cfg.queue.stream_prefix, cfg.name)
        for _sid, fields in scene.topology.redis.xrange(keys.stream, count=50):
            try:
                return decode_group(fields.get(b"g", b""), cfg.queue.max_message_bytes)
            except ProtocolError:
                continue
        return None

    def inject(self, scene: Scene) -> None:
        import ray

        from system.transport.queue import QueueKeys, RolloutQueue

        cfg, client = scene.config, scene.topology.redis
        corrupt = scene.chaos_dir() / "corrupt.mp4"
        corrupt.write_bytes(os.urandom(4096))
        missing = scene.chaos_dir() / "missing.mp4"
        template = self._template(scene)
        self.skipped_before = scene.actor_stats()[0]["skipped_videos"]
        self.injected_at.append(time.time())
        stream = QueueKeys.of(cfg.queue.stream_prefix, cfg.name).stream
        client.xadd(stream, {"g": b"\xc1 not msgpack"})
        client.xadd(stream, {"x": b"no payload field"})
        queue = RolloutQueue(client, cfg.name, cfg.queue)
        self.bad_groups = []
        for path in (missing, corrupt):
            vision = dataclasses.replace(template.vision, path=str(path))
            group = dataclasses.replace(
                template,
                group_id=template.new_group_id(),
                vision=vision,
                weight_version=scene.topology.step_now,
            )
            queue.produce(group)
            self.bad_groups.append(group.group_id)
        record = scene.topology.actors[0]
        bad = [{**_record_of(scene), "id": f"chaos-{p.stem}", "video": str(p)}
               for p in (missing, corrupt)]  # fmt: skip
        ray.get(record.__ray_call__.remote(_insert_records, _records(bad)))
        self.skipped = 0

    def observe(self, scene: Scene, metrics: dict[str, float]) -> None:
        skipped = scene.actor_stats()[0]["skipped_videos"] - self.skipped_before
        self.skipped = max(self.skipped, int(skipped))
        if self.handled is None and self.skipped >= 2:
            self.handled = time.time()

    def handled_at(self, scene: Scene) -> float | None:
        return self.handled

    def check(self, row: Row, ledger: Ledger) -> None:
        start = self.injected_at[0]
        poison = [r for t, r in ledger.poison if t >= start - 1]
        dead = [g for g in self.bad_groups if g in ledger.dead]
        # Dead-lettered for their video, not for some earlier check (staleness, ...).
        by_video = [g for g in dead if ledger.dead[g].startswith("video re-decode failed")]
        row.skipped = self.skipped
        row.checks = {
            "poison entries dead-lettered": len(poison) >= 2,
            "bad-video groups dead-lettered for their video": len(by_video) == 2,
            "bad-video records skipped and counted": self.skipped >= 2,
        }
        reasons = sorted({r.split(":")[0] for r in poison} | {ledger.dead[g][:40] for g in dead})
        row.detail = (
            f"2 poison entries + 2 groups with a missing/corrupt video -> {len(poison)} + "
            f"{len(dead)} dead letters ({'; '.join(reasons)}); 2 records with a missing/corrupt "
            f"video -> {self.skipped} skipped by the actor"
        )


def _record_of(scene: Scene) -> dict[str, Any]:
    import json

    spec = scene.config.data.train[0]
    with open(spec.path, encoding="utf-8") as f:
        return json.loads(f.readline())


def _records(rows: list[dict[str, Any]]) -> list[Any]:
    from system.data.records import Record

    return [Record.model_validate(r) for r in rows]


# ------------------------------------------------------------------------ 7. NaN loss


class NaNObjective:
    """The real objective, with its loss times NaN on the listed (1-based) steps."""

    def __init__(self, inner: Any, worker: Any, steps: set[int]) -> None:
        self.inner, self.worker, self.steps = inner, worker, steps
        self.needs_reference = inner.needs_reference
        self.temperature = inner.temperature

    def loss(self, batch: Any, logits: Any, ref_logprobs: Any, totals: Any) -> Any:
        loss, metrics = self.inner.loss(batch, logits, ref_logprobs, totals)
        if self.worker.global_step + 1 in self.steps:
            loss = loss * float("nan")
        return loss, metrics


def _poison_loss(worker: Any, count: int) -> int:
    """Make the next `count` steps' losses NaN on this rank; the first such step."""
    inner = getattr(worker.objective, "inner", worker.objective)
    first = worker.global_step + 1
    worker.objective = NaNObjective(inner, worker, set(range(first, first + count)))
    return first


class NaN(Fault):
    """A NaN in the loss of one step on every rank: the step is skipped on all ranks (no
    optimizer update, counted), the run goes on."""

    name, number = "nan", 7
    COUNT = 1

    def inject(self, scene: Scene) -> None:
        self.injected_at.append(time.time())
        self.target = scene.on_learners(_poison_loss, self.COUNT)[0]
        self.seen: list[dict[str, float]] = []

    def observe(self, scene: Scene, metrics: dict[str, float]) -> None:
        if self.target <= metrics["step"] < self.target + self.COUNT:
            self.seen.append(metrics)  # rank 0's; the skip flag is all-reduced over the ranks
        if self.handled is None and metrics["step"] >= self.target + self.COUNT:
            self.handled = time.time()

    def check(self, row: Row, ledger: Ledger) -> None:
        skipped = [m for m in self.seen if m.get("applied") == 0.0]
        row.checks = {"step skipped on every rank": len(skipped) >= self.COUNT}
        row.detail = (
            f"NaN loss at step {self.target} on both ranks -> {len(skipped)} step(s) skipped "
            "(no update; groups consumed by the skipped step count as applied)"
        )


class NaNStop(NaN):
    """`learner.max_nonfinite_steps` NaN steps in a row: the run stops with a clear error
    naming the setting; the last checkpoint holds, `--resume` continues."""

    name, number = "nan_stop", 7
    stops_run = True

    def inject(self, scene: Scene) -> None:
        self.COUNT = scene.config.learner.max_nonfinite_steps
        self.error = ""
        super().inject(scene)

    def stopped(self, exc: BaseException, scene: Scene) -> None:
        self.error = first_line(exc)
        self.handled = time.time()

    def check(self, row: Row, ledger: Ledger) -> None:
        row.checks = {
            "clear stop": "max_nonfinite_steps" in self.error,
            "steps before the stop skipped": len(self.seen) >= self.COUNT - 1,
        }
        row.detail = f"{self.COUNT} NaN steps in a row -> stopped: {self.error[:160]}"


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

        self.error = first_line(exc)
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

"""The faults `reelrl chaos` injects into the data: poison entries and groups or records whose
video is missing or corrupt (6), a NaN loss once (7) and until the run stops (`nan_stop`)."""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

from system.chaos.ledger import Ledger
from system.chaos.report import Row
from system.chaos.scene import Fault, Scene
from system.config.errors import first_line

# ------------------------------------------------------------------------ 6. poison


class Poison(Fault):
    """Garbage on the stream (undecodable payload, an entry without one), groups whose video
    is missing or corrupt (the learner's re-decode fails), and dataset records with a missing
    or corrupt video given to a rollout actor. The learner dead-letters the first four, the
    actor skips and counts the records; the run goes on."""

    name, number = "poison", 6

    def ready(self, scene: Scene, metrics: dict[str, float]) -> bool:
        from system.transport.keys import read_stats

        cfg = scene.config
        waiting = read_stats(scene.topology.redis, cfg.queue, cfg.name)["undelivered"]
        # The bad-video groups carry the current weight version; they must be read within
        # max_staleness steps, or they are dead-lettered as stale before their video is read.
        soon = waiting <= cfg.learner.groups_per_step * cfg.rollout.max_staleness
        return soon and self._template(scene) is not None

    def _template(self, scene: Scene) -> Any:
        from system.transport.keys import QueueKeys
        from system.transport.protocol import ProtocolError, decode_group

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

        from system.transport.keys import QueueKeys
        from system.transport.queue import RolloutQueue

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
                # Restamped as the current version: no sample may claim an older one.
                samples=tuple(dataclasses.replace(s, version_starts=()) for s in template.samples),
            )
            queue.produce(group)
            self.bad_groups.append(group.group_id)
        record = scene.topology.actors[0]
        bad = [{**_record_of(scene), "id": f"chaos-{p.stem}", "video": str(p)}
               for p in (missing, corrupt)]  # fmt: skip
        ray.get(record.put_ahead.remote(_records(bad)))
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
        self.chunk = inner.chunk

    def loss(
        self, batch: Any, logits: Any, ref_logprobs: Any, totals: Any, old_logprobs: Any = None
    ) -> Any:
        loss, metrics = self.inner.loss(batch, logits, ref_logprobs, totals, old_logprobs)
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
        self.error = first_line(exc, limit=None)  # the whole line is checked below
        self.handled = time.time()

    def check(self, row: Row, ledger: Ledger) -> None:
        row.checks = {
            "clear stop": "max_nonfinite_steps" in self.error,
            "steps before the stop skipped": len(self.seen) >= self.COUNT - 1,
        }
        row.detail = f"{self.COUNT} NaN steps in a row -> stopped: {self.error[:160]}"

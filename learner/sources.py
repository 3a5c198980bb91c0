"""Where a learner rank's training sequences come from, behind one small interface.

`QueueSource` (GRPO) consumes rollout groups from the run's Redis stream as this rank's own
consumer, dead-letters what it cannot train on (stale past the bound, video/prompt mismatch)
and takes more until it has its share; it remembers the stream ids of the steps since the last
checkpoint and acks them only when told the checkpoint has committed. While it waits it
watches the queue's interrupt key: when the driver sets it, `next_batch` returns None and keeps
the groups taken so far for the next call (unacked: a process that dies re-reads them). `RecordSource` (SFT)
walks the dataset mix deterministically; every rank advances the same cursor and keeps every
R-th record, so the data position is one small `MixState`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from actors.prompts import OutputFormat
from learner.collate import Collator, GroupRejected, Sequence
from learner.grpo import group_advantages
from learner.sft import sft_sequence, sft_target
from system.config import ImageConfig, VideoConfig
from system.data.records import MixState, Record, RecordMixer
from system.transport.applied import AppliedIds
from system.transport.queue import RolloutQueue

log = logging.getLogger("reelrl.learner")


@dataclass
class Batch:
    """One rank's share of a step."""

    sequences: list[Sequence]
    group_ids: list[str] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    samples: list[dict[str, float]] = field(default_factory=list)
    """Per trained sample: its reward components and response length (for metrics)."""

    def sample_means(self) -> dict[str, float]:
        """Mean of each reward component (`reward/<name>`) and of the response length."""
        keys = sorted({k for s in self.samples for k in s})
        return {
            k if k == "response_length" else f"reward/{k}": sum(s.get(k, 0.0) for s in self.samples)
            / len(self.samples)
            for k in keys
        }


class BatchSource(Protocol):
    """Supplies a rank's share of each step and what the checkpoint must record."""

    def next_batch(self, n: int) -> Batch | None:
        """`n` groups (or examples) worth of sequences for this rank; None when the driver
        interrupted the wait."""
        ...

    def give_back(self, batch: Batch) -> None:
        """The step that took `batch` was abandoned on another rank: return it next time."""
        ...

    def state(self) -> dict[str, Any]:
        """What to store in the checkpoint (JSON-able)."""
        ...

    def applied_after(self, stream_ids: list[str]) -> dict[str, Any]:
        """Exactly-once state once `stream_ids` (all ranks' entries since the last checkpoint)
        are committed: `AppliedIds.to_dict()` ({} for sources without a queue). Rank 0."""
        ...

    def restore(self, state: dict[str, Any], applied: dict[str, Any]) -> None:
        """Continue from a checkpoint's state."""
        ...

    def committed(self, applied: dict[str, Any]) -> None:
        """The checkpoint holding every batch so far (and `applied`) has committed."""
        ...


class QueueSource:
    """Rollout groups from the queue (see the module docstring)."""

    def __init__(
        self,
        queue: RolloutQueue,
        collator: Collator,
        scale_by_std: bool,
        max_staleness: int | None = None,
        block_ms: int = 1000,
    ) -> None:
        self.queue = queue
        self.collator = collator
        self.scale_by_std = scale_by_std
        self.max_staleness = max_staleness
        self.block_ms = block_ms
        self.version = 0
        """The learner's current weight version (set by the worker)."""
        self.uncommitted: list[str] = []
        self._partial = Batch(sequences=[])
        self._partial_ids: list[str] = []
        self._returned: list[str] = []
        self.dead_lettered = 0
        self.stale = 0

    def next_batch(self, n: int) -> Batch | None:
        batch = self._partial
        while len(batch.group_ids) < n:
            if self.queue.interrupted():
                return None  # the groups taken so far stay in _partial for the next call
            for d in self.queue.consume(count=n - len(batch.group_ids), block_ms=self.block_ms):
                seqs = self._sequences(d)
                if seqs is None:
                    continue
                batch.sequences.extend(seqs)
                batch.group_ids.append(d.group.group_id)
                batch.rewards.extend(d.group.rewards.tolist())
                batch.samples.extend(
                    {**s.reward_components, "response_length": float(len(s.completion_ids))}
                    for s in d.group.samples
                )
                self._partial_ids.append(d.stream_id)
        self.uncommitted += self._partial_ids
        self._returned = self._partial_ids
        self._partial, self._partial_ids = Batch(sequences=[]), []
        return batch

    def give_back(self, batch: Batch) -> None:
        n = len(self._returned)
        self.uncommitted = self.uncommitted[: len(self.uncommitted) - n]
        self._partial, self._partial_ids, self._returned = batch, self._returned, []

    def _sequences(self, d: Any) -> list[Sequence] | None:
        """The group's training sequences, or None after dead-lettering it."""
        reason = self._reject_reason(d.group)
        if reason is None:
            adv = group_advantages(
                torch.tensor(d.group.rewards, dtype=torch.float32)[None], self.scale_by_std
            )[0]
            try:
                return self.collator.group_sequences(d.group, adv)
            except GroupRejected as exc:
                reason = str(exc)
        self.queue.dead_letter(d.stream_id, reason, d.deliveries)
        self.dead_lettered += 1
        return None

    def _reject_reason(self, group: Any) -> str | None:
        lag = self.version - group.weight_version
        if self.max_staleness is not None and lag > self.max_staleness:
            self.stale += 1
            return f"stale: weight version {group.weight_version}, learner at {self.version}"
        return None

    def state(self) -> dict[str, Any]:
        return {"stream_ids": list(self.uncommitted)}

    def applied_after(self, stream_ids: list[str]) -> dict[str, Any]:
        return self.queue.applied_after(stream_ids).to_dict()

    def restore(self, state: dict[str, Any], applied: dict[str, Any]) -> None:
        self.queue.restore_applied(AppliedIds.from_dict(applied))

    def committed(self, applied: dict[str, Any]) -> None:
        self.queue.restore_applied(AppliedIds.from_dict(applied))
        self.queue.ack(self.uncommitted)
        self.uncommitted = []


class RecordSource:
    """SFT examples from the dataset mix (see the module docstring)."""

    def __init__(
        self,
        mixer: RecordMixer,
        collator: Collator,
        video: VideoConfig,
        root: str,
        fmt: OutputFormat,
        rank: int,
        world_size: int,
        image: ImageConfig | None = None,
    ) -> None:
        self.mixer = mixer
        self.image = image or ImageConfig()
        self.collator = collator
        self.video = video
        self.root = root
        self.fmt = fmt
        self.rank = rank
        self.world_size = world_size
        self._carry: Batch | None = None

    def next_batch(self, n: int) -> Batch:
        if self._carry is not None:
            batch, self._carry = self._carry, None
            return batch
        records = self.mixer.take(n * self.world_size)[self.rank :: self.world_size]
        seqs = [self._sequence(r) for r in records]
        return Batch(sequences=seqs, group_ids=[r.id for r in records])

    def _sequence(self, record: Record) -> Sequence:
        target = sft_target(record, self.fmt)
        return sft_sequence(
            self.collator, record, target, self.video, self.root, self.fmt, self.image
        )

    def give_back(self, batch: Batch) -> None:
        self._carry = batch

    def state(self) -> dict[str, Any]:
        return {"data_position": self.mixer.state.to_dict()}

    def applied_after(self, stream_ids: list[str]) -> dict[str, Any]:
        return {}

    def restore(self, state: dict[str, Any], applied: dict[str, Any]) -> None:
        if state.get("data_position") is not None:
            self.mixer.load_state(MixState.from_dict(state["data_position"]))

    def committed(self, applied: dict[str, Any]) -> None:
        pass

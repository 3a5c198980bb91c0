"""Where every published group went, derived from real state after (or during) a run.

Sources: the run's `published` hash (group id -> stream id; the stream id's millisecond part
is when it was published), the dead-letter stream (reason and payload of each letter), the
entries still in the stream, the queue's `applied` counter (acked) and the checkpoint root's
audit trail of the committed lineage (`applied_groups.jsonl`: a list per commit, so a group
applied twice shows as a repeat). A published group is applied, dead-lettered or still in the stream; anything else is
lost. `window` counts the groups published inside a time window, so each fault's row shows
what happened to the groups published while it acted.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from system.config import QueueConfig
from system.reporting.accounting import POISON_REASONS
from system.transport.checkpoint import CheckpointError, read_journal
from system.transport.keys import QueueKeys
from system.transport.protocol import ProtocolError, decode_group


@dataclass
class Ledger:
    """Group ids by fate, with their publish times (seconds since the epoch)."""

    published: dict[str, float] = field(default_factory=dict)
    applied: Counter[str] = field(default_factory=Counter)
    """Group id -> times in the checkpoint's applied list (> 1: applied twice)."""
    acked: int = 0
    """Entries acked as applied (the queue's counter)."""
    dead: dict[str, str] = field(default_factory=dict)
    """Group id -> dead-letter reason."""
    in_stream: set[str] = field(default_factory=set)
    poison: list[tuple[float, str]] = field(default_factory=list)
    """(time, reason) of dead letters that never held a decodable group."""

    @property
    def lost(self) -> set[str]:
        return set(self.published) - set(self.applied) - set(self.dead) - self.in_stream

    @property
    def applied_twice(self) -> set[str]:
        return {g for g, n in self.applied.items() if n > 1}

    @property
    def acked_not_committed(self) -> int:
        """Acked in Redis beyond what the committed lineage applied: an effect lost."""
        return max(self.acked - sum(self.applied.values()), 0)

    def window(self, start: float, end: float) -> dict[str, int]:
        """Counts for the groups published in [start, end)."""
        ids = {g for g, t in self.published.items() if start <= t < end}
        return {
            "published": len(ids),
            "applied": len(ids & set(self.applied)),
            "dead_lettered": len(ids & set(self.dead))
            + sum(1 for t, _ in self.poison if start <= t < end),
            "in_stream": len(ids & self.in_stream),
            "lost": len(ids & self.lost),
            "applied_twice": len(ids & self.applied_twice),
        }

    def totals(self) -> dict[str, int]:
        return self.window(0.0, float("inf"))


def read_ledger(client: Any, config: QueueConfig, run: str, checkpoints: Path) -> Ledger:
    """The ledger of `run` from its Redis and its GRPO stage's checkpoint directory."""
    keys = QueueKeys.of(config.stream_prefix, run)
    ledger = Ledger()
    for gid, sid in client.hgetall(keys.published).items():
        ledger.published[gid.decode()] = _stream_time(sid.decode())
    ledger.acked = int(client.hget(keys.counters, "applied") or 0)
    for sid, fields in client.xrange(keys.dead):
        reason = fields.get(b"reason", b"").decode("utf-8", "replace")
        gid = _group_id(fields.get(b"payload", b""), config.max_message_bytes)
        if gid is None or reason.startswith(POISON_REASONS):
            ledger.poison.append((_stream_time(sid.decode()), reason))
        else:
            ledger.dead[gid] = reason
    for _sid, fields in client.xrange(keys.stream):
        gid = _group_id(fields.get(b"g", b""), config.max_message_bytes)
        if gid is not None:
            ledger.in_stream.add(gid)
    ledger.applied = Counter(committed_applied(checkpoints))
    return ledger


def committed_applied(checkpoints: Path) -> list[str]:
    """Group ids the committed lineage applied (empty when there is no checkpoint)."""
    try:
        return read_journal(checkpoints)
    except CheckpointError:
        return []


def _group_id(payload: bytes, max_bytes: int) -> str | None:
    try:
        return decode_group(payload, max_bytes).group_id
    except ProtocolError:
        return None


def _stream_time(stream_id: str) -> float:
    return int(stream_id.partition("-")[0]) / 1000

"""Which rollout entries a learner has applied, in bounded space: a stream-id watermark plus
the applied ids above it.

Every group travels as one entry of the run's Redis stream, and stream ids only grow. An entry
leaves the stream only when it is resolved — acked after the checkpoint holding its step
committed, or dead-lettered — so every id older than the oldest entry still in the stream
(other than those being committed) is resolved: `below` records that bound, and `above` the
applied ids at or past it (entries applied while an older one was still held, pending, by a
rank). A redelivered entry — a commit that crashed before its ack, a Redis restart that lost
an ack — is recognised by its stream id and skipped. The state is a few ids however long the
run: `above` holds at most the entries applied while the oldest open one stayed open (one
checkpoint interval, or `queue.min_idle_ms` for an entry a dead rank held).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from system.transport.keys import stream_id_key as stream_key


def _text(key: tuple[int, int]) -> str:
    return f"{key[0]}-{key[1]}"


@dataclass
class AppliedIds:
    """Stream ids known applied (or otherwise resolved); see the module docstring."""

    below: str = "0-0"
    """Every stream id strictly below this one is resolved (applied or dead-lettered)."""
    above: set[str] = field(default_factory=set)
    """Applied stream ids at or above `below`."""

    def __contains__(self, stream_id: object) -> bool:
        if not isinstance(stream_id, str):
            return False
        return stream_key(stream_id) < stream_key(self.below) or stream_id in self.above

    def add(self, stream_ids: Iterable[str]) -> None:
        """Record applied entries."""
        floor = stream_key(self.below)
        self.above.update(s for s in stream_ids if stream_key(s) >= floor)

    def advance(self, oldest_open: str | None) -> None:
        """Move the watermark up to `oldest_open`: the oldest entry still in the stream that
        is not among the applied ones (None: there is none, so everything up to the newest
        applied id is resolved). Never moves down."""
        if oldest_open is None:
            if not self.above:
                return
            newest = max(stream_key(s) for s in self.above)
            bound = (newest[0], newest[1] + 1)
        else:
            bound = stream_key(oldest_open)
        if bound <= stream_key(self.below):
            return
        self.below = _text(bound)
        self.above = {s for s in self.above if stream_key(s) >= bound}

    def to_dict(self) -> dict[str, Any]:
        return {"below": self.below, "above": sorted(self.above, key=stream_key)}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> AppliedIds:
        if not data:
            return cls()
        return cls(below=str(data["below"]), above={str(s) for s in data["above"]})

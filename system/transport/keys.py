"""The run's Redis keyspace, in one place: the names of every key a run writes, what writes
them, and a read of what they hold.

Keys (prefix = `queue.stream_prefix`): `<prefix>:<run>:rollouts` (the stream, consumer group
`learner`, one consumer per learner rank), `<prefix>:<run>:dead` (dead letters with their
reason), `<prefix>:<run>:published` (group id -> stream id: makes publishing idempotent, and
counts it), `<prefix>:<run>:counters` (applied, skipped and claimed entries), `<prefix>:<run>:interrupt` (set
while the driver asks the learner ranks to abandon a step that is waiting for groups),
`<prefix>:<run>:learner_version` (the learner's step count: the rollout actors' admission
reads it) and `<prefix>:<run>:weights_version` (the newest weight version pushed to the
engines: a restarted actor publishes nothing before its engine holds it). The queue
(`system.transport.queue`) owns the first five; the driver writes the two versions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from system.config import QueueConfig

GROUP = "learner"


@dataclass(frozen=True)
class QueueKeys:
    """The Redis keys of one run."""

    stream: str
    dead: str
    published: str
    counters: str
    interrupt: str
    learner_version: str
    weights_version: str

    @classmethod
    def of(cls, prefix: str, run: str) -> QueueKeys:
        base = f"{prefix}:{run}"
        return cls(
            stream=f"{base}:rollouts",
            dead=f"{base}:dead",
            published=f"{base}:published",
            counters=f"{base}:counters",
            interrupt=f"{base}:interrupt",
            learner_version=f"{base}:learner_version",
            weights_version=f"{base}:weights_version",
        )


def publish_versions(
    client: redis.Redis, keys: QueueKeys, learner: int | None = None, weights: int | None = None
) -> None:
    """Record the learner's version (admission) and/or the newest pushed weight version."""
    if learner is not None:
        client.set(keys.learner_version, learner)
    if weights is not None:
        client.set(keys.weights_version, weights)


def read_version(client: redis.Redis, key: str) -> int:
    """A version key's value (0 when unset)."""
    return int(client.get(key) or 0)


def read_stats(client: redis.Redis, config: QueueConfig, run: str) -> dict[str, Any]:
    """A snapshot of a run's queue, read without changing anything: length, undelivered,
    pending per consumer, age of the oldest entry, dead letters and counters."""
    keys = QueueKeys.of(config.stream_prefix, run)
    pipe = client.pipeline(transaction=False)
    pipe.xlen(keys.stream)
    pipe.xlen(keys.dead)
    pipe.hgetall(keys.counters)
    pipe.hlen(keys.published)
    pipe.xinfo_consumers(keys.stream, GROUP)
    pipe.xrange(keys.stream, "-", "+", count=1)
    pipe.time()
    reply = pipe.execute(raise_on_error=False)
    length, dead, counters, published, consumers, oldest, now = reply
    if isinstance(consumers, redis.ResponseError):  # no stream or group yet
        consumers = []
    for value in (length, dead, counters, published, oldest, now):
        if isinstance(value, Exception):
            raise value
    per_consumer = {
        _text(c["name"]): {"pending": int(c["pending"]), "idle_ms": int(c["idle"])}
        for c in consumers
    }
    pending = sum(c["pending"] for c in per_consumer.values())
    server_s = now[0] + now[1] / 1e6
    oldest_age = server_s - stream_id_key(_text(oldest[0][0]))[0] / 1000 if oldest else 0.0
    counts = {_text(k): int(v) for k, v in counters.items()}
    return {
        "stream": keys.stream,
        "time": server_s,
        "length": int(length),
        "pending": pending,
        # XLEN is undelivered + pending because acked entries are deleted with their ack.
        "undelivered": int(length) - pending,
        "oldest_age_s": round(max(oldest_age, 0.0), 3),
        "consumers": per_consumer,
        "dead_letters": int(dead),
        "published": int(published),
        "applied": counts.get("applied", 0),
        "skipped": counts.get("skipped", 0),
        "claimed": counts.get("claimed", 0),
    }


def rates(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    """Published and applied groups per second between two `stats()` snapshots."""
    dt = max(after["time"] - before["time"], 1e-9)
    return {
        "published_per_s": (after["published"] - before["published"]) / dt,
        "applied_per_s": (after["applied"] - before["applied"]) / dt,
    }


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def stream_id_key(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)

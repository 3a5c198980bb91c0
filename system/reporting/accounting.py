"""Where every rollout group went: the closing balance of a GRPO stage.

Generated groups are either filtered by the actor (no learning signal) or published; a
published group is applied (acked after a committed checkpoint), dead-lettered (stale past the
staleness bound, unusable, or delivered too often), or still in the stream (undelivered, or
delivered and not yet acked). Poison entries (undecodable, no payload) were never published
groups: they are dead-lettered and counted apart, outside the balance. `balance` is pure; `read_balance` gathers its inputs from Redis and the actors.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from system.config import QueueConfig


def balance(
    published: int,
    filtered: int,
    applied: int,
    dead_reasons: list[str],
    in_stream: int,
) -> dict[str, Any]:
    """The stage's group accounting; `closed` says whether published groups are all accounted
    for (applied + dead-lettered + still in the stream)."""
    kinds = Counter(_kind(reason) for reason in dead_reasons)
    dead = len(dead_reasons) - kinds["poison"]
    out = {
        "generated": published + filtered,
        "filtered": filtered,
        "published": published,
        "applied": applied,
        "dropped_stale": kinds["stale"],
        "dead_lettered": dead - kinds["stale"],
        "in_stream": in_stream,
        "closed": published == applied + dead + in_stream,
    }
    if kinds["poison"]:
        out["poison"] = kinds["poison"]
    return out


# Dead-letter reasons (system.transport.queue) of entries that never held a decodable group.
POISON_REASONS = ("undecodable", "entry has no")


def _kind(reason: str) -> str:
    if reason.startswith("stale"):
        return "stale"
    return "poison" if reason.startswith(POISON_REASONS) else "other"


def read_balance(
    client: Any, config: QueueConfig, run: str, actor_stats: list[dict[str, float]]
) -> dict[str, Any]:
    """`balance` from the run's queue and the rollout actors' counters."""
    from system.transport.keys import QueueKeys, read_stats

    stats = read_stats(client, config, run)
    dead = client.xrange(QueueKeys.of(config.stream_prefix, run).dead)
    reasons = [fields.get(b"reason", b"").decode("utf-8", "replace") for _id, fields in dead]
    filtered = int(sum(s.get("groups_filtered", 0) for s in actor_stats))
    return balance(stats["published"], filtered, stats["applied"], reasons, stats["length"])

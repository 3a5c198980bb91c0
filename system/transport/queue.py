"""The rollout queue: RolloutGroups from actors to learner ranks over one Redis Stream per run.

The run's keys are `system.transport.keys.QueueKeys`: the stream (consumer group `learner`, one
consumer per learner rank), dead letters, published group ids, counters (applied, skipped,
claimed), the interrupt flag.

Delivery is at-least-once; the effect is exactly-once by these rules:
- Publishing is one Lua script (capacity check, XADD, bookkeeping), idempotent by group id, so a
  retry after a lost reply adds nothing.
- Acked entries are XDEL'd in the same Lua script (atomic, one round trip) as their XACK, and
  the `applied` counter grows by the entries that script removed (so an entry counts once,
  whenever it leaves the stream as applied). The stream is never trimmed by length, so nothing
  unacked is ever removed, and XLEN is exactly undelivered + pending: the backpressure measure.
- The learner acks only after the checkpoint holding those steps has committed. A crash between
  the commit and the ack, or a Redis restart that lost an ack, is closed by the learner's
  checkpoint state: `AppliedIds` (system.transport.applied), a stream-id watermark plus the
  applied ids above it, bounded however long the run. Every rank holds it (`restore_applied`
  at resume and after each commit); redelivered entries (own pending, claimed from dead
  consumers) whose stream id it contains are acked and skipped, never returned.
- A restarted consumer first takes back its own pending entries, then reads new ones; entries
  idle longer than `min_idle_ms` are claimed with XAUTOCLAIM. A live consumer keeps the entries
  it holds fresh (touched at least every `min_idle_ms / 4` while it calls the queue), so
  `min_idle_ms` must exceed the longest gap between a learner's queue calls.
- Entries that fail to decode or are delivered more than `max_deliveries` times are copied to
  the dead-letter stream with the reason and acked; consumption goes on.
- Redis errors of the connection kind are retried with exponential backoff (capped at
  `reconnect_max_s`); after a reconnect the consumer re-reads its own pending entries, so an
  entry whose read reply was lost is not stranded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis

from system.config import QueueConfig
from system.transport.applied import AppliedIds
from system.transport.keys import GROUP, QueueKeys, read_stats, stream_id_key
from system.transport.protocol import ProtocolError, RolloutGroup, decode_group, encode_group
from system.transport.redis_server import Link, retrying

log = logging.getLogger("reelrl.queue")

PAYLOAD = b"g"
T = TypeVar("T")

# KEYS: stream, published. ARGV: capacity, group id, payload. HLEN(published) counts groups.
_PRODUCE = """
local known = redis.call('HGET', KEYS[2], ARGV[2])
if known then return {1, known} end
local n = redis.call('XLEN', KEYS[1])
if n >= tonumber(ARGV[1]) then return {0, n} end
local id = redis.call('XADD', KEYS[1], '*', 'g', ARGV[3])
redis.call('HSET', KEYS[2], ARGV[2], id)
return {1, id}
"""

# KEYS: stream, counters. ARGV: group, then the stream ids. One script rather than MULTI/EXEC:
# as atomic, with one command to pack and parse instead of several. Chunked because Lua's
# unpack is limited to a few thousand values. Counts what XDEL removed: idempotent.
_ACK = """
local removed = 0
for i = 2, #ARGV, 1000 do
  local j = math.min(i + 999, #ARGV)
  redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, i, j))
  removed = removed + redis.call('XDEL', KEYS[1], unpack(ARGV, i, j))
end
if removed > 0 then redis.call('HINCRBY', KEYS[2], 'applied', removed) end
return removed
"""

# KEYS: stream, dead. ARGV: group, stream id, reason, consumer, deliveries.
# XACK first: a retry after a lost reply finds nothing pending and writes no second letter.
_DEAD_LETTER = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
local payload = ''
local e = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
if e[1] then
  local f = e[1][2]
  for i = 1, #f, 2 do if f[i] == 'g' then payload = f[i + 1] end end
end
redis.call('XADD', KEYS[2], '*', 'source_id', ARGV[2], 'reason', ARGV[3],
           'consumer', ARGV[4], 'deliveries', ARGV[5], 'payload', payload)
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
"""


class QueueFull(TimeoutError):
    """`produce` waited `timeout_s` and the queue stayed at capacity."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """A decoded group handed to a consumer, with what is needed to ack it."""

    stream_id: str
    group: RolloutGroup
    deliveries: int
    """Times the entry has been delivered, this one included."""


class RolloutQueue:
    """Producer and consumer side of one run's rollout stream (see the module docstring).

    `consumer` names this learner rank in the consumer group; keep it stable across restarts
    (e.g. `rank3`) so a restarted rank takes back its own pending entries. Producers need none.
    `on_wait` is called with a readable reason whenever a producer starts waiting on a full
    queue (and every 30 s while it still waits); the reason is also logged and kept in
    `wait_reason`. An instance is not thread-safe: give each thread its own.
    """

    def __init__(
        self,
        client: redis.Redis,
        run: str,
        config: QueueConfig,
        consumer: str | None = None,
        on_wait: Callable[[str], None] | None = None,
    ) -> None:
        if not run or ":" in run:
            raise ValueError(f"run name {run!r} must be non-empty and contain no ':'")
        self.client = client
        self.run = run
        self.config = config
        self.consumer = consumer
        self.keys = QueueKeys.of(config.stream_prefix, run)
        self.on_wait = on_wait
        self.wait_reason: str | None = None
        self.waited_s = 0.0
        self.retries = 0
        """Redis calls retried after a connection error or timeout (backoffs taken)."""
        self._produce = client.register_script(_PRODUCE)
        self._dead = client.register_script(_DEAD_LETTER)
        self._ack = client.register_script(_ACK)
        self._inflight: dict[str, str] = {}  # stream id -> group id, delivered and not acked
        self._applied = AppliedIds()  # stream ids known applied (acked here or restored)
        self._drain = True  # take back own pending entries before reading new ones
        self._claim_cursor = "0-0"
        now = time.monotonic()
        self._last_claim = now
        self._last_touch = now
        self._call("create group", self._create_group)
        self._link = self._call("connect", lambda: Link(client))

    # ----------------------------------------------------------------------- producing

    def produce(self, group: RolloutGroup, timeout_s: float | None = None) -> str:
        """Publish `group`; waits while the queue is at capacity (never drops). Returns the
        stream id (the existing one when this group id was already published)."""
        payload = encode_group(group, self.config.max_message_bytes)
        return self.produce_encoded(group.group_id, payload, timeout_s)

    def produce_encoded(self, group_id: str, payload: bytes, timeout_s: float | None = None) -> str:
        """Publish an already-encoded group (see `produce`)."""
        if len(payload) > self.config.max_message_bytes:
            raise ProtocolError(
                "payload",
                f"is {len(payload)} bytes, over queue.max_message_bytes={self.config.max_message_bytes}",
            )
        keys = [self.keys.stream, self.keys.published]
        args = [self.config.capacity, group_id, payload]
        started = time.monotonic()
        delay = 0.002
        next_report = started
        while True:
            ok, value = self._call("produce", lambda: self._link.eval(self._produce, keys, args))
            if ok:
                if self.wait_reason is not None:
                    waited = time.monotonic() - started
                    self.waited_s += waited
                    log.info("queue %s has room again after %.1fs", self.keys.stream, waited)
                    self.wait_reason = None
                return value.decode()
            now = time.monotonic()
            if timeout_s is not None and now - started >= timeout_s:
                self.wait_reason = None
                raise QueueFull(f"{self._full_reason(value)}; gave up after {timeout_s}s")
            if now >= next_report:
                self._report_wait(self._full_reason(value))
                next_report = now + 30.0
            time.sleep(delay)
            delay = min(delay * 2, 0.25)

    def _full_reason(self, length: int) -> str:
        return (
            f"queue {self.keys.stream} is full: {length} undelivered + pending entries >= "
            f"capacity {self.config.capacity}; waiting for learners to consume and ack"
        )

    def _report_wait(self, reason: str) -> None:
        self.wait_reason = reason
        log.warning(reason)
        if self.on_wait is not None:
            self.on_wait(reason)

    def published(self) -> int:
        """Groups published to this run so far (all producers)."""
        return self._call("published", lambda: self.client.hlen(self.keys.published))

    # ----------------------------------------------------------------------- consuming

    def consume(self, count: int = 1, block_ms: int | None = None) -> list[Delivery]:
        """Up to `count` decoded groups: first this consumer's own pending entries, then
        entries idle past `min_idle_ms` elsewhere, then new ones (blocking up to `block_ms`,
        default `config.block_ms`). May return fewer, or none when nothing arrived in time."""
        if self.consumer is None:
            raise ValueError("this RolloutQueue has no consumer name; pass consumer= to consume")
        self._maybe_touch()
        while self._drain:
            entries = self._own_pending(count)
            if not entries:
                self._drain = False
            got = self._recover(entries)
            if got:
                return got
        if time.monotonic() - self._last_claim >= self._claim_every_s():
            got = self._recover(self._autoclaim(count))
            if got:
                return got
        block = self.config.block_ms if block_ms is None else block_ms
        reply = self._call("read", lambda: self._read_new(count, block))
        out = []
        for sid, fields in reply:
            delivery = self._admit(sid, fields, deliveries=1)
            if delivery is not None:
                out.append(delivery)
        return out

    def _read_new(self, count: int, block_ms: int) -> list[tuple[str, dict[bytes, bytes]]]:
        reply = self._link.run(
            "XREADGROUP", "GROUP", GROUP, self.consumer, "COUNT", count, "BLOCK", block_ms,
            "STREAMS", self.keys.stream, ">",
        )  # fmt: skip
        if not reply:
            return []
        streams = reply.values() if isinstance(reply, dict) else [e for _, e in reply]  # RESP3
        return [(sid.decode(), _pairs(fields)) for entries in streams for sid, fields in entries]

    def _admit(
        self, sid: str, fields: dict[bytes, bytes] | None, deliveries: int
    ) -> Delivery | None:
        """Decode one delivered entry; dead-letter it when it is poison, skip it when it is
        already applied or held here (a reply replayed after a server restart)."""
        if sid in self._inflight:
            return None
        if sid in self._applied:
            self._skip([sid])
            return None
        if deliveries > self.config.max_deliveries:
            reason = (
                f"delivered {deliveries} times, over max_deliveries={self.config.max_deliveries}"
            )
            self.dead_letter(sid, reason, deliveries)
            return None
        payload = (fields or {}).get(PAYLOAD)
        if payload is None:
            self.dead_letter(sid, f"entry has no {PAYLOAD.decode()!r} payload field", deliveries)
            return None
        try:
            group = decode_group(payload, self.config.max_message_bytes)
        except ProtocolError as exc:
            self.dead_letter(sid, f"undecodable: {exc}", deliveries)
            return None
        self._inflight[sid] = group.group_id
        return Delivery(sid, group, deliveries)

    def _skip(self, stream_ids: list[str]) -> None:
        log.info("skipping %d redelivered groups already applied", len(stream_ids))
        self.ack(stream_ids)
        n = len(stream_ids)
        self._call("count", lambda: self.client.hincrby(self.keys.counters, "skipped", n))

    def _recover(self, entries: list[tuple[str, dict[bytes, bytes] | None, int]]) -> list[Delivery]:
        """Admit redelivered entries, acking and skipping those already applied."""
        admitted = (self._admit(sid, fields, n) for sid, fields, n in entries)
        return [d for d in admitted if d is not None]

    def _own_pending(self, count: int) -> list[tuple[str, dict[bytes, bytes] | None, int]]:
        """Own pending entries not held by this process, re-claimed (delivery count + 1)."""
        start = "-"
        while True:
            rows = self._call("pending", lambda s=start: self._pending_rows(s, max(count, 100)))
            if not rows:
                return []
            ids = [
                r["message_id"].decode()
                for r in rows
                if r["message_id"].decode() not in self._inflight
            ]
            if ids:
                counts = {r["message_id"].decode(): r["times_delivered"] + 1 for r in rows}
                return self._claim_ids(ids[:count], counts)
            start = "(" + rows[-1]["message_id"].decode()

    def _pending_rows(self, start: str, count: int) -> list[dict[str, Any]]:
        return self.client.xpending_range(
            self.keys.stream, GROUP, start, "+", count, consumername=self.consumer
        )

    def _claim_ids(
        self, ids: list[str], counts: dict[str, int]
    ) -> list[tuple[str, dict[bytes, bytes] | None, int]]:
        claimed = self._call(
            "claim", lambda: self.client.xclaim(self.keys.stream, GROUP, self.consumer, 0, ids)
        )
        found = {sid.decode(): fields for sid, fields in claimed if sid is not None}
        gone = [sid for sid in ids if sid not in found]
        if gone:  # deleted from the stream while pending: nothing to apply
            self._call("ack", lambda: self.client.xack(self.keys.stream, GROUP, *gone))
        return [(sid, fields, counts.get(sid, 1)) for sid, fields in found.items()]

    def _autoclaim(self, count: int) -> list[tuple[str, dict[bytes, bytes] | None, int]]:
        """Entries idle past min_idle_ms (their consumer is presumed dead), now ours."""
        self._last_claim = time.monotonic()
        reply = self._call(
            "autoclaim",
            lambda: self.client.xautoclaim(
                self.keys.stream,
                GROUP,
                self.consumer,
                self.config.min_idle_ms,
                start_id=self._claim_cursor,
                count=count,
            ),
        )
        self._claim_cursor = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
        entries = reply[1]
        if any(sid is None for sid, _ in entries):
            self._drain = True  # 6.2 hides ids of deleted entries: the pending scan acks them
        # Own held entries that went idle stay held: they are not delivered a second time.
        fresh = [
            (sid.decode(), fields)
            for sid, fields in entries
            if sid is not None and sid.decode() not in self._inflight
        ]
        if not fresh:
            return []
        log.warning(
            "claimed %d entries idle > %d ms from dead consumers",
            len(fresh),
            self.config.min_idle_ms,
        )
        self._call("count", lambda: self.client.hincrby(self.keys.counters, "claimed", len(fresh)))
        counts = self._delivery_counts([sid for sid, _ in fresh])
        return [(sid, fields, counts.get(sid, 1)) for sid, fields in fresh]

    def _delivery_counts(self, ids: list[str]) -> dict[str, int]:
        low, high = min(ids, key=stream_id_key), max(ids, key=stream_id_key)
        span = len(ids) + len(self._inflight)
        rows = self._call(
            "pending",
            lambda: self.client.xpending_range(
                self.keys.stream, GROUP, low, high, span, consumername=self.consumer
            ),
        )
        return {r["message_id"].decode(): r["times_delivered"] for r in rows}

    def _claim_every_s(self) -> float:
        return self.config.min_idle_ms / 2000

    # ----------------------------------------------------------------------- acking

    def ack(self, stream_ids: Sequence[str]) -> None:
        """Acknowledge entries whose effect is committed (the checkpoint holding their steps).

        One atomic script: XACK, XDEL, and the `applied` counter grows by what XDEL removed.
        Ids must come from this instance's deliveries; for entries applied before a restart
        use `restore_applied`."""
        ids = list(stream_ids)
        if not ids:
            return
        keys = [self.keys.stream, self.keys.counters]
        self._call("ack", lambda: self._link.eval(self._ack, keys, [GROUP, *ids]))
        self._applied.add(ids)
        for sid in ids:
            self._inflight.pop(sid, None)
        self._maybe_touch()

    def restore_applied(self, applied: AppliedIds) -> None:
        """Know what the learner's committed checkpoint applied (`TrainingState.applied`), so
        redelivered entries are acked and skipped instead of applied twice."""
        self._applied = AppliedIds.from_dict(applied.to_dict())

    def applied_after(self, committing: Collection[str]) -> AppliedIds:
        """What is applied once the entries `committing` are: the known applied ids plus
        these, with the watermark moved up to the oldest entry still open in the stream."""
        out = AppliedIds.from_dict(self._applied.to_dict())
        out.add(committing)
        out.advance(self.oldest_open(committing))
        return out

    def oldest_open(self, committing: Collection[str]) -> str | None:
        """The oldest entry still in the stream that is neither known applied nor in
        `committing` (None: there is none) — the watermark of `AppliedIds.advance`."""
        skip = set(committing)
        page = len(skip) + 100
        start = "-"
        while True:
            rows = self._call(
                "oldest", lambda s=start: self.client.xrange(self.keys.stream, s, "+", count=page)
            )
            for sid, _fields in rows:
                text = sid.decode() if isinstance(sid, bytes) else str(sid)
                if text not in skip and text not in self._applied:
                    return text
            if len(rows) < page:
                return None
            last = rows[-1][0]
            start = "(" + (last.decode() if isinstance(last, bytes) else str(last))

    def dead_letter(self, stream_id: str, reason: str, deliveries: int = 0) -> None:
        """Move a delivered entry to the dead-letter stream with `reason`, and ack it."""
        args = [GROUP, stream_id, reason, self.consumer or "", deliveries]
        moved = self._call(
            "dead-letter", lambda: self._dead(keys=[self.keys.stream, self.keys.dead], args=args)
        )
        self._inflight.pop(stream_id, None)
        if moved:
            # A group gone stale is async RL working as configured (`rollout.max_staleness`;
            # the stage's accounting counts them): INFO. Any other reason is a warning.
            level = logging.INFO if reason.startswith("stale") else logging.WARNING
            log.log(level, "dead-lettered %s of %s: %s", stream_id, self.keys.stream, reason)

    def interrupted(self) -> bool:
        """Whether the driver asks the learner ranks to abandon the step they wait in."""
        return bool(self._call("interrupt?", lambda: self.client.exists(self.keys.interrupt)))

    def touch(self) -> None:
        """Reset the idle time of the entries this consumer holds, so live work is not claimed
        by another rank. Called from consume/ack; call it in long gaps between them too."""
        self._last_touch = time.monotonic()
        if not self._inflight or self.consumer is None:
            return
        held = sorted(self._inflight, key=stream_id_key)
        rows = self._call(
            "pending",
            lambda: self.client.xpending_range(
                self.keys.stream,
                GROUP,
                held[0],
                held[-1],
                len(held) + 100,
                consumername=self.consumer,
            ),
        )
        mine = {r["message_id"].decode() for r in rows}
        lost = [sid for sid in held if sid not in mine]
        if lost:
            log.warning(
                "%d held entries were claimed by another consumer (idle past min_idle_ms)",
                len(lost),
            )
        keep = [sid for sid in held if sid in mine]
        if keep:
            self._call(
                "touch",
                lambda: self.client.xclaim(
                    self.keys.stream, GROUP, self.consumer, 0, keep, justid=True
                ),
            )

    def _maybe_touch(self) -> None:
        if time.monotonic() - self._last_touch >= self.config.min_idle_ms / 4000:
            self.touch()

    def stats(self) -> dict[str, Any]:
        """A snapshot of the run's queue (see `read_stats`)."""
        return self._call("stats", lambda: read_stats(self.client, self.config, self.run))

    # ----------------------------------------------------------------------- plumbing

    def _create_group(self) -> None:
        try:
            self.client.xgroup_create(self.keys.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run `fn`, reconnecting with exponential backoff while Redis is unreachable."""
        while True:
            try:
                return retrying(what, fn, self.config.reconnect_max_s, self._retried)
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                # The group vanished (server restarted from an AOF older than it): recreate it.
                log.warning("consumer group missing on %s; recreating it", self.keys.stream)
                self._create_group()
                self._drain = True

    def _retried(self) -> None:
        self.retries += 1
        self._drain = True


def _pairs(fields: list[bytes] | None) -> dict[bytes, bytes] | None:
    return None if fields is None else dict(zip(fields[::2], fields[1::2], strict=True))

"""RolloutQueue against a real redis-server: delivery, acks, backpressure, poison, dedup."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest

from system.transport.protocol import RolloutGroup, decode_group, encode_group
from system.transport.queue import QueueFull, RolloutQueue
from system.transport.redis_server import connect
from tests.fixtures.redis import rollout_group

pytestmark = pytest.mark.integration


def make_queue(config, run, consumer=None, **overrides):
    config = config.model_copy(update=overrides)
    return RolloutQueue(connect(config), run, config, consumer=consumer)


def drain(queue: RolloutQueue, want: int, timeout_s: float = 5.0):
    got = []
    deadline = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        got += queue.consume(count=want - len(got))
    return got


def test_produce_consume_ack_round_trip(queue_config, redis_run):
    producer = make_queue(queue_config, redis_run)
    consumer = make_queue(queue_config, redis_run, consumer="rank0")
    groups = [rollout_group(redis_run, seed=i) for i in range(5)]
    ids = [producer.produce(g) for g in groups]
    got = drain(consumer, 5)
    assert [d.stream_id for d in got] == ids
    assert [d.group for d in got] == groups
    assert all(d.deliveries == 1 for d in got)
    stats = consumer.stats()
    assert (stats["length"], stats["pending"], stats["undelivered"]) == (5, 5, 0)
    consumer.ack(ids[:3])
    stats = consumer.stats()
    assert (stats["length"], stats["pending"], stats["applied"]) == (2, 2, 3)
    assert stats["consumers"]["rank0"]["pending"] == 2
    assert producer.published() == 5


def test_one_ack_of_thousands_of_entries(queue_config, redis_run):
    # Past 8000 ids: the ack script hands them to XACK/XDEL/SADD in chunks (Lua unpack limit).
    producer = make_queue(queue_config, redis_run, capacity=8200)
    consumer = make_queue(queue_config, redis_run, consumer="rank0")
    group = rollout_group(redis_run)
    for _ in range(8100):
        copy = dataclasses.replace(group, group_id=RolloutGroup.new_group_id())
        producer.produce_encoded(copy.group_id, encode_group(copy))
    got = drain(consumer, 8100, timeout_s=30)
    consumer.ack([d.stream_id for d in got])
    stats = consumer.stats()
    assert (stats["length"], stats["pending"], stats["applied"]) == (0, 0, 8100)


def test_publishing_a_group_twice_adds_one_entry(queue_config, redis_run, redis_client):
    queue = make_queue(queue_config, redis_run)
    group = rollout_group(redis_run)
    assert queue.produce(group) == queue.produce(group)
    assert redis_client.xlen(queue.keys.stream) == 1
    assert queue.published() == 1


def test_full_queue_blocks_the_producer_and_drops_nothing(queue_config, redis_run):
    reasons: list[str] = []
    config = queue_config.model_copy(update={"capacity": 3})
    producer = RolloutQueue(connect(config), redis_run, config, on_wait=reasons.append)
    consumer = make_queue(config, redis_run, consumer="rank0")
    groups = [rollout_group(redis_run, seed=i) for i in range(5)]
    for g in groups[:3]:
        producer.produce(g)
    with pytest.raises(QueueFull, match="capacity 3"):
        producer.produce(groups[3], timeout_s=0.2)
    worker = threading.Thread(target=lambda: [producer.produce(g) for g in groups[3:]])
    worker.start()
    time.sleep(0.3)
    assert worker.is_alive()
    assert reasons and "full" in reasons[0] and "capacity 3" in reasons[0]
    assert producer.wait_reason is not None
    first = drain(consumer, 2)
    time.sleep(0.2)
    assert worker.is_alive(), "consumed but unacked entries still count against capacity"
    consumer.ack([d.stream_id for d in first])
    worker.join(timeout=5)
    assert not worker.is_alive()
    assert producer.wait_reason is None
    rest = drain(consumer, 3)
    delivered = [d.group.group_id for d in first + rest]
    assert delivered == [g.group_id for g in groups]


def test_undecodable_entries_go_to_dead_letters(queue_config, redis_run, redis_client):
    producer = make_queue(queue_config, redis_run)
    consumer = make_queue(queue_config, redis_run, consumer="rank0")
    good = [rollout_group(redis_run, seed=i) for i in range(2)]
    producer.produce(good[0])
    redis_client.xadd(producer.keys.stream, {"g": b"\x93garbage"})
    redis_client.xadd(producer.keys.stream, {"other": b"1"})
    producer.produce(good[1])
    got = drain(consumer, 2)
    assert [d.group for d in got] == good
    dead = redis_client.xrange(producer.keys.dead)
    reasons = [fields[b"reason"].decode() for _, fields in dead]
    assert len(reasons) == 2
    assert reasons[0].startswith("undecodable: payload")
    assert "no 'g' payload field" in reasons[1]
    assert dead[0][1][b"payload"] == b"\x93garbage"
    stats = consumer.stats()
    assert stats["dead_letters"] == 2 and stats["pending"] == 2


def test_entry_delivered_too_often_is_dead_lettered(queue_config, redis_run, redis_client):
    producer = make_queue(queue_config, redis_run)
    group = rollout_group(redis_run)
    sid = producer.produce(group)
    follower = rollout_group(redis_run, seed=1)
    counts = []
    for _ in range(3):  # the consumer crashes (drops the queue) before acking, three times
        consumer = make_queue(queue_config, redis_run, consumer="rank0", max_deliveries=3)
        got = drain(consumer, 1, timeout_s=1.0)
        counts.append(got[0].deliveries)
    assert counts == [1, 2, 3]
    producer.produce(follower)
    consumer = make_queue(queue_config, redis_run, consumer="rank0", max_deliveries=3)
    got = drain(consumer, 1)
    assert [d.group for d in got] == [follower], "consumption goes on past the poison entry"
    [(_, fields)] = redis_client.xrange(producer.keys.dead)
    assert fields[b"source_id"].decode() == sid
    assert fields[b"reason"] == b"delivered 4 times, over max_deliveries=3"
    assert decode_group(fields[b"payload"]) == group


def test_learner_can_dead_letter_a_group(queue_config, redis_run, redis_client):
    producer = make_queue(queue_config, redis_run)
    consumer = make_queue(queue_config, redis_run, consumer="rank0")
    producer.produce(rollout_group(redis_run))
    [d] = drain(consumer, 1)
    consumer.dead_letter(d.stream_id, "prompt length mismatch: 32 != 31")
    consumer.dead_letter(d.stream_id, "again")  # a retry writes no second letter
    [(_, fields)] = redis_client.xrange(producer.keys.dead)
    assert fields[b"reason"] == b"prompt length mismatch: 32 != 31"
    stats = consumer.stats()
    assert (stats["length"], stats["pending"], stats["dead_letters"]) == (0, 0, 1)


def test_restart_takes_back_own_pending_and_skips_applied(queue_config, redis_run):
    producer = make_queue(queue_config, redis_run)
    groups = [rollout_group(redis_run, seed=i) for i in range(4)]
    for g in groups:
        producer.produce(g)
    first = make_queue(queue_config, redis_run, consumer="rank0")
    got = drain(first, 3)
    # The checkpoint holding the first two groups committed; the process died before acking.
    committed = first.applied_after([d.stream_id for d in got[:2]])
    assert committed.below == got[2].stream_id  # the third is still open (pending)
    restarted = make_queue(queue_config, redis_run, consumer="rank0")
    restarted.restore_applied(committed)
    again = drain(restarted, 2)
    assert [d.group.group_id for d in again] == [groups[2].group_id, groups[3].group_id]
    assert again[0].deliveries == 2 and again[1].deliveries == 1
    restarted.ack([d.stream_id for d in again])
    stats = restarted.stats()
    assert (stats["length"], stats["pending"], stats["skipped"], stats["applied"]) == (0, 0, 2, 4)


def test_live_consumer_keeps_its_entries(queue_config, redis_run):
    producer = make_queue(queue_config, redis_run)
    # min_idle is wide next to the holder's 0.15 s cadence: a loaded machine (every write is
    # fsynced) may stall a call for a few hundred ms without the holder counting as dead.
    holder = make_queue(queue_config, redis_run, consumer="rank0", min_idle_ms=1000)
    other = make_queue(queue_config, redis_run, consumer="rank1", min_idle_ms=1000)
    producer.produce(rollout_group(redis_run))
    [held] = drain(holder, 1)
    for _ in range(12):  # longer than min_idle in total, but the holder keeps calling the queue
        time.sleep(0.15)
        holder.consume(count=1, block_ms=1)
        assert other.consume(count=1, block_ms=1) == []
    time.sleep(1.5)  # the holder goes silent past min_idle: it counts as dead
    [claimed] = drain(other, 1)
    assert claimed.stream_id == held.stream_id and claimed.deliveries == 2


def test_queue_stats_command(queue_config, redis_run, redis_server, capsys):
    import json

    from system.cli import main

    producer = make_queue(queue_config, redis_run)
    consumer = make_queue(queue_config, redis_run, consumer="rank0")
    for i in range(3):
        producer.produce(rollout_group(redis_run, seed=i))
    consumer.ack([d.stream_id for d in drain(consumer, 2)[:1]])
    args = ["queue", "stats", "--redis", redis_server.url, "--run", redis_run, "--interval", "0"]
    assert main([*args, "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["length"], stats["pending"], stats["undelivered"]) == (2, 1, 1)
    assert (stats["published"], stats["applied"]) == (3, 1)
    assert stats["consumers"]["rank0"]["pending"] == 1
    assert main(args) == 0
    assert "undelivered 1 + pending 1" in capsys.readouterr().out
    assert main([*args[:-4], "--run", "nosuchrun"]) == 2
    assert "no queue for run 'nosuchrun'" in capsys.readouterr().err
    assert main([*args, "--password-env", "UNSET_VAR_FOR_TEST"]) == 2
    assert "requires a password: set $UNSET_VAR_FOR_TEST" in capsys.readouterr().err


def test_benchmark_quick_run_reports_its_figures(capsys):
    import argparse

    from system.benchmarks.queue import run

    figures = run(argparse.Namespace(quick=True, json=True))
    table = capsys.readouterr().out
    assert "ours / raw" in table and "decode (validated)" in table
    assert figures["message_bytes"] > 40_000  # G=8 x 512 tokens + 2k prompt, as specified
    for key in ("encode_mb_s", "decode_mb_s", "ours_groups_s", "raw_groups_s", "ours_p99_ms"):
        assert figures[key] > 0
    assert figures["ours_p50_ms"] <= figures["ours_p99_ms"]

"""Faults 3 and 4 against a real redis-server with its supervisor, a producer and a consumer
(each its own connection, as a rollout actor and a learner rank have): SIGKILL mid-stream
(restarted on the same AOF, both reconnect by themselves, nothing lost: the embedded server
fsyncs every write before replying) and SIGSTOP past the read timeout (producers back off
and count their retries, nothing dropped). Every produced group is applied exactly once."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter

import pytest

from system.config import QueueConfig
from system.transport.queue import RolloutQueue
from system.transport.redis_server import EmbeddedRedis, RedisSupervisor, connect
from tests.fixtures.redis import rollout_group

pytestmark = pytest.mark.integration
N = 300


class Traffic:
    """A producer thread publishing N groups and a consumer thread applying them."""

    def __init__(self, server: EmbeddedRedis, run: str) -> None:
        config = QueueConfig(url=server.url, block_ms=100, reconnect_max_s=0.5)
        self.producer = RolloutQueue(connect(config, password=server.password), run, config)
        self.consumer = RolloutQueue(
            connect(config, password=server.password), run, config, consumer="rank0"
        )
        self.published: list[str] = []
        self.applied: list[str] = []
        self._stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._produce, args=(run,)),
            threading.Thread(target=self._consume),
        ]

    def _produce(self, run: str) -> None:
        for i in range(N):
            group = rollout_group(run, seed=i)
            self.producer.produce(group)
            self.published.append(group.group_id)
            time.sleep(0.01)

    def _consume(self) -> None:
        while not self._stop.is_set():
            got = self.consumer.consume(count=8)
            self.consumer.ack([d.stream_id for d in got])
            self.applied.extend(d.group.group_id for d in got)

    def __enter__(self) -> Traffic:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.threads[0].join(timeout=120)
        deadline = time.monotonic() + 30
        while len(self.applied) < len(self.published) and time.monotonic() < deadline:
            time.sleep(0.1)
        self._stop.set()
        self.threads[1].join(timeout=30)

    def wait_published(self, n: int) -> None:
        while len(self.published) < n:
            time.sleep(0.01)


def _check(traffic: Traffic) -> None:
    assert not any(t.is_alive() for t in traffic.threads), "producer or consumer is stuck"
    counts = Counter(traffic.applied)
    assert len(traffic.published) == N
    assert set(traffic.published) - set(counts) == set(), "groups lost"
    assert max(counts.values()) == 1, "a group was applied twice"
    stats = traffic.consumer.stats()
    assert (stats["published"], stats["applied"], stats["length"]) == (N, N, 0)


def test_sigkilled_redis_is_restarted_and_nothing_is_lost(tmp_path):
    server = EmbeddedRedis(tmp_path / "redis").start()
    supervisor = RedisSupervisor(server).start()
    try:
        with Traffic(server, "kill") as traffic:
            traffic.wait_published(N // 3)
            killed = time.time()
            os.kill(server.process.pid, signal.SIGKILL)
        _check(traffic)
        (died, back), *_ = supervisor.restarts
        assert died >= killed and back - died < 10
        assert traffic.producer.retries > 0 and traffic.consumer.retries > 0
    finally:
        supervisor.stop()
        server.stop()


def test_sigstopped_redis_makes_producers_back_off_and_drops_nothing(tmp_path):
    server = EmbeddedRedis(tmp_path / "redis").start()
    supervisor = RedisSupervisor(server).start()
    try:
        with Traffic(server, "stop") as traffic:
            traffic.wait_published(N // 3)
            os.kill(server.process.pid, signal.SIGSTOP)
            time.sleep(7.0)  # past the clients' 5.1 s read timeout
            os.kill(server.process.pid, signal.SIGCONT)
        _check(traffic)
        assert traffic.producer.retries > 0, "the producer never backed off"
        assert supervisor.restarts == [], "a stopped server is alive: no restart"
    finally:
        supervisor.stop()
        os.kill(server.process.pid, signal.SIGCONT)
        server.stop()

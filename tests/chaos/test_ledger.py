"""The ledger the chaos report is built from: a lost group and a group applied twice are
detected from real state (Redis + the committed lineage's audit trail), poison is counted apart."""

from __future__ import annotations

import pytest

from system.chaos.ledger import read_ledger
from system.transport.checkpoint import (
    TrainingState,
    begin,
    commit,
    journal_applied,
    write_state,
)
from system.transport.queue import RolloutQueue
from system.transport.redis_server import connect
from tests.fixtures.redis import rollout_group

pytestmark = pytest.mark.integration


def test_lost_and_applied_twice_are_detected(queue_config, redis_run, redis_client, tmp_path):
    queue = RolloutQueue(connect(queue_config), redis_run, queue_config, consumer="rank0")
    groups = [rollout_group(redis_run, seed=i) for i in range(6)]
    for g in groups:
        queue.produce(g)
    got = queue.consume(count=6)
    applied = [d for d in got[:3]]
    queue.ack([d.stream_id for d in applied])
    queue.dead_letter(got[3].stream_id, "prompt length mismatch")
    redis_client.xdel(queue.keys.stream, got[4].stream_id)  # vanished: lost
    redis_client.xadd(queue.keys.stream, {"g": b"\xc1"})  # poison
    RolloutQueue(connect(queue_config), redis_run, queue_config, consumer="rank1").consume(8)
    ids = [d.group.group_id for d in applied]
    tmp = begin(tmp_path, 2)
    write_state(tmp, TrainingState(step=2))
    journal_applied(tmp_path, 1, 0, ids[:1])  # an attempt abandoned by a resume from step 0
    journal_applied(tmp_path, 2, 0, [*ids, ids[0]])
    commit(tmp_path, tmp, 2)
    journal_applied(tmp_path, 4, 2, ids[1:])  # past the latest checkpoint: not committed

    ledger = read_ledger(redis_client, queue_config, redis_run, tmp_path)
    assert ledger.lost == {got[4].group.group_id}
    assert ledger.applied_twice == {ids[0]}
    assert set(ledger.dead) == {got[3].group.group_id}
    assert ledger.in_stream == {got[5].group.group_id}
    assert len(ledger.poison) == 1 and ledger.poison[0][1].startswith("undecodable")
    totals = ledger.totals()
    assert (totals["published"], totals["applied"], totals["lost"], totals["applied_twice"]) == (
        6, 3, 1, 1,
    )  # fmt: skip

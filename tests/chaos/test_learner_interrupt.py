"""Issue #7 at the learner: two real DeepSpeed ranks wait for groups that never come; the
driver's interrupt key makes both abandon the step together (no collective left hanging),
the group one rank already took is kept, not acked, and used by the next step."""

from __future__ import annotations

import threading
import time

import pytest

from system.transport.checkpoint import read_journal
from system.transport.keys import QueueKeys
from system.transport.queue import RolloutQueue
from tests.integration.learner_helpers import make_groups, run_ranks
from tests.integration.test_learner_grpo import learner_config, spec_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_interrupt_abandons_a_waiting_step_on_every_rank(
    tiny_qwen2_5_vl, synthetic_dataset, redis_server, redis_client, redis_run, queue_config,
    tmp_path,
):  # fmt: skip
    groups = make_groups(tiny_qwen2_5_vl, "qwen2_5_vl", synthetic_dataset, 2, redis_run)
    queue = RolloutQueue(redis_client, redis_run, queue_config)
    queue.produce(groups[0])  # one rank gets its share, the other waits
    keys = QueueKeys.of(queue_config.stream_prefix, redis_run)

    def driver() -> None:
        while queue.stats()["pending"] < 1:  # a rank took the only group; the other waits
            time.sleep(0.5)
        time.sleep(3)
        redis_client.set(keys.interrupt, 1)
        time.sleep(8)  # both ranks see it within a blocking read and abandon the step
        redis_client.delete(keys.interrupt)  # the driver lets them step again
        queue.produce(groups[1])

    thread = threading.Thread(target=driver, daemon=True)
    thread.start()
    spec = spec_for(learner_config(queue_config, redis_run), tiny_qwen2_5_vl, tmp_path / "ck",
                    queue_config, redis_server, ["step", "await_driver", "step", "checkpoint"])  # fmt: skip
    results, codes = run_ranks(spec, tmp_path / "out")
    thread.join(timeout=30)
    assert codes == [0, 0]
    for r in results:
        assert "error" not in r, r["error"]
        first, second = r["metrics"]
        assert first == {"step": 0.0, "interrupted": 1.0}
        assert second["step"] == 1.0 and second["applied"] == 1.0
    applied = read_journal(tmp_path / "ck")
    assert sorted(applied) == sorted(g.group_id for g in groups)
    assert queue.stats()["applied"] == 2 and queue.stats()["pending"] == 0

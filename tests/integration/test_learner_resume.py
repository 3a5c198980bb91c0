"""Checkpoint -> kill the workers -> resume: the global step continues, the next step matches an
uninterrupted run (loss, gradient norm rel. 1e-4; weights abs. 1e-5 — the two runs may split
the step's groups differently between ranks, which only reorders float sums), and no group
is applied twice. Also: an unwritable checkpoint directory is a clear error on every rank."""

from __future__ import annotations

import pytest
import torch

from tests.integration.learner_helpers import make_groups, run_ranks
from tests.integration.test_learner_grpo import learner_config, spec_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_checkpoint_kill_resume_matches_uninterrupted(
    tiny_qwen2_5_vl, synthetic_dataset, redis_server, redis_client, queue_config, tmp_path,
):  # fmt: skip
    from safetensors.torch import load_file

    from system.transport.checkpoint import read_journal
    from system.transport.queue import RolloutQueue

    run_a, run_b = f"ra{tmp_path.name[-6:]}", f"rb{tmp_path.name[-6:]}"
    groups = make_groups(tiny_qwen2_5_vl, "qwen2_5_vl", synthetic_dataset, 6, run_a)
    for run in (run_a, run_b):
        queue = RolloutQueue(redis_client, run, queue_config)
        for g in groups:
            queue.produce(g)

    def spec(run, ckpt, actions, **extra):
        config = learner_config(queue_config, run)
        config["checkpoint"] = {"every_steps": 2, "keep_last": 3}
        return spec_for(config, tiny_qwen2_5_vl, ckpt, queue_config, redis_server, actions,
                        **extra)  # fmt: skip

    # A: three uninterrupted steps.
    (a, _), codes = run_ranks(spec(run_a, tmp_path / "a", ["step"] * 3 + ["checkpoint"]),
                              tmp_path / "out_a")  # fmt: skip
    assert codes == [0, 0]
    # B: two steps, checkpoint, a third step that is never committed, then SIGKILL.
    actions = ["step", "step", "checkpoint", "step", "kill"]
    (b, _), codes = run_ranks(spec(run_b, tmp_path / "b", actions), tmp_path / "out_b")
    assert codes == [-9, -9] and len(b["metrics"]) == 3
    queue_b = RolloutQueue(redis_client, run_b, queue_config)
    assert queue_b.stats()["applied"] == 4 and queue_b.stats()["pending"] == 2
    # C: resume B's checkpoint and take the third step again.
    (c, _), codes = run_ranks(
        spec(run_b, tmp_path / "b", ["step", "checkpoint"], resume=True), tmp_path / "out_c"
    )
    assert codes == [0, 0]
    assert c["resumed"] and c["start_step"] == 2
    step_a, step_c = a["metrics"][2], c["metrics"][0]
    assert step_c["step"] == 3.0
    assert step_c["loss"] == pytest.approx(step_a["loss"], rel=1e-4)
    assert step_c["grad_norm"] == pytest.approx(step_a["grad_norm"], rel=1e-4)

    wa = load_file(tmp_path / "a" / "step_00000003" / "hf" / "model.safetensors")
    wc = load_file(tmp_path / "b" / "step_00000003" / "hf" / "model.safetensors")
    for name, tensor in wa.items():
        assert torch.allclose(tensor, wc[name], atol=1e-5, rtol=0), name

    # No group applied twice: each of the six exactly once, and the queue agrees.
    applied = read_journal(tmp_path / "b")  # the lineage: step 2 (B), step 3 (C, not B's)
    assert len(applied) == len(set(applied)) == 6
    assert set(applied) == {g.group_id for g in groups}
    stats = queue_b.stats()
    assert stats["applied"] == 6 and stats["pending"] == 0 and stats["length"] == 0


def test_unwritable_checkpoint_dir_is_a_clear_error(
    tiny_qwen2_5_vl, synthetic_dataset, redis_server, redis_client, redis_run, queue_config,
    tmp_path,
):  # fmt: skip
    from system.transport.queue import RolloutQueue

    groups = make_groups(tiny_qwen2_5_vl, "qwen2_5_vl", synthetic_dataset, 2, redis_run)
    queue = RolloutQueue(redis_client, redis_run, queue_config)
    for g in groups:
        queue.produce(g)
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    config = learner_config(queue_config, redis_run)
    spec = spec_for(config, tiny_qwen2_5_vl, blocker / "ckpt", queue_config, redis_server,
                    ["step", "checkpoint"])  # fmt: skip
    results, codes = run_ranks(spec, tmp_path / "out")
    assert codes == [0, 0]
    for r in results:
        assert r["error"].startswith("CheckpointError: checkpoint of step 1 could not be written")
    # Nothing was acked: the step's groups are still pending for a later, successful commit.
    assert queue.stats()["applied"] == 0 and queue.stats()["pending"] == 2

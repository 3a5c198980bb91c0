"""Two learner ranks, DeepSpeed ZeRO-3 over gloo, the tiny Qwen2.5-VL, groups from a real
Redis stream: GRPO steps (two updates per batch, against the proximal log-probs of the batch)
raise the likelihood of positive-advantage completions and lower it for negative ones, the vision tower stays bit-identical while projector and LLM move, a bad
group is dead-lettered with its reason, and weight export delivers the gathered tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.integration.learner_helpers import (
    REWARDS,
    completion_logprobs,
    make_groups,
    run_ranks,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def learner_config(queue_config, run: str, **learner) -> dict:
    return {
        "name": run,
        "model": {"family": "qwen2_5_vl", "gradient_checkpointing": True},
        "queue": {**queue_config.model_dump(mode="json"), "min_idle_ms": 60_000},
        "rollout": {"max_staleness": 100},
        "learner": {
            "num_ranks": 2,
            "groups_per_step": 2,
            "micro_batch_size": 3,
            "optimizer": {"lr": 2e-3, "grad_clip": 10.0},
            "grpo": {"beta": 0.01},
            **learner,
        },
        "weight_sync": {"bucket_mb": 1},
        "checkpoint": {"every_steps": 100, "keep_last": 2},
    }


def spec_for(config: dict, model, ckpt_dir, queue_config, redis_server, actions, **extra):
    return {
        "config": config,
        "model_path": str(model),
        "checkpoint_dir": str(ckpt_dir),
        "password_env": queue_config.password_env,
        "password": redis_server.password,
        "actions": actions,
        **extra,
    }


def test_grpo_two_ranks_zero3(
    tiny_qwen2_5_vl, synthetic_dataset, redis_server, redis_client, redis_run, queue_config,
    tmp_path,
):  # fmt: skip
    from safetensors.torch import load_file

    from system.transport.checkpoint import read_journal
    from system.transport.queue import RolloutQueue

    groups = make_groups(tiny_qwen2_5_vl, "qwen2_5_vl", synthetic_dataset, 5, redis_run)
    # The first group's prompt lost its video pads: the learner must dead-letter it.
    bad = groups[0]
    keep = bad.prompt_ids[bad.prompt_ids != 13][:40]
    bad = type(bad)(
        **{**{f: getattr(bad, f) for f in bad.__dataclass_fields__}, "prompt_ids": keep}
    )
    queue = RolloutQueue(redis_client, redis_run, queue_config)
    for g in [bad, *groups[1:]]:
        queue.produce(g)
    config = learner_config(queue_config, redis_run, grpo={"beta": 0.01, "iterations": 2})
    actions = ["export_all", "step", "step", "export", "checkpoint"]
    spec = spec_for(config, tiny_qwen2_5_vl, tmp_path / "ckpt", queue_config, redis_server,
                    actions, sender=True)  # fmt: skip
    results, codes = run_ranks(spec, tmp_path / "out")
    assert codes == [0, 0]
    r0 = results[0]
    metrics = r0["metrics"]
    assert [m["step"] for m in metrics] == [1.0, 2.0]
    assert all(m["applied"] == 1.0 and np.isfinite(m["loss"]) for m in metrics)
    # Two updates per batch: the second measures its ratio against the log-probs taken before
    # the first, so it moved away from 1 (recomputing them each update would keep it at 1);
    # the IS weight (proximal / behaviour) stays 1: the behaviour policy is the start policy.
    assert metrics[0]["ratio_max"] > 1.0 + 1e-4 and metrics[0]["ratio_min"] < 1.0 - 1e-4
    assert metrics[0]["is_weight_mean"] == pytest.approx(1.0, abs=1e-3)  # behaviour = policy

    # Dead letter with its reason; four good groups applied, acked after the checkpoint.
    dead = redis_client.xrange(queue.keys.dead)
    assert len(dead) == 1 and b"video-pad" in dead[0][1][b"reason"]
    stats = queue.stats()
    assert stats["applied"] == 4 and stats["dead_letters"] == 1
    state = r0["state"]
    assert state.step == 2
    applied = read_journal(tmp_path / "ckpt")
    assert sorted(applied) == sorted(g.group_id for g in groups[1:])
    assert state.applied["above"] == []  # the stream is empty: the watermark covers all

    # Likelihood: up for positive advantages, down for negative ones.
    hf = tmp_path / "ckpt" / "step_00000002" / "hf"
    for g in groups[1:]:
        before = completion_logprobs(tiny_qwen2_5_vl, "qwen2_5_vl", g)
        after = completion_logprobs(hf, "qwen2_5_vl", g)
        delta = np.array(after) - np.array(before)
        pos = [d for d, r in zip(delta, REWARDS, strict=True) if r > 0.5]
        neg = [d for d, r in zip(delta, REWARDS, strict=True) if r < 0.5]
        assert min(pos) > 0 and max(neg) < 0, delta

    # Vision tower bit-identical; projector (merger) and LLM changed. The files use the
    # checkpoint names (visual.*, model.layers.*), the sender the module's own names.
    old = load_file(tiny_qwen2_5_vl / "model.safetensors")
    new = load_file(hf / "model.safetensors")
    assert old.keys() == new.keys()
    tower = [k for k in old if k.startswith("visual.") and not k.startswith("visual.merger.")]
    merger = [k for k in old if k.startswith("visual.merger.")]
    llm = [k for k in old if not k.startswith("visual.")]
    assert tower and merger and llm
    assert all(torch.equal(old[k], new[k]) for k in tower)
    assert all(not torch.equal(old[k], new[k]) for k in merger)
    assert all(not torch.equal(old[k], new[k]) for k in llm)

    # Weight export: version 0 with everything, version 2 only trainable; equal to the model.
    assert [c for c in r0["sender_calls"] if c[0] != "bucket"] == [
        ("start", 0), ("finish", 0), ("start", 2), ("finish", 2),
    ]  # fmt: skip
    assert sum(c[0] == "bucket" for c in r0["sender_calls"]) > 2  # 1 MB buckets
    initial = module_params(tiny_qwen2_5_vl)
    final = module_params(hf)
    assert set(r0["sent"][0]) == set(initial)
    assert all(torch.equal(r0["sent"][0][k], initial[k]) for k in initial)
    trainable = {k for k in final if not k.startswith("model.visual.") or ".merger." in k}
    assert set(r0["sent"][2]) == trainable
    assert all(torch.equal(r0["sent"][2][k], final[k]) for k in trainable)


def module_params(path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(path)
    return {k: v.detach() for k, v in model.named_parameters()}


def test_nonfinite_steps_are_skipped_together_then_stop(
    tiny_qwen2_5_vl, synthetic_dataset, redis_server, redis_client, redis_run, queue_config,
    tmp_path,
):  # fmt: skip
    from system.transport.queue import RolloutQueue

    groups = make_groups(tiny_qwen2_5_vl, "qwen2_5_vl", synthetic_dataset, 10, redis_run)
    queue = RolloutQueue(redis_client, redis_run, queue_config)
    for g in groups:
        queue.produce(g)
    config = learner_config(queue_config, redis_run, max_nonfinite_steps=2)
    config["learner"]["grpo"] = {"beta": 0.0}
    actions = ["checksum", "step", "checksum", "step", "checksum", "step", "checksum"]
    actions += ["step", "step"]
    spec = spec_for(config, tiny_qwen2_5_vl, tmp_path / "ckpt", queue_config, redis_server,
                    actions, poison_steps=[2, 4, 5])  # fmt: skip
    results, codes = run_ranks(spec, tmp_path / "out")
    assert codes == [0, 0]
    for r in results:
        applied = [m["applied"] for m in r["metrics"]]
        assert applied == [1.0, 0.0, 1.0, 0.0]  # step 5 raised
        assert r["metrics"][1]["skipped_steps"] == 1.0
        c = r["checksums"]
        assert c[0] != c[1] and c[1] == c[2] and c[2] != c[3]  # applied, skipped, applied
        assert r["error"].startswith("NonFiniteError: 2 consecutive steps")
        assert "max_nonfinite_steps=2" in r["error"]

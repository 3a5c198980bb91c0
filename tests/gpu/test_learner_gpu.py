"""The learner on a CUDA device, without Ray, vLLM or Redis (what scripts/gpu/learner_check.sh
runs on a GPU machine): one rank over NCCL, bf16 ZeRO-3 built partitioned, a packed
micro-batch scored as the padded one (bf16 tolerance), and a fused-AdamW step that changes
the weights. Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu


def test_bf16_learner_step_on_one_gpu(tiny_qwen2_5_vl):
    import socket

    import torch.distributed as dist

    import learner.engine as eng
    from learner.collate import Collator, Sequence, tokens_per_second
    from learner.objectives import GRPOObjective, StepTotals, scored_logprobs
    from system.config import LearnerConfig, ModelConfig
    from system.config.models import GRPOConfig

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    torch.cuda.set_device(0)
    assert eng.init_distributed(0, 1, "127.0.0.1", port) == "nccl"
    try:
        learner = LearnerConfig(num_ranks=1, groups_per_step=1)
        ds = eng.ds_config(learner, 1, torch.bfloat16, True)
        assert ds["bf16"]["enabled"] and ds["optimizer"]["params"]["fused"] is True
        path = str(tiny_qwen2_5_vl)
        model = eng.load_model(path, torch.bfloat16, True, ModelConfig(path=path),
                               eng.partitioned(ds, learner))  # fmt: skip
        engine = eng.initialize(model, ds, True)
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(path)
        collator = Collator(processor, "qwen2_5_vl", tokens_per_second=tokens_per_second(path))
        tok = processor.tokenizer
        g = torch.Generator().manual_seed(0)
        seqs = []
        for text, n in (("hello there", 7), ("what next in the video", 19)):
            prompt = torch.tensor(tok(text)["input_ids"])
            completion = torch.randint(100, 1000, (n,), generator=g)
            seqs.append(Sequence(torch.cat([prompt, completion]), prompt.numel(), 1.0,
                                 torch.full((n,), -7.0)))  # fmt: skip
        packed = collator.pack(seqs).to("cuda")
        padded = collator.collate(seqs).to("cuda")
        with torch.no_grad():
            a = scored_logprobs(packed, engine(**packed.model_inputs()).logits, 1.0, 8)
            b = scored_logprobs(padded, engine(**padded.model_inputs()).logits, 1.0, 0)
        mask = packed.loss_mask.bool()
        assert torch.allclose(a[mask], b[padded.loss_mask.bool()], atol=5e-2)  # bf16
        objective = GRPOObjective(GRPOConfig(beta=0.0), 1.0, 8)
        totals = StepTotals(float(packed.num_tokens), float(packed.num_sequences))
        engine.set_gradient_accumulation_boundary(True)
        loss, _ = objective.loss(packed, engine(**packed.model_inputs()).logits, None, totals)
        engine.backward(loss, scale_wrt_gas=False)
        engine.step()
        assert torch.isfinite(loss) and engine.was_step_applied()
        assert torch.cuda.max_memory_allocated() > 0
    finally:
        dist.destroy_process_group()

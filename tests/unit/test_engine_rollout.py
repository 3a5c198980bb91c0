"""RolloutActor scoring against a scripted `RolloutEngine` double (no vLLM): rewards,
T-GRPO shuffled rollouts (scored, never published, bonus on the ordered samples), the
equal-reward filter and stats, samples that straddle a weight update, a wedged weight receive."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from types import SimpleNamespace

import pytest

from actors.engine import Completion, EngineRequest, Generation, SampleSpec
from actors.rollout import RolloutActor
from system.config import RunConfig
from system.data.records import Record, read_items

RIGHT = "\\boxed{D}<think>it goes down</think>\\boxed{D}"
WRONG = "\\boxed{A}<think>it goes left</think>\\boxed{A}"


class ScriptedEngine:
    """`RolloutEngine` whose completions are given texts; shuffled-frame requests (detected
    by their frames differing from the first call's) get `shuffled_texts`."""

    def __init__(self, texts: list[str], shuffled_texts: list[str]) -> None:
        self.texts = texts
        self.shuffled_texts = shuffled_texts
        self.weight_version = 3
        self.calls: list[tuple[int, int]] = []

    async def generate(self, requests: Sequence[EngineRequest], spec: SampleSpec):
        texts = self.texts if not self.calls else self.shuffled_texts
        self.calls.append((len(requests), spec.n))
        return [
            Generation(
                prompt_ids=[1, 2, 3],
                completions=[
                    Completion([5] * (i + 1), [-0.5] * (i + 1), texts[i % len(texts)], "stop")
                    for i in range(spec.n)
                ],
            )
            for _ in requests
        ]


def actor_for(tiny_qwen2_5_vl, synthetic_dataset, engine, **rollout) -> RolloutActor:
    from transformers import AutoProcessor

    config = RunConfig.model_validate(
        {
            "model": {"path": str(tiny_qwen2_5_vl)},
            "data": {"root": str(synthetic_dataset)},
            "video": {"num_frames": 4, "max_video_tokens": 64, "min_pixels": 3136},
            "rollout": {"group_size": 4, "prompts_per_batch": 1, **rollout},
        }
    )
    record = next(
        Record.model_validate(item)
        for _, item in read_items(synthetic_dataset / "train.jsonl")
        if item["answer"] == "D"
    )
    actor = RolloutActor(config, records=[record])
    actor.engine = engine
    actor.processor = AutoProcessor.from_pretrained(tiny_qwen2_5_vl)
    return actor


def run_batch(actor: RolloutActor):
    prompts = actor._prepare(actor._next_records())
    return asyncio.run(actor._generate_and_score(prompts, actor.engine.weight_version, 0.0))


def test_groups_scored_and_tagged(tiny_qwen2_5_vl, synthetic_dataset):
    engine = ScriptedEngine([RIGHT, WRONG], [])
    actor = actor_for(tiny_qwen2_5_vl, synthetic_dataset, engine)
    (group,) = run_batch(actor)
    assert engine.calls == [(1, 4)]
    assert group.weight_version == 3 and len(group.samples) == 4
    rewards = [s.reward for s in group.samples]
    # answer_twice: 0.9 + 1.1 + 1.0 (format) for right, 1.0 (format) for wrong.
    assert rewards == pytest.approx([3.0, 1.0, 3.0, 1.0])
    assert [len(s.logprobs) for s in group.samples] == [1, 2, 3, 4]
    stats = actor.stats()
    assert stats["reward_mean"] == pytest.approx(2.0) and stats["think_ratio"] == 1.0


def test_t_grpo_shuffled_rollouts_are_scored_not_published(tiny_qwen2_5_vl, synthetic_dataset):
    engine = ScriptedEngine([RIGHT, WRONG], [WRONG])
    actor = actor_for(tiny_qwen2_5_vl, synthetic_dataset, engine, t_grpo={"enabled": True})
    (group,) = run_batch(actor)
    assert engine.calls == [(1, 4), (1, 2)]  # G/2 shuffled rollouts were generated
    assert len(group.samples) == 4  # ... and never published
    # Ordered accuracy 0.5 >= 0.8 x shuffled 0: correct rollouts get +0.3.
    assert [s.reward for s in group.samples] == pytest.approx([3.3, 1.0, 3.3, 1.0])
    assert group.samples[0].reward_components["temporal"] == pytest.approx(0.3)
    assert group.meta["t_grpo_holds"] is True


def test_equal_reward_groups_are_filtered(tiny_qwen2_5_vl, synthetic_dataset):
    actor = actor_for(tiny_qwen2_5_vl, synthetic_dataset, ScriptedEngine([WRONG], []))
    assert run_batch(actor) == []
    assert actor.stats()["filter_rate"] == 1.0


class StraddlingEngine(ScriptedEngine):
    """Completions whose later tokens came from the next weight version (an update landed
    while they were generating), as vLLM reports them."""

    async def generate(self, requests: Sequence[EngineRequest], spec: SampleSpec):
        gens = await super().generate(requests, spec)
        return [
            Generation(
                prompt_ids=g.prompt_ids,
                completions=[
                    Completion(
                        [5] * 4,
                        [-0.5] * 4,
                        c.text,
                        "stop",
                        version_starts=((4, 0), (5, 2)) if i % 2 else ((5, 0),),
                    )
                    for i, c in enumerate(g.completions)
                ],
            )
            for g in gens
        ]


def test_straddling_samples_keep_their_spans_and_the_group_its_oldest_version(
    tiny_qwen2_5_vl, synthetic_dataset
):
    engine = StraddlingEngine([RIGHT, WRONG], [])
    actor = actor_for(tiny_qwen2_5_vl, synthetic_dataset, engine, filter_equal_rewards=False)
    (group,) = run_batch(actor)
    assert [s.version_starts for s in group.samples] == [((5, 0),), ((4, 0), (5, 2))] * 2
    # The batch started at v3, but no token is older than v4: staleness counts from v4.
    assert group.weight_version == 4


class WedgedEngine(ScriptedEngine):
    """An engine stuck in its weight receive (an NCCL broadcast whose sender died)."""

    async def update_weights(self, update_info):
        await asyncio.sleep(3600)


def test_a_wedged_weight_receive_restarts_the_engine(
    tiny_qwen2_5_vl, synthetic_dataset, monkeypatch
):
    import actors.rollout as rollout

    actor = actor_for(tiny_qwen2_5_vl, synthetic_dataset, WedgedEngine([RIGHT], []))
    actor.config.weight_sync.timeout_s = 0.2
    monkeypatch.setattr(rollout, "WEDGED_GRACE_S", 0.1)
    restarted: list[str] = []
    monkeypatch.setattr(actor, "restart_wedged_engine", restarted.append)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        asyncio.run(actor.update_weights({"names": []}))
    assert time.monotonic() - started < 2.0
    assert restarted == ["its weight receive did not return within 0.3 s"]
    assert actor.stats_.weight_update_failures == 1


def test_a_dead_engine_restarts_the_actor_instead_of_failing_the_run(
    tiny_qwen2_5_vl, synthetic_dataset, monkeypatch
):
    class EngineDeadError(RuntimeError):
        """Named as vLLM's."""

    class DyingEngine(ScriptedEngine):
        async def generate(self, requests, spec):
            raise EngineDeadError("EngineCore encountered an issue")

    actor = actor_for(tiny_qwen2_5_vl, synthetic_dataset, DyingEngine([RIGHT], []))
    monkeypatch.setattr(actor, "admitted", lambda: True)
    restarted: list[str] = []
    monkeypatch.setattr(actor, "restart_wedged_engine", restarted.append)
    with pytest.raises(EngineDeadError):
        asyncio.run(actor.run(max_batches=1))
    assert restarted == ["its engine died: EngineCore encountered an issue"]
    assert actor.stats_.published == 0
    # Any other error of a batch is not an engine loss: it propagates, no restart.
    actor.engine = ScriptedEngine([RIGHT], [])
    monkeypatch.setattr(actor, "_generate_and_score", None)
    restarted.clear()
    with pytest.raises(TypeError):
        asyncio.run(actor.run(max_batches=1))
    assert restarted == []


def test_text_and_image_records_are_generated_for_and_counted_by_kind(
    tiny_qwen2_5_vl, synthetic_dataset, tmp_path
):
    """A text-only and an image record in a GRPO batch beside a video one: a prompt without a
    video part and an engine request without frames; one with image parts, the resized images
    in the request and their references in the group; each kind counted apart. T-GRPO's
    shuffled-frame rollouts are made for the video prompts only."""
    from system.data.synthetic import make_text_record
    from system.data.synthetic_image import generate_images

    engine = ScriptedEngine([RIGHT, WRONG], [WRONG])
    actor = actor_for(
        tiny_qwen2_5_vl, synthetic_dataset, engine, prompts_per_batch=2,
        filter_equal_rewards=False, t_grpo={"enabled": True},
    )  # fmt: skip
    text = Record.model_validate({**make_text_record(3, seed=0), "answer": "D"})
    generate_images(tmp_path, 3, 0, seed=0)
    moved = Record.model_validate_json((tmp_path / "image_train.jsonl").read_text().splitlines()[2])
    image = moved.model_copy(
        update={"answer": "D", "images": [str(tmp_path / p) for p in moved.images]}
    )
    prompts = actor._prepare([text, image, actor._next_records()[0]])
    assert [p.kind for p in prompts] == ["text", "image", "video"]
    assert prompts[0].request().video is None and "<|video_pad|>" not in prompts[0].text
    request = prompts[1].request()
    assert request.video is None and len(request.images) == 2
    assert prompts[1].text.count("<|image_pad|>") == 2 and "<|video_pad|>" not in prompts[1].text
    assert "<|video_pad|>" in prompts[2].text
    groups = asyncio.run(actor._generate_and_score(prompts, 3, 0.0))
    assert engine.calls == [(3, 4), (1, 2)]  # every prompt ordered, the video one shuffled
    by_record = {g.record_id: g for g in groups}
    assert by_record[text.id].vision is None and by_record[text.id].meta["kind"] == "text"
    assert "t_grpo_holds" not in by_record[text.id].meta
    pictured = by_record[image.id]
    assert pictured.vision is None and pictured.meta["kind"] == "image"
    assert [r.path for r in pictured.images] == image.images
    video = next(g for g in groups if g.record_id not in (text.id, image.id))
    assert video.vision is not None and video.meta["kind"] == "video" and not video.images
    actor.queue = SimpleNamespace(produce=lambda group: None)
    actor._publish(groups)
    stats = actor.stats_.as_dict(3)
    assert stats["groups_published_text"] == stats["groups_published_image"] == 1
    assert stats["groups_published_video"] == 1


def test_records_put_ahead_come_before_the_mix(tiny_qwen2_5_vl, synthetic_dataset):
    from system.data.synthetic import make_text_record

    actor = actor_for(tiny_qwen2_5_vl, synthetic_dataset, ScriptedEngine([RIGHT], []),
                      prompts_per_batch=2)  # fmt: skip
    own = actor._next_records()[0]
    ahead = [Record.model_validate(make_text_record(i, seed=0)) for i in range(3)]
    actor.put_ahead(ahead)
    assert actor._next_records() == ahead[:2]
    assert actor._next_records() == [ahead[2], own]  # then the actor's own records again

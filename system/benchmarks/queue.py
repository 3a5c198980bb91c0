"""`reelrl bench queue`: the rollout transport's codec and queue against bare redis-py.

Codec: encode and decode a realistic group (G=8 completions of 512 tokens, a 2048-token
prompt, a 64-frame VisionRef) in MB/s of wire bytes and groups/s. Queue: one group at a time
through produce -> consume -> ack on an embedded redis-server over loopback (groups/s, p50/p99
latency per group, codec included), against the same loop written as raw XADD / XREADGROUP /
XACK on the same encoded bytes; the ratio is ours / raw throughput.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

G, COMPLETION, PROMPT, FRAMES = 8, 512, 2048, 64


def realistic_group(seed: int = 0) -> Any:
    """A group shaped like a real rollout: G=8 x 512 tokens, 2k-token prompt, 64 frames."""
    from system.transport.protocol import RolloutGroup, RolloutSample, VisionRef

    rng = np.random.default_rng(seed)
    samples = [
        RolloutSample(
            completion_ids=rng.integers(0, 151_000, COMPLETION, dtype=np.int32),
            logprobs=np.log(rng.uniform(0.01, 1.0, COMPLETION)).astype(np.float32),
            reward=float(rng.uniform(0, 3)),
            reward_components={"a1": 1.0, "a2": 1.0, "format": 1.0, "fallback": 0.0},
            finish_reason="stop",
        )
        for _ in range(G)
    ]
    vision = VisionRef(
        path="/data/videos/charades/0AB1C.mp4",
        frame_indices=tuple(range(0, FRAMES * 15, 15)),
        height=336,
        width=588,
        fps=30.0,
        timestamps=tuple(i * 0.5 for i in range(FRAMES)),
        content_hash="9f2c" * 8,
        start=0.0,
        end=32.0,
    )
    return RolloutGroup(
        run_id="bench",
        group_id=RolloutGroup.new_group_id(),
        record_id="charades-0AB1C-q3",
        weight_version=12,
        created_at=time.time(),
        finished_at=time.time(),
        prompt_ids=rng.integers(0, 151_000, PROMPT, dtype=np.int32),
        vision=vision,
        samples=samples,
        problem_type="temporal_grounding",
        answer="12.5 18.0",
        stage="rl",
        meta={"dataset": "charades", "actor": 3},
    )


def _per_call(fn: Callable[[], Any], n: int, repeats: int) -> float:
    """Median seconds per call over `repeats` runs of `n` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - start) / n)
    return statistics.median(times)


def bench_codec(n: int, repeats: int) -> dict[str, float]:
    from system.transport.protocol import decode_group, encode_group

    group = realistic_group()
    data = encode_group(group)
    enc = _per_call(lambda: encode_group(group), n, repeats)
    dec = _per_call(lambda: decode_group(data), n, repeats)
    mb = len(data) / 1e6
    return {
        "message_bytes": len(data),
        "encode_mb_s": mb / enc,
        "decode_mb_s": mb / dec,
        "codec_mb_s": mb / (enc + dec),
        "encode_groups_s": 1 / enc,
        "decode_groups_s": 1 / dec,
    }


def bench_queue(server: Any, n: int, chunk: int = 50) -> dict[str, float]:
    """The three loops run interleaved in chunks, so load from other processes on the machine
    falls on all of them alike."""
    from system.config import QueueConfig
    from system.transport.protocol import decode_group, encode_group
    from system.transport.queue import RolloutQueue
    from system.transport.redis_server import connect

    config = QueueConfig(url=server.url, block_ms=1000)
    warm = chunk
    groups = [realistic_group(seed=i % 4) for i in range(n + warm)]  # each has its own id
    payloads = [encode_group(g) for g in groups]
    producer = RolloutQueue(connect(config, password=server.password), "bench", config)
    consumer = RolloutQueue(connect(config, password=server.password), "bench", config, "rank0")
    raw = connect(config, password=server.password)
    for key in ("raw:bytes", "raw:codec"):
        raw.xgroup_create(key, "learner", id="0", mkstream=True)

    def ours(i: int) -> None:
        producer.produce(groups[i])
        [delivery] = consumer.consume(count=1)
        consumer.ack([delivery.stream_id])

    def bare(key: str, payload: bytes) -> bytes:
        raw.xadd(key, {"g": payload})
        reply = raw.xreadgroup("learner", "rank0", {key: ">"}, count=1, block=1000)
        [[_, [(sid, fields)]]] = reply
        raw.xack(key, "learner", sid)
        return fields[b"g"]

    steps = {
        "ours": ours,
        "raw": lambda i: bare("raw:bytes", payloads[i]),
        "raw_codec": lambda i: decode_group(bare("raw:codec", encode_group(groups[i]))),
    }
    latencies: dict[str, list[float]] = {name: [] for name in steps}
    for step in steps.values():  # warm up connections and the script cache
        for i in range(n, n + warm):
            step(i)
    for start in range(0, n, chunk):
        for name, step in steps.items():
            lat = latencies[name]
            for i in range(start, min(start + chunk, n)):
                t0 = time.perf_counter()
                step(i)
                lat.append(time.perf_counter() - t0)
    figures: dict[str, float] = {}
    for name, lat in latencies.items():
        figures[f"{name}_groups_s"] = len(lat) / sum(lat)
        figures[f"{name}_p50_ms"] = float(np.percentile(lat, 50)) * 1000
        figures[f"{name}_p99_ms"] = float(np.percentile(lat, 99)) * 1000
    figures["ours_over_raw"] = figures["ours_groups_s"] / figures["raw_groups_s"]
    figures["ours_over_raw_codec"] = figures["ours_groups_s"] / figures["raw_codec_groups_s"]
    return figures


def run(args: argparse.Namespace) -> dict[str, Any]:
    from system.transport.redis_server import EmbeddedRedis

    codec_n, repeats, loop_n = (200, 3, 300) if args.quick else (2000, 5, 3000)
    codec = bench_codec(codec_n, repeats)
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(tmp) as server:
        queue = bench_queue(server, loop_n)
    figures = {**codec, **queue, "quick": bool(args.quick)}
    figures = {k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}
    _print_table(figures)
    return figures


def _print_table(f: dict[str, Any]) -> None:
    print(f"rollout group: G={G} x {COMPLETION} tokens, {PROMPT}-token prompt, {FRAMES} frames "
          f"= {f['message_bytes'] / 1024:.1f} KiB on the wire")  # fmt: skip
    print(f"{'codec':<28}{'MB/s':>10}{'groups/s':>12}")
    print(f"{'  encode':<28}{f['encode_mb_s']:>10.0f}{f['encode_groups_s']:>12.0f}")
    print(f"{'  decode (validated)':<28}{f['decode_mb_s']:>10.0f}{f['decode_groups_s']:>12.0f}")
    print(f"{'  encode + decode':<28}{f['codec_mb_s']:>10.0f}")
    print(f"{'produce->consume->ack':<30}{'groups/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    rows = [
        ("ours", "  RolloutQueue (with codec)"),
        ("raw", "  raw XADD/XREADGROUP/XACK"),
        ("raw_codec", "  raw loop + encode/decode"),
    ]
    for key, label in rows:
        print(
            f"{label:<30}{f[key + '_groups_s']:>10.0f}"
            f"{f[key + '_p50_ms']:>10.3f}{f[key + '_p99_ms']:>10.3f}"
        )
    print(
        f"ours / raw: {f['ours_over_raw']:.2f}   ours / raw+codec: {f['ours_over_raw_codec']:.2f}"
    )

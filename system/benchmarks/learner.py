"""`reelrl bench learner [--size tiny|small|medium|3b]`: where a learner step's time goes, and
the learner's memory.

Two learner ranks (processes, DeepSpeed ZeRO-3: gloo + fp32 on CPU, NCCL + bf16 with CUDA)
train GRPO on groups from an embedded Redis (G=4, 4 frames of a synthetic clip, completions of
16-512 tokens), exporting the trainable weights after every step to a sink sender, once with
packed micro-batches and once padded (`learner.packing`), on the same groups. Reported per
step (mean over the timed steps, the first one is warm-up): data (consume + video re-decode +
processor + collate), forward (policy and reference), backward, optimizer, export; plus
completion tokens/s and export GB/s. `--size 3b` builds a random model of Qwen2.5-VL-3B's
dimensions and needs CUDA (one rank per GPU); without CUDA it prints why and does nothing.
On CPU it then measures memory (system.benchmarks.learner_memory): peak RSS per rank while
building policy + reference partitioned vs whole, and the peak of log-prob + entropy for one
8k-token sequence chunked + completion-only vs whole, at the model's vocabulary (`--size
medium`: Qwen's 151,936).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

G = 4
COMPLETION = (16, 512)
"""Completion lengths, drawn uniformly per sample: a mixed-length batch."""
# Qwen2.5-VL-3B's dimensions, as a TinySpec (vocab, hidden, layers, heads, kv heads, MLP,
# vision hidden, depth, heads, MLP).
SIZE_3B = (151_936, 2048, 36, 16, 2, 11_008, 1280, 32, 16, 3420)
PHASES = ("data_s", "forward_s", "backward_s", "optimizer_s", "export_s", "step_s")


class SinkSender:
    """A WeightSender that keeps nothing: measures the export side alone. With a `device`, the
    export gathers and packs there, as for the NCCL sender."""

    def __init__(self, device: Any = None) -> None:
        self.device = device
        self.bytes = 0

    def start(self, version: int, layout: Any = None) -> None:
        pass

    def send_bucket(self, bucket: Any) -> None:
        self.bytes += bucket.packed.numel()

    def finish(self, version: int) -> None:
        pass


def _build_model(size: str, out: Path) -> Path:
    from system.data import tiny_model

    if size == "3b" and "3b" not in tiny_model.SIZES:
        tiny_model.SIZES["3b"] = tiny_model.TinySpec(*SIZE_3B)
    if not (out / "reelrl_tiny.json").is_file():
        tiny_model.build_tiny_model("qwen2_5_vl", out, size=size)
    return out


def _groups(model: Path, data: Path, n: int, run: str) -> list[Any]:
    from transformers import AutoProcessor

    from learner.sft import encode_prompt
    from system.config import VideoConfig
    from system.data.records import Record
    from system.data.video import decode_video
    from system.transport.protocol import RolloutGroup, RolloutSample

    budget = VideoConfig(num_frames=4, max_frames=4, max_video_tokens=64, min_pixels=3136)
    processor = AutoProcessor.from_pretrained(model)
    lines = (data / "train.jsonl").read_text().splitlines()
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        record = Record(**json.loads(lines[i % len(lines)]))
        video = decode_video(str(data / record.video), budget, "qwen2_5_vl")
        prompt = encode_prompt(processor, record, video, "answer_twice").numpy()
        lengths = rng.integers(COMPLETION[0], COMPLETION[1] + 1, G)
        samples = [
            RolloutSample(rng.integers(100, 4000, n).astype(np.int32),
                          np.full(n, -8.0, np.float32), float(j % 2))
            for j, n in enumerate(lengths)
        ]  # fmt: skip
        out.append(
            RolloutGroup(run, RolloutGroup.new_group_id(), record.id, 0, 0.0, 0.0,
                         prompt.astype(np.int32), video.ref, samples)
        )  # fmt: skip
    return out


def _rank(rank: int, world: int, port: int, spec: dict[str, Any], out: str) -> None:
    import torch

    from learner.worker import LearnerWorker
    from system.config import RunConfig

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // world))
    os.environ[spec["password_env"]] = spec["password"]
    if torch.cuda.is_available():
        torch.cuda.set_device(rank)
    config = RunConfig.model_validate(spec["config"])
    sender = SinkSender() if rank == 0 else None
    worker = LearnerWorker(config, rank, world, "127.0.0.1", port, model_path=spec["model"],
                           checkpoint_dir=spec["ckpt"], sender=sender)  # fmt: skip
    rows = []
    for _ in range(spec["steps"]):
        m = worker.step()
        m.update(worker.export())
        m["step_s"] += m["export_s"]
        rows.append(m)
    if rank == 0:
        Path(out).write_text(json.dumps(rows))
    worker.shutdown()


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    size = getattr(args, "size", "tiny")
    if size == "3b" and not torch.cuda.is_available():
        print("bench learner --size 3b needs CUDA (tokens/s, MFU, export GB/s on a GPU); "
              "this machine has none. Run without --size for the CPU breakdown.")  # fmt: skip
        return {"size": size, "skipped": "no CUDA"}
    world = 2 if not torch.cuda.is_available() else max(1, min(2, torch.cuda.device_count()))
    steps = 3 if args.quick else 6
    from system.config import QueueConfig
    from system.data.synthetic import generate
    from system.transport.queue import RolloutQueue
    from system.transport.redis_server import EmbeddedRedis

    cache = Path("runs/bench")
    model = _build_model(size, cache / f"learner-qwen2_5_vl-{size}")
    data = cache / "learner-synthetic"
    if not (data / "train.jsonl").is_file():
        generate(data, n_train=8, n_eval=0, seed=0)
    groups = _groups(model, data, steps * world, "bench")
    runs = {}
    for mode in ("packed", "padded"):  # the same groups, each way
        with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp) / "redis") as redis:
            qc = QueueConfig(url=redis.url, min_idle_ms=600_000, block_ms=200)
            os.environ[qc.password_env] = redis.password
            queue = RolloutQueue(redis.client(), "bench", qc)
            for g in groups:
                queue.produce(g)
            spec = {
                "config": _config(qc, world, packing=mode == "packed"),
                "model": str(model),
                "ckpt": str(Path(tmp) / "ckpt"),
                "steps": steps,
                "password_env": qc.password_env,
                "password": redis.password,
            }
            runs[mode] = _spawn(spec, world, Path(tmp) / "rows.json")
    figures = _report(runs["packed"], size, world, model)
    figures["padded"] = _throughput(runs["padded"])
    figures.update(_comparison(runs, figures))
    if not torch.cuda.is_available():
        figures.update(_memory(model, args.quick))
    return figures


def _throughput(rows: list[dict[str, float]]) -> dict[str, float]:
    timed = rows[1:] or rows
    step = float(np.mean([r["step_s"] for r in timed]))
    tokens = float(np.mean([r["trained_tokens"] for r in timed]))
    return {"step_s": step, "completion_tokens_per_s": tokens / step}


def _comparison(runs: dict[str, list[dict[str, float]]], figures: dict[str, Any]) -> dict:
    """Packed against padded on the same groups: throughput ratio and the first step's loss
    (the same weights and samples, so the same loss up to summation order)."""
    packed, padded = _throughput(runs["packed"]), figures["padded"]
    diff = abs(runs["packed"][0]["loss"] - runs["padded"][0]["loss"])
    out = {
        "packed_over_padded": packed["completion_tokens_per_s"] / padded["completion_tokens_per_s"],
        "first_step_loss_diff": diff,
    }
    print(f"packed vs padded (micro_batch_size 2), completions of {COMPLETION[0]}-"
          f"{COMPLETION[1]} tokens: {packed['completion_tokens_per_s']:.1f} vs "
          f"{padded['completion_tokens_per_s']:.1f} completion tokens/s "
          f"({out['packed_over_padded']:.2f}x); first-step loss differs by {diff:.2e}")  # fmt: skip
    return out


def _memory(model: Path, quick: bool) -> dict[str, Any]:
    """Loading and log-prob memory at this model's vocabulary (system.benchmarks.
    learner_memory): one 8k-token sequence (2k with --quick)."""
    from system.benchmarks import learner_memory
    from system.config import LearnerConfig

    vocab = json.loads((model / "config.json").read_text())["text_config"]["vocab_size"]
    figures = learner_memory.measure(
        model, 2048 if quick else 8192, vocab, LearnerConfig().logprob_chunk
    )
    learner_memory.report(figures)
    return figures


def _config(qc: Any, world: int, packing: bool) -> dict[str, Any]:
    return {
        "name": "bench",
        "model": {"family": "qwen2_5_vl"},
        "queue": qc.model_dump(mode="json"),
        "rollout": {"max_staleness": 1000},
        "learner": {
            "num_ranks": world,
            "groups_per_step": world,
            "micro_batch_size": 2,
            "packing": packing,
        },
        "weight_sync": {"bucket_mb": 64},
    }


def _spawn(spec: dict[str, Any], world: int, out: Path) -> list[dict[str, float]]:
    from system.benchmarks.learner_memory import spawn_ranks

    spawn_ranks(_rank, world, spec, str(out))
    return json.loads(out.read_text())


def _report(rows: list[dict[str, float]], size: str, world: int, model: Path) -> dict[str, Any]:
    import torch

    timed = rows[1:] or rows
    figures: dict[str, Any] = {"size": size, "ranks": world, "steps_timed": len(timed)}
    for phase in PHASES:
        figures[phase] = float(np.mean([r[phase] for r in timed]))
    figures["completion_tokens_per_s"] = _throughput(rows)["completion_tokens_per_s"]
    figures["export_gb_per_s"] = float(np.mean([r["bytes"] / r["export_s"] for r in timed])) / 1e9
    figures["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"learner step (packed), qwen2_5_vl {size}, {world} ranks ZeRO-3 ({figures['device']}), "
          f"mean of {len(timed)} steps after warm-up")  # fmt: skip
    print(f"{'phase':<12}{'seconds':>10}{'share':>9}")
    for phase in PHASES[:-1]:
        share = figures[phase] / figures["step_s"]
        print(f"{phase[:-2]:<12}{figures[phase]:>10.3f}{share:>9.1%}")
    print(f"{'step':<12}{figures['step_s']:>10.3f}")
    print(f"completion tokens/s {figures['completion_tokens_per_s']:.1f}; "
          f"export {figures['export_gb_per_s']:.3f} GB/s")  # fmt: skip
    return figures

"""The learner check for a GPU machine (`scripts/gpu/learner_check.sh`): ZeRO-3 learner steps
at Qwen2.5-VL-3B's dimensions on one packed micro-batch of a video prompt and its completion
(8k tokens), printing step time, tokens/s, MFU, peak `max_memory_allocated` and export GB/s.

It needs torch, transformers, tokenizers, pydantic and DeepSpeed only — no Ray, vLLM, Redis or
decord: the model is random (built from a config, a tokenizer trained on the spot), the video
is random pixels of a fixed grid, and the export goes to a sink on the GPU. One process, one
rank (`torch.distributed` over NCCL, or gloo with `--device cpu`).

    python -m system.benchmarks.learner_check [--dims 3b|tiny] [--tokens 8192] [--steps 4]
                                              [--device cuda|cpu] [--json]

`--dims tiny --device cpu` runs the same code on a CPU in seconds (the suite does).
MFU = model FLOPs per step / step time / the chip's dense bf16 peak, with model FLOPs =
6 x (LLM matrix parameters, LM head included) x tokens + the causal attention's
6 x layers x hidden x Σ len² over the packed sequences (forward and backward, recomputation
not counted); the vision tower's FLOPs (frozen, forward only) are left out, so the figure is
conservative.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

# Dense bf16 peak (TFLOP/s, no sparsity) by device name substring.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0}
VIDEO_GRID = "16,32,32"  # t, h, w in patches: 16 * 32 * 32 / 2² = 4096 visual tokens


def build(dims: str, out: Path) -> Path:
    import torch

    from system.benchmarks.learner import SIZE_3B
    from system.data import tiny_model

    if dims == "3b":
        tiny_model.SIZES["3b"] = tiny_model.TinySpec(*SIZE_3B)
    if not (out / "reelrl_tiny.json").is_file():
        default = torch.get_default_dtype()
        try:
            print(f"building a random Qwen2.5-VL at {dims} dimensions in {out} ...", flush=True)
            tiny_model.build_tiny_model("qwen2_5_vl", out, size=dims)
        finally:
            torch.set_default_dtype(default)
    return out


def micro_batch(collator: Any, tokens: int, completion: int | None, grid: str) -> Any:
    """One packed row of `tokens` tokens: prompts with a video of `grid` patches, each with a
    `completion`-token answer (default: the rest of the row, one sequence)."""
    import torch

    from learner.collate import Sequence, VisionInputs
    from system.data.video import SPATIAL_MERGE

    t, h, w = (int(x) for x in grid.split(","))
    visual = t * h * w // SPATIAL_MERGE**2
    tok = collator.tokenizer
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    pad = tok.convert_tokens_to_ids("<|video_pad|>")
    prompt = (ids("<|im_start|>user\n<|vision_start|>") + [pad] * visual
              + ids("<|vision_end|>What happens in the video?<|im_end|>\n<|im_start|>assistant\n"))  # fmt: skip
    if completion is None:
        completion = max(16, tokens - len(prompt))
    count = max(1, tokens // (len(prompt) + completion))
    vision = VisionInputs(
        pixel_values_videos=torch.randn(t * h * w, 3 * 2 * 14 * 14),
        video_grid_thw=torch.tensor([[t, h, w]]),
        second_per_grid_ts=torch.tensor([1.0]),
        tokens=visual,
    )
    g = torch.Generator().manual_seed(0)
    seqs = [
        Sequence(
            input_ids=torch.cat([torch.tensor(prompt), torch.randint(100, 4000, (completion,), generator=g)]),
            prompt_len=len(prompt),
            advantage=1.0 if i % 2 else -1.0,
            behaviour_logprobs=torch.full((completion,), -8.0),
            vision=vision,
        )
        for i in range(count)
    ]  # fmt: skip
    return collator.pack(seqs), seqs


def model_flops(config: dict, seqs: list[Any]) -> float:
    """Training FLOPs of one step on the LLM (forward + backward, no recompute counted)."""
    text = config["text_config"]
    hidden, layers = text["hidden_size"], text["num_hidden_layers"]
    inter, vocab = text["intermediate_size"], text["vocab_size"]
    kv = text["num_key_value_heads"] * hidden // text["num_attention_heads"]
    per_layer = hidden * (2 * hidden + 2 * kv) + 3 * hidden * inter
    params = layers * per_layer + vocab * hidden  # LM head; embeddings are lookups
    lengths = [s.input_ids.numel() for s in seqs]
    dense = 6.0 * params * sum(lengths)
    attention = 6.0 * layers * hidden * sum(n * n for n in lengths)  # QK^T and AV, causal half
    return dense + attention


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from transformers import AutoProcessor

    import learner.engine as eng
    from learner.collate import Collator, tokens_per_second
    from learner.export import export_weights
    from learner.objectives import GRPOObjective, StepTotals
    from system.benchmarks.learner import SinkSender
    from system.config import LearnerConfig, ModelConfig
    from system.config.models import GRPOConfig

    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("learner_check: --device cuda but torch sees no CUDA device")
    dtype = torch.bfloat16 if cuda else torch.float32
    model_dir = build(args.dims, Path(args.cache) / f"qwen2_5_vl-{args.dims}")
    config = json.loads((model_dir / "config.json").read_text())
    if cuda:
        torch.cuda.set_device(0)
    eng.init_distributed(0, 1, "127.0.0.1", _free_port())
    device = eng.device()
    learner = LearnerConfig(num_ranks=1, groups_per_step=1, max_tokens_per_micro_batch=args.tokens)
    model_cfg = ModelConfig(
        path=str(model_dir), dtype="bfloat16" if cuda else "float32",
        attn_implementation=args.attn,
    )  # fmt: skip
    ds = eng.ds_config(learner, 1, dtype, True, eng.hidden_size(str(model_dir)))
    t0 = time.perf_counter()
    policy = eng.load_model(str(model_dir), dtype, True, model_cfg, eng.partitioned(ds, learner))
    engine = eng.initialize(policy, ds, True)
    load_s = time.perf_counter() - t0
    processor = AutoProcessor.from_pretrained(model_dir)
    collator = Collator(processor, "qwen2_5_vl", tokens_per_second=tokens_per_second(model_dir))
    mb, seqs = micro_batch(collator, args.tokens, args.completion, args.grid)
    mb = mb.to(device)
    objective = GRPOObjective(GRPOConfig(beta=0.0), 1.0, learner.logprob_chunk)
    totals = StepTotals(tokens=float(mb.num_tokens), sequences=float(mb.num_sequences))
    times = []
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for step in range(args.steps):
        sync(cuda)
        t1 = time.perf_counter()
        engine.set_gradient_accumulation_boundary(True)
        logits = engine(**mb.model_inputs()).logits
        loss, _ = objective.loss(mb, logits, None, totals)
        engine.backward(loss, scale_wrt_gas=False)
        engine.step()
        del logits, loss
        sync(cuda)
        times.append(time.perf_counter() - t1)
        print(f"step {step + 1}/{args.steps}: {times[-1]:.3f} s", flush=True)
    step_s = sum(times[1:]) / max(1, len(times) - 1) if len(times) > 1 else times[0]
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    sink = SinkSender(device if cuda else None)
    sync(cuda)
    t2 = time.perf_counter()
    export_weights(engine.module, sink, 1, lambda _: True, 1 << 30, 600.0)
    sync(cuda)
    export_s = time.perf_counter() - t2
    flops = model_flops(config, seqs)
    name = torch.cuda.get_device_name() if cuda else "cpu"
    peak_tflops = next((v for k, v in PEAK_TFLOPS.items() if k in name), float("nan"))
    tokens = sum(s.input_ids.numel() for s in seqs)
    figures = {
        "device": name,
        "dims": args.dims,
        "tokens": tokens,
        "sequences": len(seqs),
        "load_s": load_s,
        "step_s": step_s,
        "tokens_per_s": tokens / step_s,
        "tflops": flops / step_s / 1e12,
        "mfu": flops / step_s / 1e12 / peak_tflops,
        "peak_allocated_gib": peak,
        "export_gb_per_s": sink.bytes / export_s / 1e9,
    }
    print(f"learner check on {name}, Qwen2.5-VL {args.dims} dims, ZeRO-3 1 rank, {tokens} tokens "
          f"({len(seqs)} packed sequences): step {step_s:.3f} s, {figures['tokens_per_s']:.0f} "
          f"tokens/s, {figures['tflops']:.1f} TFLOP/s, MFU {figures['mfu']:.1%}, peak allocated "
          f"{peak:.1f} GiB, export {figures['export_gb_per_s']:.1f} GB/s")  # fmt: skip
    import torch.distributed as dist

    dist.destroy_process_group()
    return figures


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sync(cuda: bool) -> None:
    if cuda:
        import torch

        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", default="3b", choices=["3b", "tiny", "small"])
    parser.add_argument("--tokens", type=int, default=8192, help="tokens per packed micro-batch")
    parser.add_argument(
        "--completion",
        type=int,
        default=None,
        help="completion tokens per sequence (default: the rest of the row)",
    )
    parser.add_argument("--grid", default=VIDEO_GRID, help="video grid t,h,w in patches")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--attn", default=None, choices=["sdpa", "flash_attention_2", "eager"])
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "reelrl-check"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    figures = run(args)
    if args.json:
        clean = {
            k: None if isinstance(v, float) and math.isnan(v) else v for k, v in figures.items()
        }
        print(json.dumps(clean, sort_keys=True))
    return 0 if math.isfinite(figures["step_s"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())

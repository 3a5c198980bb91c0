"""The learner's memory at a real vocabulary, measured in fresh processes (peak RSS): what
`reelrl bench learner` reports next to its step breakdown.

- **Loading**: two ranks (gloo; ZeRO-3) build the policy and the reference as a GRPO run with
  β > 0 does, once partitioned (`learner.partitioned_load`: learner.loading, each rank reading
  its share) and once whole (every rank builds both models from the memory-mapped checkpoint,
  then DeepSpeed partitions them). Peak RSS of each rank above what it held before loading;
  the optimizer state (the same on both paths) is not part of it.
- **Log-probs + entropy** of one sequence of `tokens` positions (half prompt, half completion,
  as a video prompt and its answer) at `vocab` entries, forward and backward: "whole" is the
  path that scores every position at once (logits of the whole sequence, fp32 log-softmax and
  the three entropy temporaries over all of it); "chunked" scores the completion positions
  only (`logits_to_keep`) `chunk` positions at a time. Every buffer of either is tokens x
  vocabulary, so where "whole" at the full length would not fit this machine it is measured
  at a shorter length that does and scaled linearly (stated in the output).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import resource
from pathlib import Path
from typing import Any


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def spawn_ranks(target: Any, world: int, *args: Any) -> None:
    """`target(rank, world, port, *args)` in `world` fresh processes (one process group on a
    free port); raises when any of them fails."""
    from system.transport.redis_server import free_port

    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=target, args=(r, world, port, *args)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    if any(p.exitcode != 0 for p in procs):
        raise RuntimeError(f"ranks failed: exit codes {[p.exitcode for p in procs]}")


# --------------------------------------------------------------------------- loading


def _load_rank(rank: int, world: int, port: int, model: str, partitioned: bool, out: str) -> None:
    import torch

    import learner.engine as eng
    from system.config import LearnerConfig, ModelConfig

    torch.set_num_threads(1)
    eng.init_distributed(rank, world, "127.0.0.1", port)
    learner = LearnerConfig(num_ranks=world, groups_per_step=world, partitioned_load=partitioned)
    config = ModelConfig(path=model, gradient_checkpointing=False)
    before = _rss_mib()
    # The policy, then the reference, each built and partitioned (ZeRO-3). Without the
    # optimizer: its state is the same on both paths and is not part of loading.
    for train in (True, False):
        ds = eng.ds_config(learner, world, torch.float32, False, eng.hidden_size(model))
        m = eng.load_model(model, torch.float32, train, config, eng.partitioned(ds, learner))
        eng.initialize(m, ds, False)
    row = {"rank": rank, "before_mib": before, "peak_mib": _peak_mib()}
    Path(out, f"rank{rank}.json").write_text(json.dumps(row))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def load_peaks(model: Path, partitioned: bool, world: int = 2) -> dict[str, float]:
    """Peak RSS (MiB) per rank while building policy + reference on `world` ranks."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        spawn_ranks(_load_rank, world, str(model), partitioned, tmp)
        rows = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(world)]
    return {
        "peak_rss_mib": max(r["peak_mib"] for r in rows),
        "load_rss_mib": max(r["peak_mib"] - r["before_mib"] for r in rows),
    }


# --------------------------------------------------------------------------- log-probs


def _logprob_child(tokens: int, vocab: int, chunk: int, whole: bool, out: Any) -> None:
    import torch

    from learner.grpo import token_entropy, token_logprobs

    torch.set_num_threads(1)
    torch.manual_seed(0)
    scored = tokens if whole else tokens // 2 + 1  # the prompt's last position + completion
    targets = torch.randint(0, vocab, (1, scored))
    base = _rss_mib()
    logits = torch.randn(1, scored, vocab).requires_grad_()  # what the LM head hands over
    if whole:
        lp, ent = token_logprobs(logits, targets, 0.7), token_entropy(logits, 0.7)
    else:
        lp, ent = token_logprobs(logits, targets, 0.7, chunk), token_entropy(logits, 0.7, chunk)
    (lp.sum() + 0 * ent.sum()).backward()
    out.put({"peak_mib": _peak_mib() - base, "checksum": float(lp.detach().sum())})


def _logprob_peak(tokens: int, vocab: int, chunk: int, whole: bool) -> float:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_logprob_child, args=(tokens, vocab, chunk, whole, queue))
    proc.start()
    row = queue.get()
    proc.join()
    return float(row["peak_mib"])


def logprob_peaks(tokens: int, vocab: int, chunk: int) -> dict[str, Any]:
    """Peak memory (MiB) of log-prob + entropy, forward and backward, whole vs chunked."""
    import psutil

    chunked = _logprob_peak(tokens, vocab, chunk, whole=False)
    # The whole path holds about five fp32 tokens x vocabulary buffers at its peak.
    fits = int(psutil.virtual_memory().available * 0.6 / (6 * 4 * vocab))
    measured_at = int(min(tokens, max(256, fits)))
    whole = _logprob_peak(measured_at, vocab, chunk, whole=True) * tokens / measured_at
    return {
        "tokens": tokens,
        "vocab": vocab,
        "chunk": chunk,
        "chunked_peak_mib": chunked,
        "whole_peak_mib": whole,
        "whole_measured_at_tokens": measured_at,
        "ratio": chunked / whole,
    }


def report(figures: dict[str, Any]) -> None:
    load = figures.get("load")
    if load:
        print(
            f"loading policy + reference on {load['ranks']} ranks (peak RSS per rank above the "
            f"process before loading): partitioned {load['partitioned_mib']:.0f} MiB, whole "
            f"{load['whole_mib']:.0f} MiB, ratio {load['ratio']:.2f}"
        )
    lp = figures.get("logprobs")
    if lp:
        scaled = (
            ""
            if lp["whole_measured_at_tokens"] == lp["tokens"]
            else f" (whole measured at {lp['whole_measured_at_tokens']} tokens, scaled)"
        )
        print(
            f"log-prob + entropy, {lp['tokens']} tokens x {lp['vocab']} vocabulary, fwd+bwd: "
            f"chunked completion-only {lp['chunked_peak_mib']:.0f} MiB, whole "
            f"{lp['whole_peak_mib']:.0f} MiB{scaled}, ratio {lp['ratio']:.2f}"
        )


def measure(model: Path, tokens: int, vocab: int, chunk: int) -> dict[str, Any]:
    """Both measurements: loading on 2 ranks (partitioned, whole) and log-prob memory."""
    part = load_peaks(model, partitioned=True)
    whole = load_peaks(model, partitioned=False)
    figures = {
        "load": {
            "ranks": 2,
            "partitioned_mib": part["load_rss_mib"],
            "whole_mib": whole["load_rss_mib"],
            "partitioned_peak_rss_mib": part["peak_rss_mib"],
            "whole_peak_rss_mib": whole["peak_rss_mib"],
            "ratio": part["load_rss_mib"] / whole["load_rss_mib"],
        },
        "logprobs": logprob_peaks(tokens, vocab, chunk),
    }
    figures["load"] = {k: round(v, 3) for k, v in figures["load"].items()}
    os.environ.pop("RANK", None)
    return figures

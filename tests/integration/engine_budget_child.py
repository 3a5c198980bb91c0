"""Child process of test_engine_budget: holds `sys.argv[2]` GiB of touched memory, then starts
a vLLM engine in this very process (VLLM_ENABLE_V1_MULTIPROCESSING=0: engine core and worker
in-process, so the worker's own footprint includes that memory) with the KV cache `engine_args`
gives the run config by default, and samples from it. Prints one JSON line: the KV-cache
bytes, the process's RSS and the completions' lengths."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import psutil


def main(model: str) -> dict:
    from vllm import LLM, SamplingParams

    from actors.engine import engine_args
    from system.config import RunConfig

    config = RunConfig.model_validate(
        {"model": {"path": model}, "rollout": {"max_model_len": 1024}}
    )
    args = engine_args(config)
    llm = LLM(
        model=args.model,
        dtype=args.dtype,
        max_model_len=args.max_model_len,
        kv_cache_memory_bytes=args.kv_cache_memory_bytes,
        enforce_eager=True,
        seed=0,
    )
    [out] = llm.generate(["count: one two"], SamplingParams(n=2, max_tokens=8))
    return {
        "kv_cache_bytes": args.kv_cache_memory_bytes,
        "executor": args.distributed_executor_backend,
        "rss_bytes": psutil.Process(os.getpid()).memory_info().rss,
        "completions": [len(c.token_ids) for c in out.outputs],
    }


if __name__ == "__main__":
    ballast = np.ones(int(float(sys.argv[2]) * (1 << 30)), dtype=np.uint8)  # every page touched
    print(json.dumps(main(sys.argv[1])), flush=True)
    del ballast

"""The vLLM KV-cache budget in bytes: what the run needs, not a share of the machine.

On CPU vLLM reads `gpu_memory_utilization` as a share of host RAM and subtracts what its worker
process already holds, so the same share gives a roomy cache on one machine and a negative one
on another. reelrl passes an explicit size instead (`rollout.kv_cache_gib`, or by default the
batch the actor generates at once: `prompts_per_batch` prompts x G samples, plus the shuffled
T-GRPO rollouts, each as long as `max_model_len`, at the model's per-token KV bytes, plus a
margin). A size that holds no whole sequence, or more than the host has free, is refused here,
naming the field and the figures, before any engine process starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

GIB = 1 << 30
MIB = 1 << 20
# vLLM's CPU attention allocates the cache in blocks of this many tokens.
BLOCK_TOKENS = 128
# Headroom on the derived default: vLLM's own block accounting and allocator slack.
MARGIN_FRACTION = 0.10
MARGIN_BYTES = 64 * MIB

_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "half": 2, "float": 4}


class KVBudgetError(ValueError):
    """The KV-cache budget cannot work (holds no sequence, or exceeds free memory)."""


@dataclass(frozen=True)
class KVShape:
    """What one token costs in the KV cache: a key and a value per layer and KV head."""

    layers: int
    kv_heads: int
    head_dim: int
    dtype_bytes: int

    @property
    def bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes

    def sequence_bytes(self, max_model_len: int) -> int:
        """Cache of one sequence of `max_model_len` tokens, in whole blocks."""
        blocks = math.ceil(max_model_len / BLOCK_TOKENS)
        return blocks * BLOCK_TOKENS * self.bytes_per_token


def kv_shape(text_config: Any, dtype: str) -> KVShape:
    """The KV shape of a decoder config (a transformers text config or its dict)."""

    def get(name: str) -> Any:
        if isinstance(text_config, dict):
            return text_config.get(name)
        return getattr(text_config, name, None)

    heads = int(get("num_attention_heads"))
    head_dim = get("head_dim") or int(get("hidden_size")) // heads
    if dtype not in _DTYPE_BYTES:
        raise KVBudgetError(f"model.dtype={dtype!r}: no KV-cache size known for this dtype")
    return KVShape(
        layers=int(get("num_hidden_layers")),
        kv_heads=int(get("num_key_value_heads") or heads),
        head_dim=int(head_dim),
        dtype_bytes=_DTYPE_BYTES[dtype],
    )


def model_kv_shape(model_path: str, dtype: str) -> KVShape:
    """The KV shape of the model at `model_path` (its config only; no weights are read)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path)
    return kv_shape(config.get_text_config(), dtype)


def default_kv_bytes(shape: KVShape, max_model_len: int, sequences: int) -> int:
    """`sequences` concurrent sequences of `max_model_len` tokens, plus the margin."""
    need = sequences * shape.sequence_bytes(max_model_len)
    return int(need * (1 + MARGIN_FRACTION)) + MARGIN_BYTES


def kv_budget(
    shape: KVShape,
    max_model_len: int,
    sequences: int,
    explicit_gib: float | None,
    available_bytes: int,
) -> int:
    """The KV-cache size to give vLLM, checked against one sequence and free memory."""
    one = shape.sequence_bytes(max_model_len)
    if explicit_gib is None:
        size, source = default_kv_bytes(shape, max_model_len, sequences), "derived"
    else:
        size, source = int(explicit_gib * GIB), "set"
    if size < one:
        raise KVBudgetError(
            f"rollout.kv_cache_gib={explicit_gib}: {_gib(size)} holds no whole sequence of "
            f"rollout.max_model_len={max_model_len} tokens ({_gib(one)} at "
            f"{shape.bytes_per_token} bytes per token); raise it or lower max_model_len"
        )
    if size > available_bytes:
        raise KVBudgetError(
            f"rollout.kv_cache_gib ({source}: {_gib(size)} for {sequences} sequences of "
            f"{max_model_len} tokens at {shape.bytes_per_token} bytes per token) exceeds the "
            f"{_gib(available_bytes)} this host has free; set rollout.kv_cache_gib between "
            f"{_gib(one)} (one sequence) and the free memory, or lower "
            "rollout.prompts_per_batch / group_size / max_model_len"
        )
    return size


def concurrent_sequences(rollout: Any) -> int:
    """Sequences a rollout actor's batch generates at once (RolloutConfig)."""
    per_prompt = rollout.group_size
    if rollout.t_grpo.enabled:
        per_prompt += max(1, round(rollout.group_size * rollout.t_grpo.shuffled_fraction))
    return rollout.prompts_per_batch * per_prompt


def available_memory() -> int:
    """Bytes of host memory free for new allocations now."""
    import psutil

    return int(psutil.virtual_memory().available)


def _gib(size: int) -> str:
    return f"{size / GIB:.2f} GiB"

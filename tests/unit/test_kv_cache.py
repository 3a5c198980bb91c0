"""The KV-cache budget: per-token bytes from a model config, the size one batch needs, and
clear refusals (no whole sequence, more than the host has free) naming the field."""

from __future__ import annotations

import pytest

from actors.kv_cache import (
    BLOCK_TOKENS,
    GIB,
    MARGIN_BYTES,
    KVBudgetError,
    KVShape,
    concurrent_sequences,
    default_kv_bytes,
    kv_budget,
    kv_shape,
)
from system.config import RolloutConfig

# Qwen2.5-VL-7B's decoder: 28 layers, 4 KV heads of 128 (hidden 3584 / 28 heads).
QWEN25_7B = {
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "hidden_size": 3584,
}


def test_bytes_per_token_of_a_7b_decoder():
    shape = kv_shape(QWEN25_7B, "bfloat16")
    assert shape == KVShape(layers=28, kv_heads=4, head_dim=128, dtype_bytes=2)
    assert shape.bytes_per_token == 2 * 28 * 4 * 128 * 2 == 57_344
    assert kv_shape(QWEN25_7B, "float32").bytes_per_token == 114_688


def test_explicit_head_dim_and_missing_kv_heads():
    # Qwen3-VL states head_dim; a config without num_key_value_heads has one per head.
    shape = kv_shape({"num_hidden_layers": 2, "num_attention_heads": 4, "head_dim": 32}, "half")
    assert (shape.kv_heads, shape.head_dim, shape.dtype_bytes) == (4, 32, 2)


def test_unknown_dtype_is_refused():
    with pytest.raises(KVBudgetError, match=r"model\.dtype='int4'"):
        kv_shape(QWEN25_7B, "int4")


def test_sequences_are_whole_blocks():
    shape = KVShape(layers=1, kv_heads=1, head_dim=1, dtype_bytes=4)  # 8 bytes per token
    assert shape.sequence_bytes(1) == BLOCK_TOKENS * 8
    assert shape.sequence_bytes(BLOCK_TOKENS + 1) == 2 * BLOCK_TOKENS * 8


def test_default_is_one_batch_plus_margin():
    shape = KVShape(layers=4, kv_heads=2, head_dim=32, dtype_bytes=4)  # the tiny model
    need = 32 * shape.sequence_bytes(2048)  # 4 prompts x G 8
    assert default_kv_bytes(shape, 2048, 32) == int(need * 1.1) + MARGIN_BYTES
    assert kv_budget(shape, 2048, 32, None, 64 * GIB) == default_kv_bytes(shape, 2048, 32)


def test_concurrent_sequences_count_t_grpo_rollouts():
    plain = RolloutConfig(group_size=8, prompts_per_batch=4)
    assert concurrent_sequences(plain) == 32
    contrast = RolloutConfig(group_size=8, prompts_per_batch=4, t_grpo={"enabled": True})
    assert concurrent_sequences(contrast) == 4 * (8 + 4)


def test_explicit_size_is_used_and_checked():
    shape = kv_shape(QWEN25_7B, "bfloat16")
    assert kv_budget(shape, 8192, 32, 2.5, 64 * GIB) == int(2.5 * GIB)
    # 8192 tokens x 57,344 bytes = 0.44 GiB per sequence.
    with pytest.raises(KVBudgetError, match=r"rollout.kv_cache_gib=0.25.*max_model_len=8192"):
        kv_budget(shape, 8192, 32, 0.25, 64 * GIB)


def test_more_than_free_memory_is_refused_with_the_figures():
    shape = kv_shape(QWEN25_7B, "float32")
    with pytest.raises(KVBudgetError) as info:
        kv_budget(shape, 8192, 32, None, 16 * GIB)  # the default needs ~31 GiB
    message = str(info.value)
    assert "rollout.kv_cache_gib (derived" in message and "16.00 GiB" in message
    assert "114688 bytes per token" in message and "32 sequences" in message


def test_config_field_is_validated():
    with pytest.raises(ValueError, match="kv_cache_gib"):
        RolloutConfig(kv_cache_gib=0)

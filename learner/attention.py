"""Attention for packed rows without a varlen kernel: `VARLEN_SDPA`, transformers' SDPA
attention plus one thing — given the packed sequences' boundaries (`cu_seq_lens_q`, the
keyword FlashAttention-2's varlen path takes), it runs causal SDPA on each sequence's own
span, so a packed row costs Σ len² like the sequences alone, not (Σ len)² of a block-masked
row (which dense SDPA on a CPU computes in full and then masks).

Registered under transformers' `AttentionInterface` (with SDPA's mask function), so a model
loaded with `attn_implementation=VARLEN_SDPA` behaves exactly as with "sdpa" wherever no
boundaries are passed (the vision tower, unpacked batches, generation). On GPU the learner
uses `flash_attention_2`, whose varlen kernel takes the same boundaries.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch

VARLEN_SDPA = "reelrl_varlen_sdpa"


def varlen_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    cu_seq_lens_q: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """query [1, H, T, D], key/value [1, Hkv, T, D] of a packed row; `cu_seq_lens_q` [n + 1]
    the sequences' start offsets and T. Returns ([1, T, H, D], None), as transformers' SDPA."""
    if cu_seq_lens_q is None or query.shape[0] != 1:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    bounds = cu_seq_lens_q.tolist()
    gqa = query.shape[1] != key.shape[1]
    parts = []
    for s, e in itertools.pairwise(bounds):
        q, k, v = query[:, :, s:e], key[:, :, s:e], value[:, :, s:e]
        parts.append(
            torch.nn.functional.scaled_dot_product_attention(
                q, k, v, dropout_p=dropout, scale=scaling, is_causal=True, enable_gqa=gqa
            )
        )
    return torch.cat(parts, dim=2).transpose(1, 2).contiguous(), None


def register() -> None:
    """Make `VARLEN_SDPA` a valid `attn_implementation` in this process (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(VARLEN_SDPA, varlen_sdpa)
    AttentionMaskInterface.register(VARLEN_SDPA, sdpa_mask)

"""Attention for packed rows without a varlen kernel: `VARLEN_SDPA`, transformers' SDPA
attention plus one thing — given the packed row's segments (`reelrl_segments`, from
learner.collate), it runs causal SDPA on each segment's own span, so a packed row costs Σ len²
like the sequences alone, not (Σ len)² of a block-masked row (which dense SDPA on a CPU
computes in full and then masks); a segment that follows a shared prompt (a group's G
completions after one copy of the prompt) also attends to that prompt in full.

Registered under transformers' `AttentionInterface` (with SDPA's mask function), so a model
loaded with `attn_implementation=VARLEN_SDPA` behaves exactly as with "sdpa" wherever no
boundaries are passed (the vision tower, unpacked batches, generation). On GPU the learner
uses `flash_attention_2`, whose varlen kernel takes the same boundaries.
"""

from __future__ import annotations

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
    reelrl_segments: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """query [1, H, T, D], key/value [1, Hkv, T, D] of a packed row; `reelrl_segments` [S, 4]
    (learner.collate.PackedLayout.segments): each segment's query span, causal on itself,
    plus a span it attends to in full (its shared prompt). Returns ([1, T, H, D], None), as
    transformers' SDPA. Without segments: transformers' SDPA."""
    if reelrl_segments is None or query.shape[0] != 1:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        kwargs.pop("cu_seq_lens_q", None)
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    gqa = query.shape[1] != key.shape[1]
    sdpa = torch.nn.functional.scaled_dot_product_attention
    parts = []
    for s, e, ps, pe in reelrl_segments.tolist():
        q, k, v = query[:, :, s:e], key[:, :, s:e], value[:, :, s:e]
        if pe == ps:
            out = sdpa(q, k, v, dropout_p=dropout, scale=scaling, is_causal=True, enable_gqa=gqa)
        else:  # prompt in full, then causal: query j sees the prompt and positions <= j
            k = torch.cat([key[:, :, ps:pe], k], dim=2)
            v = torch.cat([value[:, :, ps:pe], v], dim=2)
            allowed = torch.ones(e - s, k.shape[2], dtype=torch.bool, device=q.device)
            allowed = allowed.tril(diagonal=pe - ps)
            out = sdpa(q, k, v, attn_mask=allowed, dropout_p=dropout, scale=scaling,
                       enable_gqa=gqa)  # fmt: skip
        parts.append(out)
    return torch.cat(parts, dim=2).transpose(1, 2).contiguous(), None


def register() -> None:
    """Make `VARLEN_SDPA` a valid `attn_implementation` in this process (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(VARLEN_SDPA, varlen_sdpa)
    AttentionMaskInterface.register(VARLEN_SDPA, sdpa_mask)

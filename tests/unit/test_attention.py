"""learner.attention: SDPA over a packed row's segments equals dense attention under the mask
the segments stand for (a shared prompt, then completions that see it and themselves)."""

from __future__ import annotations

import torch

from learner.attention import varlen_sdpa


def _dense(query, key, value, allowed, scale):
    """Reference: softmax over allowed keys, GQA by repeating the key/value heads."""
    rep = query.shape[1] // key.shape[1]
    k, v = key.repeat_interleave(rep, 1), value.repeat_interleave(rep, 1)
    scores = (query @ k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~allowed, float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2)


def test_segments_with_a_shared_prompt_equal_the_dense_mask():
    torch.manual_seed(0)
    # Row: sequence A (0-5), then a shared prompt (5-9) with completions at 9-12 and 12-14.
    segments = torch.tensor([[0, 5, 0, 0], [5, 9, 5, 5], [9, 12, 5, 9], [12, 14, 5, 9]])
    t, scale = 14, 0.3
    query, key, value = torch.randn(1, 4, t, 8), torch.randn(1, 2, t, 8), torch.randn(1, 2, t, 8)
    allowed = torch.zeros(t, t, dtype=torch.bool)
    for s, e, ps, pe in segments.tolist():
        for i in range(s, e):
            allowed[i, s : i + 1] = True  # causal on its own span
            allowed[i, ps:pe] = True  # and the shared prompt in full
    ours, _ = varlen_sdpa(None, query, key, value, None, scaling=scale, reelrl_segments=segments)
    assert ours.shape == (1, t, 4, 8)
    assert torch.allclose(ours, _dense(query, key, value, allowed, scale), atol=1e-5)


def test_without_segments_it_is_transformers_sdpa():
    torch.manual_seed(1)
    query, key, value = (torch.randn(2, 2, 6, 8) for _ in range(3))
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    ours, _ = varlen_sdpa(torch.nn.Module(), query, key, value, None, scaling=0.5, is_causal=True)
    assert torch.allclose(ours, _dense(query, key, value, causal, 0.5), atol=1e-5)

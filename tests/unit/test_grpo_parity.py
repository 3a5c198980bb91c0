"""Parity of the GRPO objective with the formulas of verl and TRL, in float64, gradients
included. The two references below are written here from those projects' documented
formulas (verl: core_algos `compute_policy_loss` "vanilla" + `kl_penalty` low_var_kl +
`agg_loss`; TRL: `GRPOTrainer` loss with `loss_type`, `epsilon`/`epsilon_high`, `beta` and
the vLLM importance-sampling correction). docs/learner.md has the table of config
equivalences these tests exercise."""

from __future__ import annotations

import math

import pytest
import torch

from learner.grpo import group_advantages, grpo_loss

B, L = 6, 9


def _verl(logp, old, adv, mask, ref, *, clip_low, clip_high, kl_coef, agg, is_weight, cap):
    """verl: vanilla PPO clip with dual-clip (c = 3), truncated rollout IS, k3 KL loss."""
    ratio = torch.exp(torch.clamp(logp - old, -20.0, 20.0))
    a = adv[:, None]
    pg1, pg2 = -a * ratio, -a * torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    clip1 = torch.maximum(pg1, pg2)
    clip2 = torch.minimum(-a * 3.0, clip1)
    pg = torch.where(a < 0, clip2, clip1) * torch.clamp(is_weight, max=cap)
    d = torch.clamp(ref - logp, -20.0, 20.0)
    kl = torch.clamp(torch.exp(d) - d - 1, -10.0, 10.0)

    def agg_loss(x):
        if agg == "token-mean":
            return (x * mask).sum() / mask.sum()
        return ((x * mask).sum(-1) / mask.sum(-1)).mean()  # seq-mean-token-mean

    return agg_loss(pg) + kl_coef * agg_loss(kl)


def _trl(logp, old, adv, mask, ref, *, eps, eps_high, beta, loss_type, is_ratio, cap):
    """TRL GRPOTrainer: two-sided clip, k3 per-token KL, vLLM IS correction (truncated)."""
    c1 = torch.exp(logp - old)
    c2 = torch.clamp(c1, 1 - eps, 1 + eps_high)
    a = adv[:, None]
    per_token = -torch.minimum(c1 * a, c2 * a) * torch.clamp(is_ratio, max=cap)
    per_token = per_token + beta * (torch.exp(ref - logp) - (ref - logp) - 1)
    if loss_type == "grpo":
        return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    return (per_token * mask).sum() / mask.sum().clamp(min=1.0)  # bnpo / dapo, one process


def _inputs(seed: int):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, L, generator=g, dtype=torch.float64) * 3
    old = logp + (0.25 * torch.randn(B, L, generator=g, dtype=torch.float64)).clamp(-1, 1)
    behaviour = old + 0.3 * torch.randn(B, L, generator=g, dtype=torch.float64)
    ref = logp + 0.5 * torch.randn(B, L, generator=g, dtype=torch.float64)
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    mask = (torch.rand(B, L, generator=g) > 0.25).double()
    mask[:, 0] = 1.0
    return logp.requires_grad_(), old, behaviour, ref, adv, mask


def _ours(logp, old, behaviour, ref, adv, mask, aggregation, beta, cap):
    return grpo_loss(
        logp, behaviour, adv, mask, clip_low=0.2, clip_high=0.28, is_cap=cap, beta=beta,
        ref_logprobs=ref, old_logprobs=old, kl_estimator="k3", aggregation=aggregation,
    ).loss  # fmt: skip


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    ("ours", "theirs"), [("token_mean", "token-mean"), ("sequence_mean", "seq-mean-token-mean")]
)
def test_loss_and_gradient_match_verl(seed, ours, theirs):
    logp, old, behaviour, ref, adv, mask = _inputs(seed)
    mine = _ours(logp, old, behaviour, ref, adv, mask, ours, beta=0.04, cap=2.0)
    (g_mine,) = torch.autograd.grad(mine, logp)
    is_weight = torch.exp(old - behaviour)
    ref_loss = _verl(
        logp, old, adv, mask, ref, clip_low=0.2, clip_high=0.28, kl_coef=0.04, agg=theirs,
        is_weight=is_weight, cap=2.0,
    )  # fmt: skip
    (g_ref,) = torch.autograd.grad(ref_loss, logp)
    assert mine.item() == pytest.approx(ref_loss.item(), abs=1e-12)
    assert torch.allclose(g_mine, g_ref, atol=1e-12, rtol=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("ours", "theirs"), [("token_mean", "bnpo"), ("sequence_mean", "grpo")])
def test_loss_and_gradient_match_trl(seed, ours, theirs):
    logp, old, behaviour, ref, adv, mask = _inputs(seed)
    mine = _ours(logp, old, behaviour, ref, adv, mask, ours, beta=0.04, cap=2.0)
    (g_mine,) = torch.autograd.grad(mine, logp)
    ref_loss = _trl(
        logp, old, adv, mask, ref, eps=0.2, eps_high=0.28, beta=0.04, loss_type=theirs,
        is_ratio=torch.exp(old - behaviour), cap=2.0,
    )  # fmt: skip
    (g_ref,) = torch.autograd.grad(ref_loss, logp)
    assert mine.item() == pytest.approx(ref_loss.item(), abs=1e-12)
    assert torch.allclose(g_mine, g_ref, atol=1e-12, rtol=0)


def test_advantages_match_up_to_the_std_convention():
    # verl and TRL divide by the sample std (G - 1); reelrl by the population std (G), so
    # theirs = ours * sqrt((G - 1) / G) exactly when eps is 0.
    g = torch.Generator().manual_seed(3)
    rewards = torch.rand(5, 8, generator=g, dtype=torch.float64)
    ours = group_advantages(rewards, eps=0.0)
    theirs = (rewards - rewards.mean(-1, keepdim=True)) / rewards.std(-1, keepdim=True)
    assert torch.allclose(theirs, ours * math.sqrt(7 / 8), atol=1e-12)
    centred = group_advantages(rewards, scale_by_std=False)  # Dr. GRPO / verl norm_adv=False
    assert torch.allclose(centred, rewards - rewards.mean(-1, keepdim=True), atol=1e-15)

"""GRPO math against numbers worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from learner.grpo import (
    aggregate,
    group_advantages,
    grpo_loss,
    grpo_metrics,
    kl_penalty,
    policy_loss,
    token_entropy,
    token_logprobs,
    truncated_is_weight,
)


def test_group_advantages_with_std():
    # rewards 1, 0, 1, 0: mean 0.5, population std 0.5 -> +-1.
    adv = group_advantages(torch.tensor([[1.0, 0.0, 1.0, 0.0]]), eps=0.0)
    assert torch.allclose(adv, torch.tensor([[1.0, -1.0, 1.0, -1.0]]))
    # 3, 1, 2: mean 2, std sqrt(2/3).
    adv = group_advantages(torch.tensor([[3.0, 1.0, 2.0]]), eps=0.0)
    s = math.sqrt(2 / 3)
    assert torch.allclose(adv, torch.tensor([[1 / s, -1 / s, 0.0]]))


def test_group_advantages_no_std_and_equal_rewards():
    adv = group_advantages(torch.tensor([[3.0, 1.0, 2.0], [5.0, 5.0, 5.0]]), scale_by_std=False)
    assert torch.allclose(adv, torch.tensor([[1.0, -1.0, 0.0], [0.0, 0.0, 0.0]]))
    # All equal with the std: 0 / (0 + eps) = 0, not NaN.
    adv = group_advantages(torch.tensor([[2.0, 2.0]]))
    assert torch.equal(adv, torch.zeros(1, 2))


def test_token_logprobs_and_entropy():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]]))  # [1, 2, 3]
    lp = token_logprobs(logits, torch.tensor([[0, 2]]))
    assert torch.allclose(lp, torch.log(torch.tensor([[0.5, 0.8]])))
    ent = token_entropy(logits)
    h0 = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    h1 = -(2 * 0.1 * math.log(0.1) + 0.8 * math.log(0.8))
    assert torch.allclose(ent, torch.tensor([[h0, h1]]), atol=1e-6)


def test_token_logprobs_at_a_temperature():
    # softmax(log p / T) = p^(1/T) / sum p^(1/T): T = 0.5 squares and renormalises.
    p = torch.tensor([0.5, 0.25, 0.25])
    logits = torch.log(p)[None, None]  # [1, 1, 3]
    sharp = p**2 / (p**2).sum()
    lp = token_logprobs(logits, torch.tensor([[0]]), temperature=0.5)
    assert torch.allclose(lp, torch.log(sharp[:1])[None])
    ent = token_entropy(logits, temperature=0.5)
    assert torch.allclose(ent, -(sharp * sharp.log()).sum()[None, None], atol=1e-6)
    # Adding a constant to the logits changes nothing at any temperature.
    assert torch.allclose(token_logprobs(logits + 3.0, torch.tensor([[0]]), 0.5), lp)
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(logits, torch.tensor([[0]]), temperature=0.0)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_logprobs_and_entropy_equal_the_whole(temperature):
    """Chunks of 5 positions (not a divisor of 3 x 7 = 21) give the same log-probs, entropy and
    gradients as the whole [B, L, V] at once (1e-6, fp32)."""
    torch.manual_seed(0)
    logits = (torch.randn(3, 7, 50) * 4).requires_grad_()
    targets = torch.randint(0, 50, (3, 7))
    weights = torch.randn(3, 7)
    whole = token_logprobs(logits, targets, temperature)
    (grad_whole,) = torch.autograd.grad((whole * weights).sum(), logits)
    chunked = token_logprobs(logits, targets, temperature, chunk=5)
    (grad_chunked,) = torch.autograd.grad((chunked * weights).sum(), logits)
    assert chunked.shape == (3, 7)
    assert torch.allclose(chunked, whole, atol=1e-6)
    assert torch.allclose(grad_chunked, grad_whole, atol=1e-6)
    ent = token_entropy(logits, temperature, chunk=5)
    assert not ent.requires_grad
    assert torch.allclose(ent, token_entropy(logits, temperature), atol=1e-6)


def test_policy_loss_clips_both_sides():
    old = torch.zeros(1, 4)
    # ratios 1.5, 0.5, 1.5, 0.5 with advantages +1 (first row) / -1 (second row).
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1, 0.9]]))
    loss, clipped = policy_loss(logp, old, torch.tensor([1.0]), clip_low=0.2, clip_high=0.28)
    # A>0: min(r, clip(r)) -> 1.28 (clipped high), 0.5 (unclipped), 1.1, 0.9.
    assert torch.allclose(loss, -torch.tensor([[1.28, 0.5, 1.1, 0.9]]))
    assert clipped.tolist() == [[True, False, False, False]]
    loss, clipped = policy_loss(logp, old, torch.tensor([-1.0]), clip_low=0.2, clip_high=0.28)
    # A<0: min(-r, -clip(r)) -> -1.5 (unclipped), -0.8 (clipped low), -1.1, -0.9.
    assert torch.allclose(loss, torch.tensor([[1.5, 0.8, 1.1, 0.9]]))
    assert clipped.tolist() == [[False, True, False, False]]


def test_policy_loss_gradient_zero_where_clipped():
    logp = torch.log(torch.tensor([[1.5, 1.1]])).requires_grad_()
    loss, _ = policy_loss(logp, torch.zeros(1, 2), torch.tensor([2.0]), 0.2, 0.2)
    loss.sum().backward()
    # d(-r*A)/dlogp = -r*A: 0 on the clipped token, -1.1*2 on the other.
    assert torch.allclose(logp.grad, torch.tensor([[0.0, -2.2]]))


def test_truncated_is_weight_caps():
    old = torch.log(torch.tensor([[0.5, 0.9, 0.3]]))
    behaviour = torch.log(torch.tensor([[0.5, 0.3, 0.6]]))
    w = truncated_is_weight(old, behaviour, cap=2.0)
    # ratios 1, 3 (capped to 2), 0.5.
    assert torch.allclose(w, torch.tensor([[1.0, 2.0, 0.5]]))


def test_kl_estimators():
    logp = torch.log(torch.tensor([[0.5, 0.2]]))
    ref = torch.log(torch.tensor([[0.25, 0.4]]))
    k1 = kl_penalty(logp, ref, "k1")
    assert torch.allclose(k1, torch.tensor([[math.log(2), math.log(0.5)]]))
    k3 = kl_penalty(logp, ref, "k3")
    # d = log(ref/p): log 0.5 -> 0.5 - log0.5 - 1; log 2 -> 2 - log2 - 1.
    expected = [0.5 - math.log(0.5) - 1, 2 - math.log(2) - 1]
    assert torch.allclose(k3, torch.tensor([expected]))
    assert (k3 >= 0).all()
    assert torch.equal(kl_penalty(logp, logp, "k3"), torch.zeros(1, 2))
    k2 = kl_penalty(logp, ref, "k2")
    assert torch.allclose(k2, torch.tensor([[0.5 * math.log(2) ** 2, 0.5 * math.log(0.5) ** 2]]))
    with pytest.raises(ValueError):
        kl_penalty(logp, ref, "k4")  # type: ignore[arg-type]


def test_token_mean_vs_sequence_mean():
    values = torch.tensor([[1.0, 2.0, 3.0, 0.0], [10.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    # token mean: (1+2+3+10)/4 = 4; sequence mean: (2 + 10)/2 = 6.
    assert aggregate(values, mask, "token_mean").item() == pytest.approx(4.0)
    assert aggregate(values, mask, "sequence_mean").item() == pytest.approx(6.0)
    # Step-wide totals: this batch is one part of 8 tokens / 4 sequences.
    assert aggregate(values, mask, "token_mean", total_tokens=8).item() == pytest.approx(2.0)
    assert aggregate(values, mask, "sequence_mean", total_sequences=4).item() == pytest.approx(3.0)


def test_microbatch_parts_sum_to_whole():
    torch.manual_seed(0)
    values, mask = torch.randn(4, 5), (torch.rand(4, 5) > 0.3).long()
    mask[:, 0] = 1
    for mode in ("token_mean", "sequence_mean"):
        whole = aggregate(values, mask, mode)
        parts = sum(
            aggregate(values[i : i + 2], mask[i : i + 2], mode, int(mask.sum()), 4) for i in (0, 2)
        )
        assert torch.allclose(whole, parts)


def test_grpo_loss_hand_computed():
    # One sequence, two tokens, A=+1, behaviour ratio pi_old/pi_b = (2, 0.5), cap 1.5.
    logp = torch.log(torch.tensor([[0.4, 0.2]])).requires_grad_()
    behaviour = torch.log(torch.tensor([[0.2, 0.4]]))
    ref = torch.log(torch.tensor([[0.2, 0.2]]))
    terms = grpo_loss(
        logp, behaviour, torch.tensor([1.0]), torch.ones(1, 2),
        clip_low=0.2, clip_high=0.28, is_cap=1.5, beta=0.1, ref_logprobs=ref,
    )  # fmt: skip
    # ratio = 1: policy term = -w = (-1.5, -0.5); k3 = (0.5 - log .5 - 1, 0) .
    k3 = 0.5 - math.log(0.5) - 1
    expected = ((-1.5 + 0.1 * k3) + (-0.5 + 0.0)) / 2
    assert terms.loss.item() == pytest.approx(expected, rel=1e-6)
    terms.loss.backward()
    # d/dlogp: -w * r (r=1) + beta * (1 - exp(d)) with d = ref - logp; halved by the mean.
    grad = [(-1.5 + 0.1 * (1 - 0.5)) / 2, (-0.5 + 0.1 * (1 - 1.0)) / 2]
    assert torch.allclose(logp.grad, torch.tensor([grad]), atol=1e-6)
    metrics = grpo_metrics(terms, logp, behaviour, torch.ones(1, 2), is_cap=1.5)
    assert metrics["clip_fraction"] == 0.0
    assert metrics["ratio_mean"] == pytest.approx(1.0)
    assert metrics["is_weight_mean"] == pytest.approx(1.0)
    assert metrics["is_capped_fraction"] == pytest.approx(0.5)
    assert metrics["kl"] == pytest.approx(k3 / 2, rel=1e-5)


def test_grpo_loss_needs_ref_when_beta_positive():
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="ref_logprobs"):
        grpo_loss(x, x, torch.zeros(1), torch.ones(1, 2), clip_low=0.2, clip_high=0.2, is_cap=2)
    terms = grpo_loss(
        x, x, torch.zeros(1), torch.ones(1, 2), clip_low=0.2, clip_high=0.2, is_cap=2, beta=0
    )
    assert terms.kl is None


def test_chunked_logprob_gradient_of_bf16_logits():
    """bf16 logits (the GPU case): the chunked backward's softmax runs in fp32 chunks and the
    gradient comes back in bf16, equal to the fp32 gradient within bf16 rounding."""
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 40) * 3
    targets = torch.randint(0, 40, (2, 5))
    exact = logits.clone().requires_grad_()
    (want,) = torch.autograd.grad(token_logprobs(exact, targets, 0.7).sum(), exact)
    low = logits.to(torch.bfloat16).requires_grad_()
    (got,) = torch.autograd.grad(token_logprobs(low, targets, 0.7, chunk=3).sum(), low)
    assert got.dtype == torch.bfloat16
    assert torch.allclose(got.float(), want, atol=2e-2)

"""The objective's numerics: exact zero advantages for equal rewards, a loss and gradient that
padding cannot poison, bounded k3, and a clip that clips once there are several updates."""

from __future__ import annotations

import torch

from learner.grpo import K3_CLAMP, group_advantages, grpo_loss, grpo_metrics, kl_penalty


def test_equal_float32_rewards_give_exactly_zero_advantages():
    # float32 2.1 x 8: the float32 mean rounds, and 1/(std + eps) used to amplify that into
    # -0.19 for every sample of a group that carries no signal.
    rewards = torch.full((3, 8), 2.1, dtype=torch.float32)
    rewards[1] = 0.7
    rewards[2] = torch.tensor([1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 1.0, 2.0])
    for scale in (True, False):
        adv = group_advantages(rewards, scale_by_std=scale)
        assert adv.dtype == torch.float32
        assert torch.equal(adv[:2], torch.zeros(2, 8))
        assert (adv[2].abs() > 0.4).all()  # a group with a spread keeps its signal
    # Advantages of a group sum to 0 exactly enough for float64 inputs too.
    adv = group_advantages(torch.rand(4, 8, dtype=torch.float64))
    assert adv.dtype == torch.float64 and adv.sum(-1).abs().max() < 1e-12


def _loss(logp, behaviour, ref, old, mask, **kw):
    return grpo_loss(
        logp, behaviour, torch.tensor([1.0, -1.0]), mask,
        clip_low=0.2, clip_high=0.28, is_cap=2.0, beta=0.1, ref_logprobs=ref, old_logprobs=old,
        **kw,
    )  # fmt: skip


def test_non_finite_padding_leaves_loss_and_gradient_finite():
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]])
    pad = ~mask.bool()
    logp = (torch.rand(2, 4) * -3).requires_grad_()
    clean = [torch.rand(2, 4) * -3 for _ in range(3)]
    for poison in (float("inf"), float("-inf"), float("nan")):
        dirty = [torch.where(pad, torch.tensor(poison), t) for t in clean]
        for mode in ("token_mean", "sequence_mean"):
            logp.grad = None
            terms = _loss(logp, *dirty, mask, aggregation=mode)
            terms.loss.backward()
            assert torch.isfinite(terms.loss), (poison, mode)
            assert torch.isfinite(logp.grad).all(), (poison, mode)
            assert torch.equal(logp.grad[pad], torch.zeros(int(pad.sum())))
            # And the value is that of the clean inputs: padding does not count at all.
            expected = _loss(logp.detach(), *clean, mask, aggregation=mode).loss
            assert torch.allclose(terms.loss.detach(), expected)


def test_k3_is_bounded_on_real_tokens():
    logp = torch.tensor([[-100.0, -0.1]], requires_grad=True)
    ref = torch.tensor([[-0.1, -100.0]])  # reference far above, then far below the policy
    k3 = kl_penalty(logp, ref, "k3")
    assert torch.isfinite(k3).all() and (k3 <= K3_CLAMP).all() and (k3 >= 0).all()
    k3.sum().backward()
    assert torch.isfinite(logp.grad).all()


def test_clip_is_active_with_a_proximal_policy():
    # Second of mu = 2 updates: the policy moved away from the proximal log-probs, ratios
    # exp(+-0.5) ~ 1.65 / 0.61 lie outside [0.8, 1.28].
    old = torch.zeros(2, 3)
    logp = torch.tensor([[0.5, 0.0, -0.5], [0.5, 0.0, -0.5]], requires_grad=True)
    mask = torch.ones(2, 3)
    terms = grpo_loss(
        logp, old, torch.tensor([1.0, -1.0]), mask, clip_low=0.2, clip_high=0.28, is_cap=2.0,
        beta=0.0, old_logprobs=old,
    )  # fmt: skip
    terms.loss.backward()
    metrics = grpo_metrics(terms, logp, old, mask, is_cap=2.0)
    # A > 0 clips the ratio above 1.28 (token 0); A < 0 clips it below 0.8 (token 5).
    assert terms.clipped.tolist() == [[True, False, False], [False, False, True]]
    assert abs(metrics["clip_fraction"] - 2 / 6) < 1e-6
    assert logp.grad[0, 0] == 0 and logp.grad[1, 2] == 0
    assert (logp.grad[terms.clipped.logical_not()] != 0).all()
    # Without proximal log-probs (one update per batch) nothing is clipped: ratio 1.
    again = grpo_loss(
        logp, old, torch.tensor([1.0, -1.0]), mask, clip_low=0.2, clip_high=0.28, is_cap=2.0,
        beta=0.0,
    )  # fmt: skip
    assert not again.clipped.any() and torch.allclose(again.ratio, torch.ones(2, 3))


def test_one_update_equals_the_proximal_form_at_the_first_update():
    torch.manual_seed(1)
    logp = (torch.rand(3, 5) * -2).requires_grad_()
    behaviour, ref = torch.rand(3, 5) * -2, torch.rand(3, 5) * -2
    adv, mask = torch.randn(3), (torch.rand(3, 5) > 0.2).long()
    kw = dict(clip_low=0.2, clip_high=0.28, is_cap=2.0, beta=0.04, ref_logprobs=ref)
    today = grpo_loss(logp, behaviour, adv, mask, **kw)
    (g_today,) = torch.autograd.grad(today.loss, logp)
    first = grpo_loss(logp, behaviour, adv, mask, old_logprobs=logp.detach().clone(), **kw)
    (g_first,) = torch.autograd.grad(first.loss, logp)
    assert torch.equal(today.loss, first.loss) and torch.equal(g_today, g_first)

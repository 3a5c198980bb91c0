"""The GRPO math as pure functions over tensors: group-normalised advantages, token log-probs
from logits, the clipped policy-gradient term with a truncated importance weight for stale
(off-policy) samples, the KL penalty to a reference policy (k1 / k3), the two loss
aggregations and the step metrics.

Shapes: B sequences, L token positions (completion tokens; `mask` marks the real ones), V
vocabulary, G samples per group. Nothing here knows about DeepSpeed, queues or models; the
learner calls these on each micro-batch and passes the step-wide token / sequence totals so
that a loss split over micro-batches and ranks sums to the loss of the whole step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

Aggregation = Literal["token_mean", "sequence_mean"]
KLEstimator = Literal["k1", "k3"]


def group_advantages(
    rewards: torch.Tensor, scale_by_std: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """(r - mean) / (std + eps) within each group, or r - mean without the std.

    rewards: [N, G] (N groups of G samples) -> advantages [N, G]. The std is the population
    std (divide by G), so a group of two with rewards {0, 1} gets advantages of about +-1.
    """
    mean = rewards.mean(dim=-1, keepdim=True)  # [N, 1]
    centred = rewards - mean  # [N, G]
    if not scale_by_std:
        return centred
    std = rewards.std(dim=-1, keepdim=True, unbiased=False)  # [N, 1]
    return centred / (std + eps)


def token_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Log-probability of each target token: logits [B, L, V], targets [B, L] -> [B, L].

    Under the distribution a sampler at `temperature` draws from (softmax(logits / T)): the
    policy GRPO trains is the one the rollouts came from. logsumexp minus the gathered logit,
    in fp32, without materialising a second [B, L, V]."""
    logits = _tempered(logits, temperature)
    picked = torch.gather(logits, -1, targets.unsqueeze(-1)).squeeze(-1)  # [B, L]
    return picked - torch.logsumexp(logits, dim=-1)  # [B, L]


def token_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of the next-token distribution (at `temperature`) at each position:
    [B, L, V] -> [B, L]."""
    logp = torch.log_softmax(_tempered(logits, temperature), dim=-1)  # [B, L, V]
    return -(logp.exp() * logp).sum(dim=-1)  # [B, L]


def _tempered(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits / T in fp32 (T = 1: the logits themselves)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 to score samples, got {temperature}")
    logits = logits.float()
    return logits if temperature == 1.0 else logits / temperature


def truncated_is_weight(
    old_logprobs: torch.Tensor, behaviour_logprobs: torch.Tensor, cap: float
) -> torch.Tensor:
    """min(pi_old / pi_behaviour, cap) per token, [B, L] -> [B, L], no gradient.

    pi_behaviour is the policy that sampled the tokens (vLLM, possibly some weight versions
    behind); pi_old is the learner's policy at the start of the step. The weight corrects the
    gradient for the gap between the two; the cap bounds its variance."""
    log_ratio = (old_logprobs - behaviour_logprobs).detach()  # [B, L]
    return torch.exp(log_ratio).clamp(max=cap)


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    clip_low: float,
    clip_high: float,
    is_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token clipped surrogate, to be minimised, and where the clip was active.

    logprobs [B, L] (with grad), old_logprobs [B, L], advantages [B] (one per sequence),
    is_weight [B, L] or None. ratio = exp(logprobs - old_logprobs) is clipped to
    [1 - clip_low, 1 + clip_high]; loss = -w * min(ratio * A, clip(ratio) * A).
    Returns (loss [B, L], clipped [B, L] bool).
    """
    ratio = torch.exp(logprobs - old_logprobs.detach())  # [B, L]
    adv = advantages.unsqueeze(-1)  # [B, 1]
    unclipped = ratio * adv  # [B, L]
    clipped_ratio = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)  # [B, L]
    clipped = clipped_ratio * adv  # [B, L]
    surrogate = torch.minimum(unclipped, clipped)  # [B, L]
    was_clipped = clipped < unclipped  # [B, L]: the clipped branch was taken
    loss = -surrogate  # [B, L]
    if is_weight is not None:
        loss = loss * is_weight.detach()
    return loss, was_clipped


def kl_penalty(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: KLEstimator = "k3"
) -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi: [B, L] -> [B, L].

    k1 = log pi - log pi_ref (unbiased, can be negative); k3 = exp(d) - d - 1 with
    d = log pi_ref - log pi (unbiased, always >= 0, lower variance)."""
    if estimator == "k1":
        return logprobs - ref_logprobs
    if estimator == "k3":
        d = ref_logprobs - logprobs  # [B, L]
        return torch.exp(d) - d - 1.0
    raise ValueError(f"unknown KL estimator {estimator!r}")


def aggregate(
    values: torch.Tensor,
    mask: torch.Tensor,
    mode: Aggregation = "token_mean",
    total_tokens: float | None = None,
    total_sequences: float | None = None,
) -> torch.Tensor:
    """Reduce per-token values [B, L] under mask [B, L] to a scalar.

    token_mean: sum over all real tokens / number of real tokens (long sequences weigh more);
    sequence_mean: mean over sequences of each sequence's token mean. `total_tokens` /
    `total_sequences` replace the local counts when this batch is one part of a larger step
    (micro-batches, ranks), so the parts add up to the step's mean.
    """
    mask = mask.to(values.dtype)  # [B, L]
    if mode == "token_mean":
        denom = mask.sum() if total_tokens is None else total_tokens
        return (values * mask).sum() / max(float(denom), 1.0)
    if mode == "sequence_mean":
        lengths = mask.sum(dim=-1).clamp(min=1.0)  # [B]
        per_seq = (values * mask).sum(dim=-1) / lengths  # [B]
        denom = mask.shape[0] if total_sequences is None else total_sequences
        return per_seq.sum() / max(float(denom), 1.0)
    raise ValueError(f"unknown aggregation {mode!r}")


@dataclass(frozen=True)
class GRPOTerms:
    """One micro-batch's loss and the per-token tensors its metrics come from."""

    loss: torch.Tensor
    """Scalar loss of this micro-batch, already normalised by the step-wide totals."""
    policy: torch.Tensor
    """Per-token policy-gradient loss [B, L]."""
    kl: torch.Tensor | None
    """Per-token KL estimate [B, L] (None without a reference)."""
    ratio: torch.Tensor
    """Per-token ratio pi / pi_old [B, L]."""
    clipped: torch.Tensor
    """Per-token clip indicator [B, L]."""
    is_weight: torch.Tensor
    """Per-token truncated importance weight [B, L]."""


def grpo_loss(
    logprobs: torch.Tensor,
    behaviour_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float,
    clip_high: float,
    is_cap: float,
    beta: float = 0.01,
    ref_logprobs: torch.Tensor | None = None,
    kl_estimator: KLEstimator = "k3",
    aggregation: Aggregation = "token_mean",
    total_tokens: float | None = None,
    total_sequences: float | None = None,
) -> GRPOTerms:
    """The GRPO objective of one micro-batch: clipped policy term, truncated IS weight, and
    beta x KL to the reference, aggregated with the step totals.

    logprobs [B, L] (learner, with grad), behaviour_logprobs [B, L] (vLLM), advantages [B],
    mask [B, L], ref_logprobs [B, L]. One optimizer step per batch: pi_old is the learner's
    policy at this step, i.e. `logprobs` detached, so the ratio is 1 in value and the clip only
    acts on repeated updates; staleness is corrected by the IS weight pi_old / pi_behaviour.
    """
    old = logprobs.detach()  # [B, L]
    weight = truncated_is_weight(old, behaviour_logprobs, is_cap)  # [B, L]
    policy, clipped = policy_loss(logprobs, old, advantages, clip_low, clip_high, weight)
    per_token = policy  # [B, L]
    kl = None
    if beta > 0:
        if ref_logprobs is None:
            raise ValueError("beta > 0 needs ref_logprobs")
        kl = kl_penalty(logprobs, ref_logprobs.detach(), kl_estimator)  # [B, L]
        per_token = per_token + beta * kl
    loss = aggregate(per_token, mask, aggregation, total_tokens, total_sequences)
    ratio = torch.exp(logprobs - old).detach()
    return GRPOTerms(loss, policy.detach(), kl, ratio, clipped, weight)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean of values [B, L] over mask [B, L] (0 when the mask is empty)."""
    mask = mask.to(values.dtype)
    return float((values * mask).sum() / mask.sum().clamp(min=1.0))


def grpo_metrics(
    terms: GRPOTerms,
    logprobs: torch.Tensor,
    behaviour_logprobs: torch.Tensor,
    mask: torch.Tensor,
    is_cap: float,
    entropy: torch.Tensor | None = None,
) -> dict[str, float]:
    """Step metrics of one micro-batch (token means over mask [B, L]): clip fraction, ratio
    mean/min/max, approximate KL to the reference and to the behaviour policy (k3), the IS
    weight and how often it hit the cap, entropy."""
    m = mask.bool()
    ratio = terms.ratio[m]
    out = {
        "clip_fraction": masked_mean(terms.clipped.float(), mask),
        "ratio_mean": float(ratio.mean()) if ratio.numel() else 1.0,
        "ratio_min": float(ratio.min()) if ratio.numel() else 1.0,
        "ratio_max": float(ratio.max()) if ratio.numel() else 1.0,
        "is_weight_mean": masked_mean(terms.is_weight, mask),
        "is_capped_fraction": masked_mean((terms.is_weight >= is_cap).float(), mask),
        "behaviour_kl": masked_mean(kl_penalty(logprobs.detach(), behaviour_logprobs, "k3"), mask),
    }
    if terms.kl is not None:
        out["kl"] = masked_mean(terms.kl.detach(), mask)
    if entropy is not None:
        out["entropy"] = masked_mean(entropy, mask)
    return out

"""The GRPO math as pure functions over tensors: group-normalised advantages, token log-probs
from logits, the clipped policy-gradient term with a truncated importance weight for stale
(off-policy) samples (AReaL's decoupled objective), the KL penalty to a reference policy
(k1 / k2 / k3), the two loss aggregations and the step metrics.

Numerics: advantages are computed in float64 and are exactly 0 for a group whose rewards are
all equal (within `ADVANTAGE_TOL`); masking uses `torch.where`, so a non-finite value at a
padded position never reaches the loss or its gradient; log-ratios are clamped to
±`LOG_RATIO_CLAMP` before `exp` and k3 to [0, `K3_CLAMP`] (verl's clamps).

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
KLEstimator = Literal["k1", "k2", "k3"]

ADVANTAGE_TOL = 1e-6
"""Groups whose reward spread (max - min) is at most this get advantages of exactly 0."""
LOG_RATIO_CLAMP = 20.0
"""|log ratio| bound before exp (ratios, IS weights, k3): exp(20) ~ 5e8, finite in fp32."""
K3_CLAMP = 10.0
"""Upper bound of a per-token k3 value (verl's low_var_kl clamp)."""


def group_advantages(
    rewards: torch.Tensor, scale_by_std: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """(r - mean) / (std + eps) within each group, or r - mean without the std.

    rewards: [N, G] (N groups of G samples) -> advantages [N, G], in rewards' dtype. The std is
    the population std (divide by G), so a group of two with rewards {0, 1} gets advantages of
    about +-1. Computed in float64; a group whose spread is <= `ADVANTAGE_TOL` gets exactly 0
    (float32 rounding of the mean, amplified by 1/eps, would otherwise give every sample of a
    no-signal group a large advantage of one sign).

    Dividing by the std (GRPO) weighs a group by how close to all-right or all-wrong it is
    (Dr. GRPO's "difficulty bias"); `scale_by_std=False` is Dr. GRPO's unbiased choice.
    """
    r = rewards.double()  # [N, G]
    centred = r - r.mean(dim=-1, keepdim=True)  # [N, G]
    spread = r.amax(dim=-1, keepdim=True) - r.amin(dim=-1, keepdim=True)  # [N, 1]
    flat = spread <= ADVANTAGE_TOL  # [N, 1]
    if scale_by_std:
        centred = centred / (r.std(dim=-1, keepdim=True, unbiased=False) + eps)
    return torch.where(flat, torch.zeros_like(centred), centred).to(rewards.dtype)


def _exp_log_ratio(log_ratio: torch.Tensor) -> torch.Tensor:
    """exp of a clamped log-ratio: finite for any finite input, +-inf saturate."""
    return torch.exp(log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))


def token_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0, chunk: int = 0
) -> torch.Tensor:
    """Log-probability of each target token: logits [B, L, V], targets [B, L] -> [B, L].

    Under the distribution a sampler at `temperature` draws from (softmax(logits / T)): the
    policy GRPO trains is the one the rollouts came from. logsumexp minus the gathered logit,
    in fp32. With `chunk` > 0, `chunk` positions at a time in the forward and in the backward
    pass (`ChunkedLogProbs`): fp32 copies, softmax and logsumexp temporaries exist for one chunk
    x vocabulary at a time, and the gradient is written into one logits-sized tensor; the
    values are the same."""
    if chunk <= 0 or logits.shape[0] * logits.shape[1] <= chunk:
        return _chunk_logprobs(logits, targets, temperature)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 to score samples, got {temperature}")
    return ChunkedLogProbs.apply(logits, targets, temperature, chunk)


def _chunk_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float
) -> torch.Tensor:
    logits = _tempered(logits, temperature)
    picked = torch.gather(logits, -1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


class ChunkedLogProbs(torch.autograd.Function):
    """`token_logprobs` a chunk of positions at a time, forward and backward.

    d log p(y) / d x = (onehot(y) - softmax(x / T)) / T per position: the backward computes it
    chunk by chunk into one gradient tensor (autograd through slices would build a full-size
    gradient per chunk)."""

    @staticmethod
    def forward(ctx, logits, targets, temperature, chunk):
        flat, picks = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)  # [N, V], [N]
        out = torch.empty(flat.shape[0], dtype=torch.float32, device=logits.device)  # [N]
        for i in range(0, flat.shape[0], chunk):
            out[i : i + chunk] = _chunk_logprobs(
                flat[i : i + chunk], picks[i : i + chunk], temperature
            )
        ctx.save_for_backward(logits, targets)
        ctx.temperature, ctx.chunk = temperature, chunk
        return out.reshape(targets.shape)

    @staticmethod
    def backward(ctx, grad_out):
        logits, targets = ctx.saved_tensors
        t, chunk = ctx.temperature, ctx.chunk
        flat, picks = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
        g = grad_out.reshape(-1).float()  # [N]
        grad = torch.empty_like(flat)  # [N, V]
        for i in range(0, flat.shape[0], chunk):
            gi = g[i : i + chunk, None]  # [n, 1]
            out = grad[i : i + chunk]  # [n, V]
            # The softmax computed in place in the gradient's own rows (fp32), or in one fp32
            # chunk then stored (bf16/fp16 logits): no other logits-sized temporary.
            part = (
                out.copy_(flat[i : i + chunk])
                if out.dtype == torch.float32
                else flat[i : i + chunk].float()
            )
            if t != 1.0:
                part.div_(t)
            part.sub_(part.amax(dim=-1, keepdim=True)).exp_()
            part.div_(part.sum(dim=-1, keepdim=True)).mul_(-gi)
            part.scatter_add_(-1, picks[i : i + chunk, None], gi)
            if t != 1.0:
                part.div_(t)
            if part is not out:
                out.copy_(part)
        return grad.reshape(logits.shape), None, None, None


def token_entropy(logits: torch.Tensor, temperature: float = 1.0, chunk: int = 0) -> torch.Tensor:
    """Entropy of the next-token distribution (at `temperature`) at each position:
    [B, L, V] -> [B, L], no gradient; `chunk` > 0 positions at a time (the three fp32
    temporaries the entropy needs exist for one chunk only)."""
    with torch.no_grad():
        flat = logits.detach().reshape(-1, logits.shape[-1])  # [N, V]
        step = chunk if chunk > 0 else max(flat.shape[0], 1)
        parts = []
        for i in range(0, flat.shape[0], step):
            logp = torch.log_softmax(_tempered(flat[i : i + step], temperature), dim=-1)
            parts.append(-(logp.exp() * logp).sum(dim=-1))
        return torch.cat(parts).reshape(logits.shape[:-1])  # [B, L]


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
    behind); pi_old is the proximal policy: the learner's at the start of the step. The weight
    corrects the gradient for the gap between the two; the cap bounds its variance (truncated
    IS: no lower bound, a token the learner now finds unlikely simply weighs little)."""
    log_ratio = (old_logprobs - behaviour_logprobs).detach()  # [B, L]
    return _exp_log_ratio(log_ratio).clamp(max=cap)


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
    ratio = _exp_log_ratio(logprobs - old_logprobs.detach())  # [B, L]
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

    As values (metrics), all three estimate KL(pi || pi_ref) (Schulman's k1, k2, k3). As a
    loss term their gradients differ, in expectation over samples of pi:
    - k1 = log pi - log pi_ref: gradient 0 (E_pi[grad log pi] = 0): no regularisation, so the
      config refuses it as a loss term;
    - k2 = (log pi - log pi_ref)^2 / 2: the gradient of KL(pi || pi_ref) (biased value);
    - k3 = exp(d) - d - 1, d = log pi_ref - log pi (>= 0, unbiased value, low variance): the
      gradient of KL(pi_ref || pi), the forward KL (GRPO paper, verl's low_var_kl). d is
      clamped to +-`LOG_RATIO_CLAMP` and k3 to <= `K3_CLAMP`, as verl does, so one token whose
      reference log-prob exceeds the policy's by ~90 cannot overflow fp32 (exp(88) = inf)."""
    if estimator == "k1":
        return logprobs - ref_logprobs
    if estimator == "k2":
        return 0.5 * (logprobs - ref_logprobs).square()
    if estimator == "k3":
        d = (ref_logprobs - logprobs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # [B, L]
        return (torch.exp(d) - d - 1.0).clamp(max=K3_CLAMP)
    raise ValueError(f"unknown KL estimator {estimator!r}")


def aggregate(
    values: torch.Tensor,
    mask: torch.Tensor,
    mode: Aggregation = "token_mean",
    total_tokens: float | None = None,
    total_sequences: float | None = None,
) -> torch.Tensor:
    """Reduce per-token values [B, L] under mask [B, L] to a scalar.

    token_mean: sum over all real tokens / number of real tokens (DAPO; every token weighs the
    same, so long sequences weigh more); sequence_mean: mean over sequences of each sequence's
    token mean (the GRPO paper; a token of a short sequence weighs more, the length bias Dr.
    GRPO points out). `total_tokens` / `total_sequences` replace the local counts when this
    batch is one part of a larger step (micro-batches, ranks), so the parts add up to the
    step's mean. Masked positions are selected out (`torch.where`), never multiplied by 0: an
    inf or NaN there changes neither the value nor the gradient.
    """
    keep = mask.bool()  # [B, L]
    values = torch.where(keep, values, torch.zeros((), dtype=values.dtype))  # [B, L]
    weights = keep.to(values.dtype)  # [B, L]
    if mode == "token_mean":
        denom = weights.sum() if total_tokens is None else total_tokens
        return values.sum() / max(float(denom), 1.0)
    if mode == "sequence_mean":
        lengths = weights.sum(dim=-1).clamp(min=1.0)  # [B]
        per_seq = values.sum(dim=-1) / lengths  # [B]
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
    old_logprobs: torch.Tensor | None = None,
    kl_estimator: KLEstimator = "k3",
    aggregation: Aggregation = "token_mean",
    total_tokens: float | None = None,
    total_sequences: float | None = None,
) -> GRPOTerms:
    """The GRPO objective of one micro-batch: clipped policy term, truncated IS weight, and
    beta x KL to the reference, aggregated with the step totals.

    logprobs [B, L] (learner, with grad), behaviour_logprobs [B, L] (vLLM, what sampled the
    tokens), advantages [B], mask [B, L], ref_logprobs [B, L], old_logprobs [B, L].

    The decoupled objective (AReaL): the ratio pi / pi_old is clipped against the proximal
    policy pi_old — the learner's own log-probs of the batch, computed once before its first
    update (`old_logprobs`) — and the gap between pi_old and the behaviour policy is corrected
    by the truncated IS weight min(pi_old / pi_behaviour, is_cap). Without `old_logprobs` (one
    update per batch), pi_old is `logprobs` detached: the ratio is 1 in value, the clip is
    inactive and only the IS weight acts, which is the same loss as the proximal form at
    the first of several updates. Inputs at masked positions are replaced before any
    arithmetic, so padding holding inf or NaN leaves loss and gradient finite.
    """
    keep = mask.bool()  # [B, L]
    logprobs = torch.where(keep, logprobs, torch.zeros((), dtype=logprobs.dtype))
    old = logprobs.detach() if old_logprobs is None else _masked(old_logprobs, keep)
    behaviour = _masked(behaviour_logprobs, keep)  # [B, L]
    weight = truncated_is_weight(old, behaviour, is_cap)  # [B, L]
    policy, clipped = policy_loss(logprobs, old, advantages, clip_low, clip_high, weight)
    per_token = policy  # [B, L]
    kl = None
    if beta > 0:
        if ref_logprobs is None:
            raise ValueError("beta > 0 needs ref_logprobs")
        kl = kl_penalty(logprobs, _masked(ref_logprobs, keep), kl_estimator)  # [B, L]
        per_token = per_token + beta * kl
    loss = aggregate(per_token, mask, aggregation, total_tokens, total_sequences)
    ratio = _exp_log_ratio(logprobs - old).detach()  # [B, L]
    return GRPOTerms(loss, policy.detach(), kl, ratio, clipped & keep, weight)


def _masked(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """A detached input with its masked positions set to 0 (finite whatever padding held)."""
    return torch.where(keep, values.detach(), torch.zeros((), dtype=values.dtype))


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean of values [B, L] over mask [B, L] (0 when the mask is empty)."""
    keep = mask.bool()
    picked = values[keep]
    return float(picked.mean()) if picked.numel() else 0.0


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

"""The only thing GRPO and SFT do differently on the learner: the loss of a micro-batch.

An `Objective` turns the policy's logits on a micro-batch's scored positions (and, when it asks for one, the
reference model's token log-probs) into a scalar loss normalised by the step-wide totals,
plus metrics. Everything else — data, engine, checkpoint, export — is shared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from learner.collate import MicroBatch
from learner.grpo import grpo_loss, grpo_metrics, token_entropy, token_logprobs
from learner.sft import nll_loss
from system.config import GRPOConfig


@dataclass(frozen=True)
class StepTotals:
    """Real (non-filler) completion tokens and sequences of the whole step, all ranks."""

    tokens: float
    sequences: float


class Objective(Protocol):
    """The loss of one micro-batch."""

    needs_reference: bool
    """Whether `loss` wants reference-model log-probs."""
    temperature: float
    """The sampling temperature the policy (and reference) log-probs are taken at."""
    chunk: int
    """Positions per chunk of the log-prob computation (0: all at once)."""

    def loss(
        self,
        batch: MicroBatch,
        logits: torch.Tensor,
        ref_logprobs: torch.Tensor | None,
        totals: StepTotals,
        old_logprobs: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """(scalar loss for this part of the step, metrics). `old_logprobs` [B, L]: the
        proximal policy's, when the batch gets several updates (None: one update)."""
        ...


def scored_logprobs(
    batch: MicroBatch, logits: torch.Tensor, temperature: float, chunk: int
) -> torch.Tensor:
    """Log-probs of the targets at the positions the logits came out for (padded [B, K, V] or
    packed [1, K, V]), laid out per sequence like `batch.targets`."""
    return batch.per_sequence(token_logprobs(logits, batch.head_targets(), temperature, chunk))


class GRPOObjective:
    """Clipped policy gradient against the proximal policy + truncated IS to the behaviour
    policy + β·KL (learner.grpo), on the policy at the rollouts' sampling temperature (the
    engine reports log-probs after temperature too)."""

    def __init__(self, config: GRPOConfig, temperature: float = 1.0, chunk: int = 0) -> None:
        self.config = config
        self.temperature = temperature
        self.chunk = chunk
        self.needs_reference = config.beta > 0

    def loss(
        self,
        batch: MicroBatch,
        logits: torch.Tensor,
        ref_logprobs: torch.Tensor | None,
        totals: StepTotals,
        old_logprobs: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        c = self.config
        logprobs = scored_logprobs(batch, logits, self.temperature, self.chunk)  # [B, C]
        terms = grpo_loss(
            logprobs,
            batch.behaviour_logprobs,
            batch.advantages,
            batch.loss_mask,
            clip_low=c.clip_low,
            clip_high=c.clip_high,
            is_cap=c.is_cap,
            beta=c.beta,
            ref_logprobs=ref_logprobs,
            old_logprobs=old_logprobs,
            kl_estimator=c.kl_estimator,
            aggregation=c.aggregation,
            total_tokens=totals.tokens,
            total_sequences=totals.sequences,
        )
        with torch.no_grad():
            entropy = batch.per_sequence(token_entropy(logits, self.temperature, self.chunk))
            metrics = grpo_metrics(
                terms, logprobs, batch.behaviour_logprobs, batch.loss_mask, c.is_cap, entropy
            )
        return terms.loss, metrics


class SFTObjective:
    """Token-mean NLL of the completion tokens."""

    needs_reference = False
    temperature = 1.0

    def __init__(self, chunk: int = 0) -> None:
        self.chunk = chunk

    def loss(
        self,
        batch: MicroBatch,
        logits: torch.Tensor,
        ref_logprobs: torch.Tensor | None,
        totals: StepTotals,
        old_logprobs: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        logprobs = scored_logprobs(batch, logits, 1.0, self.chunk)  # [B, C]
        return nll_loss(logprobs, batch.loss_mask, totals.tokens)

"""`LearnerWorker`: one learner rank. `step()` takes one optimizer step from this rank's share
of the batch; the driver's step loop (`system.orchestration.driver`) calls it on every rank,
with `export()` and `save_checkpoint()` on schedule.

A step: take this rank's groups (or SFT examples) from its `BatchSource`, collate them into
micro-batches, agree with the other ranks on the micro-batch count (a rank that has fewer
repeats its last one with weight 0, so the ZeRO-3 gathers stay in step) and on the step-wide
token / sequence totals, then forward (policy, and reference when the objective wants it),
loss, backward for each micro-batch, and one optimizer step — or, with
`learner.grpo.iterations` = mu > 1, the reference and proximal log-probs of every micro-batch
computed once, then mu passes of forward/backward and an optimizer update each. A rank whose source returns no
batch (the driver interrupted the wait for groups: a stop request, a rollout restart) makes
every rank return `{"interrupted": 1}` without stepping (the flag is all-reduced before the
first collective of the step). A step whose loss or gradient
norm is not finite is skipped on every rank (the flag is all-reduced) and counted;
`max_nonfinite_steps` in a row raise `NonFiniteError`. Checkpoints (every
`checkpoint.every_steps`) commit DeepSpeed state, an HF export, RNG states and the
`TrainingState` atomically, then ack the queue entries of the steps they contain.

The class is plain Python: a driver wraps it with `ray.remote` (one actor per rank), a test
calls it directly in a process of its own.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from learner import engine as eng
from learner.collate import Collator, MicroBatch, Sequence, tokens_per_second
from learner.export import export_weights, save_hf
from learner.objectives import GRPOObjective, Objective, SFTObjective, StepTotals, scored_logprobs
from learner.sources import BatchSource, QueueSource, RecordSource
from learner.vision_padding import kinds_of, missing, padded
from system.config import RunConfig
from system.config.errors import NonFiniteError
from system.transport import checkpoint as ckpt
from system.transport.checkpoint import CheckpointError, TrainingState
from system.transport.weight_sync import BucketPacker, WeightSender

log = logging.getLogger("reelrl.learner")


class LearnerWorker:
    """One learner rank (see the module docstring)."""

    def __init__(
        self,
        config: RunConfig,
        rank: int,
        world_size: int,
        master_addr: str,
        master_port: int,
        algorithm: str = "grpo",
        model_path: str | None = None,
        checkpoint_dir: str | None = None,
        source: BatchSource | None = None,
        sender: WeightSender | None = None,
    ) -> None:
        from transformers import AutoProcessor

        from system.config.logs import configure

        configure()
        self.config = config
        self.rank, self.world_size = rank, world_size
        learner = config.learner
        if learner.groups_per_step % world_size:
            raise ValueError(
                f"learner.groups_per_step={learner.groups_per_step} must be a multiple of "
                f"the {world_size} learner ranks"
            )
        self.backend = eng.init_distributed(rank, world_size, master_addr, master_port)
        self.base_model = model_path or config.model.path
        self.checkpoint_dir = Path(
            checkpoint_dir or Path(config.output_dir) / config.name / "checkpoints"
        )
        self.processor = AutoProcessor.from_pretrained(self.base_model)
        self.collator = Collator(
            self.processor,
            config.model.family,
            tokens_per_second=tokens_per_second(self.base_model),
        )
        self.objective: Objective = (
            GRPOObjective(learner.grpo, config.rollout.sampling.temperature, learner.logprob_chunk)
            if algorithm == "grpo"
            else SFTObjective(learner.logprob_chunk)
        )
        self.iterations = learner.grpo.iterations if algorithm == "grpo" else 1
        """Optimizer updates per batch (`learner.grpo.iterations`; SFT: 1)."""
        self.source = source or self._default_source(algorithm)
        self.sender = sender
        # Exports are collective: every rank must know whether rank 0 has somewhere to send.
        self.exporting = bool(eng.broadcast_object(sender is not None))
        self.device = eng.device()
        dtype = eng.model_dtype(config.model)
        hidden = eng.hidden_size(self.base_model)
        ds = eng.ds_config(learner, world_size, dtype, True, hidden)
        policy = eng.load_model(
            self.base_model, dtype, True, config.model, eng.partitioned(ds, learner)
        )
        self.engine = eng.initialize(policy, ds, True, learner.optimizer.warmup_steps)
        self.reference = None
        if self.objective.needs_reference:
            ds = eng.ds_config(learner, world_size, dtype, False, hidden)
            ref = eng.load_model(
                self.base_model, dtype, False, config.model, eng.partitioned(ds, learner)
            )
            self.reference = eng.initialize(ref, ds, False)
        self.state = TrainingState(step=0, base_model=self.base_model)
        # Colocated on one GPU: the engines generate while the learner waits; its optimizer
        # state makes room for them (`resources.offload_optimizer`), its cache is emptied.
        self.shares_gpu = config.resources.colocate and self.device.type == "cuda"
        self.offloads = (
            self.shares_gpu and config.resources.offload_optimizer and algorithm == "grpo"
        )
        self._offloaded = False
        self.frozen_sent = False
        self._step_kinds = [0.0, 0.0]  # vision kinds of the current step (vision_padding)
        self.packer = BucketPacker()
        self._uncommitted_groups: list[str] = []
        self._committed_step = 0
        """Step of the checkpoint the current steps continue from (the audit trail's `after`)."""
        self.last_metrics: dict[str, float] = {}

    def _default_source(self, algorithm: str) -> BatchSource:
        c = self.config
        if algorithm == "grpo":
            from system.transport.queue import RolloutQueue
            from system.transport.redis_server import connect

            queue = RolloutQueue(connect(c.queue), c.name, c.queue, consumer=f"rank{self.rank}")
            return QueueSource(
                queue, self.collator, c.learner.grpo.scale_by_std, c.rollout.max_staleness,
                c.queue.block_ms,
            )  # fmt: skip
        from system.data.records import RecordMixer, load_split

        mixer = RecordMixer(load_split(c.data, "train"), c.data_seed, shuffle=c.data.shuffle)
        return RecordSource(
            mixer, self.collator, c.video, c.data.root, c.rewards.format, self.rank,
            self.world_size, c.image,
        )  # fmt: skip

    # ------------------------------------------------------------------ the step

    @property
    def global_step(self) -> int:
        return self.state.step

    def _states_on_device(self) -> None:
        if self._offloaded:
            eng.reload_states(self.engine)
            self._offloaded = False

    def _make_room(self) -> None:
        """Colocated: hand the GPU to the engines (optimizer state out, cache emptied)."""
        if self.offloads and not self._offloaded:
            eng.offload_states(self.engine)
            self._offloaded = True
        elif self.shares_gpu:
            torch.cuda.empty_cache()

    def step(self) -> dict[str, float]:
        """One optimizer step on every rank together; returns this step's metrics."""
        t0 = time.perf_counter()
        self._states_on_device()
        if isinstance(self.source, QueueSource):
            self.source.version = self.state.weight_version
        share = self.config.learner.groups_per_step // self.world_size
        batch = self.source.next_batch(share)
        (interrupted,) = eng.all_reduce([1.0 if batch is None else 0.0], op="max")
        if batch is None or interrupted:
            if batch is not None:
                self.source.give_back(batch)
            return {"step": float(self.state.step), "interrupted": 1.0}
        self._uncommitted_groups += batch.group_ids
        micro = self._micro_batches(batch.sequences)
        n_micro, tokens, seqs = _agree(micro)
        micro += [micro[-1].filler()] * (n_micro - len(micro))
        self._step_kinds = _agree_kinds(micro)
        totals = StepTotals(tokens=tokens, sequences=seqs)
        timing = {"data_s": time.perf_counter() - t0, "forward_s": 0.0, "backward_s": 0.0}
        timing |= {"optimizer_s": 0.0}
        fixed = self._fixed_logprobs(micro, timing) if self.iterations > 1 else None
        metrics: list[dict[str, float]] = []
        updates = [
            self._update(micro, totals, timing, fixed, metrics) for _ in range(self.iterations)
        ]
        applied = all(ok for _, ok, _ in updates)
        first_losses, grad_norm = updates[0][0], updates[-1][2]
        out = self._finish_step(applied, grad_norm, first_losses, metrics, batch.rewards, timing)
        if batch.samples:
            out.update(batch.sample_means())
        if self.shares_gpu:
            torch.cuda.empty_cache()  # the step's activations, before the engines wake
        out["step_s"] = time.perf_counter() - t0
        out["trained_tokens"] = tokens  # completion tokens in the loss, all ranks
        out["trained_sequences"] = seqs
        return out

    def _micro_batches(self, seqs: list[Sequence]) -> list[MicroBatch]:
        """Packed rows up to `learner.max_tokens_per_micro_batch` tokens (`learner.packing`),
        else `learner.micro_batch_size` sequences padded to the longest."""
        learner = self.config.learner
        if learner.packing:
            share = learner.share_prompts and self.config.model.attn_implementation is None
            return self.collator.packed_batches(seqs, learner.max_tokens_per_micro_batch, share)
        return self.collator.micro_batches(seqs, learner.micro_batch_size)

    def _update(
        self,
        micro: list[MicroBatch],
        totals: StepTotals,
        timing: dict[str, float],
        fixed: list[tuple[torch.Tensor | None, torch.Tensor]] | None,
        metrics: list[dict[str, float]],
    ) -> tuple[list[float], bool, float]:
        """Forward/backward of every micro-batch, then one optimizer update: (micro-batch
        losses, whether the update was applied, gradient norm). Appends to `metrics`."""
        losses, bad = [], False
        for i, mb in enumerate(micro):
            last = i == len(micro) - 1
            given = None if fixed is None else fixed[i]
            loss, m = self._micro_step(mb.to(self.device), totals, last, timing, given)
            bad |= not math.isfinite(loss)
            losses.append(loss)
            if mb.weight > 0:
                metrics.append(m)
        t1 = time.perf_counter()
        applied, grad_norm = self._optimizer_step(bad)
        timing["optimizer_s"] += time.perf_counter() - t1
        return losses, applied, grad_norm

    def _fixed_logprobs(
        self, micro: list[MicroBatch], t: dict[str, float]
    ) -> list[tuple[torch.Tensor | None, torch.Tensor]]:
        """(reference, proximal) log-probs [B, K] of every micro-batch, computed once before the
        first of several updates: the proximal policy the clip is measured against is the
        policy as it was when the batch arrived."""
        t0 = time.perf_counter()
        out = []
        with torch.no_grad():
            for mb in micro:
                mb = mb.to(self.device)
                ref = self._reference_logprobs(mb)
                logits = self._forward(self.engine, mb)  # [B, K, V]
                old = self._logprobs(logits, mb, self.objective.temperature)
                del logits
                out.append((ref, old))
        t["forward_s"] += time.perf_counter() - t0
        return out

    def _reference_logprobs(self, mb: MicroBatch) -> torch.Tensor | None:
        if self.reference is None:
            return None
        with torch.no_grad():
            ref_logits = self._forward(self.reference, mb)  # [B, K, V]
            return self._logprobs(ref_logits, mb, self.objective.temperature)

    def _forward(self, model: Any, mb: MicroBatch) -> torch.Tensor:
        """Logits [B, K, V] of a micro-batch, with the dummy vision-tower calls that keep
        this rank's collectives in step with the others' (learner.vision_padding)."""
        with padded(model.module, missing(mb.vision, self._step_kinds)):
            return model(**mb.model_inputs()).logits

    def _logprobs(self, logits: torch.Tensor, mb: MicroBatch, temperature: float) -> torch.Tensor:
        """Token log-probs [B, C] of the scored positions, chunked as configured."""
        return scored_logprobs(mb, logits, temperature, self.config.learner.logprob_chunk)

    def _micro_step(
        self,
        mb: MicroBatch,
        totals: StepTotals,
        last: bool,
        t: dict[str, float],
        fixed: tuple[torch.Tensor | None, torch.Tensor] | None = None,
    ) -> tuple[float, dict[str, float]]:
        t0 = time.perf_counter()
        self.engine.set_gradient_accumulation_boundary(last)
        ref_logprobs, old_logprobs = fixed if fixed is not None else (None, None)
        if fixed is None:
            ref_logprobs = self._reference_logprobs(mb)
        logits = self._forward(self.engine, mb)  # [B, K, V]: scored positions only
        loss, metrics = self.objective.loss(mb, logits, ref_logprobs, totals, old_logprobs)
        # DeepSpeed averages gradients over ranks; the loss is already a share of the step.
        scaled = loss * (mb.weight * self.world_size)
        t1 = time.perf_counter()
        t["forward_s"] += t1 - t0
        self.engine.backward(scaled, scale_wrt_gas=False)
        t["backward_s"] += time.perf_counter() - t1
        return float(loss.detach()) * mb.weight, metrics

    def _optimizer_step(self, local_bad: bool) -> tuple[bool, float]:
        (bad,) = eng.all_reduce([1.0 if local_bad else 0.0], op="max")
        if bad:
            eng.discard_gradients(self.engine)
            return False, float("nan")
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        norm = float(norm) if norm is not None else float("nan")
        return bool(self.engine.was_step_applied()) and math.isfinite(norm), norm

    def _finish_step(
        self,
        applied: bool,
        grad_norm: float,
        losses: list[float],
        metrics: list[dict[str, float]],
        rewards: list[float],
        timing: dict[str, float],
    ) -> dict[str, float]:
        s = self.state
        s.step += 1
        if applied:
            s.nonfinite_in_a_row = 0
        else:
            s.skipped_steps += 1
            s.nonfinite_in_a_row += 1
            log.warning("step %d skipped: non-finite loss or gradient norm", s.step)
            if s.nonfinite_in_a_row >= self.config.learner.max_nonfinite_steps:
                raise NonFiniteError(
                    f"{s.nonfinite_in_a_row} consecutive steps had a non-finite loss or gradient "
                    f"norm (learner.max_nonfinite_steps={self.config.learner.max_nonfinite_steps})"
                    f"; stopping at step {s.step}"
                )
        (loss,) = eng.all_reduce([sum(losses)])
        out = {
            "step": float(s.step),
            "loss": loss,
            "grad_norm": grad_norm,
            "applied": float(applied),
            "skipped_steps": float(s.skipped_steps),
            "lr": float(self.engine.get_lr()[0]),
            **timing,
        }
        for key in sorted({k for m in metrics for k in m}):
            out[key] = float(np.mean([m[key] for m in metrics if key in m]))
        if rewards:
            out["reward_mean"] = float(np.mean(rewards))
        self.last_metrics = out
        return out

    # ------------------------------------------------------------------ the loop

    def export(self, include_frozen: bool = False) -> dict[str, float]:
        """Send the weights as version = global step (collective). The first export includes
        the frozen tower; later ones only the trainable parameters (everything, the vision
        tower included, when it trains: `model.freeze_vision: false`)."""
        t0 = time.perf_counter()
        model = self.config.model
        keep = eng.exported(include_frozen, model.freeze_vision, model.freeze_projector)
        ws = self.config.weight_sync
        out = export_weights(
            self.engine.module, self.sender, self.state.step, keep, ws.bucket_mb << 20,
            ws.timeout_s, self.packer,
        )  # fmt: skip
        self.state.weight_version = self.state.step
        self.frozen_sent = self.frozen_sent or include_frozen
        self._make_room()  # the engines generate next
        out["export_s"] = time.perf_counter() - t0
        return out

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self) -> Path:
        """Commit a checkpoint of the current step (collective), then ack its groups."""
        root, step = self.checkpoint_dir, self.state.step
        tmp = self._on_rank0(lambda: ckpt.begin(root, step))
        error = None
        offloaded = self._offloaded
        self._states_on_device()  # the checkpoint holds the optimizer state
        try:
            self.engine.save_checkpoint(str(tmp / "deepspeed"), tag="state")
            torch.save(_rng_state(), tmp / f"rng_rank{self.rank}.pt")
            if self.config.checkpoint.export_hf:
                save_hf(self.engine.module, self.processor, tmp / "hf")
        except OSError as exc:
            error = ckpt.failure_message(root, step, exc)
        if offloaded:
            self._make_room()
        source_states = eng.all_gather_object(self.source.state())
        groups = eng.all_gather_object(self._uncommitted_groups)
        (failed,) = eng.all_reduce([1.0 if error else 0.0], op="max")
        if failed:
            if self.rank == 0:
                ckpt.abort(tmp)
            raise CheckpointError(error or f"checkpoint of step {step} failed on another rank")
        new_ids = [g for rank_ids in groups for g in rank_ids]
        stream_ids = [s for st in source_states for s in st.get("stream_ids", [])]
        applied = self._on_rank0(lambda: self.source.applied_after(stream_ids))
        rollouts = isinstance(self.source, QueueSource)  # SFT records come round each epoch
        if rollouts and len(set(new_ids)) < len(new_ids):
            twice = sorted({g for g in new_ids if new_ids.count(g) > 1})
            log.error("groups applied twice before step %d: %s", step, twice[:5])
        committed = replace(
            self.state, applied=applied, data_position=source_states[0].get("data_position")
        )
        after = self._committed_step

        def commit() -> Path:
            ckpt.write_state(tmp, committed)
            if rollouts:
                ckpt.journal_applied(root, step, after, new_ids)
            return ckpt.commit(root, tmp, step, self.config.checkpoint.keep_last)

        final = self._on_rank0(commit)
        self.state, self._committed_step = committed, step
        self._uncommitted_groups = []
        self.source.committed(applied)
        return final

    def _on_rank0(self, fn: Any) -> Any:
        """Run `fn` on rank 0 and hand its result (or its error, raised) to every rank."""
        result: Any = None
        if self.rank == 0:
            try:
                result = ("ok", fn())
            except (CheckpointError, OSError) as exc:
                result = ("error", str(exc))
            except Exception as exc:  # e.g. Redis gone: every rank must learn of it, or hang
                result = ("error", f"{type(exc).__name__}: {exc}")
        kind, value = eng.broadcast_object(result)
        if kind == "error":
            raise CheckpointError(value)
        return value

    def replace_sender(self, sender: WeightSender) -> None:
        """Rank 0: send later exports through `sender` (a new weight-sync group after the
        old one broke); the old one is closed."""
        close = getattr(self.sender, "close", None)
        if close is not None:
            close()
        self.sender = sender

    def touch(self) -> None:
        """Keep the queue entries this rank holds fresh during a long pause of the driver
        (so another rank does not claim them as a dead consumer's)."""
        if isinstance(self.source, QueueSource):
            self.source.queue.touch()

    def pid(self) -> int:
        import os

        return os.getpid()

    def resume(self) -> bool:
        """Load the latest committed checkpoint if there is one; True when resumed."""
        path = ckpt.latest(self.checkpoint_dir)
        if path is None:
            return False
        state = ckpt.read_state(path)
        loaded, _ = self.engine.load_checkpoint(str(path / "deepspeed"), tag="state")
        if loaded is None:
            raise CheckpointError(f"{path}: DeepSpeed found no loadable state under deepspeed/")
        _set_rng_state(torch.load(path / f"rng_rank{self.rank}.pt", weights_only=False))
        self.state, self._committed_step = state, state.step
        self.source.restore({"data_position": state.data_position}, applied=state.applied)
        log.info("rank %d resumed from %s at step %d", self.rank, path, state.step)
        return True

    def logprobs(self, sequences: list[Sequence]) -> list[torch.Tensor]:
        """The policy's log-probs of each sequence's completion tokens (collective: every rank
        must pass the same number of sequences)."""
        out = []
        with torch.no_grad():
            for seq in sequences:
                mb = self.collator.collate([seq]).to(self.device)
                logits = self.engine(**mb.model_inputs()).logits
                lp = self._logprobs(logits, mb, 1.0)[mb.loss_mask.bool()]
                out.append(lp.cpu())
        return out

    def shutdown(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def _agree(micro: list[MicroBatch]) -> tuple[int, float, float]:
    """Micro-batch count (max over ranks) and the step's token / sequence totals (sums)."""
    tokens, seqs = eng.all_reduce(
        [float(sum(m.num_tokens for m in micro)), float(sum(m.num_sequences for m in micro))]
    )
    (n,) = eng.all_reduce([float(len(micro))], op="max")
    return int(n), tokens, seqs


def _agree_kinds(micro: list[MicroBatch]) -> list[float]:
    """Which vision kinds (images, videos) any micro-batch of the step holds, on any rank."""
    local = [max(k) for k in zip(*(kinds_of(m.vision) for m in micro), strict=True)]
    return eng.all_reduce(local, op="max")


def _rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

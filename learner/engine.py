"""The DeepSpeed side of the learner: process group, policy and reference models under ZeRO-3,
which parameters train, the optimizer and schedule, and the collectives the worker needs.

Device and precision follow the machine: NCCL + bf16 with CUDA, gloo + fp32 without. The
policy is loaded with transformers and handed to `deepspeed.initialize`, which partitions it
(ZeRO-3) across the ranks. Trainable: the LLM (embeddings, decoder layers, final norm,
lm_head) and the projector `model.visual.merger` (Qwen2.5-VL's patch merger; Qwen3-VL's final
merger). Frozen: every other parameter under `model.visual` — patch embedding and vision blocks,
and for Qwen3-VL also the learned position embedding and the deepstack mergers. The optimizer
is torch AdamW (DeepSpeed's `torch_adam`; no compiled ops needed) with linear warm-up then a
constant learning rate. With β > 0 a frozen reference copy of the starting model runs under
ZeRO-3 as well. Gradient accumulation is manual (`set_gradient_accumulation_boundary`), so a
step may have any number of micro-batches as long as every rank runs the same number.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from system.config import LearnerConfig, ModelConfig

TRAINABLE_VISION = ("model.visual.merger.",)
"""Parameters under model.visual that train (the projector); the rest of the tower is frozen."""


def is_trainable(name: str) -> bool:
    """Whether parameter `name` trains: everything outside the vision tower, plus the projector."""
    if not name.startswith("model.visual."):
        return True
    return name.startswith(TRAINABLE_VISION)


def init_distributed(rank: int, world_size: int, master_addr: str, master_port: int) -> str:
    """Join the learner process group (env:// rendezvous); returns the backend."""
    import deepspeed

    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=os.environ.get("LOCAL_RANK", "0"),
        MASTER_ADDR=master_addr,
        MASTER_PORT=str(master_port),
    )
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    return backend


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def model_dtype(config: ModelConfig) -> torch.dtype:
    if config.dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return getattr(torch, config.dtype)


def load_model(path: str, dtype: torch.dtype, trainable: bool, config: ModelConfig) -> Any:
    """A Qwen-VL model from an HF directory; for the policy, frozen tower and checkpointing."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype)
    model.config.use_cache = False
    for name, param in model.named_parameters():
        param.requires_grad_(trainable and (is_trainable(name) or not config.freeze_vision))
    if trainable and config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if not trainable:
        model.eval()
    return model


def ds_config(learner: LearnerConfig, world_size: int, dtype: torch.dtype, train: bool) -> dict:
    """The DeepSpeed config of the policy (train) or the reference (not train)."""
    opt = learner.optimizer
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": learner.micro_batch_size,
        "gradient_accumulation_steps": 1,
        "train_batch_size": learner.micro_batch_size * world_size,
        "zero_optimization": {
            "stage": learner.zero_stage,
            "overlap_comm": torch.cuda.is_available(),
            "contiguous_gradients": True,
        },
        "bf16": {"enabled": dtype == torch.bfloat16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if train:
        config["gradient_clipping"] = opt.grad_clip
        config["optimizer"] = {
            "type": "AdamW",
            "params": {
                "lr": opt.lr,
                "betas": list(opt.betas),
                "eps": 1e-8,
                "weight_decay": opt.weight_decay,
                "torch_adam": True,
            },
        }
        config["zero_allow_untested_optimizer"] = True
    return _merge(config, learner.deepspeed_overrides)


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Learning-rate multiplier: linear from 1/(warmup+1) to 1 over warm-up, then 1."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, (step + 1) / (warmup_steps + 1))


def constant_with_warmup(warmup_steps: int) -> Callable[[torch.optim.Optimizer], Any]:
    def make(optimizer: torch.optim.Optimizer) -> Any:
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_factor(step, warmup_steps)
        )

    return make


def initialize(model: Any, config: dict, train: bool, warmup_steps: int = 0) -> Any:
    """Wrap `model` in a DeepSpeed engine (partitions it under ZeRO-3)."""
    import deepspeed

    kwargs: dict[str, Any] = {"model": model, "config": config}
    if train:
        kwargs["model_parameters"] = [p for p in model.parameters() if p.requires_grad]
        kwargs["lr_scheduler"] = constant_with_warmup(warmup_steps)
    engine, *_ = deepspeed.initialize(**kwargs)
    if not train:
        engine.eval()
    return engine


def discard_gradients(engine: Any) -> None:
    """Drop the accumulated gradients without an optimizer step (a skipped step): what
    DeepSpeed itself does on an overflow."""
    clean = getattr(engine.optimizer, "_overflow_clean_up", None)
    if clean is None:
        raise RuntimeError("this DeepSpeed optimizer cannot discard gradients; skip unsupported")
    clean(getattr(engine.optimizer, "loss_scale", 1.0))


# --------------------------------------------------------------------------- collectives


def all_reduce(values: list[float], op: str = "sum") -> list[float]:
    """Element-wise sum or max of a few numbers over all ranks (identity without a group)."""
    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.is_initialized() and dist.get_world_size() > 1:
        if dist.get_backend() == "nccl":
            tensor = tensor.to(device())
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return tensor.cpu().tolist()


def all_gather_object(obj: Any) -> list[Any]:
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out

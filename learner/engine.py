"""The DeepSpeed side of the learner: process group, policy and reference models under ZeRO-3,
which parameters train, the optimizer and schedule, and the collectives the worker needs.

Device and precision follow the machine: NCCL + bf16 with CUDA, gloo + fp32 without. The
policy is built partitioned (ZeRO-3: transformers under `deepspeed.zero.Init`, so no rank ever
holds the whole model) and handed to `deepspeed.initialize`. Trainable: the LLM (embeddings, decoder layers, final norm,
lm_head) and the projector `model.visual.merger` (Qwen2.5-VL's patch merger; Qwen3-VL's final
merger). Frozen: every other parameter under `model.visual` — patch embedding and vision blocks,
and for Qwen3-VL also the learned position embedding and the deepstack mergers. The optimizer
is AdamW (torch's fused kernel on CUDA, torch's AdamW on CPU, DeepSpeed's FusedAdam on request)
with linear warm-up then a constant learning rate. With β > 0 a frozen reference copy of the
starting model runs under ZeRO-3 as well, built partitioned the same way (optionally
offloaded to host memory). Gradient accumulation is manual (`set_gradient_accumulation_boundary`), so a
step may have any number of micro-batches as long as every rank runs the same number.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from system.config import LearnerConfig, ModelConfig
from system.config.models import OptimizerConfig

TRAINABLE_VISION = ("model.visual.merger.",)
"""Parameters under model.visual that train (the projector); the rest of the tower is frozen."""


def is_trainable(name: str, projector: bool = True) -> bool:
    """Whether parameter `name` trains under a frozen tower: everything outside the vision
    tower, plus the projector unless it is frozen too (`projector=False`)."""
    if not name.startswith("model.visual."):
        return True
    return projector and name.startswith(TRAINABLE_VISION)


def exported(
    include_frozen: bool, freeze_vision: bool, freeze_projector: bool = False
) -> Callable[[str], bool]:
    """Which parameters an export sends: all of them the first time (`include_frozen`) or
    when the vision tower trains; otherwise the trainable ones only (the frozen tower cannot
    have changed since the first export)."""
    if include_frozen or not freeze_vision:
        return lambda _: True
    return lambda name: is_trainable(name, not freeze_projector)


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


def load_model(
    path: str, dtype: torch.dtype, trainable: bool, config: ModelConfig, zero3: dict | None = None
) -> Any:
    """A Qwen-VL model from an HF directory; for the policy, frozen tower and checkpointing.

    With `zero3` (the DeepSpeed config the model will be initialised with, ZeRO stage 3) the
    model is built partitioned (learner.loading): constructed under `deepspeed.zero.Init`, each
    rank reading only its share of every parameter from the checkpoint; a checkpoint whose
    names need transformers' renaming goes through transformers' own partitioned load
    (`HfDeepSpeedConfig`: rank 0 reads, each parameter is scattered). No rank ever holds the
    whole model. Without `zero3`, every rank builds the whole model (from memory-mapped
    files) and `deepspeed.initialize` partitions it afterwards."""
    from transformers import AutoModelForImageTextToText
    from transformers.integrations import HfDeepSpeedConfig

    from learner.attention import VARLEN_SDPA, register
    from learner.loading import load_partitioned

    register()
    # sdpa by default, with per-sequence spans for packed rows (learner.attention).
    kwargs: dict[str, Any] = {"attn_implementation": config.attn_implementation or VARLEN_SDPA}
    model = None if zero3 is None else load_partitioned(path, dtype, zero3, **kwargs)
    if model is None:
        # transformers holds only a weak reference: the object must live through
        # from_pretrained and not outlive it (a later load here would be partitioned too).
        live = HfDeepSpeedConfig(zero3) if zero3 is not None else None
        try:
            model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, **kwargs)
        finally:
            del live
    model.config.use_cache = False
    model.config.get_text_config().use_cache = False  # what the language model reads
    for name, param in model.named_parameters():
        trains = is_trainable(name, not config.freeze_projector) or not config.freeze_vision
        param.requires_grad_(trainable and trains)
    if trainable and config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if not trainable:
        model.eval()
    return model


def partitioned(config: dict, learner: LearnerConfig) -> dict | None:
    """The DeepSpeed config to build a model partitioned with (see `load_model`), or None when
    it loads whole (ZeRO below 3, or `learner.partitioned_load: false`)."""
    if learner.partitioned_load and config["zero_optimization"]["stage"] == 3:
        return config
    return None


def ds_config(
    learner: LearnerConfig,
    world_size: int,
    dtype: torch.dtype,
    train: bool,
    hidden: int | None = None,
) -> dict:
    """The DeepSpeed config of the policy (train) or the reference (not train).

    Precision follows the model's dtype (bf16 or fp16 mixed precision; fp32 neither). The
    optimizer (policy only): `learner.optimizer.implementation`, where auto = torch's fused
    AdamW kernel on CUDA (no compiled DeepSpeed op needed on the nodes), torch's AdamW on CPU.
    The reference may be offloaded to host memory (`learner.reference_offload`, CUDA only).
    With the model's `hidden` size, ZeRO-3's buffers are sized from it as transformers and
    OpenRLHF do ("auto"): reduce bucket hidden², prefetch bucket 0.9 hidden², parameters of
    fewer than 10 hidden elements kept whole — DeepSpeed's defaults (5e8-element buckets, 2 GB
    each in fp32) are sized for nobody in particular."""
    opt = learner.optimizer
    cuda = torch.cuda.is_available()
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": learner.micro_batch_size,
        "gradient_accumulation_steps": 1,
        "train_batch_size": learner.micro_batch_size * world_size,
        "zero_optimization": {
            "stage": learner.zero_stage,
            "overlap_comm": cuda,
            "contiguous_gradients": True,
        },
        "bf16": {"enabled": dtype == torch.bfloat16},
        "fp16": {"enabled": dtype == torch.float16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if dtype == torch.float16:
        config["fp16"].update(loss_scale=0, initial_scale_power=16)  # dynamic loss scaling
    if hidden is not None and learner.zero_stage == 3:
        config["zero_optimization"].update(
            reduce_bucket_size=hidden * hidden,
            stage3_prefetch_bucket_size=int(0.9 * hidden * hidden),
            stage3_param_persistence_threshold=10 * hidden,
        )
    if train:
        config["gradient_clipping"] = opt.grad_clip
        config["optimizer"] = {"type": "AdamW", "params": adamw_params(opt, cuda)}
        config["zero_allow_untested_optimizer"] = True
    elif learner.reference_offload and cuda and learner.zero_stage == 3:
        config["zero_optimization"]["offload_param"] = {"device": "cpu", "pin_memory": True}
    return _merge(config, learner.deepspeed_overrides)


def hidden_size(model_path: str) -> int | None:
    """The language model's hidden size from an HF directory's config.json."""
    import json
    from pathlib import Path

    config = json.loads((Path(model_path) / "config.json").read_text())
    text = config.get("text_config", config)
    return text.get("hidden_size")


def adamw_params(opt: OptimizerConfig, cuda: bool) -> dict[str, Any]:
    """DeepSpeed's AdamW parameters for `opt.implementation` on this device."""
    impl = opt.implementation
    if impl == "auto":
        impl = "torch_fused" if cuda else "torch"
    if impl != "torch" and not cuda:
        raise ValueError(
            f"learner.optimizer.implementation={opt.implementation!r} needs CUDA; use 'torch' "
            "or 'auto' on CPU"
        )
    params: dict[str, Any] = {
        "lr": opt.lr,
        "betas": list(opt.betas),
        "eps": 1e-8,
        "weight_decay": opt.weight_decay,
        "torch_adam": impl != "deepspeed_fused",  # deepspeed_fused: DeepSpeed's FusedAdam op
    }
    if impl == "torch_fused":
        params["fused"] = True  # torch.optim.AdamW(fused=True): one CUDA kernel per group
    return params


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


OFFLOADED_STATES = ("optim_states", "hp_params", "lp_grads", "contiguous_grad_buffer")
"""What a colocated learner moves off the GPU while the engines generate: Adam's moments, the
fp32 master weights, the gradient buffers (the bf16 parameter partitions stay: ZeRO-3 keeps
only 1/world of them)."""


def offload_states(engine: Any) -> None:
    """Move the optimizer's GPU state to pinned host memory and return the freed blocks to the
    driver (`torch.cuda.empty_cache`), so that the engines can take them."""
    from deepspeed.runtime.zero.offload_config import OffloadDeviceEnum, OffloadStateTypeEnum

    engine.offload_states(
        include=[OffloadStateTypeEnum(s) for s in OFFLOADED_STATES],
        device=OffloadDeviceEnum.cpu,
        pin_memory=True,
    )
    torch.cuda.empty_cache()


def reload_states(engine: Any) -> None:
    """Bring the offloaded optimizer state back onto the GPU (before a step or a checkpoint)."""
    engine.reload_states()


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

"""Getting full weights out of a ZeRO-3 partitioned model: per layer group on all ranks
(`deepspeed.zero.GatheredParameters`), handed on by rank 0 — as packed buckets to a
`WeightSender` (the rollout side's weight version), or as an HF-format directory (checkpoint
export, loadable by transformers and vLLM).

Every rank must iterate the same parameters in the same order (the gathers are collectives);
only rank 0 keeps copies. A sender failure or timeout on rank 0 does not stop the gathers
(the other ranks would hang in them); it is carried to the end and raised on every rank.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from learner.engine import all_reduce
from system.transport.weight_sync import (
    BucketPacker,
    Deadline,
    WeightSender,
    WeightSyncError,
    plan_buckets,
    plan_layout,
)

_LAYER = re.compile(r"^(.*?\.\d+)\.")


def layer_groups(module: torch.nn.Module, keep: Callable[[str], bool]) -> list[list[tuple]]:
    """(name, param) lists, one per layer (names up to the first index: `...layers.3.`),
    one for each run of non-layer parameters; in the module's order."""
    groups: list[list[tuple]] = []
    current_key = None
    for name, param in module.named_parameters():
        if not keep(name):
            continue
        match = _LAYER.match(name)
        key = match.group(1) if match else name.rsplit(".", 2)[0]
        if key != current_key:
            groups.append([])
            current_key = key
        groups[-1].append((name, param))
    return groups


def metadata(
    module: torch.nn.Module, keep: Callable[[str], bool]
) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    """(name, full shape, dtype) of what `gathered` yields, without gathering (a ZeRO-3
    partitioned parameter keeps its full shape in `ds_shape`)."""
    return [
        (name, tuple(getattr(param, "ds_shape", param.shape)), param.dtype)
        for name, param in module.named_parameters()
        if keep(name)
    ]


def gathered(
    module: torch.nn.Module, keep: Callable[[str], bool], device: Any = "cpu"
) -> Iterator[tuple[str, Any]]:
    """(name, full tensor copied to `device`) on rank 0, (name, None) elsewhere; collective."""
    import deepspeed

    rank = dist.get_rank() if dist.is_initialized() else 0
    for group in layer_groups(module, keep):
        params = [p for _, p in group]
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            for name, param in group:
                yield name, param.detach().to(device, copy=True) if rank == 0 else None


def export_weights(
    module: torch.nn.Module,
    sender: WeightSender | None,
    version: int,
    keep: Callable[[str], bool],
    bucket_bytes: int,
    timeout_s: float,
    packer: BucketPacker | None = None,
) -> dict[str, float]:
    """Send the parameters `keep` selects as weight version `version` (collective), the
    layout announced up front (from the parameters' full shapes, before any gather).
    `packer` keeps the bucket buffers from one version to the next; they live on the
    sender's `device` when it has one (NCCL), else in host memory (gloo).

    Returns {"bytes", "buckets"} on rank 0. Raises WeightSyncError on every rank when rank 0
    could not deliver within `timeout_s`."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    deadline = Deadline(timeout_s) if rank == 0 else None
    error: str | None = None
    sent = buckets = 0
    packer = packer or BucketPacker()
    packer.start()

    sending = deadline is not None and sender is not None
    # A sender on a GPU (NCCL) gets buckets packed on its device: gathered parameters are
    # copied device to device into the packer's reused buffers, never through host memory.
    device = getattr(sender, "device", None) if sending else None

    def named() -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in gathered(module, keep, device or "cpu"):
            if tensor is not None:
                yield name, tensor

    try:
        if sending:
            try:
                layout = plan_layout(metadata(module, keep), bucket_bytes)
                deadline.call("start", sender.start, version, layout)
            except WeightSyncError as exc:
                error = str(exc)  # the gathers below still run: they are collective
        for plan in plan_buckets(named(), bucket_bytes) if rank == 0 else _drain(module, keep):
            if error is not None or not sending:
                continue
            bucket = packer.pack(plan)
            try:
                deadline.call("send_bucket", sender.send_bucket, bucket)
            except WeightSyncError as exc:
                error = str(exc)
            sent += bucket.packed.numel()
            buckets += 1
        if error is None and sending:
            deadline.call("finish", sender.finish, version)
    except WeightSyncError as exc:
        error = str(exc)
    finally:
        if deadline is not None:
            deadline.close()
    (failed,) = all_reduce([1.0 if error else 0.0], op="max")
    if failed:
        raise WeightSyncError(error or f"weight version {version} failed on rank 0")
    return {"bytes": float(sent), "buckets": float(buckets)}


def _drain(module: torch.nn.Module, keep: Callable[[str], bool]) -> Iterator[list]:
    """Non-zero ranks: take part in the gathers, send nothing."""
    for _ in gathered(module, keep):
        pass
    return
    yield


def save_hf(model: Any, processor: Any, out: str | Path) -> None:
    """Write an HF-format model (all parameters, gathered) + processor files; collective,
    rank 0 writes."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    state = {name: t for name, t in gathered(model, lambda _: True) if t is not None}
    if rank != 0:
        return
    params = {n for n, _ in model.named_parameters()}
    for name, buf in model.state_dict().items():
        if name not in params and name not in state:
            state[name] = buf.detach().cpu()
    out = Path(out)
    model.save_pretrained(out, state_dict=state, safe_serialization=True)
    processor.save_pretrained(out)

"""Building a model partitioned across the learner ranks (ZeRO-3) without any rank holding it
whole: the architecture is constructed under `deepspeed.zero.Init` (each module's parameters
are partitioned as soon as the module exists; the whole tensors are allocated but never
written), then every rank reads from the safetensors files exactly the flat slice of each
parameter that its partition holds straight into its partition. No gather, no broadcast, no
full state dict anywhere: per rank, its 1/world share and nothing of size besides.

This is the layout ZeRO-3 itself uses (`deepspeed.runtime.zero.partition_parameters`): a
parameter flattened, padded to a multiple of the partition count, rank r holding elements
[r·n, (r+1)·n) of it, n = ceil(numel / world).

Checkpoint keys are renamed to the model's parameter names by transformers' own renaming rules
(Qwen-VL checkpoints keep the released layout). A checkpoint whose tensors need converting
(split, fused) or whose names still do not match makes `load_partitioned` return None; the
caller then falls back to transformers' own partitioned load (HfDeepSpeedConfig).
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("reelrl.learner")


DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip
"""safetensors dtype names -> torch dtypes."""


@dataclass(frozen=True)
class Stored:
    """Where one tensor lies in a safetensors file."""

    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int
    """Byte offset of its first element in the file."""


def checkpoint_index(path: str | Path) -> dict[str, Stored]:
    """Every tensor of the HF directory `path` (one model.safetensors or a sharded index), read
    from the files' headers."""
    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (path / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"no model.safetensors(.index.json) in {path}")
    out = {}
    for name in files:
        file = path / name
        with file.open("rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size))
        for key, meta in header.items():
            if key == "__metadata__":
                continue
            if meta["dtype"] not in DTYPES:
                raise ValueError(f"{file}: {key} has dtype {meta['dtype']}, not supported")
            out[key] = Stored(
                file,
                DTYPES[meta["dtype"]],
                tuple(meta["shape"]),
                8 + size + meta["data_offsets"][0],
            )
    return out


def model_names(model: Any, index: dict[str, Stored]) -> dict[str, Stored]:
    """The index under the model's parameter names: transformers renames checkpoint keys on
    load (Qwen-VL files say `model.layers.*` and `visual.*`, the classes
    `model.language_model.layers.*` and `model.visual.*`); the same renaming rules here.
    Checkpoints that need more than renaming (tensors split or fused) keep their names, so
    the caller falls back to transformers' loader."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightRenaming, rename_source_key

    transforms = get_model_conversion_mapping(model)
    if any(not isinstance(t, WeightRenaming) for t in transforms):
        return index
    prefix = getattr(model, "base_model_prefix", None)
    meta = dict.fromkeys(name for name, _ in model.named_parameters())
    meta.update(dict.fromkeys(name for name, _ in model.named_buffers()))
    out = {}
    for key, stored in index.items():
        name, _ = rename_source_key(key, transforms, [], prefix, meta)
        out[name] = stored
    return out


def partition_range(numel: int, world: int, rank: int) -> tuple[int, int]:
    """[start, end) of the flat elements rank `rank` holds of a `numel`-element parameter
    (end clipped to numel: the last partition may be part padding)."""
    size = -(-numel // world)  # ceil
    start = min(size * rank, numel)
    return start, min(start + size, numel)


def read_range(stored: Stored, start: int, end: int, handle: Any) -> torch.Tensor:
    """Elements [start, end) of the flattened tensor: one contiguous byte range of the file,
    read (not memory-mapped) into a new tensor of the stored dtype."""
    out = torch.empty(end - start, dtype=stored.dtype)
    read_into(stored, start, handle, out)
    return out


READ_CHUNK_BYTES = 16 << 20
"""Largest temporary `read_into` makes when the stored dtype differs from the destination's."""


def read_into(stored: Stored, start: int, handle: Any, dest: torch.Tensor) -> None:
    """Elements [start, start + dest.numel()) of the flattened tensor, read into the contiguous
    CPU tensor `dest`: straight into its memory when the dtypes agree, else through
    READ_CHUNK_BYTES-sized pieces converted on the way — never a second copy of the range."""
    item = torch.empty(0, dtype=stored.dtype).element_size()
    handle.seek(stored.offset + start * item)
    if dest.dtype == stored.dtype:
        pieces = [(0, dest.numel(), dest.view(-1).view(torch.uint8))]
    else:
        step = max(1, READ_CHUNK_BYTES // item)
        pieces = [(i, min(i + step, dest.numel()), None) for i in range(0, dest.numel(), step)]
    for lo, hi, raw in pieces:
        buf = raw if raw is not None else torch.empty((hi - lo) * item, dtype=torch.uint8)
        if handle.readinto(buf.numpy()) != buf.numel():
            raise ValueError(f"{stored.file} ends inside a tensor: the file is truncated")
        if raw is None:
            dest.view(-1)[lo:hi].copy_(buf.view(stored.dtype))


def unsynced_init(deepspeed: Any) -> type:
    """`deepspeed.zero.Init` without its step that broadcasts every freshly built parameter
    from rank 0 before partitioning it: a random-init sync that every rank would receive
    whole (the largest matrix of the model, per rank, at once) and that the checkpoint read
    then overwrites. Only for models whose every parameter is read from a checkpoint. Where
    this DeepSpeed has no such step to leave out, its own Init."""
    base = deepspeed.zero.Init
    if not callable(getattr(base, "_zero_init_param", None)):
        return base

    class UnsyncedInit(base):
        def _zero_init_param(self, param: Any) -> None:
            self._convert_to_deepspeed_param(param)
            param.partition()

    return UnsyncedInit


def load_partitioned(path: str, dtype: torch.dtype, ds_config: dict, **model_kwargs: Any) -> Any:
    """The model of HF directory `path`, ZeRO-3-partitioned over the current process group
    with each rank reading only its share; None when the checkpoint's names do not match."""
    import deepspeed
    import torch.distributed as dist
    from transformers import AutoConfig, AutoModelForImageTextToText
    from transformers.initialization import no_init_weights

    index = checkpoint_index(path)
    config = AutoConfig.from_pretrained(path)
    # Random initialisation skipped: every parameter is overwritten from the checkpoint.
    with (
        no_init_weights(),
        unsynced_init(deepspeed)(config_dict_or_path=ds_config, dtype=dtype),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype, **model_kwargs)
    index = model_names(model, index)
    params = dict(model.named_parameters())
    missing = [name for name in params if name not in index]
    if missing:
        log.info(
            "checkpoint %s names %d parameters differently (e.g. %s): loading through "
            "transformers instead",
            path, len(missing), missing[0],
        )  # fmt: skip
        return None
    handles: dict[Path, Any] = {}
    try:
        with torch.no_grad():
            for name, param in params.items():
                stored = index[name]
                if stored.shape != tuple(param.ds_shape):
                    raise ValueError(
                        f"{path}: {name} has shape {stored.shape} in the checkpoint, "
                        f"{tuple(param.ds_shape)} in the model"
                    )
                if stored.file not in handles:
                    handles[stored.file] = stored.file.open("rb")
                world = dist.get_world_size(group=param.ds_process_group)
                rank = dist.get_rank(group=param.ds_process_group)
                start, end = partition_range(param.ds_numel, world, rank)
                own = param.ds_tensor.narrow(0, 0, end - start)
                read_into(stored, start, handles[stored.file], own)
            for name, buf in model.named_buffers():  # persistent buffers: small, read whole
                if name in index:
                    stored = index[name]
                    with stored.file.open("rb") as f:
                        whole = read_range(stored, 0, buf.numel(), f)
                    buf.copy_(whole.reshape(buf.shape))
    finally:
        for handle in handles.values():
            handle.close()
    return model

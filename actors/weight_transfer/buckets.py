"""Packed buckets: many tensors travel as a few uint8 buffers.

Both ends compute the same plan from the same metadata (names, dtypes, shapes, in order), so a
bucket's layout never travels: the sender packs each bucket's tensors back to back, the
receiver splits the buffer by the same byte sizes. A tensor larger than the bucket size travels
alone in its own bucket. Pure functions over torch tensors; no process-group code here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TensorMeta:
    """Name, dtype name (as in `torch.<name>`) and shape of one parameter."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        numel = 1
        for dim in self.shape:
            numel *= dim
        return numel * torch.empty((), dtype=getattr(torch, self.dtype)).element_size()


def metas_of(named: Sequence[tuple[str, torch.Tensor]]) -> list[TensorMeta]:
    """Metadata of named tensors, in order."""
    return [TensorMeta(n, str(t.dtype).removeprefix("torch."), tuple(t.shape)) for n, t in named]


def plan_buckets(metas: Sequence[TensorMeta], bucket_bytes: int) -> list[list[int]]:
    """Indices of `metas` per bucket, in order; each bucket holds at most `bucket_bytes`
    unless a single tensor is larger."""
    if bucket_bytes < 1:
        raise ValueError(f"bucket_bytes must be >= 1, got {bucket_bytes}")
    buckets: list[list[int]] = []
    current: list[int] = []
    size = 0
    for i, meta in enumerate(metas):
        if current and size + meta.nbytes > bucket_bytes:
            buckets.append(current)
            current, size = [], 0
        current.append(i)
        size += meta.nbytes
    if current:
        buckets.append(current)
    return buckets


def pack(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """One contiguous uint8 buffer [sum of nbytes] holding `tensors` back to back (CPU)."""
    flat = [t.detach().to("cpu").contiguous().view(-1).view(torch.uint8) for t in tensors]
    return torch.cat(flat) if len(flat) > 1 else flat[0].clone()


def unpack(buffer: torch.Tensor, metas: Sequence[TensorMeta]) -> list[tuple[str, torch.Tensor]]:
    """Named tensors viewed out of a packed buffer (they share its storage)."""
    sizes = [m.nbytes for m in metas]
    if sum(sizes) != buffer.numel():
        raise ValueError(f"bucket holds {buffer.numel()} bytes, its plan needs {sum(sizes)}")
    out = []
    for meta, part in zip(metas, buffer.split(sizes), strict=True):
        dtype = getattr(torch, meta.dtype)
        # A dtype view needs the offset aligned to the item size; mixed dtypes may break that.
        if part.storage_offset() % torch.empty((), dtype=dtype).element_size():
            part = part.clone()
        out.append((meta.name, part.view(dtype).view(meta.shape)))
    return out

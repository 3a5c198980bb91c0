"""Weight sync, trainer side: the `WeightSender` interface the learner exports through, and
the pure bucket packing that both ends of the transfer share.

A weight version goes out as `start(version, layout)`, then packed buckets, then
`finish(version)`. A bucket is one flat uint8 tensor holding several parameters back to back
(each at a 16-byte aligned offset so the receiver can view it in place) plus a manifest of
names, shapes, dtypes and offsets; `pack_bucket` / `unpack_bucket` convert between the two,
`plan_buckets` groups parameters into buckets of about `bucket_bytes`, and `plan_layout`
gives the same buckets' entries from shapes alone, before any tensor exists (so a transport
can announce a whole version up front). `BucketPacker` reuses its buffers across versions.
Transports (gloo on CPU, NCCL on GPU
through vLLM's weight-transfer engine) implement `WeightSender`; the learner never branches on
which one it has.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import torch

from system.config.errors import WeightSyncError

ALIGN = 16
T = TypeVar("T")


@dataclass(frozen=True)
class BucketEntry:
    """Where one parameter lies in a packed bucket."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    offset: int
    """Byte offset in the bucket."""
    nbytes: int


@dataclass(frozen=True)
class Bucket:
    """Several parameters packed into one flat uint8 tensor, with the manifest to unpack it."""

    entries: tuple[BucketEntry, ...]
    packed: torch.Tensor
    """uint8 [nbytes], contiguous."""

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def manifest(self) -> list[dict[str, Any]]:
        """The entries as plain data (what a transport sends ahead of the bytes)."""
        return manifest(self.entries)


Layout = list[tuple[BucketEntry, ...]]
"""The entries of every bucket of a version, in sending order (`plan_layout`)."""


def manifest(entries: Sequence[BucketEntry]) -> list[dict[str, Any]]:
    """Bucket entries as plain data (what a transport sends ahead of the bytes)."""
    return [
        {
            "name": e.name,
            "shape": list(e.shape),
            "dtype": str(e.dtype).removeprefix("torch."),
            "offset": e.offset,
            "nbytes": e.nbytes,
        }
        for e in entries
    ]


class WeightSender(Protocol):
    """Trainer side of the weight-transfer path; called on rank 0 only.

    Implementations bound every call by their own timeout and raise `WeightSyncError` rather
    than block forever."""

    def start(self, version: int, layout: Layout | None = None) -> None:
        """Announce weight version `version`; buckets follow. With a `layout` (from
        `plan_layout`) exactly those buckets follow, in order, so the transport may announce
        the whole version to its receivers at once instead of bucket by bucket."""
        ...

    def send_bucket(self, bucket: Bucket) -> None:
        """Deliver one packed bucket of the version being sent."""
        ...

    def finish(self, version: int) -> None:
        """All buckets of `version` are sent; receivers may swap it in."""
        ...


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def tensor_nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def bucket_entries(named: Sequence[tuple[str, torch.Tensor]]) -> tuple[list[BucketEntry], int]:
    """Where each tensor goes in a packed bucket, and the bucket's byte size."""
    if not named:
        raise ValueError("a bucket needs at least one tensor")
    entries, offset = [], 0
    for name, tensor in named:
        nbytes = tensor_nbytes(tensor)
        entries.append(BucketEntry(name, tuple(tensor.shape), tensor.dtype, offset, nbytes))
        offset = _aligned(offset + nbytes)
    return entries, max(offset, 1)


def bucket_size(entries: Sequence[BucketEntry]) -> int:
    """Byte size of the packed bucket that holds `entries` (as `bucket_entries` laid out)."""
    return max(_aligned(entries[-1].offset + entries[-1].nbytes), 1) if entries else 1


def pack_bucket(
    named: Sequence[tuple[str, torch.Tensor]], out: torch.Tensor | None = None
) -> Bucket:
    """Pack (name, tensor) pairs into one flat uint8 tensor on the first tensor's device, or
    into `out` when it has exactly the bucket's size and device (a buffer reused across
    versions: its padding bytes are left as they are)."""
    entries, size = bucket_entries(named)
    device = named[0][1].device
    packed = out
    if packed is None or packed.numel() != size or packed.device != device:
        packed = torch.empty(size, dtype=torch.uint8, device=device)
        _zero(packed)  # the padding between entries
    host = packed.numpy() if packed.device.type == "cpu" else None
    for entry, (_, tensor) in zip(entries, named, strict=True):
        flat = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
        if host is not None and flat.device.type == "cpu":
            # One plain memcpy: torch's copy_ splits a CPU copy over its intra-op threads,
            # and on an oversubscribed host that fork/join costs ~100x the copy itself.
            host[entry.offset : entry.offset + entry.nbytes] = flat.numpy()
        else:
            packed[entry.offset : entry.offset + entry.nbytes].copy_(flat)
    return Bucket(tuple(entries), packed)


def _zero(buffer: torch.Tensor) -> None:
    if buffer.device.type == "cpu":
        buffer.numpy().fill(0)  # single-threaded, see pack_bucket
    else:
        buffer.zero_()


class BucketPacker:
    """`pack_bucket` with the packed buffers kept and reused version after version: the
    n-th bucket of a version goes into the n-th buffer of the previous one when the sizes
    match (a model's layout does not change between versions), which saves allocating and
    zeroing every bucket. A bucket is only valid until the same position is packed again,
    i.e. until its send has returned."""

    def __init__(self) -> None:
        self._buffers: list[torch.Tensor] = []
        self._next = 0

    def start(self) -> None:
        """Begin a version: the next bucket packs into the first buffer."""
        self._next = 0

    def pack(self, named: Sequence[tuple[str, torch.Tensor]]) -> Bucket:
        index, self._next = self._next, self._next + 1
        reuse = self._buffers[index] if index < len(self._buffers) else None
        bucket = pack_bucket(named, out=reuse)
        if index < len(self._buffers):
            self._buffers[index] = bucket.packed
        else:
            self._buffers.append(bucket.packed)
        return bucket


def unpack_bucket(bucket: Bucket, copy: bool = False) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs back from a bucket: views into `packed` unless `copy`."""
    out = []
    for e in bucket.entries:
        raw = bucket.packed[e.offset : e.offset + e.nbytes]
        tensor = raw.view(e.dtype).reshape(e.shape)
        out.append((e.name, tensor.clone() if copy else tensor))
    return out


def plan_buckets(
    named: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int
) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Group tensors in order into lists of at most `bucket_bytes` (aligned); a tensor larger
    than that gets a bucket of its own."""
    if bucket_bytes < 1:
        raise ValueError(f"bucket_bytes must be >= 1, got {bucket_bytes}")
    current: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, tensor in named:
        need = _aligned(tensor_nbytes(tensor))
        if current and size + need > bucket_bytes:
            yield current
            current, size = [], 0
        current.append((name, tensor))
        size += need
    if current:
        yield current


def plan_layout(
    metadata: Iterable[tuple[str, Sequence[int], torch.dtype]], bucket_bytes: int
) -> Layout:
    """The buckets `plan_buckets` + `pack_bucket` will produce for tensors of these
    (name, shape, dtype), computed without the tensors (ZeRO-3 knows shapes before it
    gathers)."""
    meta = [
        (name, torch.empty(tuple(shape), dtype=dtype, device="meta"))
        for name, shape, dtype in metadata
    ]
    return [tuple(bucket_entries(chunk)[0]) for chunk in plan_buckets(meta, bucket_bytes)]


class Deadline:
    """Runs sender calls in one helper thread and waits at most until a deadline, so a
    transport that blocks turns into a `WeightSyncError` instead of a hung learner."""

    def __init__(self, timeout_s: float) -> None:
        import time

        self._time = time.monotonic
        self.timeout_s = timeout_s
        self.expires = time.monotonic() + timeout_s
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="weight-send")

    def call(self, what: str, fn: Any, *args: Any) -> Any:
        left = self.expires - self._time()
        if left <= 0:
            raise WeightSyncError(f"weight sync timed out after {self.timeout_s:.1f}s ({what})")
        future = self._pool.submit(fn, *args)
        try:
            return future.result(timeout=left)
        except FutureTimeout:
            raise WeightSyncError(
                f"weight sync timed out after {self.timeout_s:.1f}s during {what}"
            ) from None

    def close(self) -> None:
        # A stuck transport call may still hold the thread; do not wait for it.
        self._pool.shutdown(wait=False, cancel_futures=True)

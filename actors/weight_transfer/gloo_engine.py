"""The worker side of the gloo weight transfer: vLLM's `WeightTransferEngine` protocol over a
gloo process group, for vLLM on CPU.

The trainer (rank 0) and every vLLM worker (ranks `rank_offset + worker rank`) form a gloo
group of their own, outside vLLM's default group, rendezvousing on the trainer's TCPStore.
A version is the packed buckets of `system.transport.weight_sync` broadcast from rank 0, announced to
the engine by `update_weights` calls (one or more buckets each: the sender announces a whole
version at once when it knows its layout). Every bucket is received into staging first (into
the previous update's buffers, so a steady run allocates nothing); the model is loaded from
the staging only in `finish_weight_update` (by `reload.ModelReloader`), and a failed bucket
drops the whole staging. Each broadcast is bounded by the group timeout and the
whole update by `timeout_s`: when the sender dies or stalls, `update_weights` raises a
`WeightTransferError` naming the bucket, staging is dropped, and the model keeps serving the
previous weights, untouched. A later `init_weight_transfer_engine` (a restarted trainer)
replaces the broken group.
"""

from __future__ import annotations

import datetime
import logging
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from vllm.distributed.weight_transfer.base import (
    WeightTransferEngine,
    WeightTransferInitInfo,
    WeightTransferUpdateInfo,
)

from actors.weight_transfer.reload import ModelReloader
from system.config.errors import first_line
from system.transport.weight_sync import Bucket, BucketEntry, unpack_bucket

log = logging.getLogger("reelrl.weight_transfer")

GROUP_PREFIX = "reelrl-weights"
# Seconds between the INFO summaries of loaded weight versions.
SUMMARY_S = 300.0


class WeightTransferError(RuntimeError):
    """An update that did not arrive whole; the engine keeps its previous weights."""


@dataclass
class GlooInitInfo(WeightTransferInitInfo):
    """Where the trainer's store listens, the group size and the wire parameters."""

    master_address: str
    master_port: int
    rank_offset: int
    world_size: int
    timeout_s: float
    group_name: str = "0"
    """Distinguishes successive groups on the same store (a re-init after a failure)."""


@dataclass
class GlooUpdateInfo(WeightTransferUpdateInfo):
    """One or more packed buckets that follow on the group, in order: each is the manifest of
    `system.transport.weight_sync.Bucket` and the byte size of its packed tensor."""

    buckets: list[dict[str, Any]]
    version: int = -1


def bucket_of(spec: dict[str, Any], packed: torch.Tensor) -> Bucket:
    """A `Bucket` from its wire manifest and the received bytes."""
    entries = tuple(
        BucketEntry(
            e["name"], tuple(e["shape"]), getattr(torch, e["dtype"]), e["offset"], e["nbytes"]
        )
        for e in spec["manifest"]
    )
    return Bucket(entries, packed)


@dataclass
class GlooGroup:
    """A gloo process group and the store it rendezvoused on (rank 0 serves the store, so it
    must live as long as the group)."""

    group: Any
    store: Any


def open_store(address: str, port: int, rank: int, world_size: int, timeout_s: float) -> Any:
    """The rendezvous store: rank 0 hosts it (returns at once), the others connect to it."""
    return dist.TCPStore(
        address,
        port,
        world_size,
        is_master=rank == 0,
        timeout=datetime.timedelta(seconds=timeout_s),
        wait_for_workers=False,
    )


def open_group(
    address: str,
    port: int,
    rank: int,
    world_size: int,
    timeout_s: float,
    name: str,
    store: Any = None,
) -> GlooGroup:
    """A gloo group of its own (not torch.distributed's default one) over a TCPStore that
    rank 0 hosts; every operation on it times out after `timeout_s`. Blocks until all
    `world_size` ranks have joined (or the timeout)."""
    if store is None:
        store = open_store(address, port, rank, world_size, timeout_s)
    prefixed = dist.PrefixStore(f"{GROUP_PREFIX}/{name}", store)
    timeout = datetime.timedelta(seconds=timeout_s)
    return GlooGroup(dist.ProcessGroupGloo(prefixed, rank, world_size, timeout), store)


def broadcast(group: GlooGroup, buffer: torch.Tensor, timeout_s: float) -> None:
    """Broadcast `buffer` in place from rank 0, raising after `timeout_s`."""
    opts = dist.BroadcastOptions()
    opts.rootRank = 0
    opts.timeout = datetime.timedelta(seconds=timeout_s)
    group.group.broadcast([buffer], opts).wait()


class GlooWeightTransferEngine(WeightTransferEngine[GlooInitInfo, GlooUpdateInfo]):
    """vLLM worker-side engine: staged, all-or-nothing updates over gloo."""

    init_info_cls = GlooInitInfo
    update_info_cls = GlooUpdateInfo
    supports_draft_weight_update = False

    def __init__(self, config: Any, vllm_config: Any, device: torch.device, model: Any) -> None:
        super().__init__(config, vllm_config, device, model)
        self.group: GlooGroup | None = None
        self.info: GlooInitInfo | None = None
        self._staged: list[tuple[str, torch.Tensor]] | None = None
        self._buffers: list[torch.Tensor] = []
        """Receive buffers, one per bucket position of an update, reused while sizes match
        (the staged tensors are views into them until the update is loaded)."""
        self._buckets_staged = 0
        self._reloader: ModelReloader | None = None
        self._received = _Received()
        self._summary = _Summary()

    def init_transfer_engine(self, init_info: GlooInitInfo) -> None:
        self.shutdown()
        parallel = self.parallel_config
        worker = parallel.data_parallel_index * parallel.world_size + parallel.rank
        rank = init_info.rank_offset + worker
        self.group = open_group(
            init_info.master_address,
            init_info.master_port,
            rank,
            init_info.world_size,
            init_info.timeout_s,
            init_info.group_name,
        )
        self.info = init_info
        log.info("joined weight-transfer group %s as rank %d", init_info.group_name, rank)

    def start_weight_update(self) -> None:
        self._staged = []
        self._buckets_staged = 0
        self._received = _Received()

    def update_weights(self, update_info: dict[str, Any]) -> None:
        # The base class synchronizes an accelerator afterwards; on CPU there is none.
        self.receive_weights(self.parse_update_info(update_info))

    def receive_weights(self, update_info: GlooUpdateInfo) -> None:
        if self.group is None or self.info is None:
            raise WeightTransferError("gloo weight transfer is not initialised")
        staged, self._staged = self._staged, None  # dropped for good if anything fails below
        staged = [] if staged is None else staged
        first = self._buckets_staged
        self._buckets_staged = 0
        started = time.monotonic()
        deadline = started + self.info.timeout_s
        for index, spec in enumerate(update_info.buckets):
            what = f"weight update v{update_info.version}: bucket {index + 1}/{len(update_info.buckets)}"
            left = deadline - time.monotonic()
            if left <= 0:
                raise WeightTransferError(
                    f"{what} not received within the {self.info.timeout_s}s bound; "
                    "keeping the previous weights"
                )
            packed = self._buffer(first + index, int(spec["nbytes"]))
            try:
                broadcast(self.group, packed, left)
            except RuntimeError as exc:
                raise WeightTransferError(
                    f"{what} failed ({first_line(exc)}); the sender died or stalled, "
                    "keeping the previous weights"
                ) from None
            staged.extend(unpack_bucket(bucket_of(spec, packed)))
            self._received.nbytes += packed.numel()
        self._staged = staged
        self._buckets_staged = first + len(update_info.buckets)
        self._received.seconds += time.monotonic() - started
        self._received.version = update_info.version

    def _buffer(self, position: int, nbytes: int) -> torch.Tensor:
        """The receive buffer of the `position`-th bucket of an update: last update's when
        the size matches (no allocation, no page faults), else a new one."""
        if position < len(self._buffers) and self._buffers[position].numel() == nbytes:
            return self._buffers[position]
        buffer = torch.empty(nbytes, dtype=torch.uint8)
        if position < len(self._buffers):
            self._buffers[position] = buffer
        else:
            self._buffers.append(buffer)
        return buffer

    def finish_weight_update(self) -> None:
        staged, self._staged = self._staged, None
        used, self._buckets_staged = self._buffers[: self._buckets_staged], 0
        if not staged:
            log.warning("finish_weight_update without a received update: weights unchanged")
            return
        if self._reloader is None:
            self._reloader = ModelReloader(self.model, self.model_config)
        started, replays = time.monotonic(), self._reloader.replays
        self._reloader.load(staged, used)
        r = self._received
        load_s = time.monotonic() - started
        log.debug(
            "weights v%d: %.1f MiB in %d bucket(s) received in %.1f ms, loaded in %.1f ms (%s)",
            r.version,
            r.nbytes / 2**20,
            len(used),
            r.seconds * 1e3,
            load_s * 1e3,
            "replayed" if self._reloader.replays > replays else "vLLM's full path",
        )
        self._summary.add(r, load_s)

    def shutdown(self) -> None:
        self.group = None
        self.info = None
        self._staged = None
        self._buckets_staged = 0


@dataclass
class _Received:
    """What the open update has received so far, for its log line."""

    version: int = -1
    nbytes: int = 0
    seconds: float = 0.0


@dataclass
class _Summary:
    """Weight versions loaded since the last INFO line: the first version, then one line
    every `SUMMARY_S` (each version's own line is at DEBUG)."""

    versions: int = 0
    nbytes: int = 0
    receive_s: float = 0.0
    load_s: float = 0.0
    last: float | None = None

    def add(self, received: _Received, load_s: float) -> None:
        self.versions += 1
        self.nbytes += received.nbytes
        self.receive_s += received.seconds
        self.load_s += load_s
        now = time.monotonic()
        if self.last is not None and now - self.last < SUMMARY_S:
            return
        n = self.versions
        log.info(
            "weights up to v%d: %d version(s) loaded since the last report, %.1f MiB each, "
            "received in %.1f ms and loaded in %.1f ms on average (REELRL_LOG=DEBUG: each)",
            received.version,
            n,
            self.nbytes / n / 2**20,
            self.receive_s / n * 1e3,
            self.load_s / n * 1e3,
        )
        self.versions, self.nbytes, self.receive_s, self.load_s = 0, 0, 0.0, 0.0
        self.last = now

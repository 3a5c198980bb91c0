"""The trainer side of the gloo weight transfer: push a version of the policy to every vLLM
engine on CPU (the engines' clients and the announce / send order are in `control`).

`GlooRolloutSender` implements the learner's `system.transport.weight_sync.WeightSender` over gloo: it
hosts the group's store as rank 0; given the version's layout it announces every bucket to
the engines in one `update_weights` (in the background, between vLLM's start and finish) and
then only broadcasts the bytes, bucket after bucket; without a layout it announces each
bucket while it broadcasts it, and `finish` calls vLLM's finish with the version. A failure
raises `WeightSyncError` and the engines keep (or fall back to) their previous weights.
`push_weights` is the whole round trip for callers that hold named tensors.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import torch

from actors.weight_transfer.control import (
    BucketStream,
    EngineFanout,
    LoopEngineClient,
    RayEngineClient,
    WeightSyncClient,
)
from actors.weight_transfer.gloo_engine import GlooInitInfo, broadcast, open_group, open_store
from system.transport.weight_sync import (
    Bucket,
    BucketEntry,
    BucketPacker,
    Layout,
    WeightSyncError,
    bucket_size,
    manifest,
    plan_buckets,
    plan_layout,
)

log = logging.getLogger("reelrl.weight_transfer")

__all__ = [
    "GlooRolloutSender",
    "LoopEngineClient",
    "RayEngineClient",
    "WeightSyncClient",
    "named_parameters",
    "push_weights",
]


class GlooRolloutSender:
    """`WeightSender` to vLLM engines over gloo; rank 0 of the transfer group."""

    def __init__(
        self,
        clients: Sequence[WeightSyncClient],
        address: str,
        port: int,
        timeout_s: float,
        group_name: str = "0",
    ) -> None:
        self.engines = EngineFanout(clients, timeout_s)
        self.info = GlooInitInfo(address, port, 1, 1 + self.engines.workers, timeout_s, group_name)
        self.group: Any = None
        self.store: Any = None
        self.stream = BucketStream(self.engines, gloo_update_info, self._broadcast)

    def listen(self) -> None:
        """Host the rendezvous store, so engines told to join can reach it."""
        if self.store is None:
            i = self.info
            self.store = open_store(i.master_address, i.master_port, 0, i.world_size, i.timeout_s)

    def connect(self) -> None:
        """Form the group: every engine joins (ranks after 0) while this side opens it."""
        self.listen()
        info = asdict(self.info)
        futures = self.engines.submit(
            lambda client, offset: client.init_weight_transfer_engine(
                {**info, "rank_offset": offset}
            ),
            self.engines.rank_offsets(),
        )
        i = self.info
        self.group = open_group(
            i.master_address, i.master_port, 0, i.world_size, i.timeout_s, i.group_name, self.store
        )
        self.engines.wait(futures, "joining the weight-transfer group")

    def start(self, version: int, layout: Layout | None = None) -> None:
        if self.group is None:
            raise WeightSyncError("connect() the gloo sender before sending weights")
        self.stream.start(version, layout)

    def send_bucket(self, bucket: Bucket) -> None:
        self.stream.send_bucket(bucket)

    def finish(self, version: int) -> None:
        self.stream.finish(version)

    def _broadcast(self, bucket: Bucket) -> None:
        try:
            broadcast(self.group, bucket.packed.cpu(), self.info.timeout_s)
        except RuntimeError as exc:
            raise WeightSyncError(
                f"broadcast of a bucket of v{self.stream.version} failed: {exc}"
            ) from exc

    def close(self) -> None:
        self.engines.close()
        self.group = None
        self.store = None


def gloo_update_info(buckets: Sequence[tuple[BucketEntry, ...]], version: int) -> dict[str, Any]:
    """The gloo engine's `update_weights` payload (`GlooUpdateInfo`) for these buckets."""
    specs = [{"manifest": manifest(e), "nbytes": bucket_size(e)} for e in buckets]
    return {"buckets": specs, "version": version}


def push_weights(
    sender: Any,
    named: Sequence[tuple[str, torch.Tensor]],
    version: int,
    bucket_bytes: int,
    packer: BucketPacker | None = None,
) -> dict[str, float]:
    """One version through any `WeightSender`: start with the layout, packed buckets,
    finish. Returns the wall times in seconds: `sent_s` once the last bucket is sent,
    `total_s` once the engines serve the version."""
    started = time.perf_counter()
    packer = packer or BucketPacker()
    packer.start()
    layout = plan_layout(((n, t.shape, t.dtype) for n, t in named), bucket_bytes)
    sender.start(version, layout)
    for chunk in plan_buckets(named, bucket_bytes):
        sender.send_bucket(packer.pack(chunk))
    sent = time.perf_counter() - started
    sender.finish(version)
    return {"sent_s": sent, "total_s": time.perf_counter() - started}


def named_parameters(module: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """A module's parameters as the (name, tensor) pairs a sender takes."""
    return [(n, p.detach()) for n, p in module.named_parameters()]

"""The trainer side of weight transfer: push a version of the policy to every vLLM engine.

A `WeightSyncClient` is the engine's control plane as vLLM defines it (the four methods of
`VLLMWeightSyncClient`); `RayEngineClient` is one over a `RolloutActor` handle. A sender owns the
data plane: `GlooWeightSender` opens the gloo group as rank 0 (hosting its TCPStore) and
broadcasts the packed buckets; `NcclWeightSender` delegates to vLLM's own NCCL trainer engine
on GPU. `push_weights` drives one round trip: start on every engine, every engine's
`update_weights` concurrently with the broadcast (they rendezvous inside the same collective),
then finish with the version. Any failure propagates; engines that did not finish keep their
previous weights.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any, Protocol

import torch

from actors.weight_transfer.buckets import TensorMeta, metas_of, pack, plan_buckets
from actors.weight_transfer.gloo_engine import GlooInitInfo, broadcast, open_group, open_store

log = logging.getLogger("reelrl.weight_transfer")

NamedTensors = Sequence[tuple[str, torch.Tensor]]


class WeightSyncClient(Protocol):
    """An engine's weight-sync control plane (vLLM's `VLLMWeightSyncClient`, synchronous)."""

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None: ...

    def start_weight_update(self) -> None: ...

    def update_weights(self, update_info: dict[str, Any]) -> None: ...

    def finish_weight_update(self, weight_version: str | None = None) -> None: ...


class RayEngineClient:
    """`WeightSyncClient` over a RolloutActor handle (each call waits for the actor)."""

    def __init__(self, actor: Any, workers: int = 1) -> None:
        self.actor = actor
        self.workers = workers
        """vLLM worker processes behind this actor (its tensor-parallel size)."""

    def _call(self, method: str, *args: Any) -> Any:
        import ray

        return ray.get(getattr(self.actor, method).remote(*args))

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        self._call("init_weight_transfer_engine", init_info)

    def start_weight_update(self) -> None:
        self._call("start_weight_update")

    def update_weights(self, update_info: dict[str, Any]) -> None:
        self._call("update_weights", update_info)

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self._call("finish_weight_update", weight_version)


class GlooWeightSender:
    """Rank 0 of a gloo weight-transfer group: packs and broadcasts buckets."""

    def __init__(
        self,
        address: str,
        port: int,
        world_size: int,
        bucket_bytes: int,
        timeout_s: float,
        group_name: str = "0",
    ) -> None:
        self.info = GlooInitInfo(
            master_address=address,
            master_port=port,
            rank_offset=1,
            world_size=world_size,
            bucket_bytes=bucket_bytes,
            timeout_s=timeout_s,
            group_name=group_name,
        )
        self.group: Any = None
        self.store: Any = None

    def init_info(self, rank_offset: int) -> dict[str, Any]:
        """What an engine whose first worker is `rank_offset` passes to its init call."""
        return {**asdict(self.info), "rank_offset": rank_offset}

    def listen(self) -> None:
        """Host the rendezvous store, so engines told to join can reach it."""
        if self.store is None:
            i = self.info
            self.store = open_store(i.master_address, i.master_port, 0, i.world_size, i.timeout_s)

    def connect(self) -> None:
        """Open the group; returns once every worker has joined (or raises at the timeout)."""
        self.listen()
        i = self.info
        self.group = open_group(
            i.master_address, i.master_port, 0, i.world_size, i.timeout_s, i.group_name, self.store
        )

    @staticmethod
    def update_info(named: NamedTensors, version: int) -> dict[str, Any]:
        metas = metas_of(named)
        return {
            "names": [m.name for m in metas],
            "dtype_names": [m.dtype for m in metas],
            "shapes": [list(m.shape) for m in metas],
            "version": version,
        }

    def broadcast(self, named: NamedTensors) -> None:
        """Send every bucket of `named`; each broadcast is bounded by the timeout."""
        if self.group is None:
            raise RuntimeError("connect() the sender before broadcasting")
        metas: list[TensorMeta] = metas_of(named)
        for bucket in plan_buckets(metas, self.info.bucket_bytes):
            buffer = pack([named[i][1] for i in bucket])
            broadcast(self.group, buffer, self.info.timeout_s)


def connect_engines(sender: GlooWeightSender, clients: Sequence[Any]) -> None:
    """Form the group: every engine joins (ranks after the sender's 0) while the sender opens
    it. `clients[i].workers` (default 1) is the engine's worker count."""
    offsets, offset = [], 1
    for client in clients:
        offsets.append(offset)
        offset += getattr(client, "workers", 1)
    if offset != sender.info.world_size:
        raise ValueError(f"group size {sender.info.world_size} != 1 + {offset - 1} workers")
    sender.listen()
    with ThreadPoolExecutor(max_workers=len(clients)) as pool:
        futures = [
            pool.submit(c.init_weight_transfer_engine, sender.init_info(o))
            for c, o in zip(clients, offsets, strict=True)
        ]
        sender.connect()
        for future in futures:
            future.result()


def push_weights(
    sender: GlooWeightSender, clients: Sequence[WeightSyncClient], named: NamedTensors, version: int
) -> float:
    """One update round trip to every engine; returns its wall time in seconds."""
    started = time.perf_counter()
    for client in clients:
        client.start_weight_update()
    info = sender.update_info(named, version)
    pool = ThreadPoolExecutor(max_workers=len(clients))
    try:
        futures = [pool.submit(c.update_weights, info) for c in clients]
        sender.broadcast(named)
        for future in futures:
            future.result()
    finally:
        # A failed broadcast leaves engines inside their own timeout; do not wait on them here.
        pool.shutdown(wait=False)
    for client in clients:
        client.finish_weight_update(str(version))
    return time.perf_counter() - started


def named_parameters(module: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """A module's parameters as the (name, tensor) pairs a sender takes."""
    return [(n, p.detach()) for n, p in module.named_parameters()]

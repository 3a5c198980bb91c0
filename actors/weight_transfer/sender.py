"""The trainer side of weight transfer: push a version of the policy to every vLLM engine.

A `WeightSyncClient` is an engine's control plane as vLLM defines it (the four methods of
`VLLMWeightSyncClient`); `RayEngineClient` is one over a `RolloutActor` handle.
`GlooRolloutSender` implements the learner's `system.weight_sync.WeightSender` over gloo: it
hosts the group's store as rank 0, and for every packed bucket it announces the bucket's
manifest to all engines (`update_weights`, which blocks in the matching receive) while it
broadcasts the bytes. `start` / `finish` map to vLLM's start / finish with the version. Every
wait is bounded by the timeout; a failure raises `WeightSyncError` and the engines keep (or
fall back to) their previous weights. `push_weights` is the whole round trip for callers that
hold named tensors.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict
from typing import Any, Protocol

import torch

from actors.weight_transfer.gloo_engine import GlooInitInfo, broadcast, open_group, open_store
from system.weight_sync import Bucket, WeightSyncError, pack_bucket, plan_buckets

log = logging.getLogger("reelrl.weight_transfer")


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
        self.clients = list(clients)
        workers = sum(getattr(c, "workers", 1) for c in self.clients)
        self.info = GlooInitInfo(address, port, 1, 1 + workers, timeout_s, group_name)
        self.group: Any = None
        self.store: Any = None
        self.version = -1
        self._pool = ThreadPoolExecutor(max_workers=max(len(self.clients), 1))

    def listen(self) -> None:
        """Host the rendezvous store, so engines told to join can reach it."""
        if self.store is None:
            i = self.info
            self.store = open_store(i.master_address, i.master_port, 0, i.world_size, i.timeout_s)

    def connect(self) -> None:
        """Form the group: every engine joins (ranks after 0) while this side opens it."""
        self.listen()
        offsets, offset = [], 1
        for client in self.clients:
            offsets.append(offset)
            offset += getattr(client, "workers", 1)
        futures = [
            self._pool.submit(
                c.init_weight_transfer_engine, {**asdict(self.info), "rank_offset": o}
            )
            for c, o in zip(self.clients, offsets, strict=True)
        ]
        i = self.info
        self.group = open_group(
            i.master_address, i.master_port, 0, i.world_size, i.timeout_s, i.group_name, self.store
        )
        self._wait(futures, "joining the weight-transfer group")

    def start(self, version: int) -> None:
        if self.group is None:
            raise WeightSyncError("connect() the gloo sender before sending weights")
        self.version = version
        self._wait([self._pool.submit(c.start_weight_update) for c in self.clients], "start")

    def send_bucket(self, bucket: Bucket) -> None:
        info = {
            "buckets": [{"manifest": bucket.manifest(), "nbytes": bucket.packed.numel()}],
            "version": self.version,
        }
        futures = [self._pool.submit(c.update_weights, info) for c in self.clients]
        try:
            broadcast(self.group, bucket.packed.cpu(), self.info.timeout_s)
        except RuntimeError as exc:
            raise WeightSyncError(
                f"broadcast of a bucket of v{self.version} failed: {exc}"
            ) from exc
        self._wait(futures, f"receiving a bucket of v{self.version}")

    def finish(self, version: int) -> None:
        calls = [self._pool.submit(c.finish_weight_update, str(version)) for c in self.clients]
        self._wait(calls, f"finishing v{version}")

    def _wait(self, futures: list[Any], what: str) -> None:
        done, pending = wait(futures, timeout=self.info.timeout_s)
        if pending:
            raise WeightSyncError(f"engines did not answer within {self.info.timeout_s}s ({what})")
        for future in done:
            future.result()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.group = None
        self.store = None


def push_weights(
    sender: Any, named: Iterable[tuple[str, torch.Tensor]], version: int, bucket_bytes: int
) -> float:
    """One version through any `WeightSender`: start, packed buckets, finish. Returns the
    wall time in seconds."""
    started = time.perf_counter()
    sender.start(version)
    for chunk in plan_buckets(named, bucket_bytes):
        sender.send_bucket(pack_bucket(chunk))
    sender.finish(version)
    return time.perf_counter() - started


def named_parameters(module: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """A module's parameters as the (name, tensor) pairs a sender takes."""
    return [(n, p.detach()) for n, p in module.named_parameters()]


class LoopEngineClient:
    """`WeightSyncClient` over a `RolloutEngine` whose event loop runs in another thread of
    this process (an in-process driver, the benchmark)."""

    workers = 1

    def __init__(self, engine: Any, loop: Any) -> None:
        self.engine = engine
        self.loop = loop

    def _run(self, coro: Any) -> Any:
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        self._run(self.engine.init_weight_transfer(init_info))

    def start_weight_update(self) -> None:
        self._run(self.engine.start_weight_update())

    def update_weights(self, update_info: dict[str, Any]) -> None:
        self._run(self.engine.update_weights(update_info))

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        version = self.engine.weight_version + 1 if weight_version is None else int(weight_version)
        self._run(self.engine.finish_weight_update(version))

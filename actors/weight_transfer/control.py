"""The control plane of a weight transfer, shared by every transport: the engines' four
calls of vLLM's weight-transfer API, made on all engines at once, and the order in which a
version's buckets are announced and sent.

A `WeightSyncClient` is one engine's control plane as vLLM defines it (`VLLMWeightSyncClient`,
synchronous); `RayEngineClient` is one over a `RolloutActor` handle, `LoopEngineClient` one
over an in-process engine. `EngineFanout` calls all clients together, each wait bounded by
the timeout. `BucketStream` is the `start` / `send_bucket` / `finish` choreography a sender
delegates to: given the version's layout it announces every bucket to the engines in one
`update_weights` (in the background, after every engine acknowledged `start_weight_update`,
and followed by `finish_weight_update`) and then only broadcasts the bytes, checking each bucket against the
layout; without a layout it announces
each bucket while it broadcasts it. The transport supplies the wire format of an
announcement and the broadcast itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, Protocol

from system.transport.weight_sync import Bucket, BucketEntry, Layout, WeightSyncError

log = logging.getLogger("reelrl.weight_sync")


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

    def abort_weight_update(self) -> None:
        self._call("abort_weight_update")


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

    def abort_weight_update(self) -> None:
        self._run(self.engine.abort_weight_update())


class EngineFanout:
    """The engines' control planes called together: every call goes to all clients at once
    (one thread each) and every wait is bounded by the timeout."""

    def __init__(self, clients: Sequence[WeightSyncClient], timeout_s: float) -> None:
        self.clients = list(clients)
        self.timeout_s = timeout_s
        self._pool = ThreadPoolExecutor(max_workers=max(len(self.clients), 1))

    @property
    def workers(self) -> int:
        """vLLM workers behind all clients (the transfer group has one more rank: 0)."""
        return sum(getattr(c, "workers", 1) for c in self.clients)

    def rank_offsets(self) -> list[int]:
        """The group rank of each client's first worker (rank 0 is the sender)."""
        offsets, offset = [], 1
        for client in self.clients:
            offsets.append(offset)
            offset += getattr(client, "workers", 1)
        return offsets

    def submit(self, fn: Callable[..., Any], args: Sequence[Any] | None = None) -> list[Future]:
        """Run `fn(client)` - or `fn(client, arg)`, one arg per client - for every client in
        the background."""
        if args is None:
            return [self._pool.submit(fn, c) for c in self.clients]
        return [self._pool.submit(fn, c, a) for c, a in zip(self.clients, args, strict=True)]

    def call(self, fn: Callable[[WeightSyncClient], Any], what: str) -> None:
        """Run `fn(client)` for every client and wait for all."""
        self.wait(self.submit(fn), what)

    def wait(self, futures: list[Future], what: str) -> None:
        """Wait for `futures`, raising WeightSyncError on a timeout or an engine's error."""
        done, pending = wait(futures, timeout=self.timeout_s)
        if pending:
            raise WeightSyncError(f"engines did not answer within {self.timeout_s}s ({what})")
        for future in done:
            error = future.exception()
            if error is not None:
                raise WeightSyncError(f"an engine failed while {what}: {error}") from error

    def abandon(self, clients: Sequence[WeightSyncClient]) -> None:
        """Close the sessions `clients` opened for an update that will not happen (another
        engine did not start): they resume generation on the weights they hold. Best effort:
        a client without `abort_weight_update`, or one that fails, is left to the next
        `init_weight_transfer_engine`, which abandons any open update."""
        futures = [
            self._pool.submit(c.abort_weight_update)
            for c in clients
            if callable(getattr(c, "abort_weight_update", None))
        ]
        done, pending = wait(futures, timeout=self.timeout_s)
        failed = len(pending) + sum(f.exception() is not None for f in done)
        if failed:
            log.warning("%d engine(s) did not close their abandoned update session", failed)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


Announce = Callable[[Sequence[tuple[BucketEntry, ...]], int], dict[str, Any]]
"""A transport's `update_weights` payload for these buckets of version `version`."""


class BucketStream:
    """The start / send_bucket / finish order of one transport (see the module docstring).
    `broadcast(bucket)` sends the bytes from rank 0 and returns once they are on the wire."""

    def __init__(
        self, engines: EngineFanout, announce: Announce, broadcast: Callable[[Bucket], None]
    ) -> None:
        self.engines = engines
        self.announce = announce
        self.broadcast = broadcast
        self.version = -1
        self._layout: Layout | None = None
        self._announced: list[Future] | None = None
        self._sent = 0

    def start(self, version: int, layout: Layout | None) -> None:
        self.version, self._layout, self._sent = version, layout, 0
        self._announced = None
        # Every engine has paused and opened its session before a byte is broadcast: a
        # group with an engine missing would leave the others blocked in their receive.
        started = self.engines.submit(lambda c: c.start_weight_update())
        try:
            self.engines.wait(started, f"starting v{version}")
        except WeightSyncError:
            self.engines.abandon(
                [
                    client
                    for client, future in zip(self.engines.clients, started, strict=True)
                    if future.done() and future.exception() is None
                ]
            )
            raise
        if layout is None:
            return
        info = self.announce(layout, version)
        self._announced = self.engines.submit(lambda c: _whole_version(c, info, version))

    def send_bucket(self, bucket: Bucket) -> None:
        index, self._sent = self._sent, self._sent + 1
        if self._announced is None:
            info = self.announce([bucket.entries], self.version)
            futures = self.engines.submit(lambda c: c.update_weights(info))
            self._send(bucket, futures)
            self.engines.wait(futures, f"receiving a bucket of v{self.version}")
            return
        assert self._layout is not None
        if index >= len(self._layout) or self._layout[index] != bucket.entries:
            raise WeightSyncError(
                f"bucket {index + 1} of v{self.version} is not the one its layout announced; "
                "the engines keep their previous weights"
            )
        self._send(bucket, self._announced)

    def finish(self, version: int) -> None:
        if self._announced is not None:
            assert self._layout is not None
            if self._sent != len(self._layout):
                raise WeightSyncError(
                    f"v{version}: {self._sent} buckets sent, {len(self._layout)} announced"
                )
            announced, self._announced = self._announced, None
            self.engines.wait(announced, f"receiving and loading v{version}")
            return
        self.engines.call(lambda c: c.finish_weight_update(str(version)), f"finishing v{version}")

    def _send(self, bucket: Bucket, pending: list[Future]) -> None:
        # An engine that already refused will never join the broadcast: fail now, not at
        # the transport's timeout.
        for future in pending:
            if future.done() and future.exception() is not None:
                raise WeightSyncError(f"an engine refused v{self.version}: {future.exception()}")
        self.broadcast(bucket)


def _whole_version(client: WeightSyncClient, info: dict[str, Any], version: int) -> None:
    """An announced version, on one engine whose session is open: its update returns once
    every announced bucket has arrived whole, so it finishes (loads) right away, one round
    trip sooner than when the sender's `finish` asks; a failed update never reaches the
    finish."""
    client.update_weights(info)
    client.finish_weight_update(str(version))

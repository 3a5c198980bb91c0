"""Where a stage's processes run and how they find each other: Ray placement groups, the
rendezvous address of learner rank 0 (torch.distributed's port and the weight-sync group's),
and the lazily built weight sender that lives in rank 0's process.
"""

from __future__ import annotations

from typing import Any


class LazySender:
    """A picklable `WeightSender` that builds the real one (and connects it) on first use, in
    the process that uses it: learner rank 0."""

    def __init__(self, factory: Any) -> None:
        self._factory = factory
        self._sender: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"_factory": self._factory, "_sender": None}

    def _real(self) -> Any:
        if self._sender is None:
            sender = self._factory()
            _as_sync_error("joining the weight-sync group", sender.connect)
            self._sender = sender
        return self._sender

    def start(self, version: int, layout: Any = None) -> None:
        _as_sync_error("start", lambda: self._real().start(version, layout))

    def send_bucket(self, bucket: Any) -> None:
        _as_sync_error("send_bucket", lambda: self._real().send_bucket(bucket))

    def finish(self, version: int) -> None:
        _as_sync_error("finish", lambda: self._real().finish(version))

    def close(self) -> None:
        """Release the real sender's group and threads (when one was built)."""
        if self._sender is not None:
            self._sender.close()
            self._sender = None


def _as_sync_error(what: str, fn: Any) -> Any:
    """`fn()`, with any failure raised as `WeightSyncError`: the learner's export handles
    that one on every rank (an engine that died mid-call raises a Ray error instead)."""
    from system.config.errors import WeightSyncError

    try:
        return fn()
    except WeightSyncError:
        raise
    except Exception as exc:
        raise WeightSyncError(f"weight sync {what} failed: {exc}") from exc


def weight_sender(
    backend: str, handles: list[Any], workers: int, address: str, port: int, timeout_s: float
) -> Any:
    """The sender of `weight_sync.backend` to every engine (built in learner rank 0)."""
    from actors.weight_transfer import build_sender
    from actors.weight_transfer.control import RayEngineClient

    clients = [RayEngineClient(h, workers) for h in handles]
    return build_sender(backend, clients, address, port, timeout_s)


def placement(count: int, cpus: float, gpus: float) -> Any:
    """A ready placement group of `count` equal bundles, packed."""
    import ray
    from ray.util.placement_group import placement_group

    bundle = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
    group = placement_group([dict(bundle) for _ in range(count)], strategy="PACK")
    ray.get(group.ready(), timeout=300)
    return group


def rendezvous(group: Any) -> tuple[str, int, int]:
    """The address of bundle 0's node and two free ports there: torch.distributed's and the
    weight-sync group's (whose store the sender hosts in rank 0's process)."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    strategy = PlacementGroupSchedulingStrategy(group, 0)
    return ray.get(
        ray.remote(node_address).options(num_cpus=0, scheduling_strategy=strategy).remote()
    )


def node_address() -> tuple[str, int, int]:
    """This node's IP and two free TCP ports on it."""
    import socket

    import ray

    with socket.socket() as a, socket.socket() as b:
        a.bind(("", 0))
        b.bind(("", 0))
        ports = a.getsockname()[1], b.getsockname()[1]
    return ray.util.get_node_ip_address(), *ports

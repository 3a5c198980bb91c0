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


LABEL_SHARE = 0.001
"""How much of a role label's custom resource each bundle takes (any amount > 0 pins it)."""


def bundle(cpus: float, gpus: float, label: str | None = None) -> dict[str, float]:
    """One process's reservation: CPUs, GPUs, and a sliver of its role's node label."""
    return {
        "CPU": cpus,
        **({"GPU": gpus} if gpus else {}),
        **({label: LABEL_SHARE} if label else {}),
    }


def engine_bundles(
    count: int, tp: int, cpus: float, gpus: float, label: str | None = None
) -> tuple[list[dict[str, float]], list[list[int]]]:
    """The rollout placement group's bundles and, per engine, the indices of its workers'
    bundles. One bundle per engine, except with tensor parallelism on GPUs: one bundle per
    worker (its GPU), the engine's CPUs in its first (where its Ray actor runs; vLLM's ray
    executor puts worker k in the engine's k-th bundle, `VLLM_RAY_BUNDLE_INDICES`)."""
    if tp == 1 or not gpus:
        return [bundle(cpus, gpus, label) for _ in range(count)], [[i] for i in range(count)]
    bundles, workers = [], []
    for _ in range(count):
        workers.append(list(range(len(bundles), len(bundles) + tp)))
        bundles.append(bundle(cpus, 1, label))
        worker = {"GPU": 1.0, **({label: LABEL_SHARE} if label else {})}
        bundles.extend(dict(worker) for _ in range(tp - 1))
    return bundles, workers


def fits_one_node(bundles: list[dict[str, float]], nodes: list[dict[str, Any]]) -> bool:
    """Whether one alive node's total resources hold all of `bundles` together."""
    need: dict[str, float] = {}
    for b in bundles:
        for key, value in b.items():
            need[key] = need.get(key, 0.0) + value
    return any(
        node.get("Alive") and all(node["Resources"].get(k, 0.0) >= v for k, v in need.items())
        for node in nodes
    )


def placement(
    count: int,
    cpus: float,
    gpus: float,
    label: str | None = None,
    role: str = "learner",
    bundles: list[dict[str, float]] | None = None,
) -> Any:
    """A ready placement group of `count` equal bundles (or of `bundles`): STRICT_PACK when
    one node can hold them all (a learner that straddles nodes runs its ZeRO-3 collectives
    over the network), else PACK. `label` pins the bundles to nodes offering that custom
    resource."""
    import ray
    from ray.util.placement_group import placement_group

    from system.config.errors import ConfigError

    nodes = ray.nodes()
    if label and not any(n.get("Alive") and label in n["Resources"] for n in nodes):
        offered = sorted({k for n in nodes if n.get("Alive") for k in n["Resources"]})
        raise ConfigError(
            f"resources.{role}_node_label={label}: no alive node of the cluster offers the "
            f"resource {label!r} (they offer {', '.join(offered)})"
        )
    if bundles is None:
        bundles = [bundle(cpus, gpus, label) for _ in range(count)]
    strategy = "STRICT_PACK" if fits_one_node(bundles, nodes) else "PACK"
    group = placement_group(bundles, strategy=strategy)
    ray.get(group.ready(), timeout=300)
    return group


def node_of(_instance: Any = None) -> tuple[str, str]:
    """(IP, node id) of the process it runs in (an actor's, via `__ray_call__`)."""
    import ray

    return ray.util.get_node_ip_address(), ray.get_runtime_context().get_node_id()


def describe_placement(roles: dict[str, list[tuple[str, str]]]) -> str:
    """'placement: node 10.0.0.1 [3f2a1b0c node_a]: learner ranks 0, 1; ...' from role ->
    (IP, node id) of each process, with each node's custom resources (its role labels)."""
    import ray

    labels = {
        n["NodeID"]: sorted(
            k for k in n["Resources"]
            if k not in ("CPU", "GPU", "memory", "object_store_memory")
            and not k.startswith(("node:", "accelerator_type:"))
        )
        for n in ray.nodes()
    }  # fmt: skip
    by_node: dict[tuple[str, str], list[str]] = {}
    for role, where in roles.items():
        for index, key in enumerate(where):
            by_node.setdefault(key, []).append(f"{role} {index}")
    parts = [
        f"node {ip} [{' '.join([node[:8], *labels.get(node, [])])}]: {', '.join(names)}"
        for (ip, node), names in by_node.items()
    ]
    return "placement: " + "; ".join(parts)


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
    """This node's IP and two free TCP ports on it (below the ephemeral range, so that no
    outgoing connection takes one before the learner ranks bind it)."""
    import ray

    from system.transport.redis_server import free_port

    first = free_port("")
    return ray.util.get_node_ip_address(), first, free_port("", taken={first})

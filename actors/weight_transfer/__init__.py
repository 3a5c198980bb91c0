"""Weight transfer into vLLM: the gloo engine (CPU), its plugin registration, and the
trainer-side senders.

vLLM's weight-transfer API (init_weight_transfer_engine / start_weight_update / update_weights /
finish_weight_update) picks a worker-side engine by name from `WeightTransferEngineFactory`.
vLLM ships `nccl`; this package adds `gloo`, registered in every vLLM process by `register`,
the `vllm.general_plugins` entry point named in pyproject.toml. Modules: control (the engines'
clients and the announce / send order every sender shares), gloo_engine (worker side:
receives every bucket of an update into staging, loads only a complete update), sender (the
gloo trainer side: opens the group as rank 0), nccl_sender (the GPU trainer side, driving
vLLM's own `nccl` engine). `build_sender` picks the trainer side for a configured backend.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

BACKEND = "gloo"
BACKENDS = ("gloo", "nccl")


def resolve_backend(backend: str, cuda: bool | None = None) -> str:
    """`weight_sync.backend` as a transport: `auto` is nccl where this process sees a CUDA
    device (`cuda`, probed when None), gloo elsewhere."""
    if backend == "auto":
        if cuda is None:
            import torch

            cuda = torch.cuda.is_available()
        return "nccl" if cuda else "gloo"
    if backend not in BACKENDS:
        raise ValueError(f"weight_sync.backend must be auto, gloo or nccl, got {backend!r}")
    return backend


def colocated_backend(backend: str, shares_gpu: bool) -> str:
    """`weight_sync.backend` as the driver passes it on: `auto` becomes gloo when learner and
    engines share one GPU (colocated), since NCCL refuses two ranks on the same device;
    otherwise unchanged (`auto` is resolved where the sender runs, by `resolve_backend`)."""
    return "gloo" if backend == "auto" and shares_gpu else backend


def build_sender(
    backend: str, clients: Sequence[Any], address: str, port: int, timeout_s: float
) -> Any:
    """The trainer-side `WeightSender` for `backend` (auto / gloo / nccl), not yet connected."""
    if resolve_backend(backend) == "nccl":
        from actors.weight_transfer.nccl_sender import NcclRolloutSender

        return NcclRolloutSender(clients, address, port, timeout_s)
    from actors.weight_transfer.sender import GlooRolloutSender

    return GlooRolloutSender(clients, address, port, timeout_s)


def register() -> None:
    """vLLM general plugin: make the `gloo` weight-transfer engine known to this process.

    vLLM may call plugins several times per process, so a second call is a no-op.
    """
    from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory

    from system.config.logs import configure

    configure()
    with contextlib.suppress(ValueError):  # already registered in this process
        WeightTransferEngineFactory.register_engine(
            BACKEND, "actors.weight_transfer.gloo_engine", "GlooWeightTransferEngine"
        )

"""Weight transfer into vLLM: the gloo engine (CPU), its plugin registration, and the
trainer-side senders.

vLLM's weight-transfer API (init_weight_transfer_engine / start_weight_update / update_weights /
finish_weight_update) picks a worker-side engine by name from `WeightTransferEngineFactory`.
vLLM ships `nccl`; this package adds `gloo`, registered in every vLLM process by `register`,
the `vllm.general_plugins` entry point named in pyproject.toml. Modules: buckets (the packed
bucket plan, pack and unpack, shared by both ends), gloo_engine (worker side: receives every
bucket of an update into staging, loads only a complete update), sender (trainer side: opens
the group as rank 0, drives the update round trip through a `WeightSyncClient`).
"""

from __future__ import annotations

import contextlib

BACKEND = "gloo"


def register() -> None:
    """vLLM general plugin: make the `gloo` weight-transfer engine known to this process.

    vLLM may call plugins several times per process, so a second call is a no-op.
    """
    from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory

    with contextlib.suppress(ValueError):  # already registered in this process
        WeightTransferEngineFactory.register_engine(
            BACKEND, "actors.weight_transfer.gloo_engine", "GlooWeightTransferEngine"
        )

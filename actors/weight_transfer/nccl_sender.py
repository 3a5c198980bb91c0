"""The trainer side of the NCCL weight transfer (GPU): the learner's `WeightSender` driving
vLLM's own `nccl` weight-transfer engine in every vLLM worker.

The sender opens the transfer group as rank 0 through vLLM's trainer helper (a TCPStore
rendezvous, then a `PyNcclCommunicator` on this process's CUDA device) while the engines
join it from `init_weight_transfer_engine`. The wire format is vLLM's unpacked one: an
`update_weights` call lists parameter names, dtypes and shapes, and each parameter follows
as one broadcast from rank 0. Our packed buckets therefore travel to the GPU once each and
are broadcast as views, parameter by parameter; given the version's layout the whole version
is announced in one `update_weights` (see `control.BucketStream`). NCCL calls cannot be
interrupted: the learner bounds every sender call with its own deadline
(`system.transport.weight_sync.Deadline`), and a broken group is replaced by reconnecting.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from actors.weight_transfer.control import BucketStream, EngineFanout, WeightSyncClient
from system.transport.weight_sync import Bucket, BucketEntry, Layout, WeightSyncError, unpack_bucket

BACKEND = "nccl"


def nccl_update_info(buckets: Sequence[tuple[BucketEntry, ...]], version: int) -> dict[str, Any]:
    """vLLM's `NCCLWeightTransferUpdateInfo` for every parameter of these buckets, in order
    (the version is not part of vLLM's payload: the engines get it at finish)."""
    entries = [e for bucket in buckets for e in bucket]
    return {
        "names": [e.name for e in entries],
        "dtype_names": [str(e.dtype).removeprefix("torch.") for e in entries],
        "shapes": [list(e.shape) for e in entries],
    }


class NcclRolloutSender:
    """`WeightSender` to vLLM engines over NCCL; rank 0 of the transfer group."""

    def __init__(
        self,
        clients: Sequence[WeightSyncClient],
        address: str,
        port: int,
        timeout_s: float,
        device: torch.device | None = None,
    ) -> None:
        self.engines = EngineFanout(clients, timeout_s)
        self.address, self.port = address, port
        self.world_size = 1 + self.engines.workers
        self.device = device
        self.group: Any = None
        self.stream = BucketStream(self.engines, nccl_update_info, self._broadcast)

    def init_info(self, rank_offset: int) -> dict[str, Any]:
        """What an engine's `init_weight_transfer_engine` gets (vLLM's
        `NCCLWeightTransferInitInfo`; unpacked, one broadcast per parameter)."""
        return {
            "master_address": self.address,
            "master_port": self.port,
            "rank_offset": rank_offset,
            "world_size": self.world_size,
            "packed": False,
        }

    def connect(self) -> None:
        """Form the group: the engines join in the background while this side opens it
        (both block in the same rendezvous)."""
        if not torch.cuda.is_available():
            raise WeightSyncError("the nccl weight-sync backend needs a CUDA device")
        from vllm.distributed.weight_transfer.nccl_common import trainer_init

        if self.device is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(self.device)
        futures = self.engines.submit(
            lambda client, offset: client.init_weight_transfer_engine(self.init_info(offset)),
            self.engines.rank_offsets(),
        )
        rendezvous = {"master_address": self.address, "master_port": self.port}
        self.group = trainer_init({**rendezvous, "world_size": self.world_size})
        self.engines.wait(futures, "joining the weight-transfer group")

    def start(self, version: int, layout: Layout | None = None) -> None:
        if self.group is None:
            raise WeightSyncError("connect() the nccl sender before sending weights")
        self.stream.start(version, layout)

    def send_bucket(self, bucket: Bucket) -> None:
        self.stream.send_bucket(bucket)

    def finish(self, version: int) -> None:
        self.stream.finish(version)

    def _broadcast(self, bucket: Bucket) -> None:
        on_device = Bucket(bucket.entries, bucket.packed.to(self.device, non_blocking=True))
        cuda_stream = torch.cuda.current_stream(self.device)
        for _, tensor in unpack_bucket(on_device):
            self.group.broadcast(tensor, src=0, stream=cuda_stream)
        # The caller may reuse the bucket's buffer as soon as this returns.
        cuda_stream.synchronize()

    def close(self) -> None:
        self.engines.close()
        if self.group is not None:
            self.group.destroy()
            self.group = None

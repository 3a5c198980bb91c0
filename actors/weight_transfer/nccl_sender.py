"""The trainer side of the NCCL weight transfer (GPU): the learner's `WeightSender` driving
vLLM's own `nccl` weight-transfer engine in every vLLM worker.

The sender opens the transfer group as rank 0 through vLLM's trainer helper (a TCPStore
rendezvous, then a `PyNcclCommunicator` on this process's CUDA device) while the engines
join it from `init_weight_transfer_engine`. The wire format is vLLM's packed one: an
`update_weights` call lists parameter names, dtypes and shapes, then the parameters' bytes
follow concatenated in chunks of about `packed_bytes` (a chunk closes after the parameter that
takes it past the size; `VllmChunks` reproduces vLLM's rule, so both sides agree on every
boundary), one broadcast per chunk, received into vLLM's double buffers. The learner's buckets
arrive on this GPU (the export gathers and packs on the device when the sender has one), so a
chunk is one device-side concatenation and one broadcast. Given the version's layout the
whole version is announced in one `update_weights` (see `control.BucketStream`). NCCL calls cannot be
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
PACKED_BYTES = 1 << 30
"""Bytes per packed chunk on the wire (vLLM's default)."""
PACKED_BUFFERS = 2
"""Receive buffers per engine worker (vLLM's default: double buffering)."""


def nccl_update_info(buckets: Sequence[tuple[BucketEntry, ...]], version: int) -> dict[str, Any]:
    """vLLM's `NCCLWeightTransferUpdateInfo` for every parameter of these buckets, in order
    (the version is not part of vLLM's payload: the engines get it at finish)."""
    entries = [e for bucket in buckets for e in bucket]
    return {
        "names": [e.name for e in entries],
        "dtype_names": [str(e.dtype).removeprefix("torch.") for e in entries],
        "shapes": [list(e.shape) for e in entries],
    }


class VllmChunks:
    """vLLM's packed NCCL wire chunks (`vllm.distributed.weight_transfer.packed_tensor.
    pack_tensors`), built incrementally: each tensor's bytes are appended; the chunk closes
    after the tensor that takes it past `buffer_bytes`; what is left closes at the end."""

    def __init__(self, buffer_bytes: int) -> None:
        if buffer_bytes < 1:
            raise ValueError(f"buffer_bytes must be >= 1, got {buffer_bytes}")
        self.buffer_bytes = buffer_bytes
        self._pending: list[torch.Tensor] = []
        self._size = 0

    def add(self, tensor: torch.Tensor) -> torch.Tensor | None:
        """Append `tensor`; a closed chunk (flat uint8) when this one completed it."""
        flat = tensor.contiguous().view(-1).view(torch.uint8)
        self._pending.append(flat)
        self._size += flat.numel()
        return self.close() if self._size > self.buffer_bytes else None

    def close(self) -> torch.Tensor | None:
        """The open chunk (None when empty), and start a new one."""
        if not self._pending:
            return None
        chunk = torch.cat(self._pending)
        self._pending, self._size = [], 0
        return chunk


class NcclRolloutSender:
    """`WeightSender` to vLLM engines over NCCL; rank 0 of the transfer group."""

    def __init__(
        self,
        clients: Sequence[WeightSyncClient],
        address: str,
        port: int,
        timeout_s: float,
        device: torch.device | None = None,
        packed_bytes: int = PACKED_BYTES,
    ) -> None:
        self.engines = EngineFanout(clients, timeout_s)
        self.address, self.port = address, port
        self.world_size = 1 + self.engines.workers
        self.device = device
        """The CUDA device the group runs on; the learner's export gathers and packs there."""
        self.packed_bytes = packed_bytes
        self.chunks = VllmChunks(packed_bytes)
        self.group: Any = None
        self.stream = BucketStream(self.engines, nccl_update_info, self._broadcast)

    def init_info(self, rank_offset: int) -> dict[str, Any]:
        """What an engine's `init_weight_transfer_engine` gets (vLLM's
        `NCCLWeightTransferInitInfo`; packed, `packed_bytes` chunks, double-buffered)."""
        return {
            "master_address": self.address,
            "master_port": self.port,
            "rank_offset": rank_offset,
            "world_size": self.world_size,
            "packed": True,
            "packed_buffer_size_bytes": self.packed_bytes,
            "packed_num_buffers": PACKED_BUFFERS,
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
        self.chunks = VllmChunks(self.packed_bytes)  # nothing of a failed version carries over
        self.stream.start(version, layout)

    def send_bucket(self, bucket: Bucket) -> None:
        self.stream.send_bucket(bucket)

    def finish(self, version: int) -> None:
        last = self.chunks.close()  # the version's last chunk, before the engines finish
        if last is not None:
            self._send(last)
            torch.cuda.current_stream(self.device).synchronize()
        self.stream.finish(version)

    def _broadcast(self, bucket: Bucket) -> None:
        on_device = Bucket(bucket.entries, bucket.packed.to(self.device, non_blocking=True))
        for _, tensor in unpack_bucket(on_device):
            chunk = self.chunks.add(tensor)
            if chunk is not None:
                self._send(chunk)
        # Tensors left in the open chunk are views that keep their buffer alive; a bucket
        # packed on this device is the packer's buffer, which it reuses only in the next
        # version, after `finish` has sent the last chunk.
        torch.cuda.current_stream(self.device).synchronize()

    def _send(self, chunk: torch.Tensor) -> None:
        self.group.broadcast(chunk, src=0, stream=torch.cuda.current_stream(self.device))

    def close(self) -> None:
        self.engines.close()
        if self.group is not None:
            self.group.destroy()
            self.group = None

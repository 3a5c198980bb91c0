"""The trainer side of weight sync without a transport: layouts planned from metadata match
the packed buckets, packers reuse their buffers, the announce / send order of
`BucketStream` (one `update_weights` per version with a layout, one per bucket without,
mismatches and refusals raising `WeightSyncError`), and the backend selection that picks
the gloo or the NCCL sender (whose payloads are checked here; its transport needs a GPU)."""

from __future__ import annotations

import threading

import pytest
import torch

from actors.weight_transfer import build_sender, resolve_backend
from actors.weight_transfer.control import BucketStream, EngineFanout
from actors.weight_transfer.nccl_sender import NcclRolloutSender, nccl_update_info
from actors.weight_transfer.sender import GlooRolloutSender, gloo_update_info
from system.transport.weight_sync import (
    BucketPacker,
    WeightSyncError,
    bucket_size,
    pack_bucket,
    plan_buckets,
    plan_layout,
    unpack_bucket,
)


def _named() -> list[tuple[str, torch.Tensor]]:
    torch.manual_seed(0)
    return [
        ("a.weight", torch.randn(4, 8)),
        ("a.bias", torch.randn(4)),
        ("b.weight", torch.randn(8, 8).to(torch.bfloat16)),
        ("c.weight", torch.randn(16)),
        ("d.scale", torch.tensor(0.5)),
    ]


def _layout(named, bucket_bytes):
    return plan_layout(((n, t.shape, t.dtype) for n, t in named), bucket_bytes)


class FakeClient:
    """A `WeightSyncClient` that records its calls; `refuse_start` makes start fail."""

    def __init__(self, refuse_start: bool = False, refuse_update: bool = False) -> None:
        self.calls: list[tuple[str, object]] = []
        self.refuse_start = refuse_start
        self.refuse_update = refuse_update
        self.lock = threading.Lock()

    def _record(self, name, arg=None):
        with self.lock:
            self.calls.append((name, arg))

    def init_weight_transfer_engine(self, init_info):
        self._record("init", init_info)

    def start_weight_update(self):
        self._record("start")
        if self.refuse_start:
            raise RuntimeError("a weight update is already open on this engine")

    def update_weights(self, update_info):
        self._record("update", update_info)
        if self.refuse_update:
            raise RuntimeError("cannot join this group")

    def finish_weight_update(self, weight_version=None):
        self._record("finish", weight_version)

    def abort_weight_update(self):
        self._record("abort")


def _stream(clients, sent):
    return BucketStream(EngineFanout(clients, timeout_s=5.0), gloo_update_info, sent.append)


def test_layout_matches_the_packed_buckets():
    named = _named()
    for bucket_bytes in (1, 48, 160, 1 << 20):
        buckets = [pack_bucket(chunk) for chunk in plan_buckets(named, bucket_bytes)]
        layout = _layout(named, bucket_bytes)
        assert layout == [b.entries for b in buckets]
        assert [bucket_size(e) for e in layout] == [b.packed.numel() for b in buckets]


def test_packer_reuses_buffers_and_packs_the_new_values():
    named = _named()
    packer = BucketPacker()
    packer.start()
    first = [packer.pack(chunk) for chunk in plan_buckets(named, 160)]
    doubled = [(n, t * 2) for n, t in named]
    packer.start()
    second = [packer.pack(chunk) for chunk in plan_buckets(doubled, 160)]
    assert [b.packed.data_ptr() for b in first] == [b.packed.data_ptr() for b in second]
    back = dict(p for b in second for p in unpack_bucket(b))
    assert all(torch.equal(back[n], t) for n, t in doubled)


def test_stream_with_layout_announces_the_version_once():
    named, clients, sent = _named(), [FakeClient(), FakeClient()], []
    stream = _stream(clients, sent)
    layout = _layout(named, 160)
    stream.start(7, layout)
    buckets = [pack_bucket(chunk) for chunk in plan_buckets(named, 160)]
    for bucket in buckets:
        stream.send_bucket(bucket)
    stream.finish(7)  # waits for the engines' finish, already on its way
    assert sent == buckets
    for client in clients:
        assert [c for c, _ in client.calls] == ["start", "update", "finish"]
        update = client.calls[1][1]
        assert update == gloo_update_info(layout, 7) and len(update["buckets"]) == len(layout)
        assert client.calls[2][1] == "7"


def test_stream_without_layout_announces_every_bucket():
    named, client, sent = _named(), FakeClient(), []
    stream = _stream([client], sent)
    stream.start(1, None)
    buckets = [pack_bucket(chunk) for chunk in plan_buckets(named, 160)]
    for bucket in buckets:
        stream.send_bucket(bucket)
    stream.finish(1)
    names = [c for c, _ in client.calls]
    assert names == ["start", *["update"] * len(buckets), "finish"]
    assert all(len(info["buckets"]) == 1 for c, info in client.calls if c == "update")


def test_stream_rejects_a_bucket_off_the_layout():
    named, sent = _named(), []
    stream = _stream([FakeClient()], sent)
    stream.start(2, _layout(named, 160))
    other = pack_bucket([("z.weight", torch.zeros(3))])
    with pytest.raises(WeightSyncError, match="not the one its layout announced"):
        stream.send_bucket(other)
    assert sent == []


def test_stream_finish_counts_the_buckets():
    named, sent = _named(), []
    stream = _stream([FakeClient()], sent)
    stream.start(3, _layout(named, 160))
    stream.send_bucket(pack_bucket(next(iter(plan_buckets(named, 160)))))
    with pytest.raises(WeightSyncError, match="1 buckets sent"):
        stream.finish(3)


def test_no_byte_is_broadcast_before_every_engine_started():
    """An engine that cannot start the update: `start` fails before any broadcast, and the
    engines that had paused and opened their session close it again (resume, old weights)."""
    named, sent = _named(), []
    ok, refusing = FakeClient(), FakeClient(refuse_start=True)
    stream = _stream([ok, refusing], sent)
    with pytest.raises(WeightSyncError, match="already open"):
        stream.start(4, _layout(named, 160))
    assert sent == []
    assert [c for c, _ in ok.calls] == ["start", "abort"]
    assert [c for c, _ in refusing.calls] == ["start"]


def test_stream_fails_fast_when_an_engine_refuses():
    named, client, sent = _named(), FakeClient(refuse_update=True), []
    stream = _stream([client], sent)
    stream.start(4, _layout(named, 160))
    stream._announced[0].exception(timeout=5)  # the refusal has come back
    with pytest.raises(WeightSyncError, match="refused v4"):
        stream.send_bucket(pack_bucket(next(iter(plan_buckets(named, 160)))))
    assert sent == []


def test_fanout_wait_names_the_engine_error_and_the_timeout():
    fanout = EngineFanout([FakeClient(refuse_start=True)], timeout_s=0.2)
    with pytest.raises(WeightSyncError, match="already open"):
        fanout.call(lambda c: c.start_weight_update(), "starting")
    gate = threading.Event()
    with pytest.raises(WeightSyncError, match=r"did not answer within 0\.2s"):
        fanout.call(lambda c: gate.wait(5), "finishing")
    gate.set()
    fanout.close()


def test_backend_selection():
    assert resolve_backend("auto", cuda=False) == "gloo"
    assert resolve_backend("auto", cuda=True) == "nccl"
    assert resolve_backend("nccl", cuda=False) == "nccl"
    with pytest.raises(ValueError, match=r"weight_sync\.backend"):
        resolve_backend("mpi")
    clients = [FakeClient()]
    assert isinstance(build_sender("gloo", clients, "127.0.0.1", 1, 1.0), GlooRolloutSender)
    assert isinstance(build_sender("nccl", clients, "127.0.0.1", 1, 1.0), NcclRolloutSender)


def test_topology_builds_the_configured_sender():
    from system.orchestration.placement import weight_sender

    gloo = weight_sender("gloo", [object(), object()], 2, "127.0.0.1", 1, 1.0)
    assert isinstance(gloo, GlooRolloutSender) and gloo.info.world_size == 5
    nccl = weight_sender("nccl", [object()], 1, "127.0.0.1", 1, 1.0)
    assert isinstance(nccl, NcclRolloutSender) and nccl.world_size == 2


def test_nccl_payloads_follow_vllm():
    named = _named()
    layout = _layout(named, 160)
    info = nccl_update_info(layout, 5)
    assert info["names"] == [n for n, _ in named]
    assert info["dtype_names"] == ["float32", "float32", "bfloat16", "float32", "float32"]
    assert info["shapes"] == [list(t.shape) for _, t in named]
    from vllm.distributed.weight_transfer.nccl_engine import (
        NCCLWeightTransferInitInfo,
        NCCLWeightTransferUpdateInfo,
    )

    NCCLWeightTransferUpdateInfo(**info)  # vLLM's own validation accepts it
    sender = NcclRolloutSender([FakeClient(), FakeClient()], "10.0.0.1", 29600, 5.0)
    init = sender.init_info(2)
    assert NCCLWeightTransferInitInfo(**init).rank_offset == 2 and init["world_size"] == 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_nccl_sender_needs_cuda():
    sender = NcclRolloutSender([FakeClient()], "127.0.0.1", 1, 1.0)
    with pytest.raises(WeightSyncError, match="needs a CUDA device"):
        sender.connect()
    with pytest.raises(WeightSyncError, match="connect"):
        sender.start(1)


@pytest.mark.filterwarnings("ignore:Tensor .* exceeds buffer_size_bytes")  # vLLM's, expected
@pytest.mark.parametrize("buffer_bytes", [1, 40, 100, 10_000])
def test_packed_chunks_follow_vllms_wire_format(buffer_bytes):
    """The NCCL sender's chunks are byte for byte the ones vLLM's own packer makes from the same
    tensors (its consumer derives the boundaries from the parameter list alone), however the
    tensors arrive in buckets."""
    from vllm.distributed.weight_transfer.packed_tensor import pack_tensors

    from actors.weight_transfer.nccl_sender import VllmChunks

    named = _named()
    items = iter(named)
    theirs = []
    while (chunk := pack_tensors(items, lambda item: item[1], buffer_bytes)) is not None:
        theirs.append(chunk.packed_tensor)
    chunks = VllmChunks(buffer_bytes)
    ours = [c for _, t in named if (c := chunks.add(t)) is not None]
    if (last := chunks.close()) is not None:
        ours.append(last)
    assert len(ours) == len(theirs) > 0
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))


def test_nccl_sender_announces_packed_transfers():
    from vllm.distributed.weight_transfer.nccl_engine import NCCLWeightTransferInitInfo

    sender = NcclRolloutSender([FakeClient()], "10.0.0.1", 29600, 5.0, packed_bytes=1 << 20)
    info = NCCLWeightTransferInitInfo(**sender.init_info(1))
    assert info.packed and info.packed_buffer_size_bytes == 1 << 20
    assert info.packed_num_buffers == 2


def test_auto_backend_on_a_shared_gpu_is_gloo():
    from actors.weight_transfer import colocated_backend

    assert colocated_backend("auto", shares_gpu=True) == "gloo"  # NCCL: two ranks, one GPU
    assert colocated_backend("auto", shares_gpu=False) == "auto"  # resolved by the sender
    assert colocated_backend("nccl", shares_gpu=True) == "nccl"  # explicit: as configured

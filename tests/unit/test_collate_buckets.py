"""Weight buckets: packing parameters into flat buffers and back, bucket planning, deadlines."""

from __future__ import annotations

import threading

import pytest
import torch

from system.transport.weight_sync import (
    ALIGN,
    Deadline,
    WeightSyncError,
    pack_bucket,
    plan_buckets,
    unpack_bucket,
)


def _named() -> list[tuple[str, torch.Tensor]]:
    torch.manual_seed(0)
    return [
        ("a.weight", torch.randn(3, 5)),
        ("a.bias", torch.randn(3)),
        ("b.half", torch.randn(7).to(torch.bfloat16)),
        ("c.ids", torch.arange(5, dtype=torch.int64)),
        ("d.scalar", torch.tensor(2.5)),
    ]


def test_pack_unpack_round_trip_mixed_dtypes():
    named = _named()
    bucket = pack_bucket(named)
    assert bucket.packed.dtype == torch.uint8 and bucket.packed.dim() == 1
    assert all(e.offset % ALIGN == 0 for e in bucket.entries)
    back = unpack_bucket(bucket)
    assert [n for n, _ in back] == [n for n, _ in named]
    for (_, want), (_, got) in zip(named, back, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert torch.equal(got, want)


def test_unpack_copy_is_independent_and_manifest_is_plain():
    bucket = pack_bucket(_named())
    copied = unpack_bucket(bucket, copy=True)
    bucket.packed.zero_()
    assert torch.equal(copied[0][1], _named()[0][1])
    manifest = bucket.manifest()
    assert manifest[2] == {
        "name": "b.half",
        "shape": [7],
        "dtype": "bfloat16",
        "offset": manifest[2]["offset"],
        "nbytes": 14,
    }


def test_pack_non_contiguous():
    t = torch.randn(4, 6).t()  # a transposed view
    ((_, back),) = unpack_bucket(pack_bucket([("t", t)]))
    assert torch.equal(back, t)


def test_plan_buckets_sizes():
    named = [(f"p{i}", torch.zeros(4)) for i in range(5)]  # 16 bytes each
    plans = list(plan_buckets(named, bucket_bytes=40))
    assert [[n for n, _ in p] for p in plans] == [["p0", "p1"], ["p2", "p3"], ["p4"]]
    big = [("small", torch.zeros(1)), ("big", torch.zeros(100)), ("tail", torch.zeros(1))]
    plans = list(plan_buckets(big, bucket_bytes=64))
    assert [[n for n, _ in p] for p in plans] == [["small"], ["big"], ["tail"]]
    with pytest.raises(ValueError):
        list(plan_buckets(named, 0))
    with pytest.raises(ValueError):
        pack_bucket([])


def test_deadline_turns_a_blocked_call_into_an_error():
    release = threading.Event()
    deadline = Deadline(timeout_s=0.2)
    try:
        assert deadline.call("ok", lambda x: x + 1, 1) == 2
        with pytest.raises(WeightSyncError, match="timed out"):
            deadline.call("send_bucket", release.wait)
        with pytest.raises(WeightSyncError, match="timed out"):
            deadline.call("finish", lambda: None)
    finally:
        release.set()
        deadline.close()

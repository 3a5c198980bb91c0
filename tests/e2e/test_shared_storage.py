"""The run's storage checked from every node of a real two-node Ray cluster on this machine
(the session's, shared with the debug run), one of whose nodes does not share the run
directory: its raylet runs in its own mount namespace with an empty tmpfs over the directory,
as a host without the NFS mount would.

`reelrl doctor` names that node and the path it cannot read, and reports this machine and
passes (exit 0) for a directory both nodes see; `reelrl train` on that cluster stops with the same diagnosis before any training
(no stage directory is created), the model and the data files listed too."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def split_cluster(ray_cluster):
    """The session's two-node cluster and the directory its node_b does not share. This module
    is its last user (it runs right after test_debug_run.py): the cluster stops at its end, so
    its idle raylets do not slow the tests that follow."""
    yield ray_cluster, ray_cluster.private
    ray_cluster.stop()


def _reelrl(cluster, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**cluster.env, "RAY_ADDRESS": cluster.address}
    return subprocess.run(
        [str(BIN / "reelrl"), *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip


def test_doctor_names_the_node_that_does_not_share_the_run_directory(split_cluster, tmp_path):
    cluster, private = split_cluster
    out = _reelrl(cluster, "doctor", "--output-dir", str(private / "runs"), cwd=tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "2 alive nodes" in out.stdout
    lines = [x for x in out.stdout.splitlines() if "cannot read" in x]
    assert len(lines) == 1, out.stdout  # node_b only: node_a is the driver's own
    assert "node_b" in lines[0] and str(private / "runs" / ".shared" / "driver") in lines[0]

    # A directory both nodes see: the whole report, and exit 0.
    shared = _reelrl(cluster, "doctor", "--output-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert shared.returncode == 0, shared.stdout + shared.stderr
    lines = shared.stdout.splitlines()
    for component in ("python", "cpu", "torch", "vllm", "deepspeed", "ray", "decord", "gpus"):
        assert any(x.split()[:1] == [component] for x in lines), (component, shared.stdout)
    assert any(x.split()[:1] == ["redis-server"] for x in lines) and "rdma" in shared.stdout
    assert f"{tmp_path / 'runs'}: shared by every node" in shared.stdout
    assert lines[-1] == "ok: everything a run needs is here"


def test_train_stops_before_any_training_naming_node_and_paths(split_cluster, tmp_path):
    cluster, private = split_cluster
    base = private / "train"
    out = _reelrl(
        cluster, "train", str(ROOT / "configs" / "debug_cpu.yaml"), "--base-dir", str(base),
        "data.synthetic.n_train=16", "data.synthetic.n_eval=8", "data.synthetic.n_text=16", cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert "the run's storage is not shared by every node" in out.stderr
    problems = [x for x in out.stderr.splitlines() if x.strip().startswith("node ")]
    assert problems and all("node_b" in x for x in problems), out.stderr
    text = "\n".join(problems)
    assert "tiny-qwen2_5_vl/config.json" in text and "train.jsonl" in text
    (run,) = (base / "runs").glob("debug-cpu-*")
    assert not (run / "stages").exists()  # nothing trained, nothing half-written

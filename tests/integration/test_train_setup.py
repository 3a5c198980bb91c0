"""`reelrl train` refuses what cannot work before any actor starts, within seconds: a bad
config (with the field path), an unreachable Ray or Redis address, a missing model."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from system.transport.redis_server import free_port

pytestmark = pytest.mark.integration

DEBUG = str(Path(__file__).resolve().parents[2] / "configs" / "debug_cpu.yaml")


def _train(tmp_path: Path, *args: str) -> tuple[int, str, float]:
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "system.cli", "train", DEBUG, f"output_dir={tmp_path}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    return proc.returncode, proc.stderr, time.monotonic() - start


def test_bad_config_is_refused_with_field_path_and_nothing_created(tmp_path):
    code, err, _ = _train(tmp_path, "rollout.group_size=1", "learner.optimizer.lr=-1")
    assert code == 2
    assert "rollout.group_size" in err and "learner.optimizer.lr" in err
    assert not list(tmp_path.glob("debug-cpu-*"))  # no run directory, nothing started


def test_unreachable_ray_address_fails_fast(tmp_path):
    port = free_port()
    code, err, elapsed = _train(
        tmp_path, f"resources.ray_address=127.0.0.1:{port}", "model.build_tiny=null",
        "model.path=no/such/model",
    )  # fmt: skip
    assert code == 2, err
    assert f"Ray at 127.0.0.1:{port} is unreachable" in err
    assert elapsed < 60


def test_unreachable_redis_fails_fast(tmp_path):
    port = free_port()
    code, err, elapsed = _train(
        tmp_path, f"queue.url=redis://127.0.0.1:{port}/0", "model.build_tiny=null",
        "model.path=no/such/model",
    )  # fmt: skip
    assert code == 2, err
    assert f"Redis at 127.0.0.1:{port} is unreachable" in err
    assert elapsed < 60


def test_missing_model_without_build_tiny_is_explained(tmp_path):
    code, err, _ = _train(tmp_path, "model.build_tiny=null", "model.path=no/such/model")
    assert code == 2
    # Relative paths are resolved against the directory the command ran in, before Ray starts.
    assert f"model.path={tmp_path}/no/such/model" in err and "build_tiny" in err

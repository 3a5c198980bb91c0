"""`ray start --head` on this machine, then `ray job submit --working-dir . -- reelrl train
configs/debug_cpu.yaml ...`: the packages import from the uploaded working directory and the
run finishes on the cluster."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from system.transport.redis_server import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _wait_for(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"nothing listens on {port} after {timeout_s}s")


@pytest.fixture
def ray_head(tmp_path):
    """A Ray head started with `ray start --head --block` in its own process group, so the
    test stops exactly the processes it started."""
    gcs, dashboard = free_port(), free_port()
    # Token auth, as Ray enables it by default: the head creates ~/.ray/auth_token when it is
    # missing and the job client presents it.
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
    }
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        [
            str(BIN / "ray"), "start", "--head", "--block", f"--port={gcs}",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--num-cpus=8",
            "--include-dashboard=true", "--disable-usage-stats",
        ],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        _wait_for(dashboard, 120)
        yield f"http://127.0.0.1:{dashboard}", env
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        # `ray start` records its address for later `ray.init()` calls; drop the stale record.
        record = Path("/tmp/ray/ray_current_cluster")
        if record.is_file() and record.read_text().strip().endswith(f":{gcs}"):
            record.unlink()


def test_ray_job_submit_runs_reelrl_train(ray_head, tmp_path):
    address, env = ray_head
    out_dir = tmp_path / "runs"
    stages = "[{name: rl, algorithm: grpo, total_steps: 2}]"
    job = subprocess.run(
        [
            str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", ".",
            "--runtime-env", "cluster/runtime_env.yaml", "--",
            "reelrl", "train", "configs/debug_cpu.yaml", f"output_dir={out_dir}",
            f"stages={stages}", "data.synthetic.n_train=16", "data.synthetic.n_eval=4",
            "rollout.sampling.max_new_tokens=16", "rollout.filter_equal_rewards=false",
        ],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500,
    )  # fmt: skip
    log = job.stdout[-4000:] + job.stderr[-2000:]
    assert job.returncode == 0, log
    assert "succeeded" in job.stdout.lower(), log
    (run,) = out_dir.iterdir()
    assert "Ray cluster at" in job.stdout  # joined the submitted-to cluster, not a new one
    accounting = json.loads((run / "stages" / "rl" / "accounting.json").read_text())
    assert accounting["closed"] and accounting["applied"] > 0

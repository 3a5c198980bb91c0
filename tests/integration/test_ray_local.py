"""The local Ray instance runs reelrl code in its workers: the packages at the repository root
import there, and a config loads the same way as in the driver."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "debug_cpu.yaml")


def test_workers_import_reelrl_and_load_configs(ray_local):
    ray = ray_local

    @ray.remote
    def resolved(path: str, override: str) -> tuple[int, str]:
        from system.config import load_config

        config = load_config(path, [override])
        return config.rollout.group_size, config.model.family

    assert ray.get(resolved.remote(CONFIG, "rollout.group_size=6")) == (6, "qwen2_5_vl")


def test_worker_errors_surface_with_the_field_path(ray_local):
    ray = ray_local

    @ray.remote
    def bad(path: str) -> None:
        from system.config import load_config

        load_config(path, ["learner.optimizer.lr=-1"])

    with pytest.raises(Exception, match=r"learner\.optimizer\.lr"):
        ray.get(bad.remote(CONFIG))

"""The driver's step loop when a learner rank dies while checkpointing: the group restarts
from the last committed checkpoint (Topology.checkpoint returns that step) and the loop
redoes the steps after it, then checkpoints the stage's last step."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from system.config import RunConfig, StageConfig
from system.orchestration.driver import _step_loop
from system.orchestration.runtime import RunDirs


class RestartingTopology:
    """Steps one at a time; the checkpoint at `dies_at` loses a rank once, which rolls the
    learners back to the last committed checkpoint."""

    def __init__(self, root: Path, dies_at: int) -> None:
        self.root, self.dies_at = root, dies_at
        self.step_now, self.committed, self.restarts = 0, 0, 0
        self.steps: list[int] = []
        self.checkpoints: list[int] = []

    def resume(self) -> int:
        return self.step_now

    def begin(self, step: int) -> None:
        pass

    def step(self) -> dict[str, float]:
        self.step_now += 1
        self.steps.append(self.step_now)
        return {"step": float(self.step_now)}

    def checkpoint(self) -> int:
        if self.step_now == self.dies_at and not self.restarts:
            self.restarts += 1
            self.step_now = self.committed
            return self.step_now
        path = self.root / f"step_{self.step_now:08d}"
        (path / "hf").mkdir(parents=True)
        (path / "hf" / "config.json").write_text("{}")
        (path / "state.json").write_text(json.dumps({"step": self.step_now}))
        (self.root / "latest").write_text(path.name)
        self.committed = self.step_now
        self.checkpoints.append(self.step_now)
        return self.step_now

    def finish(self) -> None:
        return None


def run_stage(tmp_path: Path, every_steps: int, dies_at: int) -> tuple[RestartingTopology, Any]:
    """Six SFT steps through the driver's loop, checkpointing every `every_steps`."""
    cfg = RunConfig.model_validate({"checkpoint": {"every_steps": every_steps}})
    stage = StageConfig(name="sft", algorithm="sft", total_steps=6)
    dirs = RunDirs(tmp_path)
    topology = RestartingTopology(dirs.checkpoints("sft"), dies_at)
    log = SimpleNamespace(log=lambda *a, **k: None)
    return topology, _step_loop(cfg, stage, topology, log, dirs, SimpleNamespace(requested=False))


def test_a_rank_lost_while_checkpointing_redoes_the_steps_after_the_last_commit(tmp_path):
    topology, result = run_stage(tmp_path, every_steps=2, dies_at=4)
    assert topology.steps == [1, 2, 3, 4, 3, 4, 5, 6]
    assert topology.checkpoints == [2, 4, 6] and topology.restarts == 1
    assert result.step == 6 and not result.stopped
    assert result.export == RunDirs(tmp_path).checkpoints("sft") / "step_00000006" / "hf"


def test_a_rank_lost_at_the_final_checkpoint_redoes_the_last_steps(tmp_path):
    topology, result = run_stage(tmp_path, every_steps=4, dies_at=6)
    assert topology.steps == [1, 2, 3, 4, 5, 6, 5, 6]
    assert topology.checkpoints == [4, 6] and result.step == 6

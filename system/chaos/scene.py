"""What every chaos fault shares: the `Scene` it acts on (the live stage's topology and the run
directory) and the `Fault` base class with its life cycle.

A fault is injected from the driver's thread between two learner steps (`Harness.stepped`),
into the real processes. `ready` says whether the fault can go now, `inject` does it,
`observe` watches the steps after it, `handled_at` is when the system had dealt with it (a
recovery the topology recorded, the restarted Redis, ...) and `check` fills the fault's row
from what was observed and from the `Ledger`. Recovery time is injection until the first
learner step completed after `handled_at`. A fault the system does not get past records why
(`fail`), and its row fails with that reason.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from pathlib import Path
from typing import Any

from system.chaos.ledger import Ledger
from system.chaos.report import Row


@dataclasses.dataclass
class Scene:
    """What a fault acts on: the current stage's topology and the run's directory."""

    topology: Any = None
    run_dir: Path | None = None
    steps: list[tuple[float, dict[str, float]]] = dataclasses.field(default_factory=list)
    began: list[float] = dataclasses.field(default_factory=list)
    """Wall times at which a (resumed) GRPO stage began stepping."""

    @property
    def config(self) -> Any:
        return self.topology.config

    def chaos_dir(self) -> Path:
        path = self.run_dir / "chaos"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def actor_stats(self) -> list[dict[str, float]]:
        from system.orchestration.recovery import actor_stats

        return actor_stats(self.topology.actors)

    def on_learners(self, fn: Any, *args: Any) -> list[Any]:
        """`fn(worker, *args)` inside every learner rank (between steps, when they are idle)."""
        import ray

        return ray.get([w.__ray_call__.remote(fn, *args) for w in self.topology.learners])


class Fault:
    """Base of the faults (see the module docstring)."""

    name = ""
    number = 0
    stops_run = False

    def __init__(self) -> None:
        self.injected_at: list[float] = []
        self.handled: float | None = None
        self.detail = ""
        self.checks: dict[str, Any] = {}
        self.failure: str | None = None
        """Why the system did not get past this fault (a recovery or the run failed)."""

    def fail(self, reason: str) -> None:
        """Record the first reason the system failed while this fault acted."""
        if self.failure is None:
            self.failure = reason

    def ready(self, scene: Scene, metrics: dict[str, float]) -> bool:
        return True

    def inject(self, scene: Scene) -> None:
        raise NotImplementedError

    def observe(self, scene: Scene, metrics: dict[str, float]) -> None:
        """Called after every learner step once injected."""
        if self.handled is None:
            self.handled = self.handled_at(scene)

    def handled_at(self, scene: Scene) -> float | None:
        return self.injected_at[0] if self.injected_at else None

    def check(self, row: Row, ledger: Ledger) -> None:
        """Fill `row.checks` (name -> bool) and `row.detail`."""

    def stopped(self, exc: BaseException, scene: Scene) -> None:
        """The run stopped with `exc` after this fault (only for `stops_run` faults)."""

    def _recovery(self, scene: Scene, kind: str) -> float | None:
        start = self.injected_at[0] if self.injected_at else None
        for event in scene.topology.recoveries if scene.topology else []:
            if start is not None and event["kind"] == kind and event["started"] >= start:
                return event["finished"]
        return None


def pid_of(actor: Any) -> int:
    return os.getpid()


def kill_later(pid: int, sig: int, delay_s: float) -> threading.Timer:
    timer = threading.Timer(delay_s, os.kill, args=(pid, sig))
    timer.daemon = True
    timer.start()
    return timer


def since(fault: Fault) -> str:
    if fault.handled is None or not fault.injected_at:
        return "(never)"
    return f"{fault.handled - fault.injected_at[0]:.1f}s"

"""The chaos harness: run a config's stages through the real driver while injecting faults.

`run_chaos` checks the bad inputs first (fault 9), then calls `system.orchestration.driver.train` with a
`Harness` observing every stage. In the first GRPO stage the harness injects the selected
faults in order, one every `GAP_STEPS` learner steps. A fault that stops the run (an
unwritable checkpoint) is followed by `train(..., resume=run_dir)`, as an operator would;
`nan_stop` ends the run. Afterwards the run's Redis is started again on its AOF and the
`Ledger` gives each fault's row. Chaos defaults (applied before the user's overrides):
checkpoint every 2 steps (a restart redoes at most one step) and a 30 s weight-transfer
timeout.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from system.chaos import FAULTS
from system.chaos.faults import FAULT_CLASSES
from system.chaos.ledger import Ledger, read_ledger
from system.chaos.report import Row, totals
from system.chaos.scene import Fault, Scene
from system.config.errors import first_line

GAP_STEPS = 2
CHAOS_DEFAULTS = ["checkpoint.every_steps=2", "weight_sync.timeout_s=30"]


class ChaosError(ValueError):
    """The chaos run cannot start as asked (unknown fault, a stage too short)."""


def select(names: list[str] | None) -> list[str]:
    """The faults to run, in injection order."""
    if not names:
        return list(FAULTS)
    unknown = sorted(set(names) - set(FAULTS))
    if unknown:
        raise ChaosError(f"--faults: unknown {', '.join(unknown)}; choose from {', '.join(FAULTS)}")
    return [f for f in FAULTS if f in names]


@dataclass
class Harness:
    """Observes the driver's stages (a `StageObserver`) and injects the faults."""

    stage: str
    pending: list[Fault]
    scene: Scene = field(default_factory=Scene)
    injected: list[Fault] = field(default_factory=list)
    since: int = 0

    def began(self, topology: Any, step: int) -> None:
        if topology.stage.name != self.stage:
            return
        self.scene.topology = topology
        self.scene.run_dir = topology.dirs.root
        self.scene.began.append(time.time())

    def stepped(self, topology: Any, metrics: dict[str, float]) -> None:
        if topology.stage.name != self.stage:
            return
        self.scene.steps.append((time.time(), dict(metrics)))
        for fault in self.injected:
            try:
                fault.observe(self.scene, metrics)
            except Exception as exc:  # the fault's row fails with the reason; the run goes on
                fault.fail(f"observing the system after it failed: {first_line(exc)}")
        self.since += 1
        if self.pending and self.since > GAP_STEPS and self.pending[0].ready(self.scene, metrics):
            fault = self.pending.pop(0)
            print(f"chaos: injecting {fault.name} after step {int(metrics['step'])}", flush=True)
            fault.inject(self.scene)
            self.injected.append(fault)
            self.since = 0

    def expecting(self, name: str) -> Fault | None:
        """The last injected fault if it is `name` (a stop it explains)."""
        last = self.injected[-1] if self.injected else None
        return last if last is not None and last.name == name else None


def run_chaos(config: str, overrides: list[str], names: list[str]) -> tuple[list[Row], dict]:
    """Run the faults `names` against `config`; the rows and the run-wide totals."""
    from system.chaos.inputs import check_inputs
    from system.config import load_config

    rows: list[Row] = []
    if "inputs" in names:
        rows.append(_inputs_row(check_inputs(config)))
    in_run = [n for n in names if n != "inputs"]
    if not in_run:
        return rows, totals(rows, Ledger().totals())
    overrides = [*CHAOS_DEFAULTS, *overrides]
    stage = _grpo_stage(load_config(config, overrides), len(in_run))
    harness = Harness(stage, [FAULT_CLASSES[n]() for n in in_run])
    _train_through(config, overrides, harness)
    ledger = _final_ledger(harness, config, overrides)
    rows += _fault_rows(harness, ledger)
    return rows, totals(rows, ledger.totals())


def _grpo_stage(config: Any, faults: int) -> str:
    grpo = [(i, s) for i, s in enumerate(config.stages) if s.algorithm == "grpo"]
    if not grpo:
        raise ChaosError("the config has no GRPO stage to inject faults into")
    index, stage = grpo[0]
    needed = 1 + (GAP_STEPS + 1) * faults + 2
    if stage.total_steps < needed:
        raise ChaosError(
            f"stages.{index}.total_steps={stage.total_steps}: {faults} faults need at least "
            f"{needed} steps of stage {stage.name} (one every {GAP_STEPS + 1}, restarts redo a "
            "step); raise it with a stages=... override or pick fewer with --faults"
        )
    return stage.name


def _train_through(config: str, overrides: list[str], harness: Harness) -> None:
    """`train`, resumed after a fault that stops it; `nan_stop` ends it."""
    from system.config.errors import CheckpointError, NonFiniteError
    from system.orchestration.driver import train
    from system.orchestration.topology import observing

    resume: str | None = None
    with observing(harness):
        while True:
            try:
                train(config, overrides, resume=resume)
                return
            except CheckpointError as exc:
                fault = harness.expecting("checkpoint")
                if fault is None:
                    raise
                fault.stopped(exc, harness.scene)
                print(f"chaos: run stopped as expected ({exc}); resuming", flush=True)
                resume = str(harness.scene.run_dir)
            except NonFiniteError as exc:
                fault = harness.expecting("nan_stop")
                if fault is None:
                    raise
                fault.stopped(exc, harness.scene)
                print(f"chaos: run stopped as expected ({exc})", flush=True)
                return
            except Exception as exc:
                # A fault the system did not survive: its row fails with the reason and the
                # ledger is still read; a failure before any injection is the run's own.
                if not harness.injected:
                    raise
                fault = harness.injected[-1]
                fault.fail(f"the run failed: {type(exc).__name__}: {first_line(exc)}")
                print(f"chaos: the run failed after {fault.name}: {fault.failure}", flush=True)
                return


def _final_ledger(harness: Harness, config: str, overrides: list[str]) -> Ledger:
    """The ledger, read from the run's Redis started again on its AOF."""
    from system.config import load_config
    from system.transport.redis_server import EmbeddedRedis, connect

    run_dir = harness.scene.run_dir
    cfg = load_config(config, overrides)
    checkpoints = run_dir / "stages" / harness.stage / "checkpoints"
    with EmbeddedRedis(run_dir / "redis") as server:
        client = connect(cfg.queue, url=server.url, password=server.password)
        return read_ledger(client, cfg.queue, run_dir.name, checkpoints)


def _fault_rows(harness: Harness, ledger: Ledger) -> list[Row]:
    rows = []
    faults = harness.injected + harness.pending
    starts = [f.injected_at[0] if f.injected_at else float("inf") for f in harness.injected]
    starts.append(float("inf"))
    steps = [t for t, _ in harness.scene.steps]
    for i, fault in enumerate(faults):
        row = Row(fault.name, fault.number, injected=len(fault.injected_at))
        if not fault.injected_at:
            failed = [f.name for f in harness.injected if f.failure]
            row.detail = "not injected: " + (
                f"the run failed after {failed[-1]}" if failed else "the stage ended first"
            )
            rows.append(row)
            continue
        counts = ledger.window(starts[i], starts[i + 1])
        row.published, row.applied = counts["published"], counts["applied"]
        row.dead_lettered, row.in_stream = counts["dead_lettered"], counts["in_stream"]
        row.lost, row.applied_twice = counts["lost"], counts["applied_twice"]
        handled = fault.handled
        after = [t for t in steps if handled is not None and t >= handled]
        if after:
            row.recovery_s = round(after[0] - fault.injected_at[0], 1)
        elif fault.stops_run and handled is not None:
            row.recovery_s = round(handled - fault.injected_at[0], 1)
        try:
            fault.check(row, ledger)
        except Exception as exc:
            fault.fail(f"checking the fault's effects: {first_line(exc)}")
        row.ok = all(row.checks.values()) and row.lost == 0 and row.applied_twice == 0
        if fault.failure is not None:
            row.ok = False
            row.detail = f"FAILED - {fault.failure}" + (f"; {row.detail}" if row.detail else "")
        rows.append(row)
    return rows


def _inputs_row(results: list[Any]) -> Row:
    refused = [r for r in results if r.refused]
    row = Row("inputs", 9, injected=len(results), skipped=len(refused))
    row.recovery_s = round(max(r.seconds for r in results), 2)
    row.checks = {r.case.label: r.refused for r in results}
    row.ok = len(refused) == len(results)
    bad = [r.case.label for r in results if not r.refused]
    row.detail = (
        f"{len(refused)}/{len(results)} bad configs / command lines refused before anything "
        f"started, each naming the field, file or argument (slowest {row.recovery_s}s)"
        + (f"; NOT refused: {', '.join(bad)}" if bad else "")
    )
    return row

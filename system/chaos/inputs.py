"""Fault 9: bad configs and bad command lines of every kind, fed to `reelrl train`.

Each case must be refused before anything starts (no run directory, no Ray, no Redis) with an
error that names what is wrong: the dotted field path for config values, the file for files,
the argument for the command line. `check_inputs` runs them all in this process (the CLI's
own `main`) and returns one `InputCase` result each.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

STAGE = "{name: rl, algorithm: grpo, total_steps: %s}"


@dataclass(frozen=True)
class InputCase:
    """One bad input: the `reelrl train` arguments after the config, and what the error must
    name."""

    label: str
    args: tuple[str, ...]
    names: str
    config: str | None = None
    """Replaces the config path (a missing or broken file)."""


@dataclass
class InputResult:
    case: InputCase
    status: int
    message: str
    seconds: float
    created: bool
    """Whether anything appeared in the output directory."""

    @property
    def refused(self) -> bool:
        return self.status == 2 and self.case.names in self.message and not self.created


def cases(workdir: Path) -> list[InputCase]:
    """The bad inputs (files they need are written under `workdir`)."""
    listing = workdir / "list.yaml"
    listing.write_text("- a\n- b\n")
    broken = workdir / "broken.yaml"
    broken.write_text("learner: {num_ranks: 2\n")
    return [
        InputCase("unknown key", ("learner.groups_per_stp=4",), "learner.groups_per_stp"),
        InputCase("wrong type", ("learner.num_ranks=two",), "learner.num_ranks"),
        InputCase("out of range", ("rollout.group_size=1",), "rollout.group_size"),
        InputCase("negative timeout", ("weight_sync.timeout_s=-1",), "weight_sync.timeout_s"),
        InputCase("unknown choice", ("model.family=llama",), "model.family"),
        InputCase(
            "rule across fields", ("video.min_frames=64", "video.max_frames=8"), "min_frames"
        ),
        InputCase(
            "groups not divisible by ranks",
            ("learner.num_ranks=3", "learner.groups_per_step=4"),
            "learner.groups_per_step",
        ),
        InputCase("stage steps", (f"stages=[{STAGE % 0}]",), "stages.0.total_steps"),
        InputCase(
            "stage algorithm",
            ("stages=[{name: rl, algorithm: ppo, total_steps: 2}]",),
            "stages.0.algorithm",
        ),
        InputCase(
            "stage override",
            ("stages=[{name: rl, algorithm: grpo, total_steps: 2, overrides: {learner.nope: 1}}]",),
            "learner.nope",
        ),
        InputCase("override without =", ("learner.num_ranks",), "learner.num_ranks"),
        InputCase("override not YAML", ("learner.num_ranks=[1",), "learner.num_ranks=[1"),
        InputCase("override into a value", ("learner.num_ranks.x=1",), "learner.num_ranks"),
        InputCase("missing config file", (), "nope.yaml", config=str(workdir / "nope.yaml")),
        InputCase("config not a mapping", (), "top level must be a mapping", str(listing)),
        InputCase("config not YAML", (), "broken.yaml", config=str(broken)),
        InputCase("resume a non-run directory", ("--resume", str(workdir)), "--resume"),
        InputCase("unreachable Redis", ("queue.url=redis://127.0.0.1:9/0",), "127.0.0.1:9"),
        InputCase("unknown flag", ("--bogus", "x"), "--bogus"),
    ]


def check_inputs(config: str) -> list[InputResult]:
    """Run every case through the CLI; results in case order."""
    from system.cli import main

    with tempfile.TemporaryDirectory(prefix="reelrl-inputs-") as tmp:
        work = Path(tmp)
        results = []
        for case in cases(work):
            out = work / "out" / case.label.replace(" ", "_")
            argv = ["train", case.config or config, f"output_dir={out}", *case.args]
            err = io.StringIO()
            started = time.perf_counter()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                try:
                    status = main(argv)
                except SystemExit as exc:  # argparse's usage errors
                    status = int(exc.code or 0)
            seconds = time.perf_counter() - started
            created = out.exists() and any(out.iterdir())
            results.append(InputResult(case, status, err.getvalue().strip(), seconds, created))
    return results

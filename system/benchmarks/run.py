"""`reelrl bench run`: end-to-end GRPO throughput of the CPU debug config, asynchronous
(rollout runs ahead by up to one weight version while the learner steps) against the same
config forced synchronous (max_staleness 0, generation and training alternating, no overlap).

Figures per mode: applied groups/s and trained (completion) tokens/s over the steps after the
first (which carries engine warm-up and the first full weight push), and the async/sync ratio.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "debug_cpu.yaml"

GROUPS_PER_STEP = 4
MODES = {
    "async": ["rollout.max_staleness=1", "resources.colocate=false"],
    "sync": ["rollout.max_staleness=0", "resources.colocate=true"],
}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from system.orchestration.driver import train
    from system.reporting.metrics import read_metrics

    steps = 4 if args.quick else 10
    common = [
        "output_dir=runs/bench",
        f"stages=[{{name: rl, algorithm: grpo, total_steps: {steps}}}]",
        # A random tiny model scores every completion alike; keep its groups so both modes
        # train on the same amount of data.
        "rollout.filter_equal_rewards=false",
        "learner.num_ranks=1",
        f"learner.groups_per_step={GROUPS_PER_STEP}",
        "logging.tensorboard=false",
        "checkpoint.every_steps=1000",
        "eval.enabled=false",
    ]
    figures: dict[str, Any] = {"steps": steps}
    for mode, overrides in MODES.items():
        run_dir = train(str(CONFIG), [*common, *overrides])
        rows = read_metrics(run_dir / "stages" / "rl" / "metrics.jsonl")
        first, *rows = [r for r in rows if "loss" in r]  # training steps only
        wall = rows[-1]["time"] - first["time"]
        figures[mode] = {
            "groups_per_s": len(rows) * GROUPS_PER_STEP / wall,
            "trained_tokens_per_s": sum(r.get("trained_tokens", 0.0) for r in rows) / wall,
            "step_s": wall / len(rows),
            "run_dir": str(run_dir),
        }
    figures["model"] = _model_size(run_dir)
    figures["ratio_groups"] = figures["async"]["groups_per_s"] / figures["sync"]["groups_per_s"]
    figures["ratio_tokens"] = (
        figures["async"]["trained_tokens_per_s"] / figures["sync"]["trained_tokens_per_s"]
    )
    _print(figures)
    return figures


def _model_size(run_dir: Path) -> str:
    """`family (N params)` of the run's model, counted from its safetensors weights."""
    import math

    from safetensors import safe_open

    from system.config import load_config

    config = load_config(run_dir / "config.yaml")
    total = 0
    for shard in Path(config.model.path).glob("*.safetensors"):
        with safe_open(str(shard), "pt") as f:
            total += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118
    return f"{config.model.family} ({total / 1e6:.2f}M params)"


def _print(f: dict[str, Any]) -> None:
    print(f"\nbench run: debug_cpu, {f['steps']} GRPO steps per mode, {f['model']}")
    print(f"{'mode':<8}{'groups/s':>12}{'tokens/s':>12}{'s/step':>10}")
    for mode in MODES:
        m = f[mode]
        print(
            f"{mode:<8}{m['groups_per_s']:>12.3f}{m['trained_tokens_per_s']:>12.1f}"
            f"{m['step_s']:>10.2f}"
        )
    print(f"async/sync: {f['ratio_groups']:.2f}x groups/s, {f['ratio_tokens']:.2f}x tokens/s")

"""`reelrl bench peer`: reelrl's GRPO against Hugging Face TRL's `GRPOTrainer` (the optional
`bench` extra), on this machine, on the same tiny model, text task, prompts and settings.

Both start from one checkpoint: the debug config's tiny Qwen2.5-VL after reelrl's text SFT
stage (a random model scores every completion 0, and GRPO learns nothing from groups that all
score alike). Both then train GRPO for the same number of steps on the synthetic questions
told in words, each prompt rendered once by reelrl's prompt builder (TRL receives it as plain
text), graded by reelrl's reward, with the same G, prompts per step, completion length,
temperature, learning rate, beta, clip range, optimizer and gradient clip
(`PeerSettings`). The runs alternate (reelrl, TRL, then TRL, reelrl, ...) so both see the
same machine. Figures per system: trained completion tokens/s and seconds per step over the
steps after the first, the whole run's wall time (start-up included), and the held-out reward
before and after (greedy, transformers, the same code for both: `PeerTask.evaluate`).

What differs, by design of each system (printed with the figures): reelrl generates with
vLLM in a separate engine, one weight version ahead of the learner (max_staleness 1, the
truncated importance weight corrects for it), its learner is DeepSpeed ZeRO-3 on one rank;
TRL generates with transformers' `generate` in the training process and trains on what it just
sampled (TRL's vLLM mode needs vllm <= 0.31 and CUDA). TRL's group std is the sample std,
reelrl's the population std.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from system.benchmarks.peer_task import PeerSettings, PeerTask, paired, write_text_records

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "debug_cpu.yaml"
WORK = Path("runs/bench-peer")
SYSTEMS = ("reelrl", "trl")
TRAIN_PROMPTS = 400
DIFFERENCES = [
    "generation: reelrl vLLM engine (separate process, runs up to 1 version ahead, truncated IS);"
    " TRL transformers generate in the training process (on-policy)",
    "learner: reelrl DeepSpeed ZeRO-3, 1 rank; TRL one process (accelerate, no DeepSpeed)",
    "group std: reelrl population std; TRL sample std",
]


def run(args: argparse.Namespace) -> dict[str, Any]:
    from system.benchmarks.peer_trl import require_trl

    require_trl()
    quick = bool(args.quick)
    settings = PeerSettings(steps=3 if quick else 20)
    sft_steps, rounds, n_held = (20, 1, 32) if quick else (60, 2, 100)
    work = WORK.absolute()
    # The debug config's text questions (seed 0) to train on; other ones (seed 1) held out.
    text = write_text_records(work / "text.jsonl", TRAIN_PROMPTS, seed=0)
    held = write_text_records(work / "held_out.jsonl", n_held, seed=1)
    data = [f"data.root={work}", "data.synthetic=null", f"data.train=[{{path: {text}}}]",
            "data.eval=[]"]  # fmt: skip
    print(f"bench peer: text SFT start point ({sft_steps} steps)", flush=True)
    start = _sft_start(work / "sft", sft_steps, data)
    config = _config(data)
    task = PeerTask(config, start, text, held)
    before = task.evaluate(start, settings.max_new_tokens)
    print(f"bench peer: held-out reward before {before['reward']:.3f}", flush=True)

    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in SYSTEMS}
    for r in range(rounds):
        order = SYSTEMS if r % 2 == 0 else SYSTEMS[::-1]
        for name in order:
            print(f"bench peer: round {r + 1}/{rounds}, {name} ({settings.steps} steps)")
            out = work / f"{name}-{r}"
            if name == "reelrl":
                figures = _train_reelrl(settings, start, data, out)
            else:
                from system.benchmarks.peer_trl import train_trl

                figures = train_trl(task, settings, start, out)
            after = task.evaluate(Path(figures["model"]), settings.max_new_tokens)
            figures["held_out_after"] = after["reward"]
            figures["held_out_accuracy_after"] = after["accuracy"]
            figures["held_out_gain"] = paired(before["rewards"], after["rewards"])
            runs[name].append(figures)
            print(f"bench peer: {name} {figures['step_s']:.2f} s/step, "
                  f"{figures['trained_tokens_per_s']:.0f} tokens/s", flush=True)  # fmt: skip
    result = summarize(runs, settings, before)
    result.update(sft_steps=sft_steps, rounds=rounds, held_out_prompts=n_held)
    _print(result)
    return result


def summarize(
    runs: dict[str, list[dict[str, Any]]], settings: PeerSettings, before: dict[str, Any]
) -> dict[str, Any]:
    """Per system the mean over rounds of each figure, and reelrl / TRL ratios."""
    keys = ("step_s", "trained_tokens_per_s", "wall_s", "held_out_after",
            "held_out_accuracy_after")  # fmt: skip
    out: dict[str, Any] = {
        "settings": settings.__dict__ | {"betas": list(settings.betas)},
        "held_out_before": before["reward"],
        "held_out_accuracy_before": before["accuracy"],
        "differences": DIFFERENCES,
    }
    for name, rows in runs.items():
        out[name] = {k: sum(r[k] for r in rows) / len(rows) for k in keys}
        out[name]["held_out_gain"] = [r["held_out_gain"] for r in rows]
        out[name]["runs"] = [{k: r[k] for k in (*keys, "steps_timed", "model")} for r in rows]
    out["ratio_tokens_per_s"] = (
        out["reelrl"]["trained_tokens_per_s"] / out["trl"]["trained_tokens_per_s"]
    )
    out["ratio_step_s"] = out["trl"]["step_s"] / out["reelrl"]["step_s"]
    out["ratio_wall"] = out["trl"]["wall_s"] / out["reelrl"]["wall_s"]
    return out


def _config(overrides: list[str]) -> Any:
    from system.config import load_config

    return load_config(str(CONFIG), overrides)


def _common(out: Path) -> list[str]:
    return [
        f"output_dir={out}",
        "logging.tensorboard=false",
        "eval.enabled=false",
        "checkpoint.every_steps=1000",
    ]


def _export(run_dir: Path, stage: str) -> Path:
    return Path(json.loads((run_dir / "stages" / stage / "DONE").read_text())["export"])


def _sft_start(out: Path, steps: int, data: list[str]) -> Path:
    """The shared starting point: the debug config's text SFT stage (its learning rate and
    batch) on the bench's text questions."""
    from system.orchestration.driver import train

    stage = next(s for s in _config([]).stages if s.name == "text_sft")
    overrides = [
        *_common(out),
        *data,
        f"stages=[{{name: text_sft, algorithm: sft, total_steps: {steps}}}]",
        *(f"{k}={json.dumps(v)}" for k, v in stage.overrides.items() if not k.startswith("data.")),
    ]
    return _export(train(str(CONFIG), overrides), "text_sft")


def _train_reelrl(
    settings: PeerSettings, start: Path, data: list[str], out: Path
) -> dict[str, Any]:
    from system.orchestration.driver import train
    from system.reporting.metrics import read_metrics

    overrides = [
        *_common(out),
        *data,
        f"model.path={start}",
        f"stages=[{{name: rl, algorithm: grpo, total_steps: {settings.steps}}}]",
        # TRL trains on every group; so does reelrl here (its default drops groups whose
        # completions all score alike: no gradient, but they would count as trained steps).
        "rollout.filter_equal_rewards=false",
        "rollout.t_grpo.enabled=false",
        "learner.num_ranks=1",
        *settings.reelrl_overrides(),
    ]
    started = time.monotonic()
    run_dir = train(str(CONFIG), overrides)
    wall = time.monotonic() - started
    rows = [r for r in read_metrics(run_dir / "stages" / "rl" / "metrics.jsonl") if "loss" in r]
    first, *rest = rows
    span = rest[-1]["time"] - first["time"]
    return {
        "step_s": span / len(rest),
        "trained_tokens_per_s": sum(r.get("trained_tokens", 0.0) for r in rest) / span,
        "steps_timed": float(len(rest)),
        "wall_s": wall,
        "model": str(_export(run_dir, "rl")),
    }


def _print(f: dict[str, Any]) -> None:
    s = f["settings"]
    print(
        f"\nbench peer: GRPO on the synthetic text task, tiny Qwen2.5-VL after {f['sft_steps']} "
        f"text-SFT steps; {s['steps']} steps x {s['prompts_per_step']} prompts x G={s['group_size']}"
        f", {s['max_new_tokens']} new tokens, T={s['temperature']}, lr {s['lr']}, beta "
        f"{s['beta']}; {f['rounds']} round(s), alternating"
    )
    print(f"{'system':<8}{'tokens/s':>10}{'s/step':>9}{'wall s':>9}{'reward before':>15}"
          f"{'after':>8}{'acc before':>12}{'after':>7}   gain (z) per round")  # fmt: skip
    for name in SYSTEMS:
        m = f[name]
        gains = ", ".join(f"{g['gain']:+.3f} ({g['z']:.1f})" for g in m["held_out_gain"])
        print(
            f"{name:<8}{m['trained_tokens_per_s']:>10.1f}{m['step_s']:>9.2f}{m['wall_s']:>9.1f}"
            f"{f['held_out_before']:>15.3f}{m['held_out_after']:>8.3f}"
            f"{f['held_out_accuracy_before']:>12.3f}{m['held_out_accuracy_after']:>7.3f}   {gains}"
        )
    print("(held-out: total reward, greedy, on the same questions; gain: paired, z in SEs)")
    print(
        f"reelrl / TRL: {f['ratio_tokens_per_s']:.2f}x trained tokens/s, "
        f"{f['ratio_step_s']:.2f}x faster per step, {f['ratio_wall']:.2f}x faster in wall time"
    )
    for line in f["differences"]:
        print(f"  differs: {line}")

"""The run report: `report.md` and PNG plots in the run directory, and the summary table the
driver prints when a run ends (`reelrl report RUN_DIR` rebuilds them).

Reads only what the run wrote: each stage's metrics.jsonl, its eval/step_*.json held-out
evaluations (actors.evaluation rows, system.reporting.evaluation figures) and accounting.json. The RL gain is
measured on the last GRPO stage that has two evaluations: its first (the previous stage's
weights, i.e. after SFT) against its last, on the same held-out questions (`paired_gain`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from system.reporting.evaluation import gating_curve, paired_gain
from system.reporting.metrics import read_metrics

PLOTS = "plots"
MODE_LABELS = {"direct": "direct", "always_think": "always-think", "gated": "gated",
               "answer": "answer"}  # fmt: skip


@dataclass
class StageData:
    """What one stage left in the run directory."""

    name: str
    algorithm: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    accounting: dict[str, Any] | None = None
    done: bool = False

    def series(self, key: str) -> tuple[list[float], list[float]]:
        """(steps, values) of a metric over the stage's logged steps."""
        points = [(r["step"], r[key]) for r in self.rows if isinstance(r.get(key), int | float)]
        return [p[0] for p in points], [p[1] for p in points]


def load_stages(run_dir: Path) -> list[StageData]:
    """Every configured stage of the run, with whatever it has written so far."""
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    out = []
    for stage in config["stages"]:
        where = run_dir / "stages" / stage["name"]
        data = StageData(stage["name"], stage["algorithm"], done=(where / "DONE").is_file())
        if (where / "metrics.jsonl").is_file():
            data.rows = read_metrics(where / "metrics.jsonl")
        data.evals = [json.loads(p.read_text()) for p in sorted(where.glob("eval/step_*.json"))]
        if (where / "accounting.json").is_file():
            data.accounting = json.loads((where / "accounting.json").read_text())
        out.append(data)
    return out


def rl_comparison(stages: list[StageData]) -> dict[str, Any] | None:
    """Before (first evaluation) vs after (last) of the last GRPO stage evaluated twice: both
    reports and, per mode, the paired gain in mean task reward."""
    for stage in reversed(stages):
        if stage.algorithm == "grpo" and len(stage.evals) >= 2:
            before, after = stage.evals[0], stage.evals[-1]
            gains = {
                mode: paired_gain(before["rows"], after["rows"], mode) for mode in after["modes"]
            }
            return {"stage": stage.name, "before": before, "after": after, "gains": gains}
    return None


# --------------------------------------------------------------------------- text


def summary_table(comparison: dict[str, Any]) -> str:
    """Held-out figures before and after RL per mode, and the gain in standard errors."""
    head = (
        f"{'mode':<13}{'reward before':>16}{'reward after':>16}{'gain (z)':>16}"
        f"{'acc before':>12}{'acc after':>11}{'think':>8}{'resp len':>10}"
    )
    lines = [head]
    for mode, after in comparison["after"]["modes"].items():
        before = comparison["before"]["modes"][mode]
        gain = comparison["gains"][mode]
        lines.append(
            f"{MODE_LABELS[mode]:<13}"
            f"{before['reward']:>9.3f} ±{before['reward_se']:.3f}"
            f"{after['reward']:>9.3f} ±{after['reward_se']:.3f}"
            f"{gain['gain']:>+9.3f} ({gain['z']:>4.1f})"
            f"{before['accuracy']:>12.3f}{after['accuracy']:>11.3f}"
            f"{after['think_ratio']:>8.2f}{after['mean_response_length']:>10.1f}"
        )
    n = comparison["after"]["modes"][next(iter(comparison["after"]["modes"]))]["n"]
    lines.append(
        f"{n} held-out prompts; reward = task reward of the final answer in [0, 1]; before = "
        f"step {comparison['before']['step']}, after = step {comparison['after']['step']} of "
        f"stage {comparison['stage']}; z = gain / SE of the paired differences"
    )
    return "\n".join(lines)


def gating_note(comparison: dict[str, Any]) -> str:
    """What the gated mode did on the RL checkpoint, in words."""
    modes = comparison["after"]["modes"]
    if "answer" in modes:
        return ""  # a run in another format than answer_twice: no gating to describe
    if not {"direct", "always_think", "gated"} <= set(modes):
        return "Gating: evaluate all three modes to compare them."
    d, t, g = modes["direct"], modes["always_think"], modes["gated"]
    tau = comparison["after"]["tau"]
    return (
        f"Gating (tau = {tau}): the gated mode thought on {g['think_ratio']:.0%} of the "
        f"questions (direct never thinks, always-think always does). It answered the rest "
        f"from the first box, where the policy's confidence (exp of the mean log-prob of the "
        f"box's tokens) reached tau. Its reward {g['reward']:.3f} sits against direct "
        f"{d['reward']:.3f} and always-think {t['reward']:.3f}, at a mean response length of "
        f"{g['mean_response_length']:.1f} tokens (direct {d['mean_response_length']:.1f}, "
        f"always-think {t['mean_response_length']:.1f}). Per task it thought on "
        + ", ".join(f"{task} {m['think_ratio']:.0%}" for task, m in g["tasks"].items())
        + ": thinking is spent on the questions whose first answer the policy is unsure of. "
        + (_split_sentence(split) if (split := gating_split(comparison["after"]["rows"])) else "")
    ).rstrip()


def gating_split(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]] | None:
    """The gated mode's questions split by what it did, each part scored in every mode:
    `early` (answered from the first box) and `thought`; per part n, the mean reward of each
    mode on those questions and the median first-answer confidence (when the rows carry it).
    None unless the rows hold all three modes."""
    modes = ("direct", "always_think", "gated")
    if not rows or not all(set(modes) <= set(r["modes"]) for r in rows):
        return None
    out = {}
    for part, thought in (("early", False), ("thought", True)):
        chosen = [r["modes"] for r in rows if r["modes"]["gated"]["thought"] is thought]
        entry: dict[str, float] = {"n": float(len(chosen))}
        for mode in modes:
            if chosen:
                entry[mode] = sum(m[mode]["reward"] for m in chosen) / len(chosen)
        confidences = sorted(c for m in chosen if (c := m["gated"].get("confidence")) is not None)
        if confidences:
            entry["confidence"] = confidences[len(confidences) // 2]
        out[part] = entry
    return out


def _split_sentence(split: dict[str, dict[str, float]]) -> str:
    early, thought = split["early"], split["thought"]
    parts = []
    if early["n"]:
        parts.append(
            f"On the {early['n']:.0f} questions it answered early the first answer scored "
            f"{early['gated']:.3f}; thinking on them (always-think) would have scored "
            f"{early['always_think']:.3f}"
            + (f" (median confidence {early['confidence']:.3f})" if "confidence" in early else "")
        )
    if thought["n"]:
        parts.append(
            f"on the {thought['n']:.0f} it thought about, the answer after thinking scored "
            f"{thought['gated']:.3f} where the first answer alone (direct) scored "
            f"{thought['direct']:.3f}"
            + (
                f" (median confidence {thought['confidence']:.3f})"
                if "confidence" in thought
                else ""
            )
        )
    text = "; ".join(parts)
    return text[:1].upper() + text[1:] + "." if text else ""


def _curve_table(comparison: dict[str, Any]) -> list[str]:
    """The gated mode at other thresholds (system.reporting.evaluation.gating_curve), before and after."""
    before = gating_curve(comparison["before"]["rows"])
    after = gating_curve(comparison["after"]["rows"])
    if not after or not before:
        return []
    lines = [
        "Gating at other thresholds (read off the direct and always-think passes of the same "
        "questions):",
        "",
        "| tau | think ratio SFT | reward SFT | think ratio RL | reward RL | tokens RL |",
        "|---" * 6 + "|",
    ]
    for b, a in zip(before, after, strict=True):
        lines.append(
            f"| {a['tau']} | {b['think_ratio']:.2f} | {b['reward']:.3f} | "
            f"{a['think_ratio']:.2f} | {a['reward']:.3f} | {a['tokens']:.1f} |"
        )
    return [*lines, ""]


def _stage_table(stages: list[StageData]) -> list[str]:
    lines = [
        "| stage | algorithm | steps | last loss | last reward | wall time |",
        "|---" * 6 + "|",
    ]
    for s in stages:
        last = s.rows[-1] if s.rows else {}
        train = [r for r in s.rows if "loss" in r]
        loss = f"{train[-1]['loss']:.3f}" if train else "-"
        reward = f"{train[-1]['reward_mean']:.3f}" if train and "reward_mean" in train[-1] else "-"
        wall = f"{last.get('time', 0):.0f} s" if last else "-"
        steps = int(train[-1]["step"]) if train else 0
        lines.append(f"| {s.name} | {s.algorithm} | {steps} | {loss} | {reward} | {wall} |")
    return lines


def _task_table(comparison: dict[str, Any], mode: str) -> list[str]:
    before = comparison["before"]["modes"][mode]["tasks"]
    after = comparison["after"]["modes"][mode]["tasks"]
    lines = [
        "| task | n | reward before | reward after | accuracy before | accuracy after | "
        "think ratio after |",
        "|---" * 7 + "|",
    ]
    for task, a in after.items():
        b = before.get(task, {})
        lines.append(
            f"| {task} | {a['n']} | {b.get('reward', 0):.3f} | {a['reward']:.3f} ± "
            f"{a['reward_se']:.3f} | {b.get('accuracy', 0):.3f} | {a['accuracy']:.3f} | "
            f"{a['think_ratio']:.2f} |"
        )
    return lines


def markdown(run_dir: Path, stages: list[StageData], plots: list[str]) -> str:
    comparison = rl_comparison(stages)
    out = [f"# Run report: {run_dir.name}", "", "## Stages", "", *_stage_table(stages), ""]
    if comparison is not None:
        out += ["## Held-out evaluation: after SFT vs after RL", "", "```"]
        out += [summary_table(comparison), "```", "", gating_note(comparison), ""]
        if comparison["after"].get("judge"):
            out += [f"Free-form answers judged by {comparison['after']['judge']}.", ""]
        out += _curve_table(comparison)
        for mode in comparison["after"]["modes"]:
            out += [f"### Per task, {MODE_LABELS[mode]}", "", *_task_table(comparison, mode), ""]
    for s in stages:
        if s.accounting:
            figures = ", ".join(f"{k} {v}" for k, v in s.accounting.items())
            out += [f"Groups of stage {s.name}: {figures}.", ""]
    out += ["## Plots", ""] + [f"![{Path(p).stem}]({PLOTS}/{Path(p).name})" for p in plots]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- plots


def rolling_mean(values: list[float], window: int) -> list[float]:
    """Mean of each value and the up to `window - 1` before it."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


BAND_SE = 2.0
"""Half-width of the reward band, in standard errors of the window's mean."""


def rolling_band(values: list[float], window: int) -> tuple[list[float], list[float]]:
    """Mean of each value and the up to `window - 1` before it, and the half-width of its
    band: BAND_SE standard errors of that mean (sample standard deviation / sqrt(n); 0 for
    a window of one value)."""
    means, halves = [], []
    for i in range(len(values)):
        part = values[max(0, i - window + 1) : i + 1]
        n = len(part)
        mean = sum(part) / n
        var = sum((v - mean) ** 2 for v in part) / (n - 1) if n > 1 else 0.0
        means.append(mean)
        halves.append(BAND_SE * (var / n) ** 0.5)
    return means, halves


def task_accuracy(evals: list[dict[str, Any]], mode: str) -> dict[str, list[tuple[int, float]]]:
    """Per task, (step, held-out accuracy) of `mode` at every evaluation that has it."""
    out: dict[str, list[tuple[int, float]]] = {}
    for e in evals:
        tasks = e.get("modes", {}).get(mode, {}).get("tasks", {})
        for task, figures in tasks.items():
            out.setdefault(task, []).append((int(e["step"]), float(figures["accuracy"])))
    return out


def plot_all(stages: list[StageData], out: Path) -> list[str]:
    """Write the PNG plots under `out`; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=90)
        plt.close(fig)
        written.append(name)

    sft = [s for s in stages if s.algorithm == "sft" and s.rows]
    if sft:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for s in sft:
            ax.plot(*s.series("loss"), label=s.name)
        ax.set(xlabel="step", ylabel="SFT loss (NLL)", yscale="log", title="SFT stages")
        ax.legend()
        save(fig, "sft_loss.png")
    for s in (s for s in stages if s.algorithm == "grpo" and s.rows):
        _plot_rl_stage(s, save, plt)
    comparison = rl_comparison(stages)
    if comparison is not None:
        _plot_comparison(comparison, save, plt)
    return written


def _plot_rl_stage(s: StageData, save: Any, plt: Any) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps, totals = s.series("reward_mean")
    ax.plot(steps, totals, label="total", color="0.8")
    means, halves = rolling_band(totals, 10)
    ax.fill_between(steps, [m - h for m, h in zip(means, halves, strict=True)],
                    [m + h for m, h in zip(means, halves, strict=True)], alpha=0.25,
                    color="C0", label=f"± {BAND_SE:g} SE of the mean")  # fmt: skip
    ax.plot(steps, means, label="total, mean of 10 steps", linewidth=2, color="C0")
    for key in sorted({k for r in s.rows for k in r if k.startswith("reward/")}):
        ax.plot(s.series(key)[0], rolling_mean(s.series(key)[1], 10),
                label=key.removeprefix("reward/"), alpha=0.8)  # fmt: skip
    ax.set(xlabel="step", ylabel="mean reward of trained groups", title=f"{s.name}: reward")
    ax.legend(fontsize=8)
    save(fig, f"{s.name}_reward.png")
    panels = [
        ("response_length", "response length (tokens)"),
        ("weight_sync_s", "weight sync (s)"),
        ("lag", "queue lag (groups)"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, (key, label) in zip(axes, panels, strict=True):
        ax.plot(*s.series(key))
        ax.set(xlabel="step", ylabel=label)
    fig.suptitle(s.name)
    save(fig, f"{s.name}_system.png")
    if len(s.evals) >= 2:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
        for mode in s.evals[-1]["modes"]:
            steps = [e["step"] for e in s.evals]
            axes[0].plot(steps, [e["modes"][mode]["reward"] for e in s.evals], "o-", label=mode)
            axes[1].plot(steps, [e["modes"][mode]["think_ratio"] for e in s.evals], "o-")
        axes[0].set(xlabel="step", ylabel="held-out task reward")
        axes[1].set(xlabel="step", ylabel="think ratio", ylim=(-0.05, 1.05))
        axes[0].legend(fontsize=8)
        save(fig, f"{s.name}_eval.png")
        modes = list(s.evals[-1]["modes"])
        fig, axes = plt.subplots(1, len(modes), figsize=(4.2 * len(modes), 3.2), squeeze=False)
        for ax, mode in zip(axes[0], modes, strict=True):
            for task, points in sorted(task_accuracy(s.evals, mode).items()):
                ax.plot(*zip(*points, strict=True), "o-", label=task)
            ax.set(xlabel="step", ylabel="held-out accuracy", ylim=(-0.05, 1.05),
                   title=MODE_LABELS.get(mode, mode))  # fmt: skip
        axes[0][0].legend(fontsize=8)
        fig.suptitle(f"{s.name}: accuracy per task at every evaluation")
        save(fig, f"{s.name}_tasks.png")


def _plot_comparison(comparison: dict[str, Any], save: Any, plt: Any) -> None:
    modes = list(comparison["after"]["modes"])
    fig, axes = plt.subplots(1, len(modes), figsize=(4.5 * len(modes), 3.4), squeeze=False)
    for ax, mode in zip(axes[0], modes, strict=True):
        after = comparison["after"]["modes"][mode]["tasks"]
        before = comparison["before"]["modes"][mode]["tasks"]
        tasks = list(after)
        xs = range(len(tasks))
        ax.bar([x - 0.2 for x in xs], [before[t]["accuracy"] for t in tasks], 0.4, label="SFT")
        ax.bar([x + 0.2 for x in xs], [after[t]["accuracy"] for t in tasks], 0.4, label="RL")
        ax.set_xticks(list(xs), tasks, fontsize=8)
        ax.set(title=MODE_LABELS[mode], ylabel="accuracy", ylim=(0, 1))
        ax.legend(fontsize=8)
    save(fig, "accuracy_per_task.png")


# --------------------------------------------------------------------------- entry point


def write_report(run_dir: str | Path) -> str | None:
    """Write report.md and plots/ under `run_dir`; returns the summary table (None when no
    GRPO stage was evaluated before and after)."""
    run_dir = Path(run_dir)
    stages = load_stages(run_dir)
    plots = plot_all(stages, run_dir / PLOTS)
    (run_dir / "report.md").write_text(markdown(run_dir, stages, plots))
    comparison = rl_comparison(stages)
    return None if comparison is None else summary_table(comparison)

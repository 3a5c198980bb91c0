"""Held-out evaluation statistics over graded rows (`actors.evaluation`): per-mode figures -
mean task reward and accuracy with standard errors, temporal-grounding mIoU and R@0.3/0.5/0.7,
think ratio, mean response length (generated tokens), per-task reward / accuracy
(`summarize`); `paired_gain` compares two checkpoints on the same questions; `gating_curve`
reads the gated mode at other thresholds off the direct and always-think passes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from actors.gating import should_exit

RECALL_AT = (0.3, 0.5, 0.7)


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and its standard error (sample standard deviation / sqrt(n); 0 for n < 2)."""
    n = len(values)
    if n == 0:
        return 0.0, 0.0
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def mode_metrics(rows: Sequence[dict[str, Any]], mode: str) -> dict[str, Any]:
    """Figures of one mode over graded rows: mean task reward with its standard error,
    accuracy (with SE), temporal-grounding mIoU and R@k, think ratio, mean response length,
    and reward / accuracy per task."""
    cells = [r["modes"][mode] for r in rows]
    n = max(len(cells), 1)
    reward, reward_se = mean_se([c["reward"] for c in cells])
    accuracy, accuracy_se = mean_se([float(c["correct"]) for c in cells])
    grounding = [
        r["modes"][mode]["reward"] for r in rows if r["problem_type"] == "temporal_grounding"
    ]
    out: dict[str, Any] = {
        "n": len(cells),
        "reward": reward,
        "reward_se": reward_se,
        "accuracy": accuracy,
        "accuracy_se": accuracy_se,
        "think_ratio": sum(c["thought"] for c in cells) / n,
        "mean_response_length": sum(c["tokens"] for c in cells) / n,
        "grounding_n": len(grounding),
        "miou": sum(grounding) / len(grounding) if grounding else 0.0,
    }
    for k in RECALL_AT:
        hits = sum(iou >= k for iou in grounding)
        out[f"r@{k}"] = hits / len(grounding) if grounding else 0.0
    tasks: dict[str, dict[str, float]] = {}
    for task in sorted({r["task"] for r in rows}):
        mine = [r["modes"][mode] for r in rows if r["task"] == task]
        task_reward_mean, task_reward_se = mean_se([c["reward"] for c in mine])
        tasks[task] = {
            "n": len(mine),
            "reward": task_reward_mean,
            "reward_se": task_reward_se,
            "accuracy": sum(c["correct"] for c in mine) / len(mine),
            "think_ratio": sum(c["thought"] for c in mine) / len(mine),
        }
    out["tasks"] = tasks
    return out


def summarize(rows: Sequence[dict[str, Any]], modes: Sequence[str]) -> dict[str, Any]:
    """Per-mode figures (`mode_metrics`) of graded rows."""
    return {mode: mode_metrics(rows, mode) for mode in modes}


def paired_gain(
    before: Sequence[dict[str, Any]], after: Sequence[dict[str, Any]], mode: str
) -> dict[str, float]:
    """Mean task-reward gain from `before` to `after` on the questions both graded, with the
    standard error of the paired differences and the gain in standard errors (z)."""
    old = {r["id"]: r["modes"][mode]["reward"] for r in before}
    diffs = [r["modes"][mode]["reward"] - old[r["id"]] for r in after if r["id"] in old]
    gain, se = mean_se(diffs)
    z = gain / se if se > 0 else (math.inf if gain > 0 else 0.0)
    return {"n": len(diffs), "gain": gain, "se": se, "z": z}


GATING_TAUS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97, 0.99)


def gating_curve(
    rows: Sequence[dict[str, Any]], taus: Sequence[float] = GATING_TAUS
) -> list[dict[str, float]]:
    """The gated mode at other thresholds, from rows graded in direct and always-think mode
    (greedy passes are shared, so gated at tau answers exactly like direct where the first
    answer exits and like always-think elsewhere): per tau the think ratio, mean task reward
    and mean generated tokens. Rows without the first pass's record are left out; none left:
    an empty curve."""
    usable = [r for r in rows if "first" in r and {"direct", "always_think"} <= set(r["modes"])]
    if not usable:
        return []
    curve = []
    for tau in taus:
        picked = [
            r["modes"][
                "direct"
                if should_exit(r["first"]["answer"], r["first"]["confidence"], tau)
                else "always_think"
            ]
            for r in usable
        ]
        n = len(picked)
        curve.append(
            {
                "tau": tau,
                "think_ratio": sum(m["thought"] for m in picked) / n,
                "reward": sum(m["reward"] for m in picked) / n,
                "tokens": sum(m["tokens"] for m in picked) / n,
            }
        )
    return curve


def print_table(report: dict[str, Any]) -> None:
    """The per-mode figures as a fixed-width table."""
    cols = ["n", "accuracy", "miou", "r@0.3", "r@0.5", "r@0.7", "think_ratio"]
    cols.append("mean_response_length")
    head = "".join(f"{c:>12}" for c in cols[:-1])
    print(f"{'mode':<14}{'reward':>16}" + head + f"{'resp_len':>12}")
    for mode, m in report["modes"].items():
        cells = "".join(f"{m[c]:>12d}" if c == "n" else f"{m[c]:>12.3f}" for c in cols if c in m)
        reward = f"{m['reward']:.3f}±{m['reward_se']:.3f}"
        print(f"{mode:<14}{reward:>16}{cells}")
    print(f"tau={report['tau']}  skipped videos={report['skipped_videos']}")
    print(f"\n{'per task (category)':<24}{'mode':<14}{'n':>5}{'reward':>16}{'accuracy':>10}")
    for mode, m in report["modes"].items():
        for task, t in m.get("tasks", {}).items():
            reward = f"{t['reward']:.3f}±{t['reward_se']:.3f}"
            print(f"{task:<24}{mode:<14}{t['n']:>5}{reward:>16}{t['accuracy']:>10.3f}")

"""Run metrics: one JSON line per logged step (metrics.jsonl), TensorBoard event files, and a
console progress line with rates and ETA.

The JSONL file is the record the run report and the tests read; it is appended and flushed one
whole line at a time, so a crash leaves at most a torn last line, which `read_metrics` drops.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from system.config import LoggingConfig

# Metrics shown on the console progress line, in this order, when present.
CONSOLE_KEYS = ("reward_mean", "loss", "kl", "accuracy", "groups_per_s", "tokens_per_s", "lag")


class MetricsLogger:
    """Writes metrics for one run directory; `log` is cheap enough to call every step."""

    def __init__(
        self,
        run_dir: str | Path,
        config: LoggingConfig,
        total_steps: int,
        stream: TextIO | None = None,
        clock: Any = time.monotonic,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.total_steps = total_steps
        self._stream = stream or sys.stdout
        self._clock = clock
        self._start = clock()
        self._last_console = -math.inf
        self._first_step: int | None = None
        self._jsonl = (self.run_dir / "metrics.jsonl").open("a") if config.jsonl else None
        self._tb = None
        if config.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))

    def log(self, step: int, metrics: dict[str, float], stage: str | None = None) -> None:
        """Record `metrics` at `step`; prints a progress line at most every console_every_s."""
        now = self._clock()
        if self._first_step is None:
            self._first_step = step
        self.record(step, metrics, stage)
        if now - self._last_console >= self.config.console_every_s or step >= self.total_steps:
            self._last_console = now
            done = step - self._first_step
            line = format_progress(step, self.total_steps, now - self._start, done, metrics)
            print(f"[{stage}] {line}" if stage else line, file=self._stream, flush=True)

    def record(self, step: int, metrics: dict[str, float], stage: str | None = None) -> None:
        """Write `metrics` at `step` to the JSONL file and TensorBoard (no console line)."""
        row = {"step": step, "time": round(self._clock() - self._start, 3), "stage": stage}
        row.update(metrics)
        if self._jsonl is not None:
            self._jsonl.write(json.dumps(row, default=float) + "\n")
            self._jsonl.flush()
        if self._tb is not None:
            prefix = f"{stage}/" if stage else ""
            for key, value in metrics.items():
                if isinstance(value, int | float) and math.isfinite(value):
                    self._tb.add_scalar(prefix + key, value, step)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def format_progress(
    step: int, total: int, elapsed_s: float, steps_done: int, metrics: dict[str, float]
) -> str:
    """`step 12/200 (6%) | 0.50 steps/s | ETA 6m16s | reward_mean 0.412 | ...`."""
    rate = steps_done / elapsed_s if elapsed_s > 0 else 0.0
    parts = [f"step {step}/{total} ({100 * step / max(total, 1):.0f}%)", f"{rate:.2f} steps/s"]
    if rate > 0 and step < total:
        parts.append(f"ETA {format_duration((total - step) / rate)}")
    for key in CONSOLE_KEYS:
        value = metrics.get(key)
        if isinstance(value, int | float):
            parts.append(f"{key} {value:.3g}")
    return " | ".join(parts)


def format_duration(seconds: float) -> str:
    """Seconds as `1h02m`, `6m16s` or `42s`."""
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl; a torn last line (a crash mid-write) is dropped, a malformed
    line elsewhere is an error naming the line."""
    lines = Path(path).read_text().splitlines()
    rows = []
    for number, line in enumerate(lines, start=1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if number == len(lines):
                break
            raise ValueError(f"{path}:{number}: not a JSON line: {exc}") from None
    return rows

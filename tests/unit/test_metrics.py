"""Metrics: JSONL rows, TensorBoard events, console progress with rate and ETA."""

from __future__ import annotations

import io

import pytest

from system.config import LoggingConfig
from system.reporting.metrics import MetricsLogger, format_duration, format_progress, read_metrics


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_format_progress_rate_and_eta():
    line = format_progress(50, 200, 100.0, 50, {"reward_mean": 0.41234, "other": 3})
    assert line == "step 50/200 (25%) | 0.50 steps/s | ETA 5m00s | reward_mean 0.412"
    assert "ETA" not in format_progress(200, 200, 10.0, 200, {})


@pytest.mark.parametrize(
    ("seconds", "text"), [(42.4, "42s"), (376, "6m16s"), (3720, "1h02m"), (0, "0s")]
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_logger_writes_jsonl_and_tensorboard_and_throttles_console(tmp_path):
    clock, out = FakeClock(), io.StringIO()
    config = LoggingConfig(console_every_s=10.0)
    logger = MetricsLogger(tmp_path, config, total_steps=3, stream=out, clock=clock)
    logger.log(1, {"loss": 1.5, "reward_mean": 0.25}, stage="rl")
    clock.now += 2
    logger.log(2, {"loss": 1.0, "reward_mean": 0.5}, stage="rl")  # within 10 s: no line
    clock.now += 2
    logger.log(3, {"loss": 0.5, "reward_mean": float("nan")}, stage="rl")  # last step: printed
    logger.close()
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[1] == {"step": 2, "time": 2.0, "stage": "rl", "loss": 1.0, "reward_mean": 0.5}
    printed = out.getvalue().splitlines()
    assert len(printed) == 2 and printed[0].startswith("[rl] step 1/3")
    assert printed[1].startswith("[rl] step 3/3 (100%) | 0.50 steps/s")
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_read_metrics_drops_a_torn_last_line_only(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
    assert read_metrics(path) == [{"step": 1}, {"step": 2}]
    path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2"):
        read_metrics(path)

"""`reelrl eval` end to end on the tiny model and real synthetic clips: one engine, all three
modes, figures consistent with what each mode means (direct never thinks, always-think always
does, gated in between; response lengths ordered the same way)."""

from __future__ import annotations

import json

import pytest

from tests.fixtures.cli import run_cli

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SMALL = [
    "rollout.max_model_len=2048",
    "video.num_frames=4",
    "video.max_frames=4",
    "video.max_video_tokens=64",
    "video.min_pixels=3136",
    "video.max_pixels=12544",
]


def test_eval_three_modes(tiny_qwen2_5_vl, synthetic_dataset, capsys):
    args = ["eval", *SMALL, "--model", str(tiny_qwen2_5_vl)]
    args += ["--data", str(synthetic_dataset / "eval.jsonl"), "--root", str(synthetic_dataset)]
    args += ["--modes", "direct", "always_think", "gated", "--tau", "0.5", "--max-prompts", "4"]
    done = run_cli(capsys, *args, "--first-tokens", "12", "--think-tokens", "12", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    report = json.loads(lines[-1])
    assert "always_think" in done.stdout and "resp_len" in done.stdout  # the table
    modes = report["modes"]
    assert set(modes) == {"direct", "always_think", "gated"}
    assert all(m["n"] == 4 for m in modes.values())
    assert modes["direct"]["think_ratio"] == 0.0
    assert modes["always_think"]["think_ratio"] == 1.0
    assert 0.0 <= modes["gated"]["think_ratio"] <= 1.0
    lengths = [modes[m]["mean_response_length"] for m in ("direct", "gated", "always_think")]
    assert lengths[0] <= lengths[1] <= lengths[2] and lengths[0] > 0
    for m in modes.values():
        assert 0.0 <= m["accuracy"] <= 1.0
        assert 0.0 <= m["miou"] <= 1.0 and m["r@0.7"] <= m["r@0.5"] <= m["r@0.3"]
    assert report["tau"] == 0.5 and report["skipped_videos"] == 0

"""Frame sampling, grid sizing and the visual-token prediction of system.data.video, checked against
hand-computed values and against the installed transformers video processors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from system.config import VideoConfig
from system.data.video import (
    fit_frame_size,
    grid_factor,
    plan_frames,
    processor_kwargs,
    sample_count,
    sample_indices,
    span_frames,
    visual_tokens,
)


@pytest.fixture(scope="module")
def processors():
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    return {"qwen2_5_vl": Qwen2VLVideoProcessor(), "qwen3_vl": Qwen3VLVideoProcessor()}


def test_grid_factor_per_family():
    assert grid_factor("qwen2_5_vl") == 28
    assert grid_factor("qwen3_vl") == 32


def test_visual_tokens_hand_computed():
    # 16 frames -> 8 temporal patches; 448x252 -> 16x9 tokens per patch.
    assert visual_tokens(16, 252, 448, "qwen2_5_vl") == 8 * 9 * 16
    # An odd frame count is padded to the next temporal patch.
    assert visual_tokens(3, 64, 96, "qwen3_vl") == 2 * 2 * 3
    with pytest.raises(ValueError, match="28-px grid"):
        visual_tokens(4, 100, 112, "qwen2_5_vl")


def test_fit_frame_size_matches_smart_resize_inside_bounds():
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import smart_resize

    for h, w in [(720, 1280), (144, 176), (272, 640), (1080, 1920), (50, 400)]:
        ours = fit_frame_size(h, w, 28, 128 * 28 * 28, 768 * 28 * 28)
        assert ours == smart_resize(h, w, 28, 128 * 28 * 28, 768 * 28 * 28)


def test_fit_frame_size_max_is_hard_when_bounds_conflict():
    # min asks for ~16 tokens, max allows 4: max wins.
    h, w = fit_frame_size(100, 300, 28, 16 * 784, 4 * 784)
    assert (h % 28, w % 28) == (0, 0)
    assert h * w <= 4 * 784


def test_span_frames_half_open_in_seconds():
    # 10 fps, span [1.0, 2.0) -> frames 10..19.
    assert span_frames(100, 10.0, 1.0, 2.0) == (10, 19)
    assert span_frames(100, 10.0, None, None) == (0, 99)
    # A span past the end is clipped to the last frame.
    assert span_frames(100, 10.0, 9.5, 20.0) == (95, 99)
    # Shorter than one frame: a single frame.
    assert span_frames(100, 10.0, 1.01, 1.02) == (11, 11)


def test_sample_count_fps_fixed_and_bounds():
    config = VideoConfig(fps=2.0, min_frames=4, max_frames=256)
    assert sample_count(300, 30.0, config) == 20  # 10 s at 2 fps
    assert sample_count(30, 30.0, config) == 4  # 1 s -> min_frames
    assert sample_count(30 * 3600, 30.0, config) == 256  # 1 h -> max_frames
    assert sample_count(300, 30.0, VideoConfig(num_frames=7)) == 6  # even: temporal patches
    assert sample_count(1, 30.0, config) == 2  # one-frame video -> one temporal patch


def test_sample_indices_cover_both_ends():
    assert sample_indices(10, 19, 4) == [10, 13, 16, 19]
    assert sample_indices(5, 5, 2) == [5, 5]


def test_plan_respects_default_budget_for_long_hd_video():
    # 10 min of 1080p at 30 fps with VideoAuto-R1's defaults: <= 4096 tokens, <= 256 frames.
    config = VideoConfig(min_pixels=16 * 28 * 28)
    plan = plan_frames(30 * 600, 30.0, 1080, 1920, config, "qwen2_5_vl")
    assert len(plan.frame_indices) == 256
    assert plan.tokens <= 4096
    assert plan.tokens == visual_tokens(256, plan.height, plan.width, "qwen2_5_vl")


def test_plan_lowers_frames_rather_than_min_pixels():
    # min 128 tokens per patch and a 4096 budget leave room for 32 patches = 64 frames.
    plan = plan_frames(30 * 600, 30.0, 720, 1280, VideoConfig(), "qwen2_5_vl")
    assert len(plan.frame_indices) == 64
    # Rounding to the grid at 16:9 lands just under the 128-token cap (224x420 = 120 tokens),
    # far above what 256 frames would have left (16 tokens each).
    assert plan.height * plan.width >= 0.9 * 128 * 28 * 28
    assert plan.tokens <= 4096


def _frames_for(plan) -> np.ndarray:
    rng = np.random.default_rng(0)
    shape = (len(plan.frame_indices), plan.height, plan.width, 3)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def _run_processor(processor, frames: np.ndarray, plan, fps: float):
    meta = {"fps": fps, "frames_indices": list(plan.frame_indices), "total_num_frames": 10**6}
    return processor(
        videos=[frames], video_metadata=[meta], return_tensors="pt", **processor_kwargs()
    )


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    family=st.sampled_from(["qwen2_5_vl", "qwen3_vl"]),
    seconds=st.floats(0.5, 120.0),
    fps=st.sampled_from([8.0, 24.0, 25.0, 29.97, 30.0]),
    height=st.integers(16, 720),
    aspect=st.floats(0.3, 3.0),
    budget=st.integers(16, 768),
    max_frames=st.integers(2, 24),
    sample_fps=st.floats(0.25, 4.0),
)
def test_processor_token_count_equals_prediction_and_fits_budget(
    processors, family, seconds, fps, height, aspect, budget, max_frames, sample_fps
):
    f = grid_factor(family)
    width = max(16, round(height * aspect))
    config = VideoConfig(
        fps=sample_fps,
        min_frames=2,
        max_frames=max_frames,
        max_video_tokens=budget,
        min_pixels=4 * f * f,
        max_pixels=256 * f * f,
    )
    total = max(1, math.floor(seconds * fps))
    plan = plan_frames(total, fps, height, width, config, family)
    out = _run_processor(processors[family], _frames_for(plan), plan, fps)
    actual = int(out["video_grid_thw"].prod()) // 4  # 2x2 spatial merge
    assert actual == plan.tokens
    assert actual <= budget
    assert len(plan.frame_indices) <= max_frames


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_processor_does_not_resample_our_frames(processors, family):
    # Patchify only permutes pixels: the sorted normalized values must be the same multiset,
    # which fails if the processor resized or dropped/duplicated frames.
    plan = plan_frames(240, 24.0, 200, 300, VideoConfig(num_frames=4), family)
    frames = _frames_for(plan)
    processor = processors[family]
    out = _run_processor(processor, frames, plan, 24.0)
    mean = np.array(processor.image_mean).reshape(1, 1, 1, 3)
    std = np.array(processor.image_std).reshape(1, 1, 1, 3)
    expected = ((frames / 255.0 - mean) / std).astype(np.float32)
    got = out["pixel_values_videos"].numpy()
    assert got.size == expected.size
    np.testing.assert_allclose(np.sort(got.ravel()), np.sort(expected.ravel()), atol=1e-4)

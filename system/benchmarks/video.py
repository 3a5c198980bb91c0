"""`reelrl bench video`: time to turn one video into budgeted model input.

Measures system.data.video.decode_video (decord: seek to the keyframe before each wanted frame,
convert only wanted frames, scale inside the decoder) for 16, 64 and 256 frames of a 60 s
720p clip, against a PyAV baseline that decodes every frame and keeps the wanted ones (each
converted and scaled to the same size). The clip is generated once and cached under
runs/bench/: H.264, 30 fps, a keyframe every 2 s (typical of streamed video), moving content.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

FRAME_COUNTS = (16, 64, 256)
FAMILY = "qwen2_5_vl"


def make_clip(path: Path, seconds: int, fps: int = 30, height: int = 720, width: int = 1280):
    """A clip that decodes like camera footage: a slow pan over a fixed textured scene, a
    moving object, and light per-frame sensor noise (so frames carry real residuals)."""
    from system.data.synthetic import write_mp4

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    # A smooth colour field plus fine texture, twice as wide as the frame so the pan has room.
    yy, xx = np.mgrid[0:height, 0 : 2 * width]
    scene = np.stack(
        [128 + 100 * np.sin(xx / 90.0), 128 + 100 * np.cos(yy / 70.0), (xx + yy) % 256], -1
    )
    scene = np.clip(scene + rng.normal(0, 6, scene.shape), 0, 255).astype(np.uint8)
    tmp = path.with_suffix(".tmp.mp4")

    def frames():
        for i in range(seconds * fps):
            x0 = (2 * i) % width
            frame = scene[:, x0 : x0 + width].copy()
            x = (7 * i) % (width - 120)
            frame[height // 3 : height // 3 + 120, x : x + 120] = (240, 240, 240)
            noise = rng.integers(-6, 7, size=(height, width, 1), dtype=np.int16)
            yield np.clip(frame + noise, 0, 255).astype(np.uint8)

    # x264's veryfast preset keeps CABAC and B-frames, so decoding costs what real video does.
    write_mp4(tmp, frames(), fps, gop=2 * fps, x264={"preset": "veryfast"})
    tmp.replace(path)


def baseline_pyav(path: str, indices: list[int], height: int, width: int) -> np.ndarray:
    """Decode every frame in order; convert and scale the wanted ones."""
    import av

    wanted = set(indices)
    picked: dict[int, np.ndarray] = {}
    with av.open(path) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in wanted:
                scaled = frame.reformat(width=width, height=height, format="rgb24")
                picked[i] = scaled.to_ndarray()
            if i >= indices[-1]:
                break
    return np.stack([picked[i] for i in indices])


def _median_ms(fn, repeats: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeats):
        began = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times), result


def run(args: argparse.Namespace) -> dict:
    from system.config import VideoConfig
    from system.data.video import decode_video

    seconds = 20 if args.quick else 60
    repeats = 1 if args.quick else 3
    clip = Path("runs/bench") / f"clip_720p_{seconds}s_v4.mp4"
    if not clip.is_file():
        print(f"generating {clip} ...")
        make_clip(clip, seconds)
    figures: dict[str, Any] = {"clip": str(clip), "seconds": seconds, "repeats": repeats}
    header = f"{'frames':>6} {'size':>9} {'tokens':>6} {'ours ms':>8} {'fps':>7} {'pyav ms':>8} {'fps':>7} {'ratio':>6}"
    print(f"decode 720p {seconds}s clip -> {FAMILY} budget (<= 4096 tokens)")
    print(header)
    for n in FRAME_COUNTS:
        # VideoAuto-R1's budget: 256 frames fit 4096 tokens only with small frames allowed.
        config = VideoConfig(num_frames=n, min_pixels=16 * 28 * 28)
        ours_ms, video = _median_ms(lambda c=config: decode_video(str(clip), c, FAMILY), repeats)
        ref = video.ref
        base_ms, base = _median_ms(
            lambda r=ref: baseline_pyav(str(clip), list(r.frame_indices), r.height, r.width),
            repeats,
        )
        assert base.shape == video.frames.shape
        ratio = base_ms / ours_ms
        size = f"{ref.width}x{ref.height}"
        print(
            f"{n:>6} {size:>9} {video.tokens:>6} {ours_ms:>8.1f} {n / ours_ms * 1000:>7.1f} "
            f"{base_ms:>8.1f} {n / base_ms * 1000:>7.1f} {ratio:>5.1f}x"
        )
        figures[f"frames_{n}"] = {
            "ms_per_sample": round(ours_ms, 2),
            "frames_per_s": round(n / ours_ms * 1000, 1),
            "baseline_ms": round(base_ms, 2),
            "baseline_frames_per_s": round(n / base_ms * 1000, 1),
            "speedup": round(ratio, 2),
            "tokens": video.tokens,
            "size": [ref.height, ref.width],
        }
    return figures

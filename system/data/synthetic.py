"""The synthetic video tasks: real mp4 clips whose answers are known because we drew them.

Owns the generator behind `reelrl synth` and the embedded default's data. Four tasks, each
needing the video (one frame is not enough) and each with a small fixed answer space so a tiny
model trained briefly can learn them:

- direction (multiple_choice): a square slides left, right, up or down; options A-D.
- appear (temporal_grounding): a square is visible from t1 to t2 (whole seconds).
- count (numerical): the square changes colour k times (1-3); every colour lasts >= 1.5 s so
  each shows up even in 8 frames sampled from the clip. Each colour lasting 1.5-2 s, the clip's
  length grows with k, and a model reads the length from its time positions: the debug
  recipe's model answers from it, not from the colours (docs/perception.md measures both).
- phases (subaction): the square makes 2-3 moves in sequence, each >= 2 s, named by direction.

Clips are 112x112 at 8 fps, 3-8 s, H.264 (mpeg4 where libx264 is missing). Generation is
deterministic per seed (each record draws from its own seeded stream) and splits are disjoint
streams, written as JSONL in the format of system.data.records.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from system.config import SyntheticSpec

SIZE = 112
FPS = 8
SQUARE = 20
BACKGROUND = (24, 24, 24)
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (235, 215, 40),
}
DIRECTIONS: dict[str, tuple[int, int]] = {
    "left": (-1, 0),
    "right": (1, 0),
    "up": (0, -1),
    "down": (0, 1),
}
DIRECTION_OPTIONS = ["A. left", "B. right", "C. up", "D. down"]
START_SIDE = {"left": "right", "right": "left", "up": "bottom", "down": "top"}
TASKS = ("direction", "appear", "count", "phases")
SPLITS = {"train": 0, "eval": 1, "text": 2}
VERSION = 2
"""Bumped whenever generated records change; a manifest of another version is regenerated."""
MANIFEST = "manifest.json"


# --------------------------------------------------------------------------- drawing


def phase_answer(phases: list[dict[str, Any]]) -> str:
    """Phases as the sub-action answer format asks: `name [start, end]`, in order."""
    return ", ".join(f"{p['name']} [{p['start']:.1f}, {p['end']:.1f}]" for p in phases)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _canvas(n: int) -> np.ndarray:
    frames = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8)
    frames[:] = BACKGROUND
    return frames


def _draw(
    frame: np.ndarray, x: float, y: float, color: tuple[int, int, int], side: int = SQUARE
) -> None:
    x0, y0 = round(x), round(y)
    frame[y0 : y0 + side, x0 : x0 + side] = color


def render_direction(
    rng: np.random.Generator, side: int = SQUARE
) -> tuple[np.ndarray, dict[str, Any]]:
    """The direction task: a square of `side` px crosses the frame from one edge to the other."""
    name = str(rng.choice(list(DIRECTIONS)))
    n = FPS * int(rng.integers(3, 5))
    dx, dy = DIRECTIONS[name]
    lo, hi = 6, SIZE - side - 6
    cross = float(rng.uniform(lo, hi))
    frames = _canvas(n)
    color = PALETTE[str(rng.choice(list(PALETTE)))]
    for i in range(n):
        along = lo + (hi - lo) * i / (n - 1)
        along = along if dx + dy > 0 else hi + lo - along
        x, y = (along, cross) if dx else (cross, along)
        _draw(frames[i], x, y, color, side)
    answer = "ABCD"[list(DIRECTIONS).index(name)]
    return frames, {
        "problem_type": "multiple_choice",
        "question": "In which direction does the square move?",
        "options": DIRECTION_OPTIONS,
        "answer": answer,
        "meta": {"reasoning": f"The square starts at the {START_SIDE[name]} and moves {name}."},
    }


def _task_appear(rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    duration = int(rng.integers(5, 9))
    t1 = int(rng.integers(1, duration - 2))
    t2 = int(rng.integers(t1 + 2, duration))
    frames = _canvas(FPS * duration)
    x, y = rng.uniform(6, SIZE - SQUARE - 6, size=2)
    color = PALETTE[str(rng.choice(list(PALETTE)))]
    for i in range(t1 * FPS, t2 * FPS):
        _draw(frames[i], x, y, color)
    return frames, {
        "problem_type": "temporal_grounding",
        "question": "When is the square visible? Give the start and end time in seconds.",
        "answer": f"[{t1:.1f}, {t2:.1f}]",
        "spans": [[float(t1), float(t2)]],
        "meta": {"reasoning": f"The square appears at {t1} s and is gone at {t2} s."},
    }


def render_count(
    rng: np.random.Generator, side: int = SQUARE, fixed_length: bool = False
) -> tuple[np.ndarray, dict[str, Any]]:
    """The count task. By default each colour lasts 1.5-2 s, so the clip is longer the more
    changes it holds; with `fixed_length` the clip lasts 6-8 s whatever the count (each colour
    still >= 1.5 s), so only the colours tell the answer."""
    changes = int(rng.integers(1, 4))
    if fixed_length:
        total = FPS * int(rng.integers(6, 9))
        spare = rng.multinomial(total - 12 * (changes + 1), np.ones(changes + 1) / (changes + 1))
        segment = 12 + spare
    else:
        segment = 12 + rng.integers(0, 5, size=changes + 1)  # 1.5-2 s per colour at 8 fps
    names = [str(rng.choice(list(PALETTE)))]
    for _ in range(changes):
        names.append(str(rng.choice([c for c in PALETTE if c != names[-1]])))
    frames = _canvas(int(segment.sum()))
    x, y = rng.uniform(6, SIZE - side - 6, size=2)
    i = 0
    for name, length in zip(names, segment, strict=True):
        for _ in range(int(length)):
            _draw(frames[i], x, y, PALETTE[name], side)
            i += 1
    return frames, {
        "problem_type": "numerical",
        "question": "How many times does the square change colour?",
        "answer": str(changes),
        "meta": {"reasoning": f"The colours are {', '.join(names)}: {_plural(changes, 'change')}."},
    }


def _task_phases(rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    lo, hi = 6.0, float(SIZE - SQUARE - 6)
    x, y = (lo + hi) / 2, (lo + hi) / 2
    step = 1.6  # px per frame: a 2-s move covers 26 px, well inside the canvas
    moves: list[tuple[str, int]] = []
    for _ in range(int(rng.integers(2, 4))):
        length = FPS * int(rng.integers(2, 3)) + int(rng.integers(0, 4))
        fits = [
            d
            for d, (dx, dy) in DIRECTIONS.items()
            if lo <= x + dx * step * length <= hi
            and lo <= y + dy * step * length <= hi
            and (not moves or d != moves[-1][0])
        ]
        name = str(rng.choice(fits))
        moves.append((name, length))
        x += DIRECTIONS[name][0] * step * length
        y += DIRECTIONS[name][1] * step * length
    frames = _canvas(sum(length for _, length in moves))
    color = PALETTE[str(rng.choice(list(PALETTE)))]
    x, y, i, phases = (lo + hi) / 2, (lo + hi) / 2, 0, []
    for name, length in moves:
        phases.append({"name": name, "start": i / FPS, "end": (i + length) / FPS})
        dx, dy = DIRECTIONS[name]
        for _ in range(length):
            x, y = x + dx * step, y + dy * step
            _draw(frames[i], x, y, color)
            i += 1
    return frames, {
        "problem_type": "subaction",
        "question": "The square moves in several phases. Name the direction of each move, in order.",
        "answer": phase_answer(phases),
        "phases": phases,
        "meta": {"reasoning": "It moves " + ", then ".join(name for name, _ in moves) + "."},
    }


RENDERERS: dict[str, Callable[[np.random.Generator], tuple[np.ndarray, dict[str, Any]]]] = {
    "direction": render_direction,
    "appear": _task_appear,
    "count": render_count,
    "phases": _task_phases,
}


# --------------------------------------------------------------------------- text tasks
# The same four questions told in words (positions, times, colours) instead of shown: the text
# reasoning stage learns the answer formats and the reasoning before it sees a video.

AXIS_NOTE = "(x grows to the right, y grows downwards.)"


def _point(x: float, y: float) -> str:
    return f"x={round(x)}, y={round(y)}"


def _text_direction(rng: np.random.Generator) -> dict[str, Any]:
    name = str(rng.choice(list(DIRECTIONS)))
    dx, dy = DIRECTIONS[name]
    x0, y0 = (int(v) for v in rng.integers(10, 90, size=2))
    dist = int(rng.integers(20, 60))
    x1, y1 = x0 + dx * dist, y0 + dy * dist
    changed = f"x goes from {x0} to {x1}" if dx else f"y goes from {y0} to {y1}"
    return {
        "problem_type": "multiple_choice",
        "question": f"At the start the square is at {_point(x0, y0)}; at the end it is at "
        f"{_point(x1, y1)} {AXIS_NOTE} In which direction does the square move?",
        "options": DIRECTION_OPTIONS,
        "answer": "ABCD"[list(DIRECTIONS).index(name)],
        "meta": {"reasoning": f"{changed}, so it moves {name}."},
    }


def _text_appear(rng: np.random.Generator) -> dict[str, Any]:
    duration = int(rng.integers(5, 9))
    t1 = int(rng.integers(1, duration - 2))
    t2 = int(rng.integers(t1 + 2, duration))
    return {
        "problem_type": "temporal_grounding",
        "question": f"A clip lasts {duration} s. A square appears {t1} s after the start and "
        f"stays for {t2 - t1} s. When is the square visible? Give the start and end time "
        "in seconds.",
        "answer": f"[{t1:.1f}, {t2:.1f}]",
        "spans": [[float(t1), float(t2)]],
        "meta": {
            "reasoning": f"It appears at {t1} s and stays {t2 - t1} s, so it is gone at {t2} s."
        },
    }


def _text_count(rng: np.random.Generator) -> dict[str, Any]:
    changes = int(rng.integers(1, 4))
    names = [str(rng.choice(list(PALETTE)))]
    for _ in range(changes):
        names.append(str(rng.choice([c for c in PALETTE if c != names[-1]])))
    return {
        "problem_type": "numerical",
        "question": f"The square is shown in these colours, in order: {', '.join(names)}. "
        "How many times does the square change colour?",
        "answer": str(changes),
        "meta": {"reasoning": f"The colours are {', '.join(names)}: {_plural(changes, 'change')}."},
    }


def _text_phases(rng: np.random.Generator) -> dict[str, Any]:
    x, y = 50, 50
    points, names, phases = [_point(x, y)], [], []
    for i in range(int(rng.integers(2, 4))):
        name = str(rng.choice([d for d in DIRECTIONS if not names or d != names[-1]]))
        dx, dy = DIRECTIONS[name]
        x, y = x + 20 * dx, y + 20 * dy
        points.append(_point(x, y))
        names.append(name)
        phases.append({"name": name, "start": 2.0 * i, "end": 2.0 * (i + 1)})
    return {
        "problem_type": "subaction",
        "question": f"Every 2 s the square's position is: {'; '.join(points)} {AXIS_NOTE} "
        "The square moves in several phases. Name the direction of each move, in order.",
        "answer": phase_answer(phases),
        "phases": phases,
        "meta": {"reasoning": "It moves " + ", then ".join(names) + "."},
    }


TEXT_RENDERERS: dict[str, Callable[[np.random.Generator], dict[str, Any]]] = {
    "direction": _text_direction,
    "appear": _text_appear,
    "count": _text_count,
    "phases": _text_phases,
}


# --------------------------------------------------------------------------- encoding


def video_codec() -> str:
    """H.264 when this PyAV build has libx264, else MPEG-4 part 2."""
    import av

    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def write_mp4(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: int,
    gop: int | None = None,
    x264: dict[str, str] | None = None,
) -> None:
    """Encode RGB frames (each [H, W, 3], even H and W; an array or a stream of them) to an
    mp4, deterministically. `x264` replaces the default libx264 options (fastest encode)."""
    import av

    codec = video_codec()
    stream = None
    with av.open(str(path), mode="w") as container:
        for frame in frames:
            if stream is None:
                options = (
                    {"preset": "ultrafast", "tune": "zerolatency"} if codec == "libx264" else {}
                )
                stream = container.add_stream(codec, rate=fps, options=options)
                stream.width, stream.height = int(frame.shape[1]), int(frame.shape[0])
                stream.pix_fmt = "yuv420p"
                stream.gop_size = gop or 2 * fps
                # One thread: x264 output then depends only on the pixels, never on scheduling.
                stream.codec_context.thread_count = 1
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        if stream is None:
            raise ValueError(f"{path}: no frames to write")
        container.mux(stream.encode())


# --------------------------------------------------------------------------- datasets


def make_record(split: str, index: int, seed: int, video_dir: Path) -> dict[str, Any]:
    """Render, encode and describe one clip; the task cycles so splits stay balanced."""
    task = TASKS[index % len(TASKS)]
    rng = np.random.default_rng([seed, SPLITS[split], index])
    frames, fields = RENDERERS[task](rng)
    name = f"{split}_{index:05d}.mp4"
    write_mp4(video_dir / name, frames, FPS)
    return {
        "id": f"synth-{split}-{index:05d}",
        "video": f"videos/{name}",
        **fields,
        "source": f"synthetic/{task}",
    }


def make_text_record(index: int, seed: int) -> dict[str, Any]:
    """One text-only question (no video); the task cycles like the video splits."""
    task = TASKS[index % len(TASKS)]
    rng = np.random.default_rng([seed, SPLITS["text"], index])
    return {"id": f"synth-text-{index:05d}", **TEXT_RENDERERS[task](rng),
            "source": f"synthetic-text/{task}"}  # fmt: skip


def generate(
    out: str | Path, n_train: int, n_eval: int, seed: int = 0, n_text: int = 0
) -> dict[str, Any]:
    """Write videos/, train.jsonl, eval.jsonl, text.jsonl (text-only questions) and a manifest
    under `out`; returns the manifest.

    The JSONL files are written to a temporary name and renamed, and the manifest last, so an
    interrupted run is regenerated rather than half-used.
    """
    out = Path(out)
    video_dir = out / "videos"
    video_dir.mkdir(parents=True, exist_ok=True)
    counts = {"train": n_train, "eval": n_eval}
    tasks: dict[str, dict[str, int]] = {}
    for split, n in counts.items():
        records = [make_record(split, i, seed, video_dir) for i in range(n)]
        _write_jsonl(out / f"{split}.jsonl", records)
        tasks[split] = {t: sum(r["source"] == f"synthetic/{t}" for r in records) for t in TASKS}
    _write_jsonl(out / "text.jsonl", [make_text_record(i, seed) for i in range(n_text)])
    manifest = {"version": VERSION, "seed": seed, "n_train": n_train, "n_eval": n_eval,
                "n_text": n_text, "tasks": tasks}  # fmt: skip
    _write_atomic(out / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def ensure_synthetic(spec: SyntheticSpec) -> Path:
    """Generate the synthetic tasks into `spec.out` unless a complete set with the same seed
    and sizes is already there; returns the directory."""
    out = Path(spec.out)
    manifest = out / MANIFEST
    want = {"version": VERSION, "seed": spec.seed, "n_train": spec.n_train,
            "n_eval": spec.n_eval, "n_text": spec.n_text}  # fmt: skip
    if manifest.is_file():
        have = json.loads(manifest.read_text())
        if all(have.get(k) == v for k, v in want.items()):
            return out
    generate(out, spec.n_train, spec.n_eval, spec.seed, spec.n_text)
    return out


def write_set(out: Path, manifest_name: str, splits: dict[str, list[dict[str, Any]]],
              manifest: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """Write one generated set: a JSONL file per split (`<name>.jsonl`), then its manifest,
    last (a set interrupted before the manifest is generated again, never half-used)."""
    for name, records in splits.items():
        _write_jsonl(out / f"{name}.jsonl", records)
    _write_atomic(out / manifest_name, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def ensure_set(
    out: str | Path, manifest_name: str, want: dict[str, Any], generate: Callable[[Path], Any]
) -> Path:
    """`out`, after `generate(out)` unless its manifest already says `want`."""
    out = Path(out)
    manifest = out / manifest_name
    if manifest.is_file() and json.loads(manifest.read_text()) == want:
        return out
    out.mkdir(parents=True, exist_ok=True)
    generate(out)
    return out


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    _write_atomic(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)

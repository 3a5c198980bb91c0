"""Synthetic image tasks for the CPU debug path: still pictures of the same coloured squares
as the video tasks, with known answers, so a stage can mix text, image and video records.

Three tasks, cycling: `count` (how many squares, 1-4: numerical), `colour` (the colour of the
one square: multiple choice) and `moved` (two images, the square moved between them: which
way; multiple choice) — the last gives a record of several images. PNG files under images/,
records in image_train.jsonl / image_eval.jsonl, a manifest last (an interrupted generation
is redone, never half-used).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from system.config import SyntheticSpec
from system.data.synthetic import (
    BACKGROUND,
    DIRECTION_OPTIONS,
    PALETTE,
    SIZE,
    SQUARE,
    ensure_set,
    write_set,
)

TASKS = ("count", "colour", "moved")
SPLITS = {"image_train": 0, "image_eval": 1}
VERSION = 1
MANIFEST = "image_manifest.json"
COLOUR_OPTIONS = [f"{chr(ord('A') + i)}. {name}" for i, name in enumerate(PALETTE)]


def _picture(squares: list[tuple[float, float, str]]) -> np.ndarray:
    image = np.empty((SIZE, SIZE, 3), dtype=np.uint8)  # [H, W, 3]
    image[:] = BACKGROUND
    for x, y, name in squares:
        xi, yi = round(x), round(y)
        image[yi : yi + SQUARE, xi : xi + SQUARE] = PALETTE[name]
    return image


def _spots(rng: np.random.Generator, n: int) -> list[tuple[float, float]]:
    """`n` top-left corners of squares that do not overlap (a 4x4 lattice of cells)."""
    cell = SIZE // 4
    cells = rng.choice(16, size=n, replace=False)
    jitter = rng.uniform(0, cell - SQUARE, size=(n, 2))
    return [(c % 4 * cell + j[0], c // 4 * cell + j[1]) for c, j in zip(cells, jitter, strict=True)]


def _task_count(rng: np.random.Generator) -> tuple[list[np.ndarray], dict[str, Any]]:
    n = int(rng.integers(1, 5))
    names = [str(rng.choice(list(PALETTE))) for _ in range(n)]
    image = _picture([(x, y, c) for (x, y), c in zip(_spots(rng, n), names, strict=True)])
    return [image], {
        "problem_type": "numerical",
        "question": "How many squares are in the image?",
        "answer": str(n),
        "meta": {"reasoning": f"I see {n} square{'s' if n > 1 else ''}: {', '.join(names)}."},
    }


def _task_colour(rng: np.random.Generator) -> tuple[list[np.ndarray], dict[str, Any]]:
    index = int(rng.integers(len(PALETTE)))
    name = list(PALETTE)[index]
    ((x, y),) = _spots(rng, 1)
    return [_picture([(x, y, name)])], {
        "problem_type": "multiple_choice",
        "question": "What colour is the square?",
        "options": COLOUR_OPTIONS,
        "answer": COLOUR_OPTIONS[index][0],
        "meta": {"reasoning": f"The square is {name}."},
    }


def _task_moved(rng: np.random.Generator) -> tuple[list[np.ndarray], dict[str, Any]]:
    index = int(rng.integers(len(DIRECTION_OPTIONS)))
    direction = DIRECTION_OPTIONS[index][3:]
    name = str(rng.choice(list(PALETTE)))
    step = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}[direction]
    margin, travel = 6, SIZE - SQUARE - 12
    start = [rng.uniform(margin, SIZE - SQUARE - margin) for _ in range(2)]
    for axis in (0, 1):
        if step[axis]:
            start[axis] = margin if step[axis] > 0 else margin + travel
    end = [start[a] + step[a] * travel for a in (0, 1)]
    images = [_picture([(start[0], start[1], name)]), _picture([(end[0], end[1], name)])]
    return images, {
        "problem_type": "multiple_choice",
        "question": "The first image shows a square, the second the same square later. "
        "Which way did it move?",
        "options": DIRECTION_OPTIONS,
        "answer": DIRECTION_OPTIONS[index][0],
        "meta": {"reasoning": f"The square is further {direction} in the second image."},
    }


RENDERERS = {"count": _task_count, "colour": _task_colour, "moved": _task_moved}


def make_image_record(split: str, index: int, seed: int, image_dir: Path) -> dict[str, Any]:
    """Render and describe one image record; the task cycles so splits stay balanced."""
    task = TASKS[index % len(TASKS)]
    rng = np.random.default_rng([seed, 10 + SPLITS[split], index])
    images, fields = RENDERERS[task](rng)
    names = []
    for k, pixels in enumerate(images):
        name = f"{split}_{index:05d}_{k}.png"
        Image.fromarray(pixels).save(image_dir / name)
        names.append(f"images/{name}")
    return {
        "id": f"synth-{split}-{index:05d}",
        "images": names,
        **fields,
        "source": f"synthetic-image/{task}",
    }


def generate_images(out: Path, n_train: int, n_eval: int, seed: int) -> dict[str, Any]:
    """Write images/, image_train.jsonl, image_eval.jsonl and the manifest under `out`."""
    image_dir = out / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    splits = {
        split: [make_image_record(split, i, seed, image_dir) for i in range(n)]
        for split, n in (("image_train", n_train), ("image_eval", n_eval))
    }
    manifest = {"version": VERSION, "seed": seed, "n_train": n_train, "n_eval": n_eval}
    return write_set(out, MANIFEST, splits, manifest)


def ensure_images(spec: SyntheticSpec) -> Path | None:
    """Generate the image tasks into `spec.out` when the spec asks for them (`n_image`) and
    the same set is not there already; returns the directory (None: not asked for)."""
    if not spec.n_image:
        return None
    want = {"version": VERSION, "seed": spec.seed, "n_train": spec.n_image,
            "n_eval": spec.n_image_eval}  # fmt: skip
    return ensure_set(
        spec.out, MANIFEST, want,
        lambda out: generate_images(out, spec.n_image, spec.n_image_eval, spec.seed),
    )  # fmt: skip

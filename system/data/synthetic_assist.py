"""A synthetic assistive task in Pause-and-Think's shape, small enough for the CPU debug path:
a clip of a short procedure — four coloured squares placed one at a time in a row, left to
right — paused part-way, and a first-person question about it:

- Future/Planning: "I am placing the squares in this order: red, blue, green, yellow. What
  should I do next?" → "Place the green square to the right of the blue one." (how many are
  placed decides the answer: it needs the video);
- Factual/Past: "Which square did I just place, and where?" → "You placed the blue square to
  the right of the red one." (which appeared last: it needs the order of the frames).

Each record is `free_form` with a short user-addressed answer, reference reasoning
(`meta.reasoning`, the SFT target's `<thinking>` part) and its `meta.category`, as the
Pause-and-Think importer gives them; a judge (or ROUGE-L) grades answers against the
reference. Clips are 112x112 at 8 fps: 1 s empty, then a square every second, the pause 1 s
after the last one shown.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from system.config import SyntheticSpec
from system.data.synthetic import (
    FPS,
    PALETTE,
    SIZE,
    SQUARE,
    _canvas,
    _draw,
    ensure_set,
    write_mp4,
    write_set,
)

CATEGORIES = ("Future/Planning", "Factual/Past")
VERSION = 1
MANIFEST = "assist_manifest.json"
SLOT_X = [6 + i * (SQUARE + 8) for i in range(len(PALETTE))]  # 4 slots in a 112 px row
ROW_Y = (SIZE - SQUARE) // 2


def _frames(order: list[str], placed: int) -> np.ndarray:
    """1 s empty, one square more each second up to `placed`, then 1 s more (the pause)."""
    frames = _canvas(FPS * (placed + 2))
    for step in range(placed):
        for i in range(FPS * (step + 1), len(frames)):
            _draw(frames[i], SLOT_X[step], ROW_Y, PALETTE[order[step]])
    return frames


def _where(order: list[str], step: int) -> str:
    return (
        "at the left end of the row" if step == 0 else f"to the right of the {order[step - 1]} one"
    )


def make_assist_record(split: str, index: int, seed: int, video_dir: Path) -> dict[str, Any]:
    """One clip and question; the category alternates so both stay balanced."""
    rng = np.random.default_rng([seed, 10 + (0 if split == "train" else 1), index])
    order = [str(c) for c in rng.permutation(list(PALETTE))]
    category = CATEGORIES[index % len(CATEGORIES)]
    placed = int(rng.integers(1, len(order)))  # 1-3 placed: a next step always exists
    done = ", ".join(order[:placed])
    if category == "Future/Planning":
        question = (f"I am placing the squares in a row from left to right in this order: "
                    f"{', '.join(order)}. What should I do next?")  # fmt: skip
        nxt = order[placed]
        answer = f"Place the {nxt} square {_where(order, placed)}."
        reasoning = (f"So far I see {placed} placed: {done}. The next in the order is {nxt}, "
                     f"so it goes {_where(order, placed)}.")  # fmt: skip
    else:
        question = "Which square did I just place, and where?"
        last = order[placed - 1]
        answer = f"You placed the {last} square {_where(order, placed - 1)}."
        reasoning = f"The squares appeared in this order: {done}. The last one was {last}."
    name = f"assist_{split}_{index:05d}.mp4"
    write_mp4(video_dir / name, _frames(order, placed), FPS)
    return {
        "id": f"assist-{split}-{index:05d}",
        "video": f"videos/{name}",
        "problem_type": "free_form",
        "question": question,
        "answer": answer,
        "meta": {"reasoning": reasoning, "category": category},
        "source": f"synthetic/assist-{'planning' if category == CATEGORIES[0] else 'past'}",
    }


def generate_assist(out: Path, n_train: int, n_eval: int, seed: int) -> dict[str, Any]:
    """Write assist_train.jsonl and assist_eval.jsonl (clips under videos/) and their
    manifest, last; returns the manifest."""
    video_dir = out / "videos"
    video_dir.mkdir(parents=True, exist_ok=True)
    splits = {
        f"assist_{split}": [make_assist_record(split, i, seed, video_dir) for i in range(n)]
        for split, n in (("train", n_train), ("eval", n_eval))
    }
    manifest = {"version": VERSION, "seed": seed, "n_train": n_train, "n_eval": n_eval}
    return write_set(out, MANIFEST, splits, manifest)


def ensure_assist(spec: SyntheticSpec) -> Path | None:
    """Generate the assistive task into `spec.out` when the spec asks for it
    (`n_assist`) and the same set is not there already; returns the directory (None: not
    asked for)."""
    if not spec.n_assist:
        return None
    want = {"version": VERSION, "seed": spec.seed, "n_train": spec.n_assist,
            "n_eval": spec.n_assist_eval}  # fmt: skip
    return ensure_set(
        spec.out, MANIFEST, want,
        lambda out: generate_assist(out, spec.n_assist, spec.n_assist_eval, spec.seed),
    )  # fmt: skip

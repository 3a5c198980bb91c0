"""The synthetic task generator: deterministic per seed, valid records, balanced tasks, and
answers that agree with what was drawn (checked on the rendered frames, before encoding)."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from system.config import DatasetSpec, SyntheticSpec
from system.data.records import load_dataset
from system.data.synthetic import (
    BACKGROUND,
    DIRECTIONS,
    FPS,
    RENDERERS,
    VERSION,
    ensure_synthetic,
    generate,
    make_text_record,
)


def _digest(directory: Path) -> dict[str, str]:
    return {
        p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def _mask(frame: np.ndarray) -> np.ndarray:
    return np.any(frame != BACKGROUND, axis=-1)


def _centre(frame: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(_mask(frame))
    return np.array([xs.mean(), ys.mean()])


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    generate(tmp_path / "a", 8, 4, seed=5)
    generate(tmp_path / "b", 8, 4, seed=5)
    generate(tmp_path / "c", 8, 4, seed=6)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a")["train.jsonl"] != _digest(tmp_path / "c")["train.jsonl"]


def test_splits_are_valid_balanced_and_disjoint(synthetic_dataset):
    train = load_dataset(DatasetSpec(path=str(synthetic_dataset / "train.jsonl")))
    held = load_dataset(DatasetSpec(path=str(synthetic_dataset / "eval.jsonl")))
    kinds = [r.problem_type for r in train.records]
    assert {k: kinds.count(k) for k in set(kinds)} == {
        "multiple_choice": 3,
        "temporal_grounding": 3,
        "numerical": 3,
        "subaction": 3,
    }
    assert not {r.id for r in train.records} & {r.id for r in held.records}
    assert not {r.video for r in train.records} & {r.video for r in held.records}
    for record in train.records + held.records:
        assert (synthetic_dataset / record.video).stat().st_size > 0


def _render(task: str, seed: int):
    return RENDERERS[task](np.random.default_rng([seed, 0, 0]))


@pytest.mark.parametrize("seed", range(6))
def test_direction_answer_matches_motion(seed):
    frames, fields = _render("direction", seed)
    dx, dy = _centre(frames[-1]) - _centre(frames[0])
    truth = ("B" if dx > 0 else "A") if abs(dx) > abs(dy) else ("D" if dy > 0 else "C")
    assert fields["answer"] == truth


@pytest.mark.parametrize("seed", range(6))
def test_appear_span_matches_visibility(seed):
    frames, fields = _render("appear", seed)
    visible = np.flatnonzero([_mask(f).any() for f in frames])
    ((start, end),) = fields["spans"]
    assert visible[0] / FPS == start
    assert (visible[-1] + 1) / FPS == end
    assert len(visible) == visible[-1] - visible[0] + 1  # one contiguous appearance


@pytest.mark.parametrize("seed", range(6))
def test_count_answer_matches_colour_changes(seed):
    frames, fields = _render("count", seed)
    colours = [tuple(f[_mask(f)][0]) for f in frames]
    changes = sum(a != b for a, b in itertools.pairwise(colours))
    assert fields["answer"] == str(changes)
    # Every colour lasts >= 1.5 s, so 8 frames spread over the clip see each one.
    idx = np.linspace(0, len(frames) - 1, 8).round().astype(int)
    seen = [colours[i] for i in idx]
    assert sum(a != b for a, b in itertools.pairwise(seen)) == changes


def test_count_clip_length_tells_the_count_unless_fixed():
    from system.data.synthetic import render_count

    def lengths(**kw):
        seen: dict[str, set[float]] = {}
        for seed in range(60):
            frames, fields = render_count(np.random.default_rng(seed), **kw)
            seen.setdefault(fields["answer"], set()).add(len(frames) / FPS)
        return seen

    # The recipe's clips: 1 change lasts 3-4 s, 3 changes 6-8 s.
    default = lengths()
    assert max(default["1"]) < min(default["3"])
    # Fixed length: every count comes in every length.
    assert lengths(fixed_length=True) == {k: {6.0, 7.0, 8.0} for k in ("1", "2", "3")}


@pytest.mark.parametrize("seed", range(6))
def test_phases_match_motion(seed):
    frames, fields = _render("phases", seed)
    names = []
    for phase in fields["phases"]:
        first, last = round(phase["start"] * FPS), round(phase["end"] * FPS) - 1
        dx, dy = _centre(frames[last]) - _centre(frames[first])
        names.append(("right" if dx > 0 else "left") if abs(dx) > abs(dy) else
                     ("down" if dy > 0 else "up"))  # fmt: skip
    assert [p["name"] for p in fields["phases"]] == names
    assert fields["answer"] == ", ".join(
        f"{n} [{p['start']:.1f}, {p['end']:.1f}]"
        for n, p in zip(names, fields["phases"], strict=True)
    )
    assert fields["phases"][-1]["end"] == len(frames) / FPS


def test_ensure_synthetic_reuses_and_regenerates(tmp_path):
    spec = SyntheticSpec(out=str(tmp_path / "s"), n_train=4, n_eval=2, seed=1)
    out = ensure_synthetic(spec)
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["n_train"], manifest["n_eval"], manifest["seed"]) == (4, 2, 1)
    assert manifest["version"] == VERSION
    stamp = (out / "train.jsonl").stat().st_mtime_ns
    ensure_synthetic(spec)
    assert (out / "train.jsonl").stat().st_mtime_ns == stamp  # reused
    ensure_synthetic(spec.model_copy(update={"n_train": 8}))
    assert len((out / "train.jsonl").read_text().splitlines()) == 8  # sizes changed: redone
    stamp = (out / "train.jsonl").stat().st_mtime_ns
    (out / "manifest.json").write_text(json.dumps({**manifest, "n_train": 8, "version": 1}))
    ensure_synthetic(spec.model_copy(update={"n_train": 8}))
    assert (out / "train.jsonl").stat().st_mtime_ns != stamp  # older generator: redone


def test_text_questions_are_valid_records_whose_answers_follow_from_the_text(tmp_path):
    import re

    from system.data.records import parse_record

    generate(tmp_path, 4, 0, seed=2, n_text=40)
    lines = (tmp_path / "text.jsonl").read_text().splitlines()
    records = [parse_record(json.loads(line), f"text.jsonl:{i}") for i, line in enumerate(lines)]
    assert len(records) == 40 and all(r.video is None for r in records)
    assert {r.source for r in records} == {f"synthetic-text/{t}" for t in
                                           ("direction", "appear", "count", "phases")}  # fmt: skip
    for r in records:
        assert r.answer in r.meta["reasoning"] or r.problem_type != "numerical"
        numbers = [int(n) for n in re.findall(r"-?\d+", r.question)]
        if r.source.endswith("direction"):
            x0, y0, x1, y1 = numbers[:4]
            (dx, dy), letter = (
                (x1 - x0, y1 - y0),
                "ABCD"[
                    list(DIRECTIONS).index(
                        ("right" if x1 > x0 else "left")
                        if x1 != x0
                        else ("down" if y1 > y0 else "up")
                    )
                ],
            )
            assert (dx == 0) != (dy == 0) and r.answer == letter
        elif r.source.endswith("appear"):
            _duration, start, stay = numbers[:3]
            assert r.spans == [(float(start), float(start + stay))]
        elif r.source.endswith("count"):
            colours = r.question.split(": ")[1].split(". How")[0].split(", ")
            assert int(r.answer) == sum(a != b for a, b in itertools.pairwise(colours))
        else:
            xy = list(zip(numbers[1::2], numbers[2::2], strict=False))  # "Every 2 s" comes first
            moves = [("right" if b[0] > a[0] else "left") if b[0] != a[0] else
                     ("down" if b[1] > a[1] else "up") for a, b in itertools.pairwise(xy)]  # fmt: skip
            assert [p.name for p in r.phases] == moves
            assert r.answer == ", ".join(f"{p.name} [{p.start:.1f}, {p.end:.1f}]" for p in r.phases)
    assert make_text_record(3, 2) == json.loads(lines[3])  # deterministic per index


def test_video_records_carry_a_reasoning_trace_with_the_answer(synthetic_dataset):
    train = load_dataset(DatasetSpec(path=str(synthetic_dataset / "train.jsonl")))
    for record in train.records:
        trace = record.meta["reasoning"]
        if record.problem_type == "multiple_choice":
            name = record.options["ABCD".index(record.answer)].split(". ")[1]
            assert f"moves {name}" in trace
        elif record.problem_type == "numerical":
            assert f": {record.answer} change" in trace
        elif record.problem_type == "subaction":
            assert trace == "It moves " + ", then ".join(p.name for p in record.phases) + "."
        else:
            start, end = record.spans[0]
            assert f"at {int(start)} s" in trace and f"at {int(end)} s" in trace

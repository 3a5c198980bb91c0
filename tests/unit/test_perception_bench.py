"""`reelrl bench perception`: the probe clips' answers are what their pixels show, and a trial
trains the model it loads."""

from __future__ import annotations

import argparse
import itertools

import numpy as np
import pytest

from system.benchmarks import perception
from system.data import synthetic


def _square_boxes(frame: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the non-background pixels of one frame."""
    ys, xs = np.nonzero((frame != np.array(synthetic.BACKGROUND, np.uint8)).any(-1))
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


@pytest.mark.parametrize("side", [synthetic.SQUARE, perception.LARGE])
def test_probe_answers_match_the_pixels(side):
    for seed in range(40):
        colour = perception.colour_clip(np.random.default_rng(seed), side)
        x0, y0, x1, y1 = _square_boxes(colour.frames[0])
        assert (x1 - x0, y1 - y0) == (side, side)
        name = colour.options[colour.answer].split(". ")[1]
        assert tuple(colour.frames[-1][y0, x0]) == synthetic.PALETTE[name]

        place = perception.side_clip(np.random.default_rng(seed), side)
        x0, _, x1, _ = _square_boxes(place.frames[0])
        half = synthetic.SIZE // 2
        assert (x0 >= half) if place.answer == 1 else (x1 <= half)
        assert place.options[place.answer].endswith("right" if x0 >= half else "left")

        move = perception.direction_clip(np.random.default_rng(seed), side)
        first, last = _square_boxes(move.frames[0]), _square_boxes(move.frames[-1])
        dx, dy = last[0] - first[0], last[1] - first[1]
        seen = (
            ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
        )
        assert move.options[move.answer].endswith(seen)

        count = perception.count_fixed_length_clip(np.random.default_rng(seed), side)
        colours = [tuple(f[_square_boxes(f)[1], _square_boxes(f)[0]]) for f in count.frames]
        changes = sum(a != b for a, b in itertools.pairwise(colours))
        assert count.options[count.answer] == f"{'ABC'[changes - 1]}. {changes}"
        assert len(count.frames) / synthetic.FPS in (6.0, 7.0, 8.0)


def test_both_sides_and_every_answer_occur():
    answers = {
        p: {perception.PROBES[p](np.random.default_rng(s), 40).answer for s in range(60)}
        for p in perception.PROBES
    }
    assert answers == {"colour": {0, 1, 2, 3}, "side": {0, 1}, "direction": {0, 1, 2, 3},
                       "count": {0, 1, 2}, "count_fixed_length": {0, 1, 2}}  # fmt: skip


def test_a_trial_trains_the_model_and_reports_accuracy(tiny_qwen2_5_vl):
    import torch

    trial = perception.Trial(tiny_qwen2_5_vl, "colour", perception.LARGE)
    inputs, answers = trial.batch(range(4))
    assert answers.shape == (4,)
    video = trial.processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    # 8 frames of 112 px: 4 temporal groups of 4 x 4 merged tokens.
    assert ((inputs["input_ids"] == video).sum(1) == 64).all()
    before = {n: p.detach().clone() for n, p in trial.model.named_parameters() if "visual" in n}
    losses = [trial.step(i) for i in range(2)]
    assert all(np.isfinite(losses))
    moved = [
        n
        for n, p in trial.model.named_parameters()
        if "visual" in n and not torch.equal(p, before[n])
    ]
    assert moved, "the vision tower is trained"
    acc = trial.accuracy(20)
    assert 0.0 <= acc <= 1.0 and acc * 20 == round(acc * 20)


def test_the_benchmark_prints_a_row_per_trial(tiny_qwen2_5_vl, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(perception, "WORK", tmp_path)
    (tmp_path / "qwen2_5_vl-tiny").symlink_to(tiny_qwen2_5_vl, target_is_directory=True)
    figures = perception.run(argparse.Namespace(quick=True, size="tiny"))
    rows = [(t["probe"], t["square_px"]) for t in figures["trials"]]
    assert rows == [(p, s) for p, s, _ in perception.TRIALS]
    thetas = {t["rope_theta"] for t in figures["trials"]}
    assert thetas == {perception.built_theta(tiny_qwen2_5_vl), 2.0}
    # The theta variant is a copy with the same weights; the fixture is left as it was.
    variant = tmp_path / "qwen2_5_vl-tiny-theta2"
    assert (variant / "model.safetensors").read_bytes() == (
        tiny_qwen2_5_vl / "model.safetensors"
    ).read_bytes()
    assert perception.built_theta(tiny_qwen2_5_vl) != 2.0
    out = capsys.readouterr().out
    assert out.count("px") == len(rows)

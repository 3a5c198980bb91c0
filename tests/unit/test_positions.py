"""Qwen2.5-VL multimodal RoPE positions against hand-computed layouts: text resumes at the
largest position so far + 1 (as the model was trained and as vLLM computes it), the temporal
index is scaled by seconds-per-grid x tokens-per-second, and the collator passes them."""

from __future__ import annotations

import pytest
import torch

from learner.positions import mrope_positions


def test_text_only_is_a_plain_range():
    pos = mrope_positions([0] * 5, [], [], 2)
    assert pos.tolist() == [list(range(5))] * 3


def test_video_then_text_resumes_after_the_scaled_temporal_index():
    # 2 text, a video of t=3 grids of 2x4 patches (merge 2 -> 1x2 tokens each), 2 text.
    types = [0, 0] + [2] * 6 + [0, 0]
    pos = mrope_positions(types, [(3, 2, 4)], [2.5], 2)
    t = [2, 2, 4, 4, 7, 7]  # int(k * 2.5) + 2 for k = 0, 0, 1, 1, 2, 2
    h = [2] * 6
    w = [2, 3] * 3
    assert pos[0].tolist() == [0, 1, *t, 8, 9]  # text after: max (7) + 1
    assert pos[1].tolist() == [0, 1, *h, 8, 9]
    assert pos[2].tolist() == [0, 1, *w, 8, 9]


def test_mismatched_grid_is_refused():
    with pytest.raises(ValueError, match="needs 6"):
        mrope_positions([0] + [2] * 5, [(3, 2, 4)], [1.0], 2)
    with pytest.raises(ValueError, match="no grid"):
        mrope_positions([0, 2, 2], [], [], 2)


def test_collator_passes_positions_for_qwen2_5_vl(tiny_qwen2_5_vl, synthetic_dataset):
    import json

    from transformers import AutoProcessor

    from learner.collate import Collator
    from learner.sft import sft_sequence, sft_target
    from system.config import VideoConfig
    from system.data.records import Record

    budget = VideoConfig(num_frames=8, max_frames=8, max_video_tokens=256,
                         min_pixels=3136, max_pixels=12544)  # fmt: skip
    processor = AutoProcessor.from_pretrained(tiny_qwen2_5_vl)
    record = Record(**json.loads((synthetic_dataset / "train.jsonl").read_text().splitlines()[0]))
    plain = Collator(processor, "qwen2_5_vl")
    explicit = Collator(processor, "qwen2_5_vl", tokens_per_second=4.0)
    seq = sft_sequence(explicit, record, sft_target(record, "answer_twice"), budget,
                       str(synthetic_dataset), "answer_twice")  # fmt: skip
    text = Record(id="t", problem_type="numerical", question="How many?", answer="2")
    short = sft_sequence(explicit, text, "\\boxed{2}", budget, "/", "answer_twice")
    assert plain.collate([seq]).position_ids is None
    mb = explicit.collate([seq, short])
    assert "position_ids" in mb.model_inputs()
    pos = mb.position_ids  # [3, B, L]
    assert pos.shape == (3, 2, seq.input_ids.numel())
    vision = seq.vision
    t, h, w = vision.video_grid_thw[0].tolist()
    factor = float(vision.second_per_grid_ts[0]) * 4.0
    first = int(torch.nonzero(mb.mm_token_type_ids[0])[0])
    last_t = int((t - 1) * factor) + first
    assert int(pos[0, 0].max()) == pos[0, 0, -1] and pos[0, 0, -1] > last_t
    after = first + t * (h // 2) * (w // 2)  # first text token after the video
    assert (
        pos[:, 0, after].tolist() == [max(last_t, first + h // 2 - 1, first + w // 2 - 1) + 1] * 3
    )
    n = short.input_ids.numel()
    assert pos[:, 1, :n].tolist() == [list(range(n))] * 3 and not pos[:, 1, n:].any()

"""SFT: target texts per output format, example sequences from records, the completion-only
NLL against hand-computed numbers."""

from __future__ import annotations

import json
import math

import pytest
import torch

from learner.collate import Collator
from learner.sft import END_OF_TURN, sft_loss, sft_sequence, sft_target
from system.config import VideoConfig
from system.data.records import Record

BUDGET = VideoConfig(
    num_frames=4, max_frames=4, max_video_tokens=64, min_pixels=3136, max_pixels=12544
)


def _record(**meta) -> Record:
    return Record(
        id="r1", video="v.mp4", problem_type="multiple_choice", question="Which?",
        answer="B", options=["A. x", "B. y"], meta=meta,
    )  # fmt: skip


def test_sft_target_formats():
    rec = _record(reasoning="It goes right.")
    assert sft_target(rec, "answer_twice") == "\\boxed{B}<think>It goes right.</think>\\boxed{B}"
    assert sft_target(rec, "think_answer") == "<think>It goes right.</think><answer>B</answer>"
    assert sft_target(rec, "direct") == "\\boxed{B}"
    assert "<think>Hmm.</think>" in sft_target(_record(), "answer_twice", reasoning="Hmm.")


def test_sft_loss_hand_computed():
    logits = torch.log(torch.tensor([[[0.5, 0.5], [0.2, 0.8], [0.9, 0.1]]]))  # [1, 3, 2]
    targets = torch.tensor([[0, 1, 0]])
    mask = torch.tensor([[0.0, 1.0, 1.0]])  # the prompt position is not scored
    loss, metrics = sft_loss(logits, targets, mask)
    expected = -(math.log(0.8) + math.log(0.9)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert metrics["nll"] == pytest.approx(expected, rel=1e-6)
    part, _ = sft_loss(logits, targets, mask, total_tokens=4)
    assert part.item() == pytest.approx(expected / 2, rel=1e-6)


def test_sft_sequence_scores_only_the_completion(tiny_qwen2_5_vl, synthetic_dataset):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_qwen2_5_vl)
    line = (synthetic_dataset / "train.jsonl").read_text().splitlines()[0]
    record = Record(**json.loads(line))
    collator = Collator(processor, "qwen2_5_vl")
    target = sft_target(record, "answer_twice")
    seq = sft_sequence(collator, record, target, BUDGET, str(synthetic_dataset), "answer_twice")
    completion = seq.input_ids[seq.prompt_len :]
    assert processor.tokenizer.decode(completion) == target + END_OF_TURN
    (mb,) = collator.micro_batches([seq], 1)
    scored = mb.targets[mb.loss_mask.bool()]
    assert torch.equal(scored, completion)
    pads = int((seq.input_ids == collator.video_pad_id).sum())
    assert pads == seq.vision.tokens > 0


def test_text_only_record_has_no_video_and_no_vision_tokens(tiny_qwen2_5_vl):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_qwen2_5_vl)
    record = Record(
        id="t1", problem_type="numerical", question="Red, blue, red: how many changes?",
        answer="2", meta={"reasoning": "Two changes."},
    )  # fmt: skip
    collator = Collator(processor, "qwen2_5_vl")
    target = sft_target(record, "answer_twice")
    seq = sft_sequence(collator, record, target, BUDGET, "/nonexistent", "answer_twice")
    assert seq.vision is None
    assert not bool(torch.isin(seq.input_ids, collator.vision_ids).any())
    prompt = processor.tokenizer.decode(seq.input_ids[: seq.prompt_len])
    assert "how many changes?" in prompt and "<|vision_start|>" not in prompt
    assert processor.tokenizer.decode(seq.input_ids[seq.prompt_len :]) == target + END_OF_TURN

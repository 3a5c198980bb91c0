"""Collation of rollout groups: re-decoded video inputs, prompt checks, masks and alignment,
and the model seeing exactly what the processor would have given it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from learner.collate import Collator, GroupRejected
from learner.sft import encode_prompt
from system.config import VideoConfig
from system.data.records import Record
from system.data.video import decode_video, processor_kwargs
from system.transport.protocol import RolloutGroup, RolloutSample, VisionRef

BUDGET = VideoConfig(
    num_frames=4, max_frames=4, max_video_tokens=64, min_pixels=3136, max_pixels=12544
)


def _record(dataset) -> Record:
    return Record(**json.loads((dataset / "train.jsonl").read_text().splitlines()[0]))


def _group(prompt, ref, completions, rewards) -> RolloutGroup:
    samples = [
        RolloutSample(np.array(c, dtype=np.int32), -np.ones(len(c), np.float32), r)
        for c, r in zip(completions, rewards, strict=True)
    ]
    return RolloutGroup(
        run_id="t",
        group_id=RolloutGroup.new_group_id(),
        record_id="r",
        weight_version=0,
        created_at=0.0,
        finished_at=0.0,
        prompt_ids=prompt.numpy().astype(np.int32),
        vision=ref,
        samples=samples,
    )


@pytest.fixture
def setup(tiny_model, synthetic_dataset):
    from transformers import AutoProcessor

    family, path = tiny_model
    processor = AutoProcessor.from_pretrained(path)
    record = _record(synthetic_dataset)
    video = decode_video(str(synthetic_dataset / record.video), BUDGET, family)
    prompt = encode_prompt(processor, record, video, "answer_twice")
    return family, path, processor, video, prompt


def test_group_to_micro_batches_alignment(setup):
    family, _, processor, video, prompt = setup
    collator = Collator(processor, family)
    group = _group(prompt, video.ref, [[50, 60, 70], [80, 90]], [1.0, 0.0])
    seqs = collator.group_sequences(group, torch.tensor([1.0, -1.0]))
    assert [s.prompt_len for s in seqs] == [prompt.numel()] * 2
    (mb,) = collator.micro_batches(seqs, size=2)
    p = prompt.numel()
    assert mb.input_ids.shape == (2, p + 3)
    # Scored columns: from the prompt's last position (p - 1) to the end, K = 4.
    assert mb.score_from == p - 1 and mb.scored_positions == 4
    assert mb.model_inputs()["logits_to_keep"] == 4
    # Row 0: positions p-1..p+1 predict 50, 60, 70; row 1 is padded after p+2.
    assert mb.targets[0, :3].tolist() == [50, 60, 70]
    assert mb.loss_mask.tolist() == [[1, 1, 1, 0], [1, 1, 0, 0]]
    assert mb.attention_mask[1].tolist() == [1] * (p + 2) + [0]
    assert mb.behaviour_logprobs[0].tolist() == [-1.0] * 3 + [0.0]
    assert mb.advantages.tolist() == [1.0, -1.0]
    assert mb.vision["video_grid_thw"].shape == (2, 3)
    assert mb.num_tokens == 5 and mb.filler().weight == 0.0


def test_model_sees_what_the_processor_gives(setup):
    """Logits from our collated inputs equal logits from the processor's own inputs."""
    from transformers import AutoModelForImageTextToText

    from actors.prompts import build_messages, render_prompt

    family, path, processor, video, _ = setup
    model = AutoModelForImageTextToText.from_pretrained(path).eval()

    record_messages = build_messages("In which direction does the square move?",
                                     "multiple_choice", "answer_twice",
                                     ["A. left", "B. right", "C. up", "D. down"])  # fmt: skip
    text = render_prompt(processor, record_messages)
    ref_inputs = processor(
        text=[text], videos=[video.frames], video_metadata=[video.model_metadata()],
        return_tensors="pt", **processor_kwargs(),
    )  # fmt: skip
    collator = Collator(processor, family)
    ids = ref_inputs["input_ids"][0]
    group = _group(ids[:-2], video.ref, [ids[-2:].tolist()], [1.0])
    (mb,) = collator.micro_batches(collator.group_sequences(group, torch.zeros(1)), 1)
    assert torch.equal(mb.input_ids, ref_inputs["input_ids"])
    with torch.no_grad():
        ours = model(**mb.model_inputs()).logits  # [1, K, V]: the scored positions only
        theirs = model(**ref_inputs).logits  # [1, L, V]
    assert ours.shape[1] == mb.scored_positions == 3 < theirs.shape[1]
    assert torch.allclose(ours, theirs[:, mb.score_from :], atol=1e-5)


def test_prompts_of_different_lengths_score_from_the_shortest(setup):
    """Sequences of different prompt lengths in one micro-batch: the scored columns start at
    the shortest prompt's last token; each row's mask covers exactly its completion, and the
    log-probs equal those from the whole sequence's logits (1e-5)."""
    from transformers import AutoModelForImageTextToText

    from learner.collate import Sequence
    from learner.grpo import token_logprobs

    family, path, processor, _, _ = setup
    collator = Collator(processor, family)
    tok = processor.tokenizer
    long, short = (torch.tensor(tok(t)["input_ids"]) for t in ("a b c d e f", "a b"))
    completion = torch.tensor([50, 60, 70])
    seqs = [Sequence(torch.cat([p, completion]), p.numel()) for p in (long, short)]
    mb = collator.collate(seqs)
    assert mb.score_from == short.numel() - 1
    for row, prompt in enumerate((long, short)):
        scored = mb.targets[row][mb.loss_mask[row].bool()]
        assert scored.tolist() == completion.tolist(), prompt
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    with torch.no_grad():
        inputs = mb.model_inputs()
        kept = token_logprobs(model(**inputs).logits, mb.targets, 0.7, chunk=3)
        inputs["logits_to_keep"] = 0  # every position, as before
        whole = model(**inputs).logits[:, mb.score_from :]
        assert torch.allclose(kept, token_logprobs(whole, mb.targets, 0.7), atol=1e-5)


def test_pad_count_mismatch_is_rejected(setup):
    family, _, processor, video, prompt = setup
    collator = Collator(processor, family)
    pad = collator.video_pad_id
    short = prompt[prompt != pad][:10]  # no video pads at all
    with pytest.raises(GroupRejected, match="video-pad tokens"):
        collator.group_sequences(_group(short, video.ref, [[5]], [1.0]), torch.ones(1))
    extra = torch.cat([prompt, torch.tensor([pad])])
    with pytest.raises(GroupRejected, match=r"prompt has \d+ video-pad tokens"):
        collator.group_sequences(_group(extra, video.ref, [[5]], [1.0]), torch.ones(1))


def test_changed_video_is_rejected(setup, tmp_path):
    family, _, processor, video, prompt = setup
    ref = video.ref
    bad = VisionRef(ref.path, ref.frame_indices, ref.height, ref.width, ref.fps,
                    ref.timestamps, "0" * 32)  # fmt: skip
    collator = Collator(processor, family)
    with pytest.raises(GroupRejected, match="re-decode failed"):
        collator.group_sequences(_group(prompt, bad, [[5]], [1.0]), torch.ones(1))
    missing = VisionRef(str(tmp_path / "gone.mp4"), ref.frame_indices, ref.height, ref.width,
                        ref.fps, ref.timestamps, ref.content_hash)  # fmt: skip
    with pytest.raises(GroupRejected, match="not found"):
        collator.group_sequences(_group(prompt, missing, [[5]], [1.0]), torch.ones(1))


def test_text_only_group(setup):
    family, _, processor, _, _ = setup
    collator = Collator(processor, family)
    prompt = torch.tensor(processor.tokenizer("hello there")["input_ids"])
    (mb,) = collator.micro_batches(
        collator.group_sequences(_group(prompt, None, [[5, 6]], [1.0]), torch.ones(1)), 4
    )
    assert mb.vision == {} and mb.num_tokens == 2


@pytest.mark.parametrize("token", ["<|video_pad|>", "<|vision_start|>", "<|image_pad|>"])
def test_completion_with_vision_placeholder_is_rejected(setup, token):
    family, _, processor, video, prompt = setup
    collator = Collator(processor, family)
    placeholder = processor.tokenizer.convert_tokens_to_ids(token)
    group = _group(prompt, video.ref, [[50, placeholder, 70], [80, 90]], [1.0, 0.0])
    with pytest.raises(GroupRejected, match="vision placeholder"):
        collator.group_sequences(group, torch.tensor([1.0, -1.0]))


@pytest.mark.parametrize(
    ("attention", "share"),
    [("sdpa", False), ("reelrl_varlen_sdpa", False), ("reelrl_varlen_sdpa", True)],
)
def test_packed_row_gives_the_padded_log_probs(setup, attention, share):
    """Sequences of different prompts and completion lengths (with a video or text only) packed
    into one row score exactly as when padded into a batch (1e-5): positions restart per
    sequence, the block-causal mask keeps them apart, the LM head runs on the completion
    positions only, and the log-probs come back laid out per sequence."""
    from transformers import AutoModelForImageTextToText

    from learner.collate import Sequence, tokens_per_second
    from learner.objectives import scored_logprobs

    family, path, processor, video, prompt = setup
    collator = Collator(processor, family, tokens_per_second=tokens_per_second(path))
    vision = collator.vision_inputs(video.ref)
    g = torch.Generator().manual_seed(0)
    seqs = [
        Sequence(torch.cat([prompt, torch.randint(100, 1000, (c,), generator=g)]),
                 prompt.numel(), advantage=float(c), vision=vision)
        for c in (5, 17, 9)
    ]  # fmt: skip
    text = torch.tensor(processor.tokenizer("hello there friend")["input_ids"])
    seqs.insert(1, Sequence(torch.cat([text, torch.tensor([5, 6, 7])]), text.numel()))
    packed, padded = collator.pack(seqs, share), collator.collate(seqs)
    # Shared: the video prompt once for the two samples after the text one, its video once.
    copies = 2 if share else 3
    assert packed.input_ids.shape == (1, text.numel() + copies * prompt.numel() + 3 + 31)
    assert packed.vision["video_grid_thw"].shape[0] == copies
    assert packed.scored_positions == 5 + 3 + 17 + 9 == packed.num_tokens
    assert packed.num_sequences == 4 and packed.advantages.tolist() == [5.0, 1.0, 17.0, 9.0]
    from learner.attention import register

    register()  # sdpa: the block mask over the row; ours: SDPA over each sequence's own span
    model = AutoModelForImageTextToText.from_pretrained(path, attn_implementation=attention)
    model.eval()
    with torch.no_grad():
        lp_packed = scored_logprobs(packed, model(**packed.model_inputs()).logits, 0.8, 4)
        lp_padded = scored_logprobs(padded, model(**padded.model_inputs()).logits, 0.8, 0)
    for i in range(len(seqs)):
        ours = lp_packed[i][packed.loss_mask[i].bool()]
        theirs = lp_padded[i][padded.loss_mask[i].bool()]
        assert ours.shape == theirs.shape and torch.allclose(ours, theirs, atol=1e-5), i
    # A token budget splits the sequences in order into rows.
    if not share:
        rows = collator.packed_batches(seqs, seqs[0].input_ids.numel() + seqs[1].input_ids.numel())
        assert [r.num_sequences for r in rows] == [2, 1, 1]
    else:  # the last two share a prompt: it counts once against the budget
        budget = seqs[2].input_ids.numel() + 9
        rows = collator.packed_batches(seqs, budget, share_prompts=True)
        assert [r.num_sequences for r in rows] == [2, 2]

"""Supervised fine-tuning on the learner's engine: SFT examples from dataset records and the
SFT loss (negative log-likelihood of the completion tokens only).

Used by the progressive stages 1 (text reasoning) and 2 (video SFT). An example is a dataset
record (system.data.records) rendered into the same chat prompt the rollout actors use
(actors.prompts), its video decoded under the run's budget (system.data.video), and a target
completion text in the run's output format — e.g. answer-twice:
`\\boxed{A}<think>...</think>\\boxed{A}` — followed by the end-of-turn token. The sequences go
through the same collation, engine, checkpoint and export code as GRPO; only the loss differs.
"""

from __future__ import annotations

from typing import Any

import torch

from actors.prompts import OutputFormat, build_messages, render_prompt
from learner.collate import Collator, Sequence
from learner.grpo import aggregate, token_logprobs
from system.config import ImageConfig, VideoConfig
from system.data.image import DecodedImage, decode_images
from system.data.records import Record, resolve_images, resolve_video
from system.data.video import DecodedVideo, decode_video, processor_kwargs

END_OF_TURN = "<|im_end|>"


def sft_target(record: Record, fmt: OutputFormat, reasoning: str | None = None) -> str:
    """The completion text an SFT example teaches, in output format `fmt`.

    `reasoning` defaults to the record's `meta["reasoning"]` (a reference trace), else a short
    placeholder sentence."""
    answer = record.answer.strip()
    thought = reasoning or str(record.meta.get("reasoning") or "Let me look at the video.")
    if fmt == "answer_twice":
        return f"\\boxed{{{answer}}}<think>{thought}</think>\\boxed{{{answer}}}"
    if fmt == "think_answer":
        return f"<think>{thought}</think><answer>{answer}</answer>"
    if fmt == "thinking_answer":
        return f"<thinking>{thought}</thinking><answer>{answer}</answer>"
    return f"\\boxed{{{answer}}}"


def encode_prompt(
    processor: Any,
    record: Record,
    video: DecodedVideo | None,
    fmt: OutputFormat,
    images: list[DecodedImage] | None = None,
) -> torch.Tensor:
    """Prompt token ids [P] with the video (or image) placeholders expanded, as the rollout
    engine sees them (same messages, chat template and processor options); text alone
    without either."""
    images = images or []
    messages = build_messages(
        record.question, record.problem_type, fmt, record.options or (),
        video=video is not None, images=len(images),
    )  # fmt: skip
    text = render_prompt(processor, messages)
    if images:
        pixels = [image.pixels for image in images]
        return processor(text=[text], images=pixels, return_tensors="pt", do_resize=False)[
            "input_ids"
        ][0]
    if video is None:
        return processor(text=[text], return_tensors="pt")["input_ids"][0]
    out = processor(
        text=[text],
        videos=[video.frames],
        video_metadata=[video.model_metadata()],
        return_tensors="pt",
        **processor_kwargs(),
    )
    return out["input_ids"][0]


def sft_sequence(
    collator: Collator,
    record: Record,
    target: str,
    video_config: VideoConfig,
    root: str,
    fmt: OutputFormat,
    image_config: ImageConfig | None = None,
) -> Sequence:
    """One SFT sequence: the record's prompt (+ video or images, unless text-only), then
    `target` and the end-of-turn."""
    video, vision, images, pictures = None, None, [], None
    if record.video is not None:
        start, end = record.span if record.span else (None, None)
        path = resolve_video(record, root)
        video = decode_video(path, video_config, collator.family, start, end)
        vision = collator.vision_inputs(video.ref)
    elif record.images:
        paths = resolve_images(record, root)
        images = decode_images(paths, image_config or ImageConfig(), collator.family)
        pictures = collator.image_inputs(tuple(image.ref for image in images))
    prompt = encode_prompt(collator.processor, record, video, fmt, images)  # [P]
    collator.check_prompt(prompt, vision, pictures)
    completion = collator.tokenizer(target + END_OF_TURN, add_special_tokens=False)["input_ids"]
    completion = torch.tensor(completion, dtype=torch.int64)  # [C]
    return Sequence(
        input_ids=torch.cat([prompt, completion]),
        prompt_len=prompt.numel(),
        vision=vision,
        group_id=record.id,
        images=pictures,
    )


def sft_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    total_tokens: float | None = None,
    chunk: int = 0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Token-mean NLL of the completion tokens: logits [B, L, V], targets [B, L], mask [B, L].

    Returns (loss, metrics); `total_tokens` is the step-wide count when this is a part;
    `chunk`: positions per chunk of the log-softmax (learner.grpo.token_logprobs)."""
    return nll_loss(token_logprobs(logits, targets, 1.0, chunk), mask, total_tokens)


def nll_loss(
    logprobs: torch.Tensor, mask: torch.Tensor, total_tokens: float | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """Token-mean NLL from the completion tokens' log-probs [B, L] under mask [B, L]."""
    loss = aggregate(-logprobs, mask, "token_mean", total_tokens)
    with torch.no_grad():
        nll = float(aggregate(-logprobs, mask, "token_mean"))
    return loss, {"nll": nll}

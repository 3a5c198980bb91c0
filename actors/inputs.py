"""What a dataset record becomes before generation: its video (or images) decoded under the
run's budget, its prompt rendered in a reward format, and the target its completions are
graded against. Shared by the rollout actor and held-out evaluation. A record whose video or
image cannot be read is skipped, logged and counted, never an error that stops a batch. A
text-only record (no `video`, no `images`) becomes a prompt without either: GRPO trains on
text, image and video questions alike."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from actors.engine import EngineRequest
from actors.prompts import build_messages, render_prompt
from actors.rewards import RewardTarget
from system.config import RunConfig
from system.data.image import DecodedImage, decode_images
from system.data.records import DataError, Record, record_kind, resolve_images, resolve_video
from system.data.video import DecodedVideo, VideoError, decode_video

log = logging.getLogger("reelrl.rollout")


@dataclass
class Prompt:
    """A record ready to generate for: decoded video or images, rendered prompt, reward
    target."""

    record: Record
    video: DecodedVideo | None
    """None for an image or a text-only record."""
    text: str
    target: RewardTarget
    images: tuple[DecodedImage, ...] = ()
    """The record's images, resized, in prompt order."""

    def request(self) -> EngineRequest:
        """What the engine generates for: the rendered prompt and the decoded pixels."""
        return EngineRequest(
            self.text,
            None if self.video is None else self.video.vllm_input(),
            tuple(image.pixels for image in self.images),
        )

    @property
    def kind(self) -> str:
        """`video`, `image` or `text`: what the prompt carries besides its question."""
        return record_kind(self.record)


def reward_target(record: Record) -> RewardTarget:
    """What a record's completions are graded against (times relative to its clip)."""
    return RewardTarget.from_fields(
        record.problem_type,
        record.answer,
        options=record.options,
        spans=record.spans,
        phases=[p.model_dump() for p in record.phases or []],
        time_offset=record.span[0] if record.span else 0.0,
    )


def prepare(
    records: Sequence[Record], config: RunConfig, processor: Any, reward_format: str
) -> tuple[list[Prompt], int]:
    """The prompts of the records whose video or images decode, in `reward_format`; and how
    many records were skipped for an unreadable one."""
    prompts, skipped = [], 0
    for record in records:
        try:
            video, images = _visual(record, config)
        except (VideoError, DataError) as exc:
            log.warning("skipping record %s: %s", record.id, exc)
            skipped += 1
            continue
        messages = build_messages(
            record.question, record.problem_type, reward_format, record.options or (),
            video=video is not None, images=len(images),
        )  # fmt: skip
        text = render_prompt(processor, messages)
        prompts.append(Prompt(record, video, text, reward_target(record), tuple(images)))
    return prompts, skipped


def _visual(record: Record, config: RunConfig) -> tuple[DecodedVideo | None, list[DecodedImage]]:
    """The record's decoded video or images (neither for a text-only record)."""
    family = config.model.family
    if record.images:
        return None, decode_images(resolve_images(record, config.data.root), config.image, family)
    if record.video is None:
        return None, []
    start, end = record.span or (None, None)
    path = resolve_video(record, config.data.root)
    return decode_video(path, config.video, family, start, end), []

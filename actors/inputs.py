"""What a dataset record becomes before generation: its video decoded under the run's budget,
its prompt rendered in a reward format, and the target its completions are graded against.
Shared by the rollout actor and held-out evaluation. A record whose video cannot be read is
skipped, logged and counted, never an error that stops a batch. A text-only record (no
`video`) becomes a prompt without one: GRPO trains on text questions too."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from actors.engine import EngineRequest
from actors.prompts import build_messages, render_prompt
from actors.rewards import RewardTarget
from system.config import RunConfig
from system.data.records import DataError, Record, resolve_video
from system.data.video import DecodedVideo, VideoError, decode_video

log = logging.getLogger("reelrl.rollout")


@dataclass
class Prompt:
    """A record ready to generate for: decoded video, rendered prompt, reward target."""

    record: Record
    video: DecodedVideo | None
    """None for a text-only record."""
    text: str
    target: RewardTarget

    def request(self) -> EngineRequest:
        """What the engine generates for: the rendered prompt and the decoded frames."""
        return EngineRequest(self.text, None if self.video is None else self.video.vllm_input())

    @property
    def kind(self) -> str:
        """`video` or `text`: what the prompt carries besides its question."""
        return "text" if self.video is None else "video"


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
    """The prompts of the records whose video decodes, in `reward_format`; and how many
    records were skipped for an unreadable video."""
    prompts, skipped = [], 0
    for record in records:
        if record.video is None:
            messages = build_messages(
                record.question, record.problem_type, reward_format, record.options or (),
                video=False,
            )  # fmt: skip
            text = render_prompt(processor, messages)
            prompts.append(Prompt(record, None, text, reward_target(record)))
            continue
        start, end = record.span or (None, None)
        try:
            path = resolve_video(record, config.data.root)
            video = decode_video(path, config.video, config.model.family, start, end)
        except (VideoError, DataError) as exc:
            log.warning("skipping record %s: %s", record.id, exc)
            skipped += 1
            continue
        messages = build_messages(
            record.question, record.problem_type, reward_format, record.options or ()
        )
        text = render_prompt(processor, messages)
        prompts.append(Prompt(record, video, text, reward_target(record)))
    return prompts, skipped

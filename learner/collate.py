"""Batch collation for the learner: rollout groups (and SFT examples) to padded micro-batches
of video + text sequences.

A group carries its prompt exactly as the rollout engine tokenised it — the video placeholder
already expanded to N `<|video_pad|>` tokens — and a `VisionRef`. The learner re-decodes the
frames with `system.data.video.decode_ref` (hash-checked), runs the processor's video path on them
(`processor_kwargs()`: no resampling, no resizing) to get `pixel_values_videos`,
`video_grid_thw` (and Qwen2.5-VL's `second_per_grid_ts`), and checks that the prompt's pad
count equals both `grid.prod() / merge²` and the reference's predicted token count. Any
mismatch raises `GroupRejected` with the reason; the worker dead-letters the group. An image
prompt is the same with `ImageRef`s (system.data.image): `pixel_values` and `image_grid_thw`,
and the `<|image_pad|>` count checked against the images' predicted tokens. Sequences
are prompt + completion; the loss mask marks the positions whose next token is a completion
token, so logits at position t are scored against token t + 1. Only the columns from the
shortest prompt's last token on are scored: the model's LM head runs on those alone
(`logits_to_keep`), never on the prompt and its video tokens.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from learner.positions import mrope_positions
from system.config import Family
from system.data.image import ImageError, decode_image_ref
from system.data.video import (
    SPATIAL_MERGE,
    VISION_PLACEHOLDERS,
    VideoError,
    decode_ref,
    processor_kwargs,
)
from system.transport.protocol import ImageRef, RolloutGroup, VisionRef

VIDEO_PAD = "<|video_pad|>"
IMAGE_PAD = "<|image_pad|>"
_PLACEHOLDER = "<|vision_start|><|video_pad|><|vision_end|>"
_IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"


class GroupRejected(ValueError):
    """A group the learner cannot train on; the message is the dead-letter reason."""


@dataclass(frozen=True)
class VisionInputs:
    """Processor outputs for one video."""

    pixel_values_videos: torch.Tensor
    """[patches, C * T_patch * P * P]"""
    video_grid_thw: torch.Tensor
    """[1, 3] (t, h, w) in patches"""
    second_per_grid_ts: torch.Tensor | None
    """[1] seconds per temporal patch (Qwen2.5-VL only)."""
    tokens: int
    """Visual tokens the LLM sees (grid.prod() / merge²)."""


@dataclass(frozen=True)
class ImageInputs:
    """Processor outputs for the images of one prompt."""

    pixel_values: torch.Tensor
    """[patches, C * T_patch * P * P], every image's patches in order"""
    image_grid_thw: torch.Tensor
    """[n, 3] (1, h, w) in patches, one row per image"""
    tokens: int
    """Visual tokens the LLM sees, all images together."""


@dataclass
class Sequence:
    """One training sequence: prompt + completion ids, what to score, and its video."""

    input_ids: torch.Tensor
    """[T] int64"""
    prompt_len: int
    advantage: float = 1.0
    behaviour_logprobs: torch.Tensor | None = None
    """[T - prompt_len] float32 (None for SFT)."""
    vision: VisionInputs | None = None
    group_id: str = ""
    images: ImageInputs | None = None


@dataclass
class MicroBatch:
    """Padded tensors of a few sequences; `weight` 0 marks a filler batch that only keeps the
    ranks' collectives in step (its loss is multiplied by 0)."""

    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    mm_token_type_ids: torch.Tensor  # [B, L]
    # Scored columns only: K = L - score_from positions, from the first that predicts a
    # completion token (the shortest prompt's last token) to the end. The model applies its LM
    # head to these K positions alone (`logits_to_keep`), so logits are [B, K, V].
    targets: torch.Tensor  # [B, K]: the token after each scored position
    loss_mask: torch.Tensor  # [B, K]: 1 where targets[k] is a completion token
    behaviour_logprobs: torch.Tensor  # [B, K], aligned with targets
    advantages: torch.Tensor  # [B]
    vision: dict[str, torch.Tensor] = field(default_factory=dict)
    weight: float = 1.0
    position_ids: torch.Tensor | None = None  # [3, B, L] (Qwen2.5-VL, see learner.positions)
    score_from: int = 0
    """Column of input_ids where the scored positions start (targets[:, 0] follows it)."""
    packed: PackedLayout | None = None
    """Set when the sequences are packed into one row (`Collator.pack`)."""

    @property
    def num_tokens(self) -> int:
        return int(self.loss_mask.sum())

    @property
    def num_sequences(self) -> int:
        return int(self.advantages.numel())

    @property
    def scored_positions(self) -> int:
        """K: the positions the LM head runs on (padded: the last K of each row)."""
        if self.packed is not None:
            return int(self.packed.keep.numel())
        return int(self.targets.shape[1])

    def model_inputs(self) -> dict[str, Any]:
        """The forward's keyword arguments; logits come out for the scored positions only."""
        if self.packed is not None:
            # One row, no padding and no attention mask: the model builds a block-causal mask
            # from the text positions (row 0 of position_ids), which restart at each sequence.
            return {
                "input_ids": self.input_ids,
                "mm_token_type_ids": self.mm_token_type_ids,
                **self.vision,
                "position_ids": self.position_ids,
                "logits_to_keep": self.packed.keep,
                "use_cache": False,  # with a cache the model would not look for packing
                # The sequences' boundaries, for varlen attention (FlashAttention-2's keywords)
                # and the segments learner.attention's SDPA runs (shared prompts included).
                **self.packed.varlen(),
                "reelrl_segments": self.packed.segments,
            }
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "mm_token_type_ids": self.mm_token_type_ids,
            **self.vision,
            **({} if self.position_ids is None else {"position_ids": self.position_ids}),
            "logits_to_keep": self.scored_positions,
        }

    def head_targets(self) -> torch.Tensor:
        """The target of each position the logits come out for: [B, K], or [1, K] packed."""
        return self.targets if self.packed is None else self.packed.targets

    def per_sequence(self, values: torch.Tensor) -> torch.Tensor:
        """Per-position values in the logits' layout -> [B, C], aligned with `targets`
        (identity unless packed)."""
        if self.packed is None:
            return values
        rows, cols = self.packed.rows, self.packed.cols
        out = values.new_zeros(self.targets.shape)
        return out.index_put((rows, cols), values.reshape(-1))

    def filler(self) -> MicroBatch:
        """The same inputs with weight 0 (for a rank with fewer micro-batches than others)."""
        return replace(self, weight=0.0)

    def to(self, device: torch.device | str) -> MicroBatch:
        moved = {
            k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in vars(self).items()
        }
        moved["vision"] = {k: v.to(device) for k, v in self.vision.items()}
        if self.packed is not None:
            moved["packed"] = PackedLayout(*(t.to(device) for t in vars(self.packed).values()))
        return MicroBatch(**moved)


@dataclass(frozen=True)
class PackedLayout:
    """Where the scored positions of a packed row are: K of them, in sequence order."""

    keep: torch.Tensor
    """[K] indices into the packed row that the LM head runs on."""
    targets: torch.Tensor
    """[1, K] the token after each kept position."""
    rows: torch.Tensor
    """[K] the sequence (row of `MicroBatch.targets`) each kept position belongs to."""
    cols: torch.Tensor
    """[K] its column there."""
    bounds: torch.Tensor
    """[S + 1] int32: where each attention segment starts in the row, then its length."""
    segments: torch.Tensor
    """[S, 4] int64 per segment: query start, end, and the span of the row it also attends
    to (a shared prompt; start == end: none)."""

    @property
    def shares_prompts(self) -> bool:
        return bool((self.segments[:, 3] > self.segments[:, 2]).any())

    def varlen(self) -> dict[str, Any]:
        """FlashAttention-2's varlen keywords; none when prompts are shared (no such kernel
        takes a shared prefix: only learner.attention's SDPA runs those rows)."""
        if self.shares_prompts:
            return {}
        longest = int((self.bounds[1:] - self.bounds[:-1]).max())
        return {"cu_seq_lens_q": self.bounds, "cu_seq_lens_k": self.bounds,
                "max_length_q": longest, "max_length_k": longest}  # fmt: skip


class Collator:
    """Turns groups into sequences and sequences into micro-batches for one model family."""

    def __init__(
        self,
        processor: Any,
        family: Family,
        cache_videos: int = 8,
        tokens_per_second: float | None = None,
    ) -> None:
        """`tokens_per_second` (the vision config's) turns on explicit Qwen2.5-VL positions
        (learner.positions), as the rollout engine computes them."""
        self.processor = processor
        self.family = family
        self.tokens_per_second = tokens_per_second if family == "qwen2_5_vl" else None
        self.tokenizer = processor.tokenizer
        self.video_pad_id = int(self.tokenizer.convert_tokens_to_ids(VIDEO_PAD))
        self.image_pad_id = int(self.tokenizer.convert_tokens_to_ids(IMAGE_PAD))
        self.pad_id = int(self.tokenizer.pad_token_id)
        # Placeholders the model's forward counts against the vision features: a completion
        # that contains one would break the forward on this rank (and hang the others).
        self.vision_ids = torch.tensor(
            [int(self.tokenizer.convert_tokens_to_ids(t)) for t in VISION_PLACEHOLDERS]
        )
        self._cache: OrderedDict[str, VisionInputs | ImageInputs] = OrderedDict()
        self._cache_size = cache_videos

    # ------------------------------------------------------------------ vision

    def vision_inputs(self, ref: VisionRef) -> VisionInputs:
        """Re-decode `ref` and run the processor's video path (cached by content hash)."""
        key = f"{ref.path}|{ref.content_hash}"
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        try:
            video = decode_ref(ref, self.family)
        except VideoError as exc:
            raise GroupRejected(f"video re-decode failed: {exc}") from None
        out = self.processor(
            text=[_PLACEHOLDER],
            videos=[video.frames],
            video_metadata=[video.model_metadata()],
            return_tensors="pt",
            **processor_kwargs(),
        )
        grid = out["video_grid_thw"]  # [1, 3]
        tokens = int(grid.prod()) // SPATIAL_MERGE**2
        if tokens != video.tokens:
            raise GroupRejected(
                f"processor made {tokens} video tokens from {ref.path}, the reference predicts "
                f"{video.tokens}"
            )
        spg = out.get("second_per_grid_ts")
        inputs = VisionInputs(
            pixel_values_videos=out["pixel_values_videos"],
            video_grid_thw=grid,
            second_per_grid_ts=None if spg is None else torch.as_tensor(spg, dtype=torch.float32),
            tokens=tokens,
        )
        return self._remember(key, inputs)

    def image_inputs(self, refs: tuple[ImageRef, ...]) -> ImageInputs | None:
        """Re-decode a prompt's images and run the processor's image path (cached by their
        content hashes); None for no images."""
        if not refs:
            return None
        key = "|".join(f"{r.path}|{r.content_hash}" for r in refs)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]  # type: ignore[return-value]
        try:
            images = [decode_image_ref(ref, self.family) for ref in refs]
        except ImageError as exc:
            raise GroupRejected(f"image re-decode failed: {exc}") from None
        out = self.processor(
            text=[_IMAGE_PLACEHOLDER * len(images)],
            images=[image.pixels for image in images],
            return_tensors="pt",
            do_resize=False,
        )
        grid = out["image_grid_thw"]  # [n, 3]
        tokens = int(grid.prod(dim=1).sum()) // SPATIAL_MERGE**2
        predicted = sum(image.tokens for image in images)
        if tokens != predicted:
            raise GroupRejected(
                f"processor made {tokens} image tokens from {refs[0].path} and the prompt's "
                f"other images, the references predict {predicted}"
            )
        inputs = ImageInputs(out["pixel_values"], grid, tokens)
        return self._remember(key, inputs)

    def _remember(self, key: str, inputs: Any) -> Any:
        self._cache[key] = inputs
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return inputs

    def check_prompt(
        self,
        prompt_ids: torch.Tensor,
        vision: VisionInputs | None,
        images: ImageInputs | None = None,
    ) -> None:
        """The prompt's video-pad and image-pad counts must equal the visual tokens of its
        video and of its images."""
        for what, pad_id, inputs in (
            ("video", self.video_pad_id, vision),
            ("image", self.image_pad_id, images),
        ):
            pads = int((prompt_ids == pad_id).sum())
            want = 0 if inputs is None else inputs.tokens
            if pads != want:
                raise GroupRejected(
                    f"prompt has {pads} {what}-pad tokens but the re-decoded {what} gives "
                    f"{want}: the prompt was tokenised with a different plan or processor"
                )

    # ------------------------------------------------------------------ groups

    def group_sequences(self, group: RolloutGroup, advantages: torch.Tensor) -> list[Sequence]:
        """The G sequences of a group; advantages [G]. Raises GroupRejected."""
        prompt = torch.from_numpy(group.prompt_ids.astype(np.int64))  # [P]
        vision = None if group.vision is None else self.vision_inputs(group.vision)
        images = self.image_inputs(group.images)
        self.check_prompt(prompt, vision, images)
        out = []
        for sample, adv in zip(group.samples, advantages.tolist(), strict=True):
            completion = torch.from_numpy(sample.completion_ids.astype(np.int64))  # [C]
            if completion.numel() == 0:
                continue  # nothing to score
            if bool(torch.isin(completion, self.vision_ids).any()):
                raise GroupRejected(
                    "a completion contains vision placeholder tokens (the rollout engine must "
                    "not sample them)"
                )
            out.append(
                Sequence(
                    input_ids=torch.cat([prompt, completion]),
                    prompt_len=prompt.numel(),
                    advantage=float(adv),
                    behaviour_logprobs=torch.from_numpy(sample.logprobs.astype(np.float32)),
                    vision=vision,
                    group_id=group.group_id,
                    images=images,
                )
            )
        if not out:
            raise GroupRejected("every completion of the group is empty")
        return out

    # ------------------------------------------------------------------ batching

    def micro_batches(self, seqs: list[Sequence], size: int) -> list[MicroBatch]:
        """Sequences in order, `size` per micro-batch (longest first would pad less, but the
        order keeps a step reproducible across restarts)."""
        return [self.collate(seqs[i : i + size]) for i in range(0, len(seqs), size)]

    def packed_batches(
        self, seqs: list[Sequence], max_tokens: int, share_prompts: bool = False
    ) -> list[MicroBatch]:
        """Sequences in order, packed into rows of at most `max_tokens` tokens (a longer
        sequence gets a row of its own; a shared prompt counts once)."""
        out: list[MicroBatch] = []
        part: list[Sequence] = []
        size = 0
        for s in seqs:
            n = s.input_ids.numel()
            if share_prompts and part and _same_prompt(part[-1], s):
                n -= s.prompt_len
            if part and size + n > max_tokens:
                out.append(self.pack(part, share_prompts))
                part, size = [], s.input_ids.numel()
            else:
                size += n
            part.append(s)
        if part:
            out.append(self.pack(part, share_prompts))
        return out

    def pack(self, seqs: list[Sequence], share_prompts: bool = False) -> MicroBatch:
        """Sequences concatenated into one row [1, T], no padding. Positions restart at every
        sequence: row 0 of `position_ids` [4, 1, T] holds each sequence's text positions (the
        model derives a block-causal mask from them), rows 1-3 its multimodal RoPE positions
        (learner.positions, as the rollout engine computes them). The LM head runs on the
        completion-predicting positions only; targets, mask and behaviour log-probs are laid
        out per sequence [B, C] (C: the longest completion).

        `share_prompts`: consecutive sequences with the same prompt (a group's G samples) put
        it, and its video, in the row once, followed by each completion, which attends to the
        prompt and to itself (`PackedLayout.segments`; only learner.attention's SDPA reads
        them — the caller must load the model with it)."""
        if not seqs:
            raise ValueError("pack needs at least one sequence")
        if any(s.input_ids.numel() <= s.prompt_len or s.prompt_len < 1 for s in seqs):
            raise ValueError("every sequence needs a prompt and at least one completion token")
        b = len(seqs)
        width = max(s.input_ids.numel() - s.prompt_len for s in seqs)
        targets = torch.full((b, width), self.pad_id, dtype=torch.int64)  # [B, C]
        mask = torch.zeros(b, width, dtype=torch.float32)  # [B, C]
        behaviour = torch.zeros(b, width, dtype=torch.float32)  # [B, C]
        pieces, positions, visions, pictures = [], [], [], []
        keep, rows, cols, segments, offset = [], [], [], [], 0
        for block in _prompt_blocks(seqs, share_prompts):
            first = seqs[block[0]]
            p = first.prompt_len
            prompt = first.input_ids[:p]
            types = self.processor.create_mm_token_type_ids([prompt.tolist()])[0]
            rope = self._rope_positions(types, first.vision, first.images)  # [3, P]
            pieces.append(prompt)
            positions.append(torch.cat([torch.arange(p).unsqueeze(0), rope]))
            if first.vision is not None:
                visions.append(first.vision)
            if first.images is not None:
                pictures.append(first.images)
            start, offset = offset, offset + p
            segments.append((start, offset, start, start))  # the prompt: causal on itself
            for i in block:
                s = seqs[i]
                completion = s.input_ids[p:]
                c = completion.numel()
                targets[i, :c] = completion
                mask[i, :c] = 1.0
                if s.behaviour_logprobs is not None:
                    behaviour[i, :c] = s.behaviour_logprobs
                if len(block) == 1:  # the row continues the prompt: one plain sequence
                    segments[-1] = (start, offset + c, start, start)
                else:
                    segments.append((offset, offset + c, start, start + p))
                # The prompt's last position predicts the first token; each completion token
                # but the last predicts the next.
                keep.append(torch.cat([torch.tensor([start + p - 1]),
                                       torch.arange(offset, offset + c - 1)]))  # fmt: skip
                rows.append(torch.full((c,), i, dtype=torch.int64))
                cols.append(torch.arange(c))
                pieces.append(completion)
                text = torch.arange(p, p + c).unsqueeze(0)
                after = int(rope.max()) + 1 + torch.arange(c)  # text after the prompt
                positions.append(torch.cat([text, after.expand(3, c)]))
                offset += c
        ids = torch.cat(pieces).unsqueeze(0)  # [1, T]
        types = torch.tensor(self.processor.create_mm_token_type_ids(ids.tolist()))  # [1, T]
        spans = torch.tensor(segments, dtype=torch.int64)  # [S, 4]
        layout = PackedLayout(
            keep=torch.cat(keep),
            targets=torch.cat([t[m.bool()] for t, m in zip(targets, mask, strict=True)])[None],
            rows=torch.cat(rows),
            cols=torch.cat(cols),
            bounds=torch.cat([spans[:, 0], spans[-1:, 1]]).to(torch.int32),
            segments=spans,
        )
        return MicroBatch(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            mm_token_type_ids=types,
            targets=targets,
            loss_mask=mask,
            behaviour_logprobs=behaviour,
            advantages=torch.tensor([s.advantage for s in seqs], dtype=torch.float32),
            vision=_stack_vision(visions, pictures),
            position_ids=torch.cat(positions, dim=1).unsqueeze(1),  # [4, 1, T]
            packed=layout,
        )

    def _rope_positions(
        self, types: list[int], vision: VisionInputs | None, images: ImageInputs | None
    ) -> torch.Tensor:
        """[3, n] multimodal RoPE positions of one sequence, either family."""
        if self.family == "qwen2_5_vl":
            if self.tokens_per_second is None:
                raise ValueError(
                    "packing Qwen2.5-VL sequences needs vision_config.tokens_per_second in the "
                    "model's config.json"
                )
            return self._positions(types, vision, images)
        # Qwen3-VL: every frame is its own vision run (timestamps in text between them), t = 1.
        grids = _image_grids(images)
        if vision is not None:
            t, h, w = (int(x) for x in vision.video_grid_thw[0])
            grids += [(1, h, w)] * t
        return mrope_positions(types, grids, [1.0] * len(grids), SPATIAL_MERGE)

    def collate(self, seqs: list[Sequence]) -> MicroBatch:
        """Right-pad sequences into one micro-batch."""
        if not seqs:
            raise ValueError("collate needs at least one sequence")
        length = max(s.input_ids.numel() for s in seqs)
        start = min(s.prompt_len for s in seqs) - 1  # first scored column
        if start < 0 or any(s.input_ids.numel() <= s.prompt_len for s in seqs):
            raise ValueError("every sequence needs a prompt and at least one completion token")
        b, k = len(seqs), length - start
        ids = torch.full((b, length), self.pad_id, dtype=torch.int64)  # [B, L]
        attn = torch.zeros(b, length, dtype=torch.int64)  # [B, L]
        targets = torch.full((b, k), self.pad_id, dtype=torch.int64)  # [B, K]
        mask = torch.zeros(b, k, dtype=torch.float32)  # [B, K]
        behaviour = torch.zeros(b, k, dtype=torch.float32)  # [B, K]
        for i, s in enumerate(seqs):
            n, p = s.input_ids.numel(), s.prompt_len
            ids[i, :n] = s.input_ids
            attn[i, :n] = 1
            targets[i, : n - 1 - start] = s.input_ids[start + 1 :]
            mask[i, p - 1 - start : n - 1 - start] = 1.0
            if s.behaviour_logprobs is not None:
                behaviour[i, p - 1 - start : n - 1 - start] = s.behaviour_logprobs
        types = torch.tensor(self.processor.create_mm_token_type_ids(ids.tolist()))  # [B, L]
        positions = None
        if self.tokens_per_second is not None:
            positions = torch.zeros(3, b, length, dtype=torch.int64)  # [3, B, L]
            for i, s in enumerate(seqs):
                n = s.input_ids.numel()
                positions[:, i, :n] = self._positions(types[i, :n].tolist(), s.vision, s.images)
        return MicroBatch(
            position_ids=positions,
            input_ids=ids,
            attention_mask=attn,
            mm_token_type_ids=types * attn,
            targets=targets,
            loss_mask=mask,
            behaviour_logprobs=behaviour,
            advantages=torch.tensor([s.advantage for s in seqs], dtype=torch.float32),
            vision=_stack_vision(
                [s.vision for s in seqs if s.vision is not None],
                [s.images for s in seqs if s.images is not None],
            ),
            score_from=start,
        )

    def _positions(
        self, types: list[int], vision: VisionInputs | None, images: ImageInputs | None
    ) -> torch.Tensor:
        """[3, n] Qwen2.5-VL positions: images run at t = 0, a video's temporal index spaced
        by its seconds per grid."""
        grids = _image_grids(images)
        factors = [1.0] * len(grids)
        if vision is not None:
            t, h, w = (int(x) for x in vision.video_grid_thw[0])
            spg = vision.second_per_grid_ts
            grids.append((t, h, w))
            factors.append((1.0 if spg is None else float(spg[0])) * self.tokens_per_second)
        return mrope_positions(types, grids, factors, SPATIAL_MERGE)


def _image_grids(images: ImageInputs | None) -> list[tuple[int, int, int]]:
    if images is None:
        return []
    return [(int(t), int(h), int(w)) for t, h, w in images.image_grid_thw.tolist()]


def _same_prompt(a: Sequence, b: Sequence) -> bool:
    p = a.prompt_len
    return (
        p == b.prompt_len
        and a.vision is b.vision
        and a.images is b.images
        and torch.equal(a.input_ids[:p], b.input_ids[:p])
    )


def _prompt_blocks(seqs: list[Sequence], share: bool) -> list[list[int]]:
    """Indices of `seqs` in runs that share one prompt (each alone unless `share`)."""
    blocks: list[list[int]] = []
    for i, s in enumerate(seqs):
        if share and blocks and _same_prompt(seqs[blocks[-1][0]], s):
            blocks[-1].append(i)
        else:
            blocks.append([i])
    return blocks


def _stack_vision(videos: list[VisionInputs], images: list[ImageInputs]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    if images:
        out["pixel_values"] = torch.cat([i.pixel_values for i in images])
        out["image_grid_thw"] = torch.cat([i.image_grid_thw for i in images])
    if not videos:
        return out
    out["pixel_values_videos"] = torch.cat([v.pixel_values_videos for v in videos])
    out["video_grid_thw"] = torch.cat([v.video_grid_thw for v in videos])
    if videos[0].second_per_grid_ts is not None:
        out["second_per_grid_ts"] = torch.cat([v.second_per_grid_ts for v in videos])
    return out


def tokens_per_second(model_path: str | Path) -> float | None:
    """The vision config's temporal position rate (Qwen2.5-VL), None when it has none."""
    config = json.loads((Path(model_path) / "config.json").read_text())
    value = config.get("vision_config", {}).get("tokens_per_second")
    return None if value is None else float(value)

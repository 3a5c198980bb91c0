"""Keeps the vision tower's calls the same on every learner rank when a stage mixes text,
image and video records.

Under ZeRO-3 every module's parameters are gathered from all ranks when it runs (and again in
backward): a collective, so every rank must run the same modules in the same order. The
Qwen-VL forward embeds the tokens, then runs the vision tower once for the micro-batch's
images and once for its videos, only when it has them; a rank holding a video micro-batch
beside one holding text would issue different collectives and hang. The ranks agree once per
step on which kinds the step holds anywhere (`kinds_of`, one all-reduce); a micro-batch that
lacks one of them runs the tower on a one-token dummy input right after the token embedding
(`padded`: a forward hook on it), where the real images would be, and adds the output times
zero to the embeddings, so that backward also runs through the tower as often and in the same
place as on the other ranks. Values and gradients are unchanged; the cost is one tower call
on 4 patches per missing kind. (verl does the same for FSDP.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch

KINDS = ("pixel_values", "pixel_values_videos")
"""The vision inputs of a micro-batch that each make one tower call: images, videos."""


def kinds_of(vision: dict[str, torch.Tensor]) -> list[float]:
    """[has images, has videos] of one micro-batch's vision inputs, as 0/1."""
    return [1.0 if key in vision else 0.0 for key in KINDS]


def missing(vision: dict[str, torch.Tensor], step: Sequence[float]) -> int:
    """Tower calls this micro-batch must add: kinds the step holds that it lacks."""
    return sum(1 for have, want in zip(kinds_of(vision), step, strict=True) if want and not have)


def pad_vision(model: Any, count: int, device: torch.device | str) -> torch.Tensor | None:
    """Run the vision tower `count` times on a dummy image of one merged token (2x2 patches)
    and return the sum of every output (to be added times zero); None for 0."""
    if count == 0:
        return None
    config = model.config.vision_config
    patch_dim = 3 * config.temporal_patch_size * config.patch_size**2
    merge = config.spatial_merge_size
    pixels = torch.zeros(merge * merge, patch_dim, device=device)  # [4, C * T * P * P]
    grid = torch.tensor([[1, merge, merge]], device=device)  # [1, 3]
    total = None
    for _ in range(count):
        out = _sum_tensors(model.get_image_features(pixels, grid))
        total = out if total is None else total + out
    return total


@contextlib.contextmanager
def padded(model: Any, count: int) -> Iterator[None]:
    """Within this block, each forward of `model` (an HF Qwen-VL model) runs the vision tower
    `count` more times right after its token embedding, the outputs added to the embeddings
    times zero."""
    if count == 0:
        yield
        return

    def after_embedding(module: Any, args: Any, output: torch.Tensor) -> torch.Tensor:
        extra = pad_vision(model, count, output.device)
        return output + 0.0 * extra.to(output.dtype)

    handle = model.get_input_embeddings().register_forward_hook(after_embedding)
    try:
        yield
    finally:
        handle.remove()


def _sum_tensors(value: Any) -> torch.Tensor:
    """Sum of every floating tensor in a model output (tensors, tuples, ModelOutputs)."""
    if isinstance(value, torch.Tensor):
        return value.float().sum() if value.is_floating_point() else value.new_zeros(()).float()
    if isinstance(value, dict):
        parts = [_sum_tensors(v) for v in value.values() if v is not None]
    elif isinstance(value, list | tuple):
        parts = [_sum_tensors(v) for v in value if v is not None]
    else:
        parts = []
    return torch.stack(parts).sum() if parts else torch.zeros(())

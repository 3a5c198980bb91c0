"""Image decoding and the visual-token budget of image records, shared by rollout actors and
the learner.

Owns how the images of a record become model input: each image is read with Pillow (EXIF
orientation applied, converted to RGB) and resized once, here, to a size on the family's grid
(28 px Qwen2.5-VL, 32 px Qwen3-VL) inside [min_pixels, max_pixels] and inside the record's
share of `image.max_image_tokens` (the budget is split evenly over its images). The processor
then runs with `do_resize=False`, so the token count predicted here, (H/f)·(W/f) per image, is
the one the model sees — in vLLM and on the learner alike. An `ImageRef` names the file, the
size and a hash of the resized pixels; another process re-decodes bit-identical pixels from it
or raises. An unreadable image raises `ImageError` (a `VideoError`: callers skip the record
and count it exactly as they do an unreadable video).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from system.config import Family, ImageConfig
from system.data.video import (
    TEMPORAL_PATCH,
    VideoError,
    fit_frame_size,
    frames_hash,
    grid_factor,
    visual_tokens,
)
from system.transport.protocol import ImageRef


class ImageError(VideoError):
    """An image that cannot be used (missing, corrupt, empty, too many for the budget); the
    message names the file. Callers skip the record and count it, the run goes on."""


@dataclass(frozen=True)
class DecodedImage:
    """Resized pixels [H, W, 3] uint8, the reference to redo them, and their token count."""

    pixels: np.ndarray
    ref: ImageRef
    tokens: int


def image_size(
    height: int, width: int, count: int, config: ImageConfig, family: Family
) -> tuple[int, int]:
    """The size one of a record's `count` images is resized to: on the grid, within
    [min_pixels, max_pixels] and within its even share of `max_image_tokens` (max wins)."""
    f = grid_factor(family)
    share = config.max_image_tokens // max(count, 1)
    if share < 1:
        raise ValueError(
            f"max_image_tokens={config.max_image_tokens} cannot give {count} images a token each"
        )
    cap = min(config.max_pixels, share * f * f)
    return fit_frame_size(height, width, f, min(config.min_pixels, cap), cap)


def image_tokens(height: int, width: int, family: Family) -> int:
    """Tokens the LLM sees for one image already on the grid: (H/f)·(W/f) (the processor
    repeats an image to fill its one temporal patch)."""
    return visual_tokens(TEMPORAL_PATCH, height, width, family)


def decode_images(paths: Sequence[str], config: ImageConfig, family: Family) -> list[DecodedImage]:
    """Read and resize a record's images under the budget; ImageError naming the file."""
    if len(paths) > config.max_images:
        raise ImageError(
            f"{paths[0]}: the record has {len(paths)} images, over image.max_images="
            f"{config.max_images}"
        )
    out = []
    for path in paths:
        image = _open(path)
        h, w = image_size(image.height, image.width, len(paths), config, family)
        pixels = _resized(image, h, w)
        ref = ImageRef(path=path, height=h, width=w, content_hash=frames_hash(pixels))
        out.append(DecodedImage(pixels, ref, image_tokens(h, w, family)))
    return out


def decode_image_ref(ref: ImageRef, family: Family, verify: bool = True) -> DecodedImage:
    """Re-decode exactly the pixels of `ref` (another process, the learner); with `verify`, a
    hash mismatch (the file changed, or a different Pillow build) raises ImageError."""
    pixels = _resized(_open(ref.path), ref.height, ref.width)
    digest = frames_hash(pixels)
    if verify and digest != ref.content_hash:
        raise ImageError(
            f"{ref.path}: re-decoded pixels differ from the reference (hash {digest[:12]} != "
            f"{ref.content_hash[:12]}); the file changed since the rollout or the decoder differs"
        )
    return DecodedImage(pixels, ref, image_tokens(ref.height, ref.width, family))


def _open(path: str):  # -> PIL.Image.Image
    from PIL import Image, ImageOps, UnidentifiedImageError

    if "://" in path:
        raise ImageError(f"{path}: images are read from files; URIs are not supported")
    if not os.path.isfile(path):
        raise ImageError(f"{path}: image file not found")
    if os.path.getsize(path) == 0:
        raise ImageError(f"{path}: image file is empty")
    try:
        with Image.open(path) as image:
            image.load()
            # As the Qwen-VL processors' loaders: camera rotation applied, then plain RGB.
            return ImageOps.exif_transpose(image).convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageError(f"{path}: cannot decode image: {exc}") from None


def _resized(image, height: int, width: int) -> np.ndarray:  # [H, W, 3] uint8
    from PIL import Image

    if (image.height, image.width) != (height, width):
        image = image.resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.uint8).copy()

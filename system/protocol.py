"""Wire messages shared by rollout actors and the learner.

Owns the typed records that cross process boundaries. `VisionRef` is how a video travels:
never as pixels, always as a reference from which any process re-decodes bit-identical frames
with system.video.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VisionRef:
    """Everything needed to re-decode the exact frames a rollout saw."""

    path: str
    """Video file path (absolute, or as resolved by the producer) or URI."""
    frame_indices: tuple[int, ...]
    """Absolute frame indices in the file, in order."""
    height: int
    """Frame height after resizing to the model grid."""
    width: int
    """Frame width after resizing to the model grid."""
    fps: float
    """Native frame rate of the file."""
    timestamps: tuple[float, ...]
    """Presentation time (seconds) of each sampled frame."""
    content_hash: str
    """Hash of the decoded frames; a re-decode must reproduce it."""
    start: float | None = None
    """Start (seconds) of the span the frames were sampled from, if any."""
    end: float | None = None
    """End (seconds) of the span the frames were sampled from, if any."""

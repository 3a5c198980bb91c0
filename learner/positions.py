"""Multimodal RoPE positions of Qwen2.5-VL sequences, computed the way the model was trained
and the way vLLM computes them: text continues at (largest position so far) + 1, and a video's
temporal index is `int(t * second_per_grid * tokens_per_second)`.

transformers 5.x resumes text after a video at (start + max(h, w) / merge) instead, ignoring
the temporal extent; for any clip whose scaled temporal index outgrows its spatial grid the
learner's positions then differ from the rollout engine's, and its log-probs with them. The
learner therefore passes these positions explicitly (`position_ids`, [3, B, L]). Qwen3-VL
gives every frame its own segment with timestamps in text; both libraries agree there, so
its positions are left to the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

TEXT = 0


def mrope_positions(
    token_types: Sequence[int],
    grids: Sequence[tuple[int, int, int]],
    time_factors: Sequence[float],
    spatial_merge: int,
) -> torch.Tensor:
    """Positions [3, L] (temporal, height, width) of one unpadded sequence.

    `token_types` marks each token: 0 text, else a vision token (one run per image/video);
    `grids` are the runs' (t, h, w) in patches, in order; `time_factors` the temporal spacing
    of each run (second_per_grid * tokens_per_second for videos, 1 for images)."""
    types = np.asarray(token_types)
    out: list[np.ndarray] = []
    start, run, n = 0, 0, len(types)
    i = 0
    while i < n:
        j = i + 1
        while j < n and types[j] == types[i]:
            j += 1
        if types[i] == TEXT:
            block = np.broadcast_to(np.arange(j - i), (3, j - i)) + start
        else:
            if run >= len(grids):
                raise ValueError(f"vision run {run + 1} has no grid ({len(grids)} given)")
            t, h, w = grids[run]
            index = np.indices((t, h // spatial_merge, w // spatial_merge)).reshape(3, -1)
            index[0] = (index[0] * time_factors[run]).astype(np.int64)
            if index.shape[1] != j - i:
                raise ValueError(
                    f"vision run {run + 1} has {j - i} tokens but its grid {t}x{h}x{w} "
                    f"(merge {spatial_merge}) needs {index.shape[1]}"
                )
            block = index + start
            run += 1
        out.append(block)
        start = int(block.max()) + 1
        i = j
    if run != len(grids):
        raise ValueError(f"{len(grids)} grids for {run} vision runs")
    positions = np.concatenate(out, axis=1) if out else np.zeros((3, 0), dtype=np.int64)
    return torch.from_numpy(positions.astype(np.int64))

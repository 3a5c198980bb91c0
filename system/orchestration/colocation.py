"""One GPU shared by the learner and the rollout engines (`resources.colocate` on a GPU): the
order in which they hand it over, so that neither ever needs its full share while the other
holds its own.

- The engines start first (vLLM sizes its share of the device), then **sleep** (level 1:
  weights to host memory, KV cache released) before the learner is built.
- Before a weight push the engines wake their **weights only**; the update lands; then the
  **KV cache** is allocated again (vLLM's `wake_up(tags)`): the update never needs room for
  both the cache and the incoming buckets.
- The learner moves its optimizer state to host memory after each export (and empties its
  cache after each step) while the engines generate; it takes it back before its next step
  (`learner.worker`, `resources.offload_optimizer`).
- After generating, the engines sleep again before the learner steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

WEIGHTS = "weights"
KV_CACHE = "kv_cache"
SLEEP_LEVEL = 1
"""vLLM sleep level 1: weights offloaded to host memory (kept), KV cache discarded."""


class Handover:
    """The engines' side of the hand-overs; `call` waits for a list of Ray refs (ray.get)."""

    def __init__(self, engines: Sequence[Any], call: Callable[[list[Any]], Any]) -> None:
        self.engines = list(engines)
        self.call = call

    def release(self) -> None:
        """The engines give the GPU to the learner."""
        self.call([e.sleep.remote(SLEEP_LEVEL) for e in self.engines])

    def refill(self, push: Callable[[], T] | None = None) -> T | None:
        """The engines take the GPU back: weights, then `push()` (a weight update), then the
        KV cache. Returns what `push` returned."""
        self.call([e.wake_up.remote([WEIGHTS]) for e in self.engines])
        out = push() if push is not None else None
        self.call([e.wake_up.remote([KV_CACHE]) for e in self.engines])
        return out

"""Confidence-gated inference (VideoAuto-R1): answer first, think only when unsure.

A greedy first pass of the answer -> think -> answer format stops at `<think>`. Its confidence
is exp(mean log-prob) of the tokens that carry the content of the first `\\boxed{}`. When the
confidence reaches tau (0.97 Qwen2.5-VL, 0.98 Qwen3-VL) and the first answer is not the
fallback phrase, that answer is final; otherwise the same sequence continues through
`<think>` to the second box. Token -> character mapping is done by decoding prefixes of the
completion (`char_spans`), so multi-byte characters split over tokens are attributed to every
token that carries part of them. The math (`char_spans`, `box_token_indices`, `confidence`,
`should_exit`, `decide`) is pure; `GatedInference` runs the passes on a `RolloutEngine`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from actors.engine import EngineRequest, RolloutEngine, SampleSpec
from actors.rewards.extract import THINK_OPEN, extract_two_answers, find_boxes, is_fallback

Mode = Literal["direct", "always_think", "gated"]
MODES: tuple[Mode, ...] = ("direct", "always_think", "gated")
DEFAULT_TAU: dict[str, float] = {"qwen2_5_vl": 0.97, "qwen3_vl": 0.98}
"""Gating thresholds of VideoAuto-R1 per model family."""
_INCOMPLETE = "\ufffd"


def default_tau(family: str, tau: float | None = None) -> float:
    """`tau` when given, else the family's VideoAuto-R1 threshold."""
    return DEFAULT_TAU[family] if tau is None else tau


# --------------------------------------------------------------------------- pure math


def char_spans(prefix_texts: Sequence[str]) -> list[tuple[int, int]]:
    """Character span [start, end) of each token in the final text.

    `prefix_texts[i]` is the decode of tokens 0..i. A prefix ending in U+FFFD is an incomplete
    multi-byte character: its token shares the span of the token that completes it.
    """
    spans: list[tuple[int, int]] = []
    done = 0
    pending: list[int] = []
    for i, text in enumerate(prefix_texts):
        spans.append((done, done))
        if text.endswith(_INCOMPLETE) and i < len(prefix_texts) - 1:
            pending.append(i)
            continue
        start, end = min(done, len(text)), len(text)
        for j in [*pending, i]:
            spans[j] = (start, end)
        pending = []
        done = end
    return spans


def box_token_indices(text: str, spans: Sequence[tuple[int, int]]) -> list[int] | None:
    """Indices of the tokens overlapping the content of the first closed `\\boxed{}` in
    `text` (nested braces stay inside); None without a box or with an empty one."""
    boxes = find_boxes(text)
    if not boxes:
        return None
    box = boxes[0]
    end = box.end - 1  # the closing brace
    start = end - len(box.content)
    if start == end:
        return None
    return [i for i, (a, b) in enumerate(spans) if a < end and b > start and b > a]


def confidence(logprobs: Sequence[float], indices: Sequence[int] | None) -> float | None:
    """exp(mean log-prob of the chosen tokens); None when there are none."""
    if not indices:
        return None
    return math.exp(sum(logprobs[i] for i in indices) / len(indices))


def should_exit(answer: str | None, conf: float | None, tau: float) -> bool:
    """Early exit: a first answer that is not the fallback, with confidence >= tau."""
    return answer is not None and conf is not None and conf >= tau and not is_fallback(answer)


@dataclass(frozen=True)
class Gate:
    """The gating decision on a first pass."""

    answer: str | None
    """Content of the first box (stripped), None without one."""
    confidence: float | None
    exit: bool


def decide(text: str, prefix_texts: Sequence[str], logprobs: Sequence[float], tau: float) -> Gate:
    """Gate a first pass from its text, its prefix decodes and its token log-probs."""
    indices = box_token_indices(text, char_spans(prefix_texts))
    boxes = find_boxes(text)
    answer = boxes[0].content.strip() if boxes else None
    conf = confidence(logprobs, indices)
    return Gate(answer=answer, confidence=conf, exit=should_exit(answer, conf, tau))


# --------------------------------------------------------------------------- running it


@dataclass(frozen=True)
class Inference:
    """The result of one question in one mode."""

    answer: str | None
    """Final answer: a1 when it exited early (or in direct mode), else a2."""
    thought: bool
    confidence: float | None
    tokens: int
    """Generated tokens over both passes."""
    text: str
    """The whole response: first pass, then `<think>` and the think pass when it thought."""


@dataclass(frozen=True)
class Passes:
    """What the passes produced for one prompt (the think pass is None when not run)."""

    first_text: str
    first_tokens: int
    gate: Gate
    think_text: str | None = None
    think_tokens: int = 0


def result(passes: Passes, mode: Mode) -> Inference:
    """The answer of `mode` given the passes (`always_think` / non-exiting `gated` need the
    think pass)."""
    first = passes.first_text
    think = mode == "always_think" or (mode == "gated" and not passes.gate.exit)
    if not think:
        return Inference(
            passes.gate.answer, False, passes.gate.confidence, passes.first_tokens, first
        )
    if passes.think_text is None:
        raise ValueError(f"mode {mode} needs the think pass")
    text = first + THINK_OPEN + passes.think_text
    return Inference(
        answer=extract_two_answers(text).a2,
        thought=True,
        confidence=passes.gate.confidence,
        tokens=passes.first_tokens + passes.think_tokens,
        text=text,
    )


class GatedInference:
    """Runs the first pass and, where needed, the think pass on a `RolloutEngine`."""

    def __init__(
        self,
        engine: RolloutEngine,
        tokenizer: Any,
        tau: float,
        first_max_tokens: int = 64,
        think_max_tokens: int = 512,
    ) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.tau = tau
        self.first = SampleSpec(temperature=0.0, max_tokens=first_max_tokens, stop=(THINK_OPEN,))
        self.think = SampleSpec(temperature=0.0, max_tokens=think_max_tokens)

    async def run(self, requests: Sequence[EngineRequest], mode: Mode) -> list[Inference]:
        """Answer every request in `mode`."""
        passes = await self.passes(requests, think=mode)
        return [result(p, mode) for p in passes]

    async def passes(self, requests: Sequence[EngineRequest], think: Mode) -> list[Passes]:
        """First passes for all; think passes where `think` mode needs them."""
        firsts = await self.engine.generate(requests, self.first)
        out = []
        for gen in firsts:
            c = gen.completions[0]
            prefixes = [self._decode(c.token_ids[: i + 1]) for i in range(len(c.token_ids))]
            gate = decide(c.text, prefixes, c.logprobs, self.tau)
            out.append(Passes(c.text, len(c.token_ids), gate))
        need = [
            i
            for i, p in enumerate(out)
            if think == "always_think" or (think == "gated" and not p.gate.exit)
        ]
        continued = [
            replace(requests[i], prompt=requests[i].prompt + out[i].first_text + THINK_OPEN)
            for i in need
        ]
        for i, gen in zip(need, await self.engine.generate(continued, self.think), strict=True):
            c = gen.completions[0]
            # `<think>` was forced into the prompt: it counts as a generated token.
            tokens = len(c.token_ids) + 1
            out[i] = Passes(out[i].first_text, out[i].first_tokens, out[i].gate, c.text, tokens)
        return out

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

"""VideoAuto-R1 compatibility (`rewards.compat: videoauto_r1`): the answer -> think -> answer
score as the released VideoAuto-R1 training code computes it, for runs that reproduce the
paper. Reimplemented from reading IVUL-KAUST/VideoAuto-R1 at commit f7d91a3c
(`videoauto_r1/reward/`, weights from its GRPO launch scripts); none of its code is copied.

The guarantee: for the problem types upstream has, `score_videoauto_r1` returns the total
its three reward functions give, weighted as `rewards.w_a1 / w_a2 / w_format` (their
`--reward_weights`), to float64 rounding; tests/data/videoauto_r1_compat.json holds totals
produced by running their code. Upstream's rules differ from reelrl's in many small ways
(docs/rewards.md, "VideoAuto-R1 compatibility" has the table): boxes nest one brace level,
a completion without think tags offers its single box as both answers, an empty `<think>`
passes the format, exact match keeps punctuation, spans need plain seconds, and the fallback
bonus goes to any first answer starting "Let's analyze" whose second answer scores > 0.7.
Like the rest of actors/rewards, nothing here raises on model output (a problem type
without an upstream grader, sub-action, raises ValueError).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from actors.rewards.math_grader import MathVerifier, default_verifier
from system.config import RewardsConfig

Span = tuple[float, float]


class Target(Protocol):
    """What upstream grades against (composite.RewardTarget has these fields)."""

    @property
    def problem_type(self) -> str: ...
    @property
    def answer(self) -> str: ...
    @property
    def spans(self) -> Sequence[Span]: ...


BOX_OPEN = "\\boxed{"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
GQA_SEPARATOR = "<>"

FALLBACK_PREFIX = "Let's analyze"
"""Upstream's fallback test: the stripped first answer starts with this (case-sensitive)."""
FALLBACK_BONUS = 0.3 / 1.1
"""Added to the a2 reward on a fallback (hard-coded upstream: 0.3 after the 1.1 weight)."""
BONUS_ABOVE = 0.7
"""The a2 reward must exceed this for the bonus, whatever the problem type."""
EPS = 1e-9
"""Upstream's zero-length guard for predicted spans and unions."""

UPSTREAM_KIND: dict[str, str] = {
    "multiple_choice": "exact_match",
    "free_form": "exact_match",
    "numerical": "math",
    "math": "math",
    "temporal_grounding": "iou",
    "grounded_qa": "gqa",
}
"""Our problem type -> the upstream grader (their loaders send numerical answers to math-verify
and non-math text answers to exact match). Sub-action has no upstream counterpart."""

# Option letters as upstream accepts them, matched against the whole stripped, lower-cased
# answer: a bracketed letter or a bare one, optionally followed by a single delimiter.
_OPTION = re.compile(r"(?:[([{]\s*([a-z])\s*[)\]}]|([a-z]))(?:\s*[-)/:;])?")
_TRIM_NONWORD = re.compile(r"\W*(.*?)\W*", re.DOTALL)
_YES_NO = {
    **dict.fromkeys(("yes", "y", "true", "t", "ok", "okay"), "yes"),
    **dict.fromkeys(("no", "n", "false", "f"), "no"),
}
# A span is the leftmost "<seconds> <link> <seconds>" not touching other digits or dots.
# Upstream also lists [..] and (..) forms, but a bracketed pair always contains this bare
# pair with the same numbers and nothing can start between them, so brackets never matter.
_SECONDS = r"\d+(?:\.\d+)?"
_LINK = r"\s*(?:[,\-–—]|\b(?:to|and)\b)\s*"
_PAIR = re.compile(rf"(?<![\d.])({_SECONDS}){_LINK}({_SECONDS})(?![\d.])", re.IGNORECASE)


@dataclass(frozen=True)
class CompatScore:
    """Upstream's three rewards (unweighted), the bonus flag, and the weighted total."""

    total: float
    components: dict[str, float]
    final: float
    """The a2 task reward without the bonus (what accuracy and correctness describe)."""


# --------------------------------------------------------------------------- extraction


def _box_close(text: str, content_start: int) -> int | None:
    """Index of the brace closing a box whose content starts here; None when the content
    nests braces two deep or the box never closes (upstream then skips this box)."""
    depth = 0
    for index in range(content_start, len(text)):
        char = text[index]
        if char == "{":
            if depth:
                return None
            depth = 1
        elif char == "}":
            if not depth:
                return index
            depth = 0
    return None


def boxes(text: str) -> list[str]:
    """Contents of the `\\boxed{...}` upstream finds, left to right, non-overlapping."""
    found: list[str] = []
    at = text.find(BOX_OPEN)
    while at >= 0:
        content_start = at + len(BOX_OPEN)
        close = _box_close(text, content_start)
        if close is None:
            at = text.find(BOX_OPEN, at + 1)
        else:
            found.append(text[content_start:close])
            at = text.find(BOX_OPEN, close + 1)
    return found


def _only_box(region: str) -> str:
    found = boxes(region)
    return found[0].strip() if len(found) == 1 else ""


def two_answers(text: str) -> tuple[str, str]:
    """a1: the single box before the first `<think>`; a2: the single box after the last
    `</think>`. A missing tag means the whole text, so a lone box is both answers; a region
    with zero or several boxes gives ""."""
    return _only_box(text.split(THINK_OPEN)[0]), _only_box(text.split(THINK_CLOSE)[-1])


def format_reward(text: str) -> float:
    """1.0 for `\\boxed{..} <think>..</think> \\boxed{..}` with whitespace only between and
    around the parts and at most one of each think tag. Boxes may be empty; the reasoning
    may be empty too (upstream's non-empty check is satisfied by the closing tag itself)."""
    if text.count(THINK_OPEN) > 1 or text.count(THINK_CLOSE) > 1:
        return 0.0
    first = _box_at(text, len(text) - len(text.lstrip()))
    if first is None:
        return 0.0
    rest = text[first:].lstrip()
    if not rest.startswith(THINK_OPEN) or THINK_CLOSE not in rest:
        return 0.0
    tail = rest.split(THINK_CLOSE, 1)[1]
    second = _box_at(tail, len(tail) - len(tail.lstrip()))
    return float(second is not None and not tail[second:].strip())


def _box_at(text: str, start: int) -> int | None:
    """End (one past the closing brace) of a box starting exactly at `start`, if one does."""
    if not text.startswith(BOX_OPEN, start):
        return None
    close = _box_close(text, start + len(BOX_OPEN))
    return None if close is None else close + 1


# --------------------------------------------------------------------------- graders


def normalize_answer(text: str) -> str:
    """An option letter, "yes"/"no", or the lower-cased text with runs of whitespace joined
    (punctuation and articles kept)."""
    low = unicodedata.normalize("NFKC", text).strip().lower()
    option = _OPTION.fullmatch(low)
    if option:
        return option.group(1) or option.group(2)
    trimmed = _TRIM_NONWORD.fullmatch(low)
    core = trimmed.group(1) if trimmed else low
    if core in _YES_NO:
        return _YES_NO[core]
    return " ".join(low.split())


def same_answer(gold: str, pred: str) -> float:
    """1.0 when both normalise to the same string."""
    return float(normalize_answer(gold) == normalize_answer(pred))


def first_span(text: str) -> Span | None:
    """The leftmost plain-seconds pair joined by , - – — to or and; ends ordered."""
    found = _PAIR.search(text.strip())
    if found is None:
        return None
    start, end = float(found.group(1)), float(found.group(2))
    return (start, end) if start <= end else (end, start)


def interval_iou(gold: Span, pred: Span) -> float:
    """Upstream's tIoU: 0 for a zero-length prediction or union, ends of each span ordered."""
    gs, ge = sorted(gold)
    ps, pe = sorted(pred)
    pred_len = max(0.0, pe - ps)
    if pred_len <= EPS:
        return 0.0
    inter = max(0.0, min(ge, pe) - max(gs, ps))
    union = max(0.0, ge - gs) + pred_len - inter
    return 0.0 if union <= EPS else inter / union


def iou_reward(pred: str, gold_spans: Sequence[Span]) -> float:
    """tIoU of the first span in `pred` against the best gold span; 0 when none parses."""
    span = first_span(pred)
    if span is None or not gold_spans:
        return 0.0
    return max(interval_iou(gold, span) for gold in gold_spans)


def gqa_reward(pred: str, gold_answer: str, gold_spans: Sequence[Span]) -> float:
    """Answer match (text before the first `<>`) plus tIoU (text after the last `<>`); without
    a separator both are the whole text, so `B [10, 20]` earns the span but not the answer."""
    parts = pred.split(GQA_SEPARATOR)
    answer, span_text = parts[0].strip(), parts[-1].strip()
    return same_answer(answer, gold_answer.strip()) + iou_reward(span_text, gold_spans)


def math_reward(
    pred: str, gold: str, timeout_s: float, verifier: MathVerifier | None = None
) -> float:
    """math-verify on the raw texts (no `\\boxed{}` wrapping, no text or number shortcuts)."""
    if not pred:
        return 0.0  # parses to nothing, which math-verify never finds equal
    return float((verifier or default_verifier()).equal(gold.strip(), pred, timeout_s, raw=True))


def task_reward(
    answer: str, target: Target, timeout_s: float, verifier: MathVerifier | None = None
) -> float:
    """Upstream's grade of one extracted answer for the target's problem type."""
    kind = UPSTREAM_KIND.get(target.problem_type)
    if kind is None:
        raise ValueError(
            f"problem_type {target.problem_type!r} has no VideoAuto-R1 grader; "
            "score it with rewards.compat='reelrl'"
        )
    if kind == "exact_match":
        return same_answer(target.answer.strip(), answer)
    if kind == "math":
        return math_reward(answer, target.answer, timeout_s, verifier)
    if kind == "iou":
        return iou_reward(answer, target.spans)
    return gqa_reward(answer, target.answer, target.spans)


# --------------------------------------------------------------------------- composite


def score_videoauto_r1(
    text: str,
    target: Target,
    config: RewardsConfig,
    verifier: MathVerifier | None = None,
) -> CompatScore:
    """w_a1*R(a1) + w_a2*(R(a2) + bonus) + w_format*R_fmt, upstream's sum in upstream's order.

    The bonus (FALLBACK_BONUS) lives inside the a2 reward as upstream has it, so its weight
    is w_a2; `components["fallback"]` says whether it was paid.
    """
    a1, a2 = two_answers(text)
    r_a1 = task_reward(a1, target, config.math_timeout_s, verifier)
    r_a2 = task_reward(a2, target, config.math_timeout_s, verifier)
    fallback = float(r_a2 > BONUS_ABOVE and a1.startswith(FALLBACK_PREFIX))
    fmt = format_reward(text)
    a2_paid = r_a2 + FALLBACK_BONUS if fallback else r_a2
    total = config.w_a1 * r_a1 + config.w_a2 * a2_paid + config.w_format * fmt
    components = {"task_a1": r_a1, "task_a2": r_a2, "format": fmt, "fallback": fallback}
    return CompatScore(total=total, components=components, final=r_a2)

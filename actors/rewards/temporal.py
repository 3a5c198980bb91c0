"""Temporal graders: span parsing (`[s, e]`, `(s, e)`, `s to e`, seconds or mm:ss), temporal
IoU against one or several ground-truth spans, grounded QA (answer + IoU, in [0, 2]) and the
sub-action decomposition reward (graduated credit per annotated phase; see docs/rewards.md).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from actors.rewards.graders import exact_match, normalize_text, tokenize

Span = tuple[float, float]

MAX_SPANS = 256
"""Spans parsed from one answer at most; a longer list is cut (and penalised as extra phases)."""

NAME_WEIGHT = 0.5
"""Sub-action credit for naming a phase in order; the remaining 1 - NAME_WEIGHT scales with tIoU."""

_TIME = r"(\d{1,6}(?::\d{1,2}){0,2}(?:\.\d{1,6})?)"
# The unit is one optional group followed by one whitespace run: no two adjacent unbounded
# quantifiers compete for the same characters, so matching stays linear on long blank runs.
_UNIT = r"(?:\s*(?:seconds|secs|sec|s)\b)?\s*"
_SPAN = re.compile(
    rf"[\[(]\s*{_TIME}{_UNIT},\s*{_TIME}{_UNIT}[\])]|{_TIME}{_UNIT}(?:to|until|-|–)\s*{_TIME}",
    re.IGNORECASE,
)
_GQA_SEPARATOR = "<>"


@dataclass(frozen=True)
class Phase:
    """One annotated (or predicted) phase of an action."""

    name: str
    start: float
    end: float


@dataclass(frozen=True)
class _Found:
    span: Span
    start: int
    end: int


def _seconds(token: str) -> float:
    value = 0.0
    for part in token.split(":"):
        value = value * 60 + float(part)
    return value


def _find_spans(text: str, limit: int = MAX_SPANS) -> list[_Found]:
    found: list[_Found] = []
    for match in _SPAN.finditer(text):
        groups = [g for g in match.groups() if g is not None]
        start, end = _seconds(groups[0]), _seconds(groups[1])
        found.append(_Found((min(start, end), max(start, end)), match.start(), match.end()))
        if len(found) >= limit:
            break
    return found


def parse_span(text: str | None) -> Span | None:
    """The first span in the text with its ends ordered (reversed ends are swapped)."""
    if text is None:
        return None
    found = _find_spans(text, limit=1)
    return found[0].span if found else None


def parse_spans(text: str | None) -> list[Span]:
    """Every span in the text, in order (at most MAX_SPANS)."""
    return [] if text is None else [f.span for f in _find_spans(text)]


def span_iou(a: Span, b: Span) -> float:
    """Temporal IoU of two spans (ends may be reversed); a zero-length union scores 0."""
    a0, a1 = sorted(a)
    b0, b1 = sorted(b)
    inter = max(0.0, min(a1, b1) - max(a0, b0))
    union = max(a1, b1) - min(a0, b0)
    if a1 - a0 <= 0 or b1 - b0 <= 0 or union <= 0:
        return 0.0
    return inter / union


def temporal_iou(pred: str | None, gold_spans: Sequence[Span]) -> float:
    """tIoU of the predicted span against the best-matching ground-truth span, in [0, 1]."""
    span = parse_span(pred)
    if span is None or not gold_spans:
        return 0.0
    return max(span_iou(span, gold) for gold in gold_spans)


def grounded_qa(
    pred: str | None, gold_answer: str, gold_spans: Sequence[Span], options: Sequence[str] = ()
) -> float:
    """Answer correctness (0/1) plus tIoU of the supporting span: a number in [0, 2].

    The prediction is `answer <> [start, end]`; without the separator the answer is the text
    before the first span.
    """
    if pred is None:
        return 0.0
    if _GQA_SEPARATOR in pred:
        answer, _, span_text = pred.partition(_GQA_SEPARATOR)
    else:
        found = _find_spans(pred, limit=1)
        cut = found[0].start if found else len(pred)
        answer, span_text = pred[:cut].rstrip(" ,;:-\n"), pred[cut:]
    return exact_match(answer, gold_answer, options) + temporal_iou(span_text, gold_spans)


def parse_phases(text: str | None) -> list[Phase]:
    """Predicted phases: each span, named by the text between it and the previous span."""
    if text is None:
        return []
    phases: list[Phase] = []
    cursor = 0
    for found in _find_spans(text):
        name = text[cursor : found.start]
        phases.append(Phase(_phase_name(name), *found.span))
        cursor = found.end
    return phases


def _phase_name(raw: str) -> str:
    # Drop list markers ("1.", "-", "Phase 2:") and separators around the name.
    raw = re.sub(r"^[\s;,.\-*•]*(?:(?:phase|step)\s*)?\d*[.):]?\s*", "", raw, flags=re.I)
    return normalize_text(raw.rstrip(" :;,-\n"))


def _same_name(a: str, b: str) -> bool:
    words_a = [w for w in tokenize(a) if w not in ("a", "an", "the")]
    words_b = [w for w in tokenize(b) if w not in ("a", "an", "the")]
    return bool(words_a) and words_a == words_b


def subaction_credit(pred: str | None, gold_phases: Sequence[Phase]) -> float:
    """Graduated credit for naming the annotated phases in order with accurate spans, in [0, 1].

    Each annotated phase matched (same name, order preserved) earns
    NAME_WEIGHT + (1 - NAME_WEIGHT) * tIoU; the order-preserving matching with the most credit
    is found by dynamic programming, and the sum is divided by max(#annotated, #predicted) so
    listing extra phases costs credit.
    """
    predicted = parse_phases(pred)
    if not predicted or not gold_phases:
        return 0.0
    n, m = len(gold_phases), len(predicted)
    # best[i][j]: most credit matching gold[:i] with predicted[:j] in order.  # [n+1, m+1]
    best = [[0.0] * (m + 1) for _ in range(n + 1)]
    for i, gold in enumerate(gold_phases, start=1):
        for j, guess in enumerate(predicted, start=1):
            keep = max(best[i - 1][j], best[i][j - 1])
            if _same_name(gold.name, guess.name):
                iou = span_iou((gold.start, gold.end), (guess.start, guess.end))
                keep = max(keep, best[i - 1][j - 1] + NAME_WEIGHT + (1 - NAME_WEIGHT) * iou)
            best[i][j] = keep
    return best[n][m] / max(n, m)

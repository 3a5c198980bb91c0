"""The judge's rubric, pure: what a judge is asked about a free-form answer, how its reply
becomes a score in [0, 1], the rule-based stand-in's reply, and the cache of judgements.

The rubric is Pause-and-Think's evaluation: the suggested action (weight 0.6), its location
(0.2) and the object's properties (0.2), each scored 0-10 against the reference answer. A judge
replies with three lines `action: N`, `location: N`, `object: N` (a served judge is held to
exactly that form by `REPLY_REGEX`); a reply that does not parse scores None and the caller
falls back to ROUGE-L against the reference.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass

from actors.rewards.graders import tokenize

RUBRIC: tuple[tuple[str, float], ...] = (("action", 0.6), ("location", 0.2), ("object", 0.2))
SCALE = 10
REPLY_REGEX = r"action: (10|[0-9])\nlocation: (10|[0-9])\nobject: (10|[0-9])"
"""The only replies a served judge may write (vLLM structured outputs)."""

SYSTEM = (
    "You grade an assistant's answer to a user who asked, while recording a video, what to do "
    "or about the scene. Compare it with the reference answer. Score each item from 0 (wrong "
    "or missing) to 10 (same as the reference):\n"
    "action: is the suggested action (or the stated fact) the reference's?\n"
    "location: is where it happens the reference's?\n"
    "object: are the objects and their properties (colour, shape, state) the reference's?\n"
    "Reply with exactly three lines: `action: N`, `location: N`, `object: N`."
)

_LINE = re.compile(r"\b(action|location|object)\s*[:=]\s*(\d+(?:\.\d+)?)", re.IGNORECASE)
SPATIAL = frozenset(
    [
        "left",
        "right",
        "top",
        "bottom",
        "above",
        "below",
        "under",
        "on",
        "in",
        "into",
        "onto",
        "next",
        "beside",
        "behind",
        "front",
        "middle",
        "centre",
        "center",
        "corner",
        "between",
        "over",
        "inside",
        "outside",
        "near",
    ]
)
STOP = frozenset(
    [
        "a",
        "an",
        "the",
        "to",
        "of",
        "and",
        "or",
        "you",
        "your",
        "it",
        "its",
        "is",
        "are",
        "then",
        "should",
        "now",
        "next",
    ]
)


@dataclass(frozen=True)
class JudgeItem:
    """One answer to judge: the question asked, the reference answer, the model's answer."""

    question: str
    reference: str
    answer: str

    @property
    def key(self) -> tuple[str, str]:
        """Cache key: a question has one reference, so (question, answer) decides the score."""
        return (self.question, self.answer)


def judge_messages(item: JudgeItem) -> list[dict[str, str]]:
    """The chat a judge model is given for `item`."""
    user = (
        f"Question: {item.question}\nReference answer: {item.reference}\n"
        f"Assistant's answer: {item.answer}"
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def parse_reply(text: str) -> float | None:
    """The weighted rubric score in [0, 1] of a judge's reply; None when any item is missing.
    Values above the scale are clipped; the first value of each item counts."""
    found: dict[str, float] = {}
    for name, value in _LINE.findall(text):
        found.setdefault(name.lower(), float(value))
    if any(name not in found for name, _ in RUBRIC):
        return None
    return sum(w * min(found[name], SCALE) / SCALE for name, w in RUBRIC)


def format_reply(scores: dict[str, int]) -> str:
    """A reply in the judge's form, from per-item scores 0-10."""
    return "\n".join(f"{name}: {int(scores[name])}" for name, _ in RUBRIC)


def rule_reply(item: JudgeItem) -> str:
    """The rule-based stand-in's reply: per rubric item, the share of the reference's words of
    that kind that the answer contains (action: all content words; location: spatial words;
    object: the rest but the first, the action's verb). A stand-in for debug runs without a
    judge model, not a judgement of meaning."""
    ref = [w for w in tokenize(item.reference) if w not in STOP]
    said = set(tokenize(item.answer))
    where = [w for w in ref if w in SPATIAL]
    what = [w for w in ref[1:] if w not in SPATIAL]

    def share(words: list[str]) -> int:
        return round(SCALE * sum(w in said for w in words) / len(words)) if words else SCALE

    return format_reply({"action": share(ref), "location": share(where), "object": share(what)})


class JudgeCache:
    """Judgements by `JudgeItem.key`, the least recently used dropped beyond `size`."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._scores: OrderedDict[tuple[str, str], float] = OrderedDict()

    def get(self, item: JudgeItem) -> float | None:
        score = self._scores.get(item.key)
        if score is not None:
            self._scores.move_to_end(item.key)
        return score

    def put(self, item: JudgeItem, score: float) -> None:
        if self.size <= 0:
            return
        self._scores[item.key] = score
        self._scores.move_to_end(item.key)
        while len(self._scores) > self.size:
            self._scores.popitem(last=False)

    def __len__(self) -> int:
        return len(self._scores)

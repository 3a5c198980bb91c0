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
    ["left", "right", "top", "bottom", "above", "below", "under", "on", "in", "into", "onto",
     "beside", "behind", "front", "middle", "centre", "center", "corner", "between", "over",
     "inside", "outside", "near", "end"]
)  # fmt: skip
PROPERTIES = frozenset(
    ["red", "green", "blue", "yellow", "orange", "purple", "pink", "white", "black", "grey",
     "gray", "brown", "small", "big", "large", "open", "closed", "empty", "full", "first",
     "second", "third", "last"]
)  # fmt: skip
STOP = frozenset(
    ["a", "an", "the", "to", "of", "and", "or", "you", "your", "i", "it", "its", "is", "are",
     "then", "should", "now", "next", "one", "please"]
)  # fmt: skip


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
    """The rule-based stand-in's reply, from the words of answer and reference (a stand-in for
    debug runs without a judge model, not a judgement of meaning):

    - action: 10 when the answer's first content word (the verb) and its sequence of property
      words (colours, sizes, states, ordinals) are the reference's, else 0;
    - location: 10 when the spatial and property words from the first spatial word on ("right
      ... green") are the reference's, else 0 (10 when the reference names no place);
    - object: 10 x the overlap (Jaccard) of the two sets of property words.
    """
    ref, said = _content(item.reference), _content(item.answer)
    ref_props, said_props = _props(ref), _props(said)
    verb_ok = bool(ref) and bool(said) and ref[0] == said[0]
    action = SCALE if verb_ok and ref_props == said_props else 0
    where = _place(ref)
    location = SCALE if not where or where == _place(said) else 0
    union = set(ref_props) | set(said_props)
    shared = set(ref_props) & set(said_props)
    obj = round(SCALE * len(shared) / len(union)) if union else SCALE
    return format_reply({"action": action, "location": location, "object": obj})


def _content(text: str) -> list[str]:
    return [w for w in tokenize(text) if w not in STOP]


def _props(words: list[str]) -> list[str]:
    return [w for w in words if w in PROPERTIES]


def _place(words: list[str]) -> list[str]:
    """Spatial and property words from the first spatial word on."""
    first = next((i for i, w in enumerate(words) if w in SPATIAL), None)
    if first is None:
        return []
    return [w for w in words[first:] if w in SPATIAL or w in PROPERTIES]


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

"""Answer extraction from raw completion text: balanced `\\boxed{}` scanning, the two answers
of the answer -> think -> answer format, Video-R1 `<answer>` tags, and direct answers.

Every function here takes arbitrary model output and returns `None` (or an empty result)
instead of raising. Scanning is a single linear pass over a tokenising regex with no nested
quantifiers, so adversarial text (100 kB of braces, thousands of unclosed boxes) stays fast.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

FALLBACK_ANSWER = "Let's analyze the problem step by step."
"""The first answer a model gives when it cannot answer without reasoning (VideoAuto-R1)."""

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
THINKING_OPEN = "<thinking>"
THINKING_CLOSE = "</thinking>"
"""Pause-and-Think's reasoning tags (`thinking_answer` format)."""
ANSWER_OPEN = "<answer>"
ANSWER_CLOSE = "</answer>"

_BRACE_TOKENS = re.compile(r"\\boxed\s*\{|\{|\}")


@dataclass(frozen=True)
class Box:
    """One top-level `\\boxed{...}`: its content and where it sits in the text."""

    content: str
    start: int
    """Index of the backslash of `\\boxed`."""
    end: int
    """Index one past the closing brace."""


@dataclass(frozen=True)
class TwoAnswers:
    """The answers of an answer -> think -> answer completion (None where absent or ambiguous)."""

    a1: str | None
    a2: str | None


def find_boxes(text: str) -> list[Box]:
    """All closed, top-level `\\boxed{...}` in order; nested braces stay inside the content.

    A box nested in another box is part of the outer content. An unclosed box is dropped;
    plain unbalanced braces outside boxes do not affect box matching.
    """
    boxes: list[Box] = []
    # Stack entries: (is_box, start of \boxed, start of content); one pass, O(len(text)).
    stack: list[tuple[bool, int, int]] = []
    open_boxes = 0
    for match in _BRACE_TOKENS.finditer(text):
        token = match.group()
        if token == "}":
            if not stack:
                continue
            is_box, box_start, content_start = stack.pop()
            if is_box:
                open_boxes -= 1
                if open_boxes == 0:
                    boxes.append(Box(text[content_start : match.start()], box_start, match.end()))
        elif token == "{":
            stack.append((False, match.start(), match.end()))
        else:
            stack.append((True, match.start(), match.end()))
            open_boxes += 1
    return boxes


def single_box(text: str) -> str | None:
    """The stripped content of the only box in `text`; None when there are zero or several."""
    boxes = find_boxes(text)
    if len(boxes) != 1:
        return None
    return boxes[0].content.strip()


def extract_two_answers(text: str) -> TwoAnswers:
    """a1: the one box before `<think>`; a2: the one box after the last `</think>`.

    Without `<think>`, a1 is looked for before `</think>` (or in the whole text when neither
    tag exists); a2 needs a `</think>`. A region holding zero or several boxes yields None:
    an ambiguous answer earns nothing.
    """
    open_at = text.find(THINK_OPEN)
    close_at = text.rfind(THINK_CLOSE)
    if open_at >= 0:
        head = text[:open_at]
    elif close_at >= 0:
        head = text[:close_at]
    else:
        head = text
    a1 = single_box(head)
    a2 = single_box(text[close_at + len(THINK_CLOSE) :]) if close_at >= 0 else None
    return TwoAnswers(a1=a1, a2=a2)


def extract_tagged_answer(text: str) -> str | None:
    """Content of the last `<answer>...</answer>` (a single box inside it is unwrapped)."""
    close_at = text.rfind(ANSWER_CLOSE)
    if close_at < 0:
        return None
    open_at = text.rfind(ANSWER_OPEN, 0, close_at)
    if open_at < 0:
        return None
    inner = text[open_at + len(ANSWER_OPEN) : close_at]
    boxed = single_box(inner)
    return boxed if boxed is not None else inner.strip()


def extract_direct_answer(text: str) -> str | None:
    """The one box's content, or the whole stripped text when there is no box (None if several)."""
    boxes = find_boxes(text)
    if not boxes:
        return text.strip()
    if len(boxes) == 1:
        return boxes[0].content.strip()
    return None


def is_fallback(answer: str | None) -> bool:
    """Whether a first answer is the fallback phrase (case, spacing and final period ignored)."""
    if answer is None:
        return False
    return _squash(answer) == _squash(FALLBACK_ANSWER)


def _squash(text: str) -> str:
    text = text.strip()
    if text.startswith("\\text{") and text.endswith("}"):
        text = text[len("\\text{") : -1]
    text = text.replace("’", "'")
    return " ".join(text.lower().rstrip(" .").split())

"""Format rewards: 1.0 when a completion follows its output template exactly, else 0.0.

answer_twice: `\\boxed{a1} <think>...</think> \\boxed{a2}` with nothing but whitespace around
the parts, exactly one think pair, non-blank reasoning and exactly one box on each side
(boxes inside the reasoning are allowed). think_answer (Video-R1):
`<think>...</think> <answer>...</answer>`, one pair of each; thinking_answer (Pause-and-Think)
the same with `<thinking>` tags. direct: one box and nothing else.
Checked by string search and the linear box scanner, never by a backtracking regex.
"""

from __future__ import annotations

from actors.rewards.extract import (
    ANSWER_CLOSE,
    ANSWER_OPEN,
    THINK_CLOSE,
    THINK_OPEN,
    THINKING_CLOSE,
    THINKING_OPEN,
    find_boxes,
)


def answer_twice_format(text: str) -> float:
    """1.0 for `\\boxed{..}<think>..</think>\\boxed{..}` (whitespace between parts allowed)."""
    if text.count(THINK_OPEN) != 1 or text.count(THINK_CLOSE) != 1:
        return 0.0
    open_at, close_at = text.find(THINK_OPEN), text.find(THINK_CLOSE)
    if close_at < open_at or not text[open_at + len(THINK_OPEN) : close_at].strip():
        return 0.0
    boxes = find_boxes(text)
    before = [b for b in boxes if b.end <= open_at]
    after = [b for b in boxes if b.start >= close_at + len(THINK_CLOSE)]
    straddling = [b for b in boxes if b not in before and b not in after and b.start < open_at]
    if len(before) != 1 or len(after) != 1 or straddling:
        return 0.0
    first, second = before[0], after[0]
    gaps = (
        text[: first.start],
        text[first.end : open_at],
        text[close_at + len(THINK_CLOSE) : second.start],
        text[second.end :],
    )
    if any(gap.strip() for gap in gaps):
        return 0.0
    return float(bool(first.content.strip()) and bool(second.content.strip()))


def think_answer_format(text: str) -> float:
    """1.0 for `<think>..</think><answer>..</answer>` (whitespace between parts allowed)."""
    return _tagged_format(text, THINK_OPEN, THINK_CLOSE)


def thinking_answer_format(text: str) -> float:
    """1.0 for `<thinking>..</thinking><answer>..</answer>` (Pause-and-Think's template)."""
    return _tagged_format(text, THINKING_OPEN, THINKING_CLOSE)


def _tagged_format(text: str, open_tag: str, close_tag: str) -> float:
    tags = (open_tag, close_tag, ANSWER_OPEN, ANSWER_CLOSE)
    if any(text.count(tag) != 1 for tag in tags):
        return 0.0
    positions = [text.find(tag) for tag in tags]
    if positions != sorted(positions):
        return 0.0
    think_open, think_close, answer_open, answer_close = positions
    if text[:think_open].strip() or text[answer_close + len(ANSWER_CLOSE) :].strip():
        return 0.0
    if text[think_close + len(close_tag) : answer_open].strip():
        return 0.0
    return float(bool(text[answer_open + len(ANSWER_OPEN) : answer_close].strip()))


def direct_format(text: str) -> float:
    """1.0 when the completion is a single non-empty box and nothing else."""
    boxes = find_boxes(text)
    if len(boxes) != 1 or THINK_OPEN in text or THINK_CLOSE in text:
        return 0.0
    box = boxes[0]
    if text[: box.start].strip() or text[box.end :].strip():
        return 0.0
    return float(bool(box.content.strip()))


FORMAT_REWARDS = {
    "answer_twice": answer_twice_format,
    "think_answer": think_answer_format,
    "thinking_answer": thinking_answer_format,
    "direct": direct_format,
}
"""Format reward per `RewardsConfig.format` value."""

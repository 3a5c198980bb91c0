"""Prompts: the system prompts of the three output formats (VideoAuto-R1 answer -> think ->
answer, Video-R1 think/answer, direct), per-problem-type answer instructions, the chat
messages of a video question, and rendering them through a processor's chat template.

Format names are `RewardsConfig.format` values. The video goes first in the user turn as a
`{"type": "video"}` part so the chat template puts the video placeholder
(`<|vision_start|><|video_pad|><|vision_end|>` for Qwen) before the question text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol

from actors.rewards.extract import FALLBACK_ANSWER

OutputFormat = Literal["answer_twice", "think_answer", "thinking_answer", "direct"]
TAGGED = ("think_answer", "thinking_answer")
"""Formats whose answer goes between <answer> tags."""

ANSWER_TWICE_SYSTEM_PROMPT = (
    "You are a helpful assistant.\n"
    "FIRST: Give your initial answer inside the first \\boxed{...}, with no analysis or "
    "explanation. If you cannot determine the answer without reasoning, output "
    f"\\boxed{{{FALLBACK_ANSWER}}} instead.\n"
    "THEN: Reason through the problem as an internal monologue inside <think>...</think>.\n"
    "AT LAST: Give the final answer again inside \\boxed{...}. If the initial answer was "
    "right, repeat it; otherwise, correct it.\n"
    "Output format: \\boxed{...}<think>...</think>\\boxed{...}"
)
"""VideoAuto-R1: answer once, think, answer again (the first answer may be the fallback)."""

THINK_ANSWER_SYSTEM_PROMPT = "You are a helpful assistant."
"""Video-R1 keeps the system turn plain and puts the reasoning instruction in the user turn."""

THINK_ANSWER_INSTRUCTION = (
    "Think about the question the way a person would, talking it through with yourself "
    "(for example: 'let me think', 'wait', 'hmm', 'so the order is'), and check your "
    "reasoning before you commit. Put the whole reasoning between <think> and </think>, "
    "then the final answer between <answer> and </answer>."
)
"""Video-R1's think-then-answer instruction, appended to the question."""

THINKING_ANSWER_INSTRUCTION = (
    "First reason about what you see and what is happening between <thinking> and "
    "</thinking>, then give a short answer addressed to the user between <answer> and "
    "</answer>."
)
"""Pause-and-Think's template: reasoning, then a short user-addressed answer."""

DIRECT_SYSTEM_PROMPT = (
    "You are a helpful assistant. Answer directly, without any reasoning, and put the answer "
    "inside \\boxed{...}."
)
"""Direct answers: one box, no reasoning."""

SYSTEM_PROMPTS: dict[str, str] = {
    "answer_twice": ANSWER_TWICE_SYSTEM_PROMPT,
    "think_answer": THINK_ANSWER_SYSTEM_PROMPT,
    "thinking_answer": THINK_ANSWER_SYSTEM_PROMPT,
    "direct": DIRECT_SYSTEM_PROMPT,
}
"""System prompt per output format."""


def _slot(fmt: str, example: str = "...") -> str:
    """Where the answer goes in this format: a box, or Video-R1's answer tags."""
    if fmt in TAGGED:
        return f"<answer>{example}</answer>"
    return f"\\boxed{{{example}}}"


def answer_instruction(problem_type: str, fmt: OutputFormat) -> str:
    """What the answer must look like for this problem type, in this format's answer slot."""
    if fmt not in SYSTEM_PROMPTS:
        raise ValueError(f"unknown output format {fmt!r}")
    where = "within the <answer> </answer> tags" if fmt in TAGGED else "in \\boxed{}"
    instructions = {
        "multiple_choice": f"Answer with only the letter of the correct option {where}.",
        "numerical": f"Answer with only the numerical value (e.g. 42 or 3.14) {where}.",
        "math": f"Put the final answer {where}.",
        "free_form": f"Answer in one or two sentences {where}.",
        "temporal_grounding": (
            "Give the start and end time of the segment in seconds, to one decimal place, "
            f"in the format {_slot(fmt, '[start, end]')}."
        ),
        "grounded_qa": (
            "Answer the question, then give the video segment that supports your answer, in "
            "seconds to one decimal place, in the format "
            f"{_slot(fmt, 'answer <> [start, end]')}; for example {_slot(fmt, 'A <> [12.0, 18.5]')}."
        ),
        "subaction": (
            "List the phases of the action in the order they happen, one per line, each as "
            f"name [start, end] with times in seconds, all {where}."
        ),
    }
    if problem_type not in instructions:
        raise ValueError(f"unknown problem_type {problem_type!r}")
    return instructions[problem_type]


def format_options(options: Sequence[str]) -> str:
    """Options one per line, lettered A, B, C... (options already lettered are kept as they are)."""
    lines = []
    for index, option in enumerate(options):
        letter = chr(ord("A") + index)
        text = option.strip()
        lettered = text[:2] in (f"{letter}.", f"{letter})", f"{letter}:") or text.startswith(
            f"({letter})"
        )
        lines.append(text if lettered else f"{letter}. {text}")
    return "\n".join(lines)


def user_text(
    question: str, problem_type: str, fmt: OutputFormat, options: Sequence[str] = ()
) -> str:
    """The text of the user turn: question, lettered options, answer instruction."""
    parts = [question.strip()]
    if options:
        parts.append("Options:\n" + format_options(options))
    if fmt == "think_answer":
        parts.append(THINK_ANSWER_INSTRUCTION)
    elif fmt == "thinking_answer":
        parts.append(THINKING_ANSWER_INSTRUCTION)
    parts.append(answer_instruction(problem_type, fmt))
    return "\n".join(parts)


def build_messages(
    question: str,
    problem_type: str,
    fmt: OutputFormat,
    options: Sequence[str] = (),
    video: bool = True,
    images: int = 0,
) -> list[dict[str, Any]]:
    """Chat messages for a question: system prompt, then [video, text] in the user turn,
    [image, ..., text] for `images` images (no video then), or the text alone."""
    text = {"type": "text", "text": user_text(question, problem_type, fmt, options)}
    visual = [{"type": "image"}] * images or ([{"type": "video"}] if video else [])
    return [
        {"role": "system", "content": SYSTEM_PROMPTS[fmt]},
        {"role": "user", "content": [*visual, text]},
    ]


class ChatTemplater(Protocol):
    """Anything with a chat template: a transformers processor or tokenizer."""

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...


def render_prompt(processor: ChatTemplater, messages: list[dict[str, Any]]) -> str:
    """The prompt text (not token ids) with the generation prompt opened for the assistant."""
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if isinstance(text, list):  # processors return one string per conversation when batched
        (text,) = text
    return text

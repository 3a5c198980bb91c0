"""Prompts: required instructions per format and type, and chat-template rendering through a
real tokenizer trained on the spot (BPE + Qwen special tokens + a Qwen-style template)."""

from __future__ import annotations

import pytest

from actors.prompts import (
    ANSWER_TWICE_SYSTEM_PROMPT,
    SYSTEM_PROMPTS,
    answer_instruction,
    build_messages,
    format_options,
    render_prompt,
    user_text,
)
from actors.rewards import FALLBACK_ANSWER

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>"]
SPECIAL += ["<|video_pad|>", "<|image_pad|>"]
VIDEO_PLACEHOLDER = "<|vision_start|><|video_pad|><|vision_end|>"

QWEN_STYLE_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for part in message['content'] %}"
    "{%- if part['type'] == 'video' %}{{- '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif part['type'] == 'image' %}{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif part['type'] == 'text' %}{{- part['text'] }}"
    "{%- endif %}{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [ANSWER_TWICE_SYSTEM_PROMPT, "What does the person do first?", "A. B. C. D."] * 5
    bpe.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    fast.chat_template = QWEN_STYLE_TEMPLATE
    return fast


def test_answer_twice_system_prompt_has_the_three_steps():
    prompt = SYSTEM_PROMPTS["answer_twice"]
    first, then, last = (prompt.index(word) for word in ("FIRST:", "THEN:", "AT LAST:"))
    assert first < then < last
    assert f"\\boxed{{{FALLBACK_ANSWER}}}" in prompt
    assert "<think>...</think>" in prompt
    assert prompt.endswith("Output format: \\boxed{...}<think>...</think>\\boxed{...}")


def test_thinking_answer_asks_for_thinking_tags_and_a_short_answer():
    from actors.prompts import THINKING_ANSWER_INSTRUCTION
    from learner.sft import sft_target
    from system.data.records import Record

    text = user_text("What should I do next?", "free_form", "thinking_answer")
    assert THINKING_ANSWER_INSTRUCTION in text and "<answer> </answer> tags" in text
    record = Record(id="p", video="v.mp4", problem_type="free_form", question="q",
                    answer="Pour it.", meta={"reasoning": "It boiled."})  # fmt: skip
    target = sft_target(record, "thinking_answer")
    assert target == "<thinking>It boiled.</thinking><answer>Pour it.</answer>"


def test_think_answer_asks_for_tags_and_direct_for_a_box():
    text = user_text("Why?", "free_form", "think_answer")
    assert "<think>" in text and "</think>" in text
    assert "<answer>" in text and "</answer>" in text
    assert "\\boxed" not in text
    assert "\\boxed{...}" in SYSTEM_PROMPTS["direct"]
    assert "<think>" not in user_text("Why?", "free_form", "direct")


def test_grounding_asks_for_seconds_in_a_boxed_span():
    text = answer_instruction("temporal_grounding", "answer_twice")
    assert "\\boxed{[start, end]}" in text and "seconds" in text
    tagged = answer_instruction("temporal_grounding", "think_answer")
    assert "<answer>[start, end]</answer>" in tagged
    assert "\\boxed{answer <> [start, end]}" in answer_instruction("grounded_qa", "direct")


@pytest.mark.parametrize(
    ("problem_type", "phrase"),
    [
        ("multiple_choice", "letter of the correct option"),
        ("numerical", "numerical value"),
        ("math", "final answer"),
        ("free_form", "one or two sentences"),
        ("subaction", "name [start, end]"),
    ],
)
def test_per_type_instructions(problem_type, phrase):
    assert phrase in answer_instruction(problem_type, "answer_twice")


def test_unknown_type_or_format_is_rejected():
    with pytest.raises(ValueError, match="problem_type"):
        answer_instruction("essay", "direct")
    with pytest.raises(ValueError, match="format"):
        answer_instruction("math", "chain")  # type: ignore[arg-type]


def test_options_are_lettered_once():
    assert format_options(["a cat", "a dog"]) == "A. a cat\nB. a dog"
    assert format_options(["A. a cat", "(B) a dog"]) == "A. a cat\n(B) a dog"


def test_user_text_order():
    text = user_text("What is shown?", "multiple_choice", "answer_twice", ["cat", "dog"])
    assert text.split("\n")[:4] == ["What is shown?", "Options:", "A. cat", "B. dog"]
    assert text.endswith("in \\boxed{}.")


def test_messages_put_the_video_before_the_text():
    messages = build_messages("What is shown?", "multiple_choice", "answer_twice", ["cat"])
    assert messages[0] == {"role": "system", "content": ANSWER_TWICE_SYSTEM_PROMPT}
    content = messages[1]["content"]
    assert [part["type"] for part in content] == ["video", "text"]
    assert content[1]["text"].startswith("What is shown?")


def test_render_through_a_real_chat_template(tokenizer):
    messages = build_messages("What does the person do first?", "multiple_choice", "direct", ["a"])
    prompt = render_prompt(tokenizer, messages)
    expected_user = "<|im_start|>user\n" + VIDEO_PLACEHOLDER + "What does the person do first?"
    assert prompt.startswith("<|im_start|>system\n" + SYSTEM_PROMPTS["direct"] + "<|im_end|>\n")
    assert expected_user in prompt
    assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    video_pad = tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert ids.count(video_pad) == 1  # one placeholder, expanded later by the processor
    assert tokenizer.decode(ids) == prompt


def test_render_accepts_a_processor_that_returns_a_batch():
    class BatchingProcessor:
        def apply_chat_template(self, conversation, **kwargs):
            assert kwargs == {"tokenize": False, "add_generation_prompt": True}
            return [f"rendered {len(conversation)} messages"]

    messages = build_messages("Q", "math", "direct")
    assert render_prompt(BatchingProcessor(), messages) == "rendered 2 messages"

"""The tiny-model factory builds real architectures that transformers loads back."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from system.data.tiny_model import SPECIAL_TOKENS, train_tokenizer


def test_tokenizer_has_qwen_special_tokens_and_round_trips():
    tok = train_tokenizer(4096)
    assert len(tok) == 4096
    for name in SPECIAL_TOKENS:
        ids = tok.encode(name, add_special_tokens=False)
        assert len(ids) == 1, name
    text = "<think>12 apples</think> \\boxed{[1.5, 3]} Let's analyze"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    # Qwen splits digits one by one.
    assert tok.tokenize("2024") == ["2", "0", "2", "4"]


def test_chat_template_places_video_and_generation_prompt():
    tok = train_tokenizer(4096)
    messages = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Q?"}]},
    ]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|video_pad|><|vision_end|>Q?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_model_loads_with_auto_classes_and_runs(tiny_model):
    family, path = tiny_model
    meta = json.loads((path / "reelrl_tiny.json").read_text())
    assert meta["family"] == family
    assert 1e6 <= meta["params"] <= 5e6  # "tiny": 1-5M parameters
    model = AutoModelForImageTextToText.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)
    assert model.config.model_type == family
    vocab = processor.tokenizer
    assert model.config.video_token_id == vocab.convert_tokens_to_ids("<|video_pad|>")
    assert model.config.text_config.vocab_size == len(vocab)
    ids = vocab("hello there", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], len(vocab))
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("bad", [{"family": "llama"}, {"size": "huge"}])
def test_factory_rejects_unknown_family_or_size(tmp_path, bad):
    from system.data.tiny_model import build_tiny_model

    args = {"family": "qwen2_5_vl", "size": "tiny"} | bad
    with pytest.raises(ValueError, match=next(iter(bad))):
        build_tiny_model(args["family"], tmp_path, size=args["size"])

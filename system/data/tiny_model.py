"""Tiny-model factory: randomly initialised Qwen2.5-VL / Qwen3-VL models for tests and the CPU
debug run, built without any hub access.

A model directory gets the real architecture (transformers config + random weights), a
byte-level BPE tokenizer trained on the spot with the family's special tokens and a Qwen-style
chat template, and the image/video processors — everything `save_pretrained` writes, so that
transformers (AutoModel/AutoProcessor) and vLLM both load it as they would a released model.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

# Qwen's special tokens, in Qwen's order. Ids are assigned first, so they are small and
# stable across sizes; the model config's vision token ids are read back from the tokenizer.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Reasoning tags are ordinary (non-special) added tokens so they survive decoding.
ADDED_TOKENS = ["<think>", "</think>", "<answer>", "</answer>"]

# Qwen's pre-tokenisation: contractions, letters, single digits, punctuation runs, whitespace.
_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' and default_system is defined -%}"
    "{{- '<|im_start|>system\\n' + default_system + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'video' or 'video' in part -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'image' or 'image' in part -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif 'text' in part -%}{{- part['text'] -}}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


@dataclass(frozen=True)
class TinySpec:
    """Dimensions of one size. head_dim 32 is the smallest the vLLM CPU attention supports."""

    vocab_size: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vision_hidden: int
    vision_depth: int
    vision_heads: int
    vision_intermediate: int
    model_vocab: int = 0
    """Rows of the embedding and LM head when more than the tokenizer's vocabulary (Qwen's
    151,936 > its tokenizer's 151,665): a real-shaped logits tensor from a small tokenizer."""


SIZES = {
    "tiny": TinySpec(4096, 128, 4, 4, 2, 256, 32, 2, 2, 64),
    "small": TinySpec(8192, 256, 8, 8, 2, 768, 64, 4, 2, 256),
    # ~0.4B parameters, most of them in the 151,936 x 1024 embedding and LM head: the memory
    # behaviour of loading and of log-probs is that of a real Qwen vocabulary.
    "medium": TinySpec(8192, 1024, 8, 16, 4, 2816, 128, 2, 2, 256, model_vocab=151_936),
}


def build_tiny_model(family: str, out: str | Path, size: str = "tiny", seed: int = 0) -> str:
    """Build and save a random model of `family` ("qwen2_5_vl" or "qwen3_vl") in `out`.

    Returns a one-line summary (family, parameter count, vocabulary size, directory).
    """
    import torch
    import transformers

    if family not in ("qwen2_5_vl", "qwen3_vl"):
        raise ValueError(f"family must be qwen2_5_vl or qwen3_vl, got {family!r}")
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    spec = SIZES[size]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = train_tokenizer(spec.vocab_size)
    config = _model_config(family, spec, tokenizer)
    torch.manual_seed(seed)
    model_cls = {
        "qwen2_5_vl": transformers.Qwen2_5_VLForConditionalGeneration,
        "qwen3_vl": transformers.Qwen3VLForConditionalGeneration,
    }[family]
    model = model_cls(config).to(torch.float32)
    model.generation_config = transformers.GenerationConfig(
        eos_token_id=[tokenizer.convert_tokens_to_ids("<|im_end|>")],
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
    )
    model.save_pretrained(out, safe_serialization=True)
    _processor(family, tokenizer).save_pretrained(out)
    n_params = sum(p.numel() for p in model.parameters())
    (out / "reelrl_tiny.json").write_text(
        json.dumps({"family": family, "size": size, "seed": seed, "params": n_params})
    )
    vocab = config.get_text_config().vocab_size
    return (
        f"{family} {size}: {n_params / 1e6:.2f}M params, vocabulary {vocab} "
        f"(tokenizer {len(tokenizer)}), saved to {out}"
    )


def train_tokenizer(vocab_size: int):
    """A byte-level BPE tokenizer trained on a built-in corpus, with Qwen's special tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(ADDED_TOKENS),
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
    )
    fast.add_tokens(ADDED_TOKENS)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _corpus() -> list[str]:
    """Text the tokenizer learns merges from: the vocabulary of prompts, answers and numbers
    the debug tasks use, repeated so frequent pieces merge first."""
    words = (
        "You are a helpful assistant. Answer the question about the video. Think step by step "
        "inside <think> </think> tags, then give the final answer in \\boxed{}. First give an "
        "initial answer in \\boxed{}, or \\boxed{Let's analyze the problem step by step.} "
        "when unsure. The object moves left right up down. When does the object appear and "
        "disappear? Give the time span in seconds as \\boxed{[start, end]}. How many times "
        "does the light flash? Which phases happen, in order? Options: A. B. C. D. "
        "The answer is yes no. red green blue yellow white square circle ball box moving "
        "appears disappears flashes count seconds start end first then finally phase action "
        "grab lift place push open close pour cut walk run jump turn the a an of to in is it "
        "and for on with as at by from that this these there what which who how when where"
    )
    numbers = " ".join(f"{i} {i / 2:.1f} [{i}, {i + 3}]" for i in range(64))
    # Pseudo-words from a fixed-seed syllable generator give the trainer enough distinct,
    # Zipf-distributed pieces to fill the vocabulary; random.Random is stable across versions.
    rng = random.Random(0)
    syllables = [c + v for c in "bcdfghklmnprstvwz" for v in "aeiou"] + ["th", "ing", "er", "st"]
    lexicon = ["".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(3000)]
    weights = [1.0 / (rank + 1) for rank in range(len(lexicon))]
    prose = [" ".join(rng.choices(lexicon, weights, k=200)) for _ in range(300)]
    return [words, numbers] * 20 + prose + [chr(c) for c in range(32, 127)]


def _model_config(family: str, spec: TinySpec, tokenizer):
    import transformers

    ids = {
        "image_token_id": tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        "video_token_id": tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        "vision_start_token_id": tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        "vision_end_token_id": tokenizer.convert_tokens_to_ids("<|vision_end|>"),
    }
    head_dim = spec.hidden // spec.heads
    # mrope splits the head_dim/2 rotary pairs over (time, height, width) in Qwen's proportions.
    half = head_dim // 2
    mrope = [half // 4, (half - half // 4) // 2, half - half // 4 - (half - half // 4) // 2]
    text = {
        "vocab_size": max(len(tokenizer), spec.model_vocab),
        "hidden_size": spec.hidden,
        "intermediate_size": spec.intermediate,
        "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.heads,
        "num_key_value_heads": spec.kv_heads,
        "max_position_embeddings": 32768,
        "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision = {
        "depth": spec.vision_depth,
        "hidden_size": spec.vision_hidden,
        "intermediate_size": spec.vision_intermediate,
        "num_heads": spec.vision_heads,
        "out_hidden_size": spec.hidden,
    }
    if family == "qwen2_5_vl":
        text["rope_parameters"] = {
            "rope_type": "default",
            "rope_theta": 1_000_000.0,
            "mrope_section": mrope,
        }
        vision.update(fullatt_block_indexes=[spec.vision_depth - 1], window_size=112)
        return transformers.Qwen2_5_VLConfig(
            text_config=text, vision_config=vision, tie_word_embeddings=False, **ids
        )
    text["head_dim"] = head_dim
    text["rope_parameters"] = {
        "rope_type": "default",
        "rope_theta": 5_000_000.0,
        "mrope_section": mrope,
        "mrope_interleaved": True,
    }
    vision.update(
        num_position_embeddings=256,
        deepstack_visual_indexes=[0],
        hidden_act="gelu_pytorch_tanh",
    )
    return transformers.Qwen3VLConfig(
        text_config=text, vision_config=vision, tie_word_embeddings=False, **ids
    )


def _processor(family: str, tokenizer):
    import transformers

    if family == "qwen2_5_vl":
        return transformers.Qwen2_5_VLProcessor(
            image_processor=transformers.Qwen2VLImageProcessor(),
            video_processor=transformers.Qwen2VLVideoProcessor(),
            tokenizer=tokenizer,
            chat_template=CHAT_TEMPLATE,
        )
    return transformers.Qwen3VLProcessor(
        image_processor=transformers.Qwen2VLImageProcessor(patch_size=16),
        video_processor=transformers.Qwen3VLVideoProcessor(),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )

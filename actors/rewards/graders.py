"""Text graders: exact match with normalisation (option letters, yes/no), numerical answers
and LCS-based ROUGE-L F1. Pure functions: any text in, a number in [0, 1] out, never raising.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Sequence

MAX_NUMBER_CHARS = 64
"""Longer digit strings are not numbers an answer would give; they grade as unparseable."""

_LETTER = re.compile(r"^(?:option\s+|answer\s*:?\s*)?\(?([a-z])\)?(?:[.:)]\s*(.*))?$", re.DOTALL)
_NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+(?:[eE][-+]?\d+)?")
_WORDS = re.compile(r"\w+")
_ARTICLES = {"a", "an", "the"}
_YES = {"yes", "true", "correct"}
_NO = {"no", "false", "incorrect"}


def normalize_text(text: str) -> str:
    """Lower-case, `\\text{}` unwrapped, outer punctuation and repeated whitespace removed."""
    text = " ".join(_unwrap_text(text).lower().split())
    return text.strip(string.punctuation.replace("(", "").replace(")", "") + " ")


def _unwrap_text(text: str) -> str:
    text = text.strip()
    while text.startswith("\\text{") and text.endswith("}"):
        text = text[len("\\text{") : -1].strip()
    return text


def option_letter(answer: str, options: Sequence[str] = ()) -> str | None:
    """The option letter an answer names ("B", "(b)", "B. a dog", "Option B", or an option's text)."""
    norm = normalize_text(answer)
    match = _LETTER.match(norm)
    if match:
        letter = match.group(1).upper()
        if not options or ord(letter) - ord("A") < len(options):
            return letter
    for index, option in enumerate(options):
        option_norm = normalize_text(option)
        stripped = _LETTER.match(option_norm)
        text_only = stripped.group(2) if stripped and stripped.group(2) else option_norm
        if norm in (option_norm, normalize_text(text_only)):
            return chr(ord("A") + index)
    return None


def yes_no(answer: str) -> str | None:
    """ "yes"/"no" when the answer starts with a yes/no word, else None."""
    words = _WORDS.findall(answer.lower()[:64])
    if not words:
        return None
    if words[0] in _YES:
        return "yes"
    if words[0] in _NO:
        return "no"
    return None


def exact_match(pred: str | None, gold: str, options: Sequence[str] = ()) -> float:
    """1.0 when the prediction names the gold answer after normalisation, else 0.0.

    Option letters are compared when the gold resolves to a letter; yes/no answers by their
    leading word; everything else by normalised text (articles ignored).
    """
    if pred is None:
        return 0.0
    gold_letter = option_letter(gold, options) if options or len(gold.strip()) <= 3 else None
    if gold_letter is not None:
        return float(option_letter(pred, options) == gold_letter)
    gold_yn = yes_no(gold)
    if gold_yn is not None and normalize_text(gold) in _YES | _NO:
        return float(yes_no(pred) == gold_yn)
    return float(_content_words(pred) == _content_words(gold))


def _content_words(text: str) -> list[str]:
    return [w for w in _WORDS.findall(normalize_text(text)) if w not in _ARTICLES]


def parse_number(text: str | None, strict: bool = False) -> float | None:
    """The number an answer states: the whole text as a number (commas, %, `a/b` allowed) or,
    unless `strict`, the single number token in it; None when there is none, several, or it
    is not finite."""
    if text is None:
        return None
    # normalize_text would strip a leading minus sign; numbers get their own light cleanup.
    cleaned = _unwrap_text(text).replace("$", "").strip().rstrip(".").rstrip("%").strip()
    if len(cleaned) <= 2 * MAX_NUMBER_CHARS:
        whole = _to_float(cleaned)
        if whole is not None:
            return whole
        numer, sep, denom = cleaned.partition("/")
        if sep:
            top, bottom = _to_float(numer.strip()), _to_float(denom.strip())
            if top is not None and bottom:
                return top / bottom
    if strict:
        return None
    tokens = _NUMBER.findall(cleaned[: 16 * 1024])
    if len(tokens) != 1:
        return None
    return _to_float(tokens[0])


def _to_float(token: str) -> float | None:
    token = token.replace(",", "")
    if not token or len(token) > MAX_NUMBER_CHARS or not _NUMBER.fullmatch(token):
        return None
    value = float(token)
    return value if math.isfinite(value) else None


def numeric_match(pred: str | None, gold: str, rel_tol: float = 1e-4) -> float:
    """1.0 when both parse to numbers that agree to `rel_tol` (or to 2 decimals), else 0.0."""
    gold_value, pred_value = parse_number(gold), parse_number(pred)
    if gold_value is None or pred_value is None:
        return 0.0
    if math.isclose(pred_value, gold_value, rel_tol=rel_tol, abs_tol=1e-9):
        return 1.0
    return float(round(pred_value, 2) == round(gold_value, 2))


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens (the unit ROUGE-L counts)."""
    return _WORDS.findall(text.lower())


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence, bit-parallel: O(len(b)) big-int operations.

    Each set bit of `row` marks a position of `a` not yet used by the LCS (Allison-Dix /
    Hyyrö); a long prediction against a short reference stays linear in the prediction.
    """
    if not a or not b:
        return 0
    masks: dict[str, int] = {}
    for i, token in enumerate(a):
        masks[token] = masks.get(token, 0) | (1 << i)
    full = (1 << len(a)) - 1
    row = full
    for token in b:
        match = row & masks.get(token, 0)
        row = ((row + match) | (row - match)) & full
    return len(a) - row.bit_count()


def rouge_l(pred: str | None, reference: str) -> float:
    """ROUGE-L F1 between word tokens of prediction and reference, in [0, 1]."""
    if pred is None:
        return 0.0
    ref_tokens, pred_tokens = tokenize(reference), tokenize(pred)
    lcs = lcs_length(ref_tokens, pred_tokens)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred_tokens), lcs / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)

"""Produce tests/data/videoauto_r1_compat.json by running the released VideoAuto-R1 reward code.

None of upstream's code is in this repository: the script extracts their reward files with
`git show <commit>:videoauto_r1/reward/<file>` from a clone of IVUL-KAUST/VideoAuto-R1 (its
git directory in VIDEOAUTO_R1_GIT) into a temporary directory outside the repository, and
runs them in a separate venv with upstream's pinned math-verify (their requirements.txt:
math-verify==0.8.0). Nothing from reelrl is imported; the inputs below are ours.

    git clone https://github.com/IVUL-KAUST/VideoAuto-R1 /tmp/vauto/repo
    python3 -m venv /tmp/vauto/venv && /tmp/vauto/venv/bin/pip install math-verify==0.8.0 numpy
    VIDEOAUTO_R1_GIT=/tmp/vauto/repo/.git /tmp/vauto/venv/bin/python \
        scripts/compat/videoauto_r1_expected.py tests/data/videoauto_r1_compat.json
"""

import contextlib
import datetime
import importlib.metadata
import io
import json
import os
import platform
import re
import subprocess
import sys
import tempfile

import numpy as np

MIRROR = os.environ["VIDEOAUTO_R1_GIT"]
COMMIT = "f7d91a3c4ba810d61849739074d6cdc2fc3c1331"
LAUNCH = "scripts/train/grpo_autothink/train_qwen2.5vl_grpo_auto_text_image_video.sh"
LAUNCH_QWEN3 = "scripts/train/grpo_autothink/train_qwen3vl_grpo_auto_text_image_video.sh"

UPSTREAM = tempfile.mkdtemp(prefix="videoauto_r1_")
os.makedirs(os.path.join(UPSTREAM, "reward"))
for _name in ("__init__.py", "reward.py", "mc_grader.py", "tg_grader.py"):
    _text = subprocess.run(
        ["git", f"--git-dir={MIRROR}", "show", f"{COMMIT}:videoauto_r1/reward/{_name}"],
        capture_output=True,
        text=True,
    )
    with open(os.path.join(UPSTREAM, "reward", _name), "w") as _f:
        _f.write(_text.stdout if _text.returncode == 0 else "")
sys.path.insert(0, UPSTREAM)
from reward.reward import reward_funcs_registry  # noqa: E402


def git(*args):
    return subprocess.run(
        ["git", f"--git-dir={MIRROR}", *args], check=True, capture_output=True, text=True
    ).stdout


def launch_settings(path):
    """The reward functions and weights passed on upstream's GRPO launch line."""
    text = git("show", f"{COMMIT}:{path}")
    funcs = re.search(r"--reward_funcs((?:\s+\"[^\"]+\")+)", text).group(1)
    weights = re.search(r"--reward_weights((?:\s+[0-9.]+)+)", text).group(1)
    return re.findall(r"\"([^\"]+)\"", funcs), [float(w) for w in weights.split()]


# --------------------------------------------------------------------------- inputs
MC = {
    "problem_type": "multiple_choice",
    "answer": "B",
    "options": ["A. a cat", "B. a dog", "C. a bird", "D. a fish"],
    "spans": [],
}
YES = {"problem_type": "free_form", "answer": "Yes", "options": [], "spans": []}
FREE = {"problem_type": "free_form", "answer": "two leaves", "options": [], "spans": []}
NUM = {"problem_type": "numerical", "answer": "3.5", "options": [], "spans": []}
NUM_K = {"problem_type": "numerical", "answer": "1000", "options": [], "spans": []}
HALF = {"problem_type": "math", "answer": "\\frac{1}{2}", "options": [], "spans": []}
SQRT3 = {"problem_type": "math", "answer": "\\frac{\\sqrt{3}}{2}", "options": [], "spans": []}
SQRT2 = {"problem_type": "math", "answer": "\\sqrt{2}", "options": [], "spans": []}
SQRT2_DOLLAR = {"problem_type": "math", "answer": "$\\sqrt{2}$", "options": [], "spans": []}
PCT = {"problem_type": "math", "answer": "50%", "options": [], "spans": []}
TG = {
    "problem_type": "temporal_grounding",
    "answer": "[3.5, 7.0]",
    "options": [],
    "spans": [[3.5, 7.0]],
}
TG2 = {
    "problem_type": "temporal_grounding",
    "answer": "[0.0, 12.0]",
    "options": [],
    "spans": [[0.0, 12.0], [20.0, 30.0]],
}
GQA = {
    "problem_type": "grounded_qa",
    "answer": "B",
    "options": ["A. a cat", "B. a dog", "C. a bird", "D. a fish"],
    "spans": [[10.0, 20.0]],
}

THINK = "The dog walks in from the left and sits down."
FB = "Let's analyze the problem step by step."


def twice(a1, a2, think=THINK):
    return "\\boxed{" + a1 + "}<think>" + think + "</think>\\boxed{" + a2 + "}"


CASES = [
    ("mc_correct_twice", "multiple choice, right both times", MC, twice("B", "B")),
    ("mc_fallback_then_correct", "fallback phrase, then right", MC, twice(FB, "B")),
    ("mc_fallback_then_wrong", "fallback phrase, then wrong", MC, twice(FB, "A")),
    (
        "mc_fallback_other_wording",
        "first answer starts 'Let's analyze' but is not the phrase",
        MC,
        twice("Let's analyze the video first.", "B"),
    ),
    ("mc_fallback_lowercase", "fallback phrase in lower case", MC, twice(FB.lower(), "B")),
    (
        "mc_fallback_curly_apostrophe",
        "fallback phrase with a curly apostrophe",
        MC,
        twice(FB.replace("'", "\u2019"), "B"),
    ),
    ("mc_wrong_then_correct", "wrong first answer corrected", MC, twice("A", "B")),
    ("mc_single_box_no_think", "a single box, no think tags", MC, "\\boxed{B}"),
    (
        "mc_single_box_after_think",
        "think then one box",
        MC,
        "<think>" + THINK + "</think>\\boxed{B}",
    ),
    ("mc_truncated_in_think", "cut off inside the reasoning", MC, "\\boxed{B}<think>The dog walks"),
    (
        "mc_close_tag_only",
        "</think> without <think>",
        MC,
        "\\boxed{B} The dog sits.</think>\\boxed{B}",
    ),
    ("mc_empty_think", "empty <think></think>", MC, twice("B", "B", "")),
    ("mc_blank_think", "whitespace-only reasoning", MC, twice("B", "B", "  \n ")),
    ("mc_letter_with_period", "option letter with a period", MC, twice("B.", "B.")),
    ("mc_letter_in_parens", "option letter in parentheses", MC, twice("(B)", "(b)")),
    (
        "mc_letter_with_text",
        "letter followed by the option text",
        MC,
        twice("B. a dog", "B. a dog"),
    ),
    ("mc_option_text", "the option's text instead of its letter", MC, twice("a dog", "a dog")),
    ("mc_text_wrapped", "letter wrapped in \\text{}", MC, twice("\\text{B}", "\\text{B}")),
    ("mc_letter_delimiters", "letter with ) and bracket-colon", MC, twice("b)", "[B]:")),
    ("mc_fullwidth_letter", "full-width letter (NFKC)", MC, twice("\uff22", "\uff22")),
    ("mc_empty_first_box", "empty first box", MC, twice("", "B")),
    (
        "mc_space_before_brace",
        "\\boxed {..} with a space",
        MC,
        "\\boxed {B}<think>" + THINK + "</think>\\boxed {B}",
    ),
    (
        "mc_two_boxes_before_think",
        "two boxes before the reasoning",
        MC,
        "\\boxed{A}\\boxed{B}<think>" + THINK + "</think>\\boxed{B}",
    ),
    ("mc_text_after_final_box", "text after the final box", MC, twice("B", "B") + " Done."),
    (
        "mc_box_inside_think",
        "a box inside the reasoning",
        MC,
        "\\boxed{B}<think>Maybe \\boxed{A}? No, it barks.</think>\\boxed{B}",
    ),
    (
        "mc_two_think_blocks",
        "two think blocks",
        MC,
        "\\boxed{B}<think>a</think><think>b</think>\\boxed{B}",
    ),
    (
        "mc_unclosed_first_box",
        "unclosed first box",
        MC,
        "\\boxed{B<think>" + THINK + "</think>\\boxed{B}",
    ),
    ("mc_plain_text", "no box at all", MC, "The answer is B."),
    ("mc_empty_completion", "empty completion", MC, ""),
    (
        "mc_surrounding_whitespace",
        "whitespace around a well-formed completion",
        MC,
        "\n  " + twice("B", "B") + "\n",
    ),
    ("free_yes", "yes/no gold, lower-case yes", YES, twice("yes", "Yes")),
    ("free_yes_true", "yes/no gold answered 'True'", YES, twice("True", "true")),
    (
        "free_yes_sentence",
        "yes with an explanation",
        YES,
        twice("Yes, the man is running.", "Yes, the man is running."),
    ),
    (
        "free_text_case_spaces",
        "free text, other case and spacing",
        FREE,
        twice("Two   Leaves", "two leaves"),
    ),
    (
        "free_text_article_period",
        "free text with an article / a final period",
        FREE,
        twice("the two leaves", "two leaves."),
    ),
    ("num_exact", "numerical, same number", NUM, twice("3.5", "3.5")),
    ("num_trailing_zero", "numerical, 3.50 vs 3.5", NUM, twice("3.50", "3.5")),
    (
        "num_close_not_equal",
        "numerical, within 1e-4 relative but not equal",
        NUM,
        twice("3.4999", "3.4999"),
    ),
    ("num_with_unit", "numerical with a unit word", NUM, twice("3.5 meters", "3.5 m")),
    ("num_fallback_then_correct", "numerical, fallback then right", NUM, twice(FB, "3.5")),
    ("num_thousands_comma", "numerical 1,000 vs 1000", NUM_K, twice("1,000", "1000")),
    (
        "math_frac_one_level",
        "\\frac{1}{2} (one brace level)",
        HALF,
        twice("\\frac{1}{2}", "\\frac{1}{2}"),
    ),
    ("math_decimal_and_slash", "0.5 and 1/2 for \\frac{1}{2}", HALF, twice("0.5", "1/2")),
    (
        "math_two_level_nesting",
        "\\frac{\\sqrt{3}}{2} (two brace levels)",
        SQRT3,
        twice("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt{3}}{2}"),
    ),
    ("math_bare_latex", "bare LaTeX gold \\sqrt{2}", SQRT2, twice("\\sqrt{2}", "\\sqrt{2}")),
    ("math_dollar_latex", "LaTeX in $..$", SQRT2_DOLLAR, twice("$\\sqrt{2}$", "$\\sqrt{2}$")),
    ("math_percent", "percent gold, decimal answer", PCT, twice("0.5", "50\\%")),
    ("tg_brackets", "span [s, e]", TG, twice("[3.5, 7.0]", "[3.5, 7.0]")),
    (
        "tg_words_from_to",
        "span 'from 3.5 to 7 seconds'",
        TG,
        twice("from 3.5 to 7 seconds", "from 3.5 to 7 seconds"),
    ),
    ("tg_units_on_numbers", "span '3.5s to 7s'", TG, twice("3.5s to 7s", "3.5s to 7s")),
    (
        "tg_between_and",
        "span 'between 3.5 and 7.0 seconds'",
        TG,
        twice("between 3.5 and 7.0 seconds", "between 3.5 and 7.0 seconds"),
    ),
    ("tg_bare_comma", "span '3.5, 7.0' without brackets", TG, twice("3.5, 7.0", "3.5, 7.0")),
    ("tg_mm_ss", "span in mm:ss", TG, twice("00:03 - 00:07", "00:03 - 00:07")),
    ("tg_em_dash", "span with an em dash", TG, twice("[3.5 \u2014 7.0]", "[3.5 \u2014 7.0]")),
    ("tg_partial_overlap", "tIoU 0.5", TG, twice("[2.0, 6.0]", "[2.0, 6.0]")),
    ("tg_fallback_iou_0_6", "fallback, then tIoU 0.6", TG, twice(FB, "[3.5, 5.6]")),
    ("tg_fallback_iou_0_8", "fallback, then tIoU 0.8", TG, twice(FB, "[3.5, 6.3]")),
    ("tg_zero_length", "zero-length span", TG, twice("[5, 5]", "[5, 5]")),
    ("tg_reversed", "reversed span ends", TG, twice("[7.0, 3.5]", "[7.0, 3.5]")),
    ("tg_several_gold", "several ground-truth spans", TG2, twice("[21, 30]", "[21, 30]")),
    ("tg_negative_start", "negative start time", TG, twice("[-1.0, 7.0]", "[-1.0, 7.0]")),
    (
        "gqa_full",
        "grounded QA answer <> span",
        GQA,
        twice("B <> [10.0, 20.0]", "B <> [10.0, 20.0]"),
    ),
    ("gqa_no_separator", "grounded QA without <>", GQA, twice("B [10.0, 20.0]", "B [10.0, 20.0]")),
    (
        "gqa_words_span",
        "grounded QA span in words",
        GQA,
        twice("B <> from 12 to 20", "B <> from 12 to 20"),
    ),
    (
        "gqa_fallback_wrong_answer_exact_span",
        "fallback, wrong answer, exact span",
        GQA,
        twice(FB, "A <> [10, 20]"),
    ),
    (
        "gqa_two_separators",
        "grounded QA with two <>",
        GQA,
        twice("B <> dog <> [10, 20]", "B <> dog <> [10, 20]"),
    ),
]

UPSTREAM_TYPE = {
    "multiple_choice": "exact_match",
    "free_form": "exact_match",
    "numerical": "math",
    "math": "math",
    "temporal_grounding": "iou",
    "grounded_qa": "gqa",
}


def upstream_solution(target):
    """The `response` upstream's data loaders build for such a record."""
    kind = UPSTREAM_TYPE[target["problem_type"]]
    if kind == "iou":
        return kind, target["spans"][0] if len(target["spans"]) == 1 else target["spans"]
    if kind == "gqa":
        return kind, {"answer": target["answer"], "segment": target["spans"][0]}
    return kind, target["answer"]


def main(out_path):
    funcs, weights = launch_settings(LAUNCH)
    assert (funcs, weights) == launch_settings(LAUNCH_QWEN3), "the two launch scripts differ"
    fns = [reward_funcs_registry[f] for f in funcs]
    cases = []
    for case_id, covers, target, completion in CASES:
        kind, solution = upstream_solution(target)
        with contextlib.redirect_stdout(io.StringIO()):  # upstream prints on failures
            per_func = [
                fn(completions=[completion], solutions=[solution], problem_types=[kind])[0]
                for fn in fns
            ]
        total = 0.0
        for w, r in zip(weights, per_func, strict=True):
            total = total + w * r
        # As upstream's trainer sums: float32 tensors, rewards x weights, summed per row.
        f32 = np.float32(0.0)
        for w, r in zip(weights, per_func, strict=True):
            f32 = np.float32(f32 + np.float32(r) * np.float32(w))
        cases.append(
            {
                "id": case_id,
                "covers": covers,
                "completion": completion,
                "target": target,
                "upstream_input": {"problem_type": kind, "solution": solution},
                "upstream_rewards": dict(zip(funcs, per_func, strict=True)),
                "total": total,
                "total_float32": float(f32),
            }
        )
    log = git("log", "-1", "--format=%H%n%cI", COMMIT).split()
    data = {
        "description": "Expected VideoAuto-R1 reward totals, produced by running the released "
        "VideoAuto-R1 reward code on these completions (never typed by hand). "
        "Checked by tests/unit/test_rewards_compat.py against rewards.compat=videoauto_r1.",
        "upstream": {
            "repo": "https://github.com/IVUL-KAUST/VideoAuto-R1",
            "commit": log[0],
            "commit_date": log[1],
            "files": [
                f"videoauto_r1/reward/{f}" for f in ("reward.py", "mc_grader.py", "tg_grader.py")
            ],
            "reward_funcs": funcs,
            "reward_weights": weights,
            "weights_from": [LAUNCH, LAUNCH_QWEN3],
        },
        "produced": {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "by": "scripts/compat/videoauto_r1_expected.py: it extracts and imports "
            "upstream's reward files from the commit above and calls the three reward functions; "
            "total = sum(weight * reward) in float64, total_float32 as upstream's trainer sums "
            "float32 tensors",
            "command": "VIDEOAUTO_R1_GIT=<clone>/.git <venv with math-verify==0.8.0>/bin/python scripts/compat/videoauto_r1_expected.py tests/data/videoauto_r1_compat.json",
            "python": platform.python_version(),
            "math_verify": importlib.metadata.version("math-verify"),
            "latex2sympy2_extended": importlib.metadata.version("latex2sympy2_extended"),
            "target_mapping": "reelrl problem_type -> upstream: multiple_choice/free_form -> exact_match, "
            "numerical/math -> math, temporal_grounding -> iou (spans as the solution), "
            "grounded_qa -> gqa ({answer, segment})",
        },
        "cases": cases,
    }
    with open(out_path, "w") as fh:
        json.dump(data, fh, indent=1, ensure_ascii=False)
        fh.write("\n")
    print(f"wrote {len(cases)} cases to {out_path}")


if __name__ == "__main__":
    main(sys.argv[1])

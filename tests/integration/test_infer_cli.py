"""`reelrl infer` end to end on each tiny family and a real synthetic clip: the command
prints the answer, whether it thought, the first-pass confidence against tau and the tokens
generated, and the figures agree with each other (a pass that stopped early had a confidence
of at least tau; thinking costs more tokens than the first pass alone)."""

from __future__ import annotations

import re
from pathlib import Path
from subprocess import CompletedProcess

import pytest

from tests.fixtures.cli import run_cli
from tests.integration.test_eval_cli import SMALL

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TAU = 0.5
THINK_TOKENS = 12


def first_multiple_choice(root: Path):
    from system.data.records import Record, read_items

    for _, item in read_items(root / "eval.jsonl"):
        record = Record.model_validate(item)
        if record.problem_type == "multiple_choice" and record.options:
            return record
    raise AssertionError("the synthetic eval split has no multiple-choice record")


def run_infer(capsys, model: Path, video: Path, record, *extra: str) -> CompletedProcess:
    args = ["infer", "--model", str(model), "--video", str(video)]
    args += ["--question", record.question, "--options", *record.options]
    return run_cli(capsys, *args, "--think-tokens", str(THINK_TOKENS), *extra, *SMALL)


def parse(stdout: str) -> dict[str, str]:
    fields = dict(re.findall(r"^(answer|thought|confidence|tokens):\s*(.*)$", stdout, re.M))
    assert set(fields) == {"answer", "thought", "confidence", "tokens"}, stdout[-2000:]
    return fields


def test_infer_prints_a_gated_answer(tiny_model, synthetic_dataset, capsys):
    _, model = tiny_model
    record = first_multiple_choice(synthetic_dataset)
    video = synthetic_dataset / record.video
    done = run_infer(capsys, model, video, record, "--tau", str(TAU))
    assert done.returncode == 0, done.stderr[-3000:]
    out = parse(done.stdout)
    assert out["thought"] in {"yes", "no"}
    tokens = int(out["tokens"])
    assert tokens > 0
    confidence = re.fullmatch(r"(n/a|[0-9.]+) \(tau ([0-9.]+)\)", out["confidence"])
    assert confidence is not None, out["confidence"]
    assert float(confidence.group(2)) == TAU
    if out["thought"] == "no":  # stopping early needs a confident first answer
        assert confidence.group(1) != "n/a" and float(confidence.group(1)) >= TAU
    if confidence.group(1) != "n/a":
        assert 0.0 <= float(confidence.group(1)) <= 1.0


def test_infer_always_think_thinks(tiny_qwen2_5_vl, synthetic_dataset, capsys):
    record = first_multiple_choice(synthetic_dataset)
    video = synthetic_dataset / record.video
    done = run_infer(capsys, tiny_qwen2_5_vl, video, record, "--mode", "always_think")
    assert done.returncode == 0, done.stderr[-3000:]
    out = parse(done.stdout)
    assert out["thought"] == "yes" and int(out["tokens"]) > 0

"""The synthetic assistive task: records in the Pause-and-Think shape whose answers follow
from the clip (squares counted and ordered in the decoded frames), both categories, and its
evaluation in the run's own format with the judge, per category."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from actors.evaluation import ANSWER_MODE, eval_modes, evaluate_answers, task_name
from actors.judge import JudgeClient, RuleJudge
from system.config import JudgeConfig, RunConfig, SyntheticSpec
from system.data.records import Record, parse_record
from system.data.synthetic import PALETTE
from system.data.synthetic_assist import CATEGORIES, ROW_Y, SLOT_X, ensure_assist, generate_assist


def _colour_at(frame: np.ndarray, slot: int) -> str | None:
    pixel = frame[ROW_Y + 10, SLOT_X[slot] + 10].astype(int)
    for name, rgb in PALETTE.items():
        if np.abs(pixel - np.array(rgb)).max() < 40:
            return name
    return None


def test_answers_follow_from_the_clip(tmp_path: Path):
    import av

    generate_assist(tmp_path, 8, 2, seed=3)
    rows = [json.loads(line) for line in (tmp_path / "assist_train.jsonl").read_text().splitlines()]
    assert [r["meta"]["category"] for r in rows[:2]] == list(CATEGORIES)
    for i, item in enumerate(rows):
        record = parse_record(item, f"assist:{i}")
        assert record.problem_type == "free_form" and record.meta["reasoning"]
        with av.open(str(tmp_path / record.video)) as clip:
            last = [f.to_ndarray(format="rgb24") for f in clip.decode(video=0)][-1]
        shown = [c for c in (_colour_at(last, s) for s in range(4)) if c is not None]
        assert 1 <= len(shown) <= 3
        if record.meta["category"] == "Future/Planning":
            order = record.question.split("order: ")[1].split(". What")[0].split(", ")
            assert order[: len(shown)] == shown  # placed in the stated order
            assert f"Place the {order[len(shown)]} square" in record.answer
        else:
            assert f"You placed the {shown[-1]} square" in record.answer
    assert len((tmp_path / "assist_eval.jsonl").read_text().splitlines()) == 2


def test_the_set_is_made_once_per_spec(tmp_path: Path):
    spec = SyntheticSpec(out=str(tmp_path), n_assist=4, n_assist_eval=2)
    assert ensure_assist(spec) == tmp_path
    stamp = (tmp_path / "assist_train.jsonl").stat().st_mtime_ns
    ensure_assist(spec)
    assert (tmp_path / "assist_train.jsonl").stat().st_mtime_ns == stamp
    assert ensure_assist(SyntheticSpec(out=str(tmp_path / "none"))) is None


class ReplyEngine:
    """Answers each request with the reply its question maps to."""

    def __init__(self, replies: dict[str, str]) -> None:
        self.replies = replies

    async def generate(self, requests, spec):
        from actors.engine import Completion, Generation

        assert spec.temperature == 0.0 and spec.n == 1
        out = []
        for r in requests:
            text = next(v for k, v in self.replies.items() if k in r.prompt)
            out.append(Generation([1], [Completion([7] * 9, [-0.1] * 9, text, "stop")]))
        return out


def test_evaluation_in_the_runs_format_is_judged_per_category(tiny_qwen2_5_vl):
    from transformers import AutoProcessor

    config = RunConfig.model_validate({"model": {"path": str(tiny_qwen2_5_vl)},
                                       "rewards": {"format": "thinking_answer"}})  # fmt: skip
    assert eval_modes(config) == [ANSWER_MODE]
    assert eval_modes(RunConfig()) == ["direct", "always_think", "gated"]
    records = [
        Record.model_validate({"id": "p", "problem_type": "free_form", "question": "What next?",
                               "answer": "Place the red square on the left.",
                               "meta": {"category": "Future/Planning"}}),
        Record.model_validate({"id": "f", "problem_type": "free_form", "question": "Which one?",
                               "answer": "You placed the blue square.",
                               "meta": {"category": "Factual/Past"}}),
    ]  # fmt: skip
    engine = ReplyEngine({
        "What next?": "<thinking>red is next</thinking><answer>Place the red square on the left.</answer>",
        "Which one?": "<thinking>hmm</thinking><answer>No idea.</answer>",
    })  # fmt: skip
    judge = JudgeClient(RuleJudge(), JudgeConfig(backend="rule"))
    processor = AutoProcessor.from_pretrained(tiny_qwen2_5_vl)
    report = asyncio.run(evaluate_answers(engine, processor, records, config, 64, judge))
    assert "stand-in" in report["judge"]
    by_id = {r["id"]: r for r in report["rows"]}
    good, bad = by_id["p"]["modes"][ANSWER_MODE], by_id["f"]["modes"][ANSWER_MODE]
    assert by_id["p"]["task"] == "Future/Planning" == task_name(records[0])
    assert good["judged"] and good["reward"] == pytest.approx(1.0) and good["correct"]
    assert bad["reward"] < 0.5 and not bad["correct"] and bad["tokens"] == 9
    # Without a judge: ROUGE-L, not marked as judged.
    plain = asyncio.run(evaluate_answers(engine, processor, records, config, 64, None))
    assert "judge" not in plain and not plain["rows"][0]["modes"][ANSWER_MODE]["judged"]

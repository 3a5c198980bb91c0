"""The judge of free-form answers: the rubric's parse, the rule-based stand-in, the cache,
the client's deadline and fallbacks, the HTTP backend against a local OpenAI-style server,
and the rollout actor publishing judged groups and retrying unjudged ones."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from actors.judge import HttpJudge, JudgeClient, RuleJudge
from actors.rewards.judge import JudgeCache, JudgeItem, parse_reply, rule_reply
from system.config import ConfigError, JudgeConfig, load_config
from system.config.models import RunConfig

ITEM = JudgeItem("What should I do next?", "Place the blue square to the right of the green one.",
                 "Put the blue square right of the green square.")  # fmt: skip


def test_a_reply_parses_to_the_weighted_rubric():
    assert parse_reply("action: 10\nlocation: 5\nobject: 0") == pytest.approx(0.7)
    assert parse_reply("Action = 7/10, Location: 10, OBJECT: 10") == pytest.approx(0.82)
    assert parse_reply("action: 12\nlocation: 10\nobject: 10") == pytest.approx(1.0)  # clipped
    assert parse_reply("action: 3\nlocation: 4") is None  # an item missing
    assert parse_reply("I think it is fine.") is None


def test_the_rule_based_stand_in_checks_action_place_and_objects():
    same = JudgeItem(ITEM.question, ITEM.reference, ITEM.reference)
    assert parse_reply(rule_reply(same)) == pytest.approx(1.0)
    close = parse_reply(rule_reply(ITEM))
    wrong_place = parse_reply(rule_reply(JudgeItem(ITEM.question, ITEM.reference,
                                                   "Place the blue square on the left.")))  # fmt: skip
    unrelated = parse_reply(rule_reply(JudgeItem(ITEM.question, ITEM.reference, "Wave hello.")))
    assert 1.0 > close > wrong_place > unrelated >= 0.0
    ref = "Place the green square to the right of the blue one."

    def score(answer: str) -> float:
        return parse_reply(rule_reply(JudgeItem("q", ref, answer)))

    assert score("place the GREEN square to the right of the blue one") == pytest.approx(1.0)
    assert score("Place the red square to the right of the blue one.") < 0.5  # wrong object
    assert score("Place the green square to the right of the red one.") < 0.5  # wrong place


def test_the_cache_drops_the_least_recently_used():
    cache = JudgeCache(2)
    a, b, c = (JudgeItem("q", "r", x) for x in "abc")
    cache.put(a, 0.1)
    cache.put(b, 0.2)
    assert cache.get(a) == 0.1  # a is now the most recent
    cache.put(c, 0.3)
    assert cache.get(b) is None and cache.get(a) == 0.1 and cache.get(c) == 0.3 and len(cache) == 2


class Scripted:
    label = "scripted"

    def __init__(self, reply: str = "action: 10\nlocation: 10\nobject: 10", hang: bool = False,
                 fail: bool = False) -> None:  # fmt: skip
        self.reply, self.hang, self.fail, self.calls = reply, hang, fail, []

    async def replies(self, items):
        self.calls.append(list(items))
        if self.fail:
            raise ConnectionError("judge is down")
        if self.hang:
            await asyncio.sleep(3600)
        return [self.reply for _ in items]


def test_the_client_caches_and_sends_each_answer_once():
    backend = Scripted()
    client = JudgeClient(backend, JudgeConfig(backend="rule"))
    other = JudgeItem(ITEM.question, ITEM.reference, "something else")
    assert asyncio.run(client.scores([ITEM, ITEM, other])) == [1.0, 1.0, 1.0]
    assert len(backend.calls) == 1 and len(backend.calls[0]) == 2  # duplicates sent once
    assert asyncio.run(client.scores([ITEM])) == [1.0]
    assert len(backend.calls) == 1 and client.stats.cached == 1 and client.stats.judged == 2


def test_an_unparsed_reply_falls_back_to_rouge_l():
    from actors.rewards.graders import rouge_l

    client = JudgeClient(Scripted(reply="looks good"), JudgeConfig(backend="rule"))
    (score,) = asyncio.run(client.scores([ITEM]))
    assert score == pytest.approx(rouge_l(ITEM.answer, ITEM.reference)) and 0 < score < 1
    assert client.stats.unparsed == 1


@pytest.mark.parametrize("backend", [Scripted(hang=True), Scripted(fail=True)])
def test_a_hung_or_failing_judge_leaves_answers_unjudged_within_the_timeout(backend):
    import time

    client = JudgeClient(backend, JudgeConfig(backend="rule", timeout_s=0.3))
    started = time.monotonic()
    assert asyncio.run(client.scores([ITEM])) == [None]
    assert time.monotonic() - started < 2.0
    assert client.stats.missing == 1 and len(client.cache) == 0  # nothing cached


def test_the_rule_backend_through_the_client():
    client = JudgeClient(RuleJudge(), JudgeConfig(backend="rule"))
    (score,) = asyncio.run(client.scores([ITEM]))
    # "Put" is not the reference's "Place": no action credit; location and objects right.
    assert score == pytest.approx(0.4) and "stand-in" in client.label


def test_the_http_backend_speaks_openai_chat_completions(monkeypatch):
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((self.path, self.headers.get("Authorization"), body))
            reply = {"choices": [{"message": {"content": "action: 8\nlocation: 10\nobject: 5"}}]}
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("REELRL_JUDGE_API_KEY", "sekrit")
        url = f"http://127.0.0.1:{server.server_port}/v1"
        config = JudgeConfig(backend="http", url=url, model="judge-7b")
        client = JudgeClient(HttpJudge(config), config)
        (score,) = asyncio.run(client.scores([ITEM]))
    finally:
        server.shutdown()
    assert score == pytest.approx(0.6 * 0.8 + 0.2 * 1.0 + 0.2 * 0.5)
    ((path, auth, body),) = seen
    assert path == "/v1/chat/completions" and auth == "Bearer sekrit"
    assert body["model"] == "judge-7b" and body["temperature"] == 0.0
    assert ITEM.answer in body["messages"][-1]["content"]


def test_a_judge_config_missing_what_its_backend_needs_is_refused(tmp_path):
    with pytest.raises(Exception, match=r"rewards\.judge\.model"):
        RunConfig.model_validate({"rewards": {"judge": {"backend": "vllm"}}})
    path = tmp_path / "c.yaml"
    path.write_text("rewards:\n  judge:\n    backend: http\n    model: m\n")
    with pytest.raises(ConfigError, match=r"rewards\.judge\.url"):
        load_config(str(path))


# --------------------------------------------------------------------------- in the rollout

GOOD = (
    "<thinking>Blue follows green.</thinking>"
    "<answer>Place the blue square right of the green one.</answer>"
)
BAD = "<thinking>No idea.</thinking><answer>Wave hello.</answer>"


class TextEngine:
    """A `RolloutEngine` double answering every request with the given texts in turn."""

    weight_version = 2

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts

    async def generate(self, requests, spec):
        from actors.engine import Completion, Generation

        texts = [self.texts[i % len(self.texts)] for i in range(spec.n)]
        completions = [Completion([5, 6], [-0.1, -0.2], text, "stop") for text in texts]
        return [Generation([1, 2], completions) for _ in requests]


def judged_actor(model, backend, retries: int = 1):
    from transformers import AutoProcessor

    from actors.rollout import RolloutActor
    from system.data.records import Record

    config = RunConfig.model_validate({
        "model": {"path": str(model)},
        "rollout": {"group_size": 4, "prompts_per_batch": 1, "filter_equal_rewards": False},
        "rewards": {"format": "thinking_answer",
                    "judge": {"backend": "rule", "timeout_s": 0.3, "retries": retries}},
    })  # fmt: skip
    record = Record.model_validate({"id": "assist-1", "problem_type": "free_form",
                                    "question": ITEM.question, "answer": ITEM.reference})  # fmt: skip
    actor = RolloutActor(config, records=[record])
    actor.engine = TextEngine([GOOD, BAD])
    actor.processor = AutoProcessor.from_pretrained(model)
    actor.judge = JudgeClient(backend, config.rewards.judge)
    return actor


def batch(actor):
    prompts = actor._prepare(actor._next_records())
    return asyncio.run(actor._generate_and_score(prompts, 2, 0.0))


def test_judge_scores_are_the_task_reward_of_free_form_groups(tiny_qwen2_5_vl):
    actor = judged_actor(tiny_qwen2_5_vl, RuleJudge())
    (group,) = batch(actor)
    good, bad = group.samples[0], group.samples[1]
    assert good.reward_components["task"] > 0.5 > bad.reward_components["task"]
    assert good.reward > bad.reward
    # Two distinct answers, judged once each; the second batch is served from the cache.
    assert actor.judge.stats.judged == 2
    batch(actor)
    assert actor.judge.stats.judged == 2 and actor.judge.stats.cached == 2
    stats = actor.stats_.as_dict(2)
    assert stats["groups_unjudged"] == 0


def test_an_unreachable_judge_holds_the_group_back_and_retries_its_record(tiny_qwen2_5_vl):
    backend = Scripted(fail=True)
    actor = judged_actor(tiny_qwen2_5_vl, backend, retries=1)
    assert batch(actor) == []  # not published without its scores
    assert actor.stats_.unjudged == 1 and actor.stats_.judge_retried == 1
    assert [r.id for r, tries in actor._retry] == ["assist-1"]
    backend.fail = False  # the judge is back: the retried record is judged and published
    (group,) = batch(actor)
    assert group.record_id == "assist-1" and actor._retry == []
    # Answers judged before come from the cache; new ones need the judge, down again.
    assert len(batch(actor)) == 1
    actor.engine.texts = [BAD.replace("Wave", "Say"), GOOD.replace("blue", "red")]
    backend.fail = True
    assert batch(actor) == [] and batch(actor) == []  # retried once, then skipped
    assert actor.stats_.judge_skipped == 1 and actor.stats_.unjudged == 3

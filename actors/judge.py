"""Judging free-form answers during rollouts: `JudgeClient` (cache, one batch per rollout
batch, a deadline, ROUGE-L when a reply does not parse) over one of three backends with the
same interface, `replies(items) -> list[str]`:

- `VllmJudge`: any local model directory served by vLLM in a Ray actor of its own
  (`JudgeActor`, shared by the run's rollout actors under one name), greedy, its replies held
  to the rubric's form by structured outputs;
- `HttpJudge`: an OpenAI-compatible chat-completions endpoint (`vllm serve`, a hosted model);
- `RuleJudge`: a rule-based stand-in for CPU debug runs (word overlap per rubric item),
  labelled as such wherever its scores are reported.

A judge that is slow, down or dead never stalls a rollout: past `rewards.judge.timeout_s`
the batch's answers are unjudged (None) and the rollout actor retries their records later
(`rewards.judge.retries`), counting them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from actors.rewards.graders import rouge_l
from actors.rewards.judge import (
    REPLY_REGEX,
    JudgeCache,
    JudgeItem,
    judge_messages,
    parse_reply,
    rule_reply,
)
from system.config import JudgeConfig, RunConfig

log = logging.getLogger("reelrl.judge")

READY_TIMEOUT_S = 900.0
"""How long a rollout actor waits for a served judge to load its model."""
HTTP_CONCURRENCY = 16


class JudgeBackend(Protocol):
    label: str
    """What judged, as reports name it."""

    async def replies(self, items: Sequence[JudgeItem]) -> list[str]: ...


@dataclass
class JudgeStats:
    judged: int = 0
    """Answers a backend replied about."""
    cached: int = 0
    unparsed: int = 0
    """Replies that did not parse (scored by ROUGE-L instead)."""
    missing: int = 0
    """Answers left unjudged: the judge timed out, failed or was unreachable."""
    seconds: float = 0.0


class JudgeClient:
    """Scores answers through a backend, with a cache and a deadline per batch."""

    def __init__(self, backend: JudgeBackend, config: JudgeConfig) -> None:
        self.backend = backend
        self.config = config
        self.cache = JudgeCache(config.cache_size)
        self.stats = JudgeStats()

    @property
    def label(self) -> str:
        return self.backend.label

    async def scores(self, items: Sequence[JudgeItem]) -> list[float | None]:
        """A score in [0, 1] per item; None for the items left unjudged."""
        out: list[float | None] = [self.cache.get(item) for item in items]
        self.stats.cached += sum(s is not None for s in out)
        todo = list(
            {item.key: item for item, s in zip(items, out, strict=True) if s is None}.values()
        )
        if not todo:
            return out
        started = time.monotonic()
        try:
            replies = await asyncio.wait_for(
                self.backend.replies(todo), timeout=self.config.timeout_s
            )
            if len(replies) != len(todo):
                raise RuntimeError(f"{len(replies)} replies for {len(todo)} answers")
        except Exception as exc:
            why = "timed out" if isinstance(exc, TimeoutError) else f"failed: {exc!r}"
            self.stats.missing += len(todo)
            log.warning(
                "judge (%s) %s after %.1fs; %d answers unjudged, their records retried later",
                self.label, why, time.monotonic() - started, len(todo),
            )  # fmt: skip
            return out
        finally:
            self.stats.seconds += time.monotonic() - started
        judged: dict[tuple[str, str], float] = {}
        for item, reply in zip(todo, replies, strict=True):
            score = parse_reply(reply)
            if score is None:
                self.stats.unparsed += 1
                log.debug("judge reply did not parse, ROUGE-L instead: %r", reply[:200])
                score = rouge_l(item.answer, item.reference)
            self.cache.put(item, score)
            judged[item.key] = score
        self.stats.judged += len(todo)
        return [
            s if s is not None else judged[item.key] for item, s in zip(items, out, strict=True)
        ]


class RuleJudge:
    """The rule-based stand-in (`actors.rewards.judge.rule_reply`), no model."""

    label = "rule-based stand-in (word rules, not a model)"

    async def replies(self, items: Sequence[JudgeItem]) -> list[str]:
        return [rule_reply(item) for item in items]


class HttpJudge:
    """An OpenAI-compatible `/chat/completions` endpoint, one request per answer, at most
    `HTTP_CONCURRENCY` at a time."""

    def __init__(self, config: JudgeConfig) -> None:
        assert config.url and config.model
        self.url = config.url.rstrip("/") + "/chat/completions"
        self.model = config.model
        self.max_tokens = config.max_tokens
        self.timeout_s = config.timeout_s
        self.key = os.environ.get(config.api_key_env)
        self.label = f"{config.model} at {config.url}"
        self._slots = asyncio.Semaphore(HTTP_CONCURRENCY)

    async def replies(self, items: Sequence[JudgeItem]) -> list[str]:
        return list(await asyncio.gather(*(self._one(item) for item in items)))

    async def _one(self, item: JudgeItem) -> str:
        async with self._slots:
            return await asyncio.to_thread(self._post, item)

    def _post(self, item: JudgeItem) -> str:
        body = {
            "model": self.model,
            "messages": judge_messages(item),
            "max_tokens": self.max_tokens,
            "temperature": 0.0,
        }
        headers = {"Content-Type": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        request = urllib.request.Request(self.url, json.dumps(body).encode(), headers)
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            reply = json.loads(response.read())
        return str(reply["choices"][0]["message"]["content"] or "")


class JudgeActor:
    """A judge model served by vLLM (a Ray actor: `VllmJudge` creates it). Greedy replies,
    held to the rubric's three lines by structured outputs. The engine starts in `ready`,
    inside the actor's event loop."""

    def __init__(self, model: str, max_model_len: int, max_tokens: int) -> None:
        from system.config.logs import configure

        configure()
        self.model, self.max_model_len, self.max_tokens = model, max_model_len, max_tokens
        self.llm: Any = None
        self._starting = asyncio.Lock()

    async def ready(self) -> bool:
        async with self._starting:
            if self.llm is None:
                self._start()
        return True

    def _start(self) -> None:
        from vllm import SamplingParams
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams
        from vllm.v1.engine.async_llm import AsyncLLM

        from actors.engine import on_gpu, scoped_env

        gpu = on_gpu()
        args = AsyncEngineArgs(
            model=self.model,
            dtype="auto" if gpu else "float32",
            max_model_len=self.max_model_len,
            limit_mm_per_prompt={"video": 0, "image": 0},
            kv_cache_memory_bytes=None if gpu else 256 << 20,
            enforce_eager=not gpu,
            disable_log_stats=True,
        )
        # On CPU the engine core runs in this process (no second interpreter to start).
        with scoped_env(VLLM_ENABLE_V1_MULTIPROCESSING=None if gpu else "0"):
            self.llm = AsyncLLM.from_engine_args(args)
        self.tokenizer = self.llm.get_tokenizer()
        self.params = SamplingParams(
            temperature=0.0,
            max_tokens=self.max_tokens,
            structured_outputs=StructuredOutputsParams(regex=REPLY_REGEX),
            output_kind=RequestOutputKind.FINAL_ONLY,
        )

    async def replies(self, items: Sequence[JudgeItem]) -> list[str]:
        await self.ready()
        return list(await asyncio.gather(*(self._one(item) for item in items)))

    async def _one(self, item: JudgeItem) -> str:
        import uuid

        prompt = self.tokenizer.apply_chat_template(
            judge_messages(item), tokenize=False, add_generation_prompt=True
        )
        final = None
        async for output in self.llm.generate(prompt, self.params, request_id=uuid.uuid4().hex):
            final = output
        return final.outputs[0].text if final is not None else ""


class VllmJudge:
    """Client of the run's `JudgeActor` (one per run, named; created by the first rollout
    actor that needs it, found by the others)."""

    def __init__(self, config: JudgeConfig, run_name: str) -> None:
        import ray

        assert config.model
        self.label = f"vLLM judge {config.model}"
        actor = ray.remote(JudgeActor).options(
            name=f"reelrl-judge-{run_name}",
            get_if_exists=True,
            num_cpus=1,
            num_gpus=config.gpus,
            max_concurrency=64,
        )
        self.actor = actor.remote(config.model, config.max_model_len, config.max_tokens)

    async def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        await asyncio.wait_for(self.actor.ready.remote(), timeout=timeout_s)

    async def replies(self, items: Sequence[JudgeItem]) -> list[str]:
        return await self.actor.replies.remote(list(items))


async def make_judge(config: RunConfig) -> JudgeClient | None:
    """The run's judge client (None without a judge: free-form answers get ROUGE-L)."""
    judge = config.rewards.judge
    backend: Any
    if judge.backend == "none":
        return None
    if judge.backend == "rule":
        backend = RuleJudge()
    elif judge.backend == "http":
        backend = HttpJudge(judge)
    else:
        backend = VllmJudge(judge, config.name)
        await backend.wait_ready()
    log.info("free-form answers judged by %s", backend.label)
    return JudgeClient(backend, judge)

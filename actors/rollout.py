"""The rollout actor: prompts in, scored `RolloutGroup`s out on the run's Redis stream.

A `RolloutActor` (a Ray actor; `remote_rollout_actor` applies the restart policy) owns one
`RolloutEngine` and a shard of dataset records. A batch takes the next `prompts_per_batch`
records, decodes their videos (a `VideoError` skips and counts the record), renders the
prompts, samples G completions each, scores them (`score_completion`; with T-GRPO, extra
shuffled-frame rollouts are scored for `temporal_contrast` and never published), drops groups
without signal and publishes the rest with the weight version that produced them (the oldest,
for completions that straddle a weight update; each sample says which tokens each sampled).

Admission control (bounded staleness): a learner step consumes `learner.groups_per_step`
groups, so groups published beyond what the next `max_staleness + 1` steps consume would be
trained on by weights more than `max_staleness` versions newer than theirs. A batch may start
only while the run's published count (all actors, from the queue) is below
`(learner_version + max_staleness + 1) * groups_per_step`, where learner_version is what
`learner_version()` returns - by default the integer under `<prefix>:<run>:learner_version` in
Redis (the driver writes the learner's step count there); a driver may instead call
`set_learner_version`. Counting published groups, not batches, keeps the bound when groups are
filtered: an actor whose batches are all filtered keeps generating instead of waiting on a
learner that is waiting on it. A (re)started actor reads `<prefix>:<run>:weights_version`
(written by whoever pushes weights, see `system.transport.keys.publish_versions`) and publishes nothing until
a weight update has brought its engine to at least that version. The actor also exposes the
engine's weight-sync control plane (vLLM's four methods) so a trainer-side sender can drive it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from actors.engine import EngineRequest, Generation, RolloutEngine, SampleSpec
from actors.inputs import Prompt, prepare
from actors.rewards import has_signal, score_completion, temporal_contrast
from actors.rewards.composite import graded_answers
from actors.rewards.extract import THINK_OPEN
from actors.rewards.judge import JudgeItem
from system.config import RunConfig
from system.data.records import Dataset, Record, RecordMixer, load_shard
from system.transport.keys import read_version
from system.transport.protocol import RolloutGroup, RolloutSample
from system.transport.redis_server import retrying

log = logging.getLogger("reelrl.rollout")

POLL_S = 0.2
WEDGED_GRACE_S = 30.0
"""How long past `weight_sync.timeout_s` an engine's receive may take before it counts as
wedged (an NCCL receive has no timeout of its own)."""
EXIT_WEDGED = 75
"""Exit status of an actor that stopped its wedged engine (Ray restarts it)."""


def may_start_batch(
    published: int, learner_version: int, max_staleness: int, groups_per_step: int
) -> bool:
    """Admission: another batch may start while the groups published so far are all needed
    by the learner's next `max_staleness + 1` steps."""
    return published < (learner_version + max_staleness + 1) * groups_per_step


@dataclass
class RolloutStats:
    """Running totals behind `RolloutActor.stats()`."""

    started: float = field(default_factory=time.monotonic)
    prepare_s: float = 0.0
    gen_s: float = 0.0
    publish_s: float = 0.0
    tokens: int = 0
    completions: int = 0
    thinking: int = 0
    reward_sum: float = 0.0
    groups: int = 0
    published: int = 0
    filtered: int = 0
    skipped_videos: int = 0
    batches: int = 0
    generating: int = 0
    weight_update_failures: int = 0
    last_weight_update_failure: float = 0.0
    published_by_kind: dict[str, int] = field(default_factory=dict)
    """Groups published per prompt kind (video, text)."""
    unjudged: int = 0
    """Groups not published because the judge could not score them (their records retried
    up to `rewards.judge.retries` times)."""
    judge_retried: int = 0
    judge_skipped: int = 0
    """Records given up on after their retries were spent unjudged."""

    def as_dict(self, weight_version: int) -> dict[str, float]:
        n = max(self.completions, 1)
        return {
            "tokens_per_s": self.tokens / self.gen_s if self.gen_s else 0.0,
            "prepare_s": self.prepare_s,
            "generate_s": self.gen_s,
            "publish_s": self.publish_s,
            "groups_per_s": self.published / max(time.monotonic() - self.started, 1e-9),
            "reward_mean": self.reward_sum / n,
            "response_length": self.tokens / n,
            "think_ratio": self.thinking / n,
            "filter_rate": self.filtered / max(self.groups, 1),
            "groups_published": self.published,
            "groups_filtered": self.filtered,
            "skipped_videos": self.skipped_videos,
            "batches": self.batches,
            "generating": self.generating,
            "weight_update_failures": self.weight_update_failures,
            "last_weight_update_failure": self.last_weight_update_failure,
            "weight_version": weight_version,
            **{f"groups_published_{k}": v for k, v in sorted(self.published_by_kind.items())},
            "groups_unjudged": self.unjudged,
            "judge_retried": self.judge_retried,
            "judge_skipped": self.judge_skipped,
        }


def engine_died(exc: BaseException, engine: Any) -> bool:
    """Whether `exc` means the actor's inference engine is gone for good (vLLM's
    EngineDeadError, or an engine that reports itself errored): only a fresh engine serves
    again."""
    if type(exc).__name__ == "EngineDeadError":
        return True
    return bool(getattr(getattr(engine, "llm", None), "errored", False))


def shuffled(video: tuple[np.ndarray, dict[str, Any]], seed: int) -> tuple[np.ndarray, dict]:
    """The same video input with its frames in a random order (T-GRPO)."""
    frames, meta = video
    order = np.random.default_rng(seed).permutation(len(frames))
    return frames[order], dict(meta)


class RolloutActor:
    """Generates, scores and publishes groups for its shard of records (see module doc)."""

    def __init__(
        self,
        config: RunConfig,
        index: int = 0,
        count: int = 1,
        records: Sequence[Record] | None = None,
    ) -> None:
        """Actor `index` of `count`: it reads its shard of `config.data.train` itself (a Ray
        restart re-runs this from the same small arguments). `records` replaces the shard for
        an actor built in-process (tests, benchmarks)."""
        from system.config.logs import configure

        configure()
        if records is None:
            shard = load_shard(config.data, index, count)
        elif not records:
            raise ValueError("a rollout actor needs at least one record")
        else:
            shard = [Dataset("records", [Record.model_validate(r) for r in records])]
        self.config = config
        # The datasets mixed by weight, each read in a shuffled order (`data.shuffle`): the
        # actor's own stream (seeded by its index), so a restarted one rebuilds it from its
        # arguments.
        self.mixer = RecordMixer(
            shard, config.data_seed + 1000 * (index + 1), shuffle=config.data.shuffle
        )
        self._ahead: list[Record] = []
        self.index = index
        self.engine: RolloutEngine | None = None
        self.processor: Any = None
        self.queue: Any = None
        self.redis: Any = None
        self._learner_version: int | None = None
        self._batch = 0
        self._required_version = 0
        self.stats_ = RolloutStats()
        self.judge: Any = None
        self._retry: list[tuple[Record, int]] = []
        """Records whose groups the judge could not score, with their tries so far."""
        self._tries: dict[int, int] = {}
        """Tries so far of the current batch's retried records, by id()."""

    async def start(self, engine: RolloutEngine | None = None) -> int:
        """Start the engine, connect to Redis; returns the weight version it must reach
        before publishing (a restarted actor waits for the current weights). Idempotent:
        `step` calls it, so an actor Ray restarted starts again on its first call."""
        if self.engine is not None:
            return self._required_version
        from transformers import AutoProcessor

        from actors.engine import VLLMEngine
        from system.transport.queue import RolloutQueue
        from system.transport.redis_server import connect

        cfg = self.config
        self.processor = AutoProcessor.from_pretrained(cfg.model.path)
        self.redis = retrying("connect", lambda: connect(cfg.queue), cfg.queue.reconnect_max_s)
        self.queue = RolloutQueue(self.redis, cfg.name, cfg.queue)
        self.engine = engine or VLLMEngine.create(cfg, seed_offset=self.index)
        if self.judge is None:
            from actors.judge import make_judge

            self.judge = await make_judge(cfg)
        key = self.queue.keys.weights_version
        self._required_version = self._redis(
            "weights version", lambda: read_version(self.redis, key)
        )
        self._batch = self.learner_version()
        return self._required_version

    # ----------------------------------------------------------------------- admission

    def learner_version(self) -> int:
        """The learner's version: what the driver set, else the Redis key (0 when unset)."""
        if self._learner_version is not None:
            return self._learner_version
        key = self.queue.keys.learner_version
        return self._redis("learner version", lambda: read_version(self.redis, key))

    def _redis(self, what: str, fn: Any) -> Any:
        return retrying(what, fn, self.config.queue.reconnect_max_s)

    def set_learner_version(self, version: int | None) -> None:
        """Driver wiring: push the learner's version instead of reading it from Redis (None:
        back to the Redis key)."""
        self._learner_version = version

    def admitted(self) -> bool:
        """Whether the next batch may start now (staleness bound, current weights loaded)."""
        assert self.engine is not None, "start() the actor first"
        fresh = self.engine.weight_version >= self._required_version
        cfg = self.config
        return fresh and may_start_batch(
            self.queue.published(),
            self.learner_version(),
            cfg.rollout.max_staleness,
            cfg.learner.groups_per_step,
        )

    # ----------------------------------------------------------------------- batches

    async def run(self, max_batches: int | None = None) -> dict[str, float]:
        """Run batches until `max_batches` (forever when None); returns `stats()`."""
        done = 0
        while max_batches is None or done < max_batches:
            try:
                await self.step()
            except Exception as exc:
                if engine_died(exc, self.engine):
                    # Nothing of the batch was published; Ray restarts the actor with a
                    # fresh engine that waits for the current weights.
                    self.restart_wedged_engine(f"its engine died: {exc}")
                raise
            done += 1
        return self.stats()

    async def step(self) -> int:
        """Wait for admission, then generate, score and publish one batch; returns the
        number of groups published."""
        await self.start()
        while not self.admitted():
            await asyncio.sleep(POLL_S)
        self._batch += 1
        self.stats_.batches += 1
        started = time.perf_counter()
        prompts = await asyncio.to_thread(self._prepare, self._next_records())
        self.stats_.prepare_s += time.perf_counter() - started
        if not prompts:
            return 0
        version = self.engine.weight_version
        created = time.time()
        self.stats_.generating += 1
        try:
            groups = await self._generate_and_score(prompts, version, created)
        finally:
            self.stats_.generating -= 1
        started = time.perf_counter()
        await asyncio.to_thread(self._publish, groups)
        self.stats_.publish_s += time.perf_counter() - started
        return len(groups)

    def _publish(self, groups: list[RolloutGroup]) -> None:
        for group in groups:
            self.queue.produce(group)
            self.stats_.published += 1
            kind = str(group.meta.get("kind", "video"))
            self.stats_.published_by_kind[kind] = self.stats_.published_by_kind.get(kind, 0) + 1

    def _next_records(self) -> list[Record]:
        """The next batch: records to retry first (unjudged before), then the shard's mix."""
        n = self.config.rollout.prompts_per_batch
        retried, self._retry = self._retry[:n], self._retry[n:]
        self._tries = {id(r): tries for r, tries in retried}
        picked = [r for r, _ in retried]
        fresh = n - len(picked)
        ahead, self._ahead = self._ahead[:fresh], self._ahead[fresh:]
        return picked + ahead + self.mixer.take(fresh - len(ahead))

    def put_ahead(self, records: Sequence[Record]) -> None:
        """Records to generate for before the next ones of the mix (the chaos harness gives
        faulty ones this way)."""
        self._ahead.extend(Record.model_validate(r) for r in records)

    def _prepare(self, records: list[Record]) -> list[Prompt]:
        prompts, skipped = prepare(records, self.config, self.processor, self.config.rewards.format)
        self.stats_.skipped_videos += skipped
        return prompts

    def _specs(self) -> tuple[SampleSpec, SampleSpec]:
        r = self.config.rollout
        s = r.sampling
        ordered = SampleSpec(
            n=r.group_size,
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k,
            max_tokens=s.max_new_tokens,
            stop=tuple(s.stop),
        )
        extra = max(1, round(r.group_size * r.t_grpo.shuffled_fraction))
        return ordered, SampleSpec(**{**ordered.__dict__, "n": extra})

    async def _generate_and_score(
        self, prompts: list[Prompt], version: int, created: float
    ) -> list[RolloutGroup]:
        ordered_spec, shuffled_spec = self._specs()
        requests = [p.request() for p in prompts]
        # T-GRPO contrasts ordered with shuffled frames: video prompts only.
        videos = [i for i, r in enumerate(requests) if r.video is not None]
        t_grpo = self.config.rollout.t_grpo.enabled and bool(videos)
        started = time.perf_counter()
        jobs = [self.engine.generate(requests, ordered_spec)]
        if t_grpo:
            mixed = [
                EngineRequest(
                    requests[i].prompt, shuffled(requests[i].video, self._batch * 1000 + i)
                )
                for i in videos
            ]
            jobs.append(self.engine.generate(mixed, shuffled_spec))
        results = await asyncio.gather(*jobs)
        self.stats_.gen_s += time.perf_counter() - started
        shuffled_gens: list[Generation | None] = [None] * len(prompts)
        if t_grpo:
            for i, gen in zip(videos, results[1], strict=True):
                shuffled_gens[i] = gen
        judged = await self._judge(prompts, results[0], shuffled_gens)
        groups = []
        for prompt, gen, mixed, scores in zip(
            prompts, results[0], shuffled_gens, judged, strict=True
        ):
            if scores is None:
                self._unjudged(prompt.record)
                continue
            group = self._group(prompt, gen, mixed, version, created, scores or None)
            if group is not None:
                groups.append(group)
        return groups

    async def _judge(
        self, prompts: list[Prompt], gens: list[Generation], mixed: list[Generation | None]
    ) -> list[dict[str, float] | None]:
        """Judge scores of the free-form prompts' answers (answer -> score); {} for prompts
        graded without a judge, None for a prompt whose answers the judge left unjudged."""
        out: list[dict[str, float] | None] = [{} for _ in prompts]
        if self.judge is None:
            return out
        items, owners = [], []
        for i, prompt in enumerate(prompts):
            if prompt.record.problem_type != "free_form":
                continue
            texts = [c.text for g in (gens[i], mixed[i]) if g is not None for c in g.completions]
            answers = {a for t in texts for a in graded_answers(t, self.config.rewards)}
            for answer in sorted(answers):
                items.append(JudgeItem(prompt.record.question, prompt.record.answer, answer))
                owners.append(i)
        scores = await self.judge.scores(items)
        for item, owner, score in zip(items, owners, scores, strict=True):
            slot = out[owner]
            if slot is None:
                continue
            if score is None:
                out[owner] = None
            else:
                slot[item.answer] = score
        return out

    def _unjudged(self, record: Record) -> None:
        """A group the judge could not score: not published; its record is tried again in a
        later batch, or skipped once its retries are spent."""
        self.stats_.unjudged += 1
        tries = self._tries.get(id(record), 0)
        if tries < self.config.rewards.judge.retries:
            self._retry.append((record, tries + 1))
            self.stats_.judge_retried += 1
        else:
            self.stats_.judge_skipped += 1
            log.warning("record %s skipped: the judge could not score it %d times",
                        record.id, tries + 1)  # fmt: skip

    def _group(
        self,
        prompt: Prompt,
        gen: Generation,
        mixed: Generation | None,
        version: int,
        created: float,
        judged: dict[str, float] | None = None,
    ) -> RolloutGroup | None:
        cfg = self.config
        scores = [
            score_completion(c.text, prompt.target, cfg.rewards, judged=judged)
            for c in gen.completions
        ]
        totals = [s.total for s in scores]
        components = [dict(s.components) for s in scores]
        meta: dict[str, Any] = {"actor": self.index, "kind": prompt.kind}
        if mixed is not None:
            shuffled_scores = [
                score_completion(c.text, prompt.target, cfg.rewards, judged=judged)
                for c in mixed.completions
            ]
            contrast = temporal_contrast(
                [s.accuracy for s in scores],
                [s.accuracy for s in shuffled_scores],
                cfg.rollout.t_grpo,
            )
            for i, bonus in enumerate(contrast.bonuses):
                totals[i] += bonus
                components[i]["temporal"] = bonus
            meta["t_grpo_holds"] = contrast.holds
        self._count(gen, totals)
        if cfg.rollout.filter_equal_rewards and not has_signal(totals):
            self.stats_.filtered += 1
            return None
        samples = [
            RolloutSample(
                completion_ids=np.asarray(c.token_ids, dtype=np.int32),
                logprobs=np.asarray(c.logprobs, dtype=np.float32),
                reward=float(total),
                reward_components=comp,
                finish_reason=c.finish_reason,
                version_starts=c.version_starts,
            )
            for c, total, comp in zip(gen.completions, totals, components, strict=True)
        ]
        # The batch's version, or the oldest a straddling sample names if that is older: never
        # newer than any of its tokens (staleness and admission count from it).
        oldest = [s.oldest_version for s in samples if s.oldest_version is not None]
        return RolloutGroup(
            run_id=cfg.name,
            group_id=RolloutGroup.new_group_id(),
            record_id=prompt.record.id,
            weight_version=min(oldest) if len(oldest) == len(samples) else min([version, *oldest]),
            created_at=created,
            finished_at=time.time(),
            prompt_ids=np.asarray(gen.prompt_ids, dtype=np.int32),
            vision=None if prompt.video is None else prompt.video.ref,
            images=tuple(image.ref for image in prompt.images),
            samples=tuple(samples),
            problem_type=prompt.record.problem_type,
            answer=prompt.record.answer,
            stage=cfg.stages[0].name,
            meta=meta,
        )

    def _count(self, gen: Generation, totals: list[float]) -> None:
        s = self.stats_
        s.groups += 1
        s.completions += len(gen.completions)
        s.tokens += sum(len(c.token_ids) for c in gen.completions)
        s.thinking += sum(THINK_OPEN in c.text for c in gen.completions)
        s.reward_sum += sum(totals)

    async def evaluate(
        self,
        records: Sequence[Record],
        modes: Sequence[str],
        tau: float,
        first_max_tokens: int = 64,
        think_max_tokens: int = 512,
    ) -> dict[str, Any]:
        """Held-out evaluation with the engine's current weights (actors.evaluation): greedy,
        in the given inference modes, graded rows; generation for training goes on
        alongside."""
        from actors.evaluation import evaluate

        await self.start()
        report = await evaluate(
            self.engine,
            self.processor,
            [Record.model_validate(r) for r in records],
            self.config,
            modes,  # type: ignore[arg-type]
            tau,
            first_max_tokens,
            think_max_tokens,
            self.judge,
        )
        report["weight_version"] = self.engine.weight_version
        return report

    def stats(self) -> dict[str, float]:
        """tokens/s, groups/s, reward mean, response length, think ratio, filter rate, ..."""
        version = self.engine.weight_version if self.engine is not None else 0
        out = self.stats_.as_dict(version)
        out["queue_retries"] = self.queue.retries if self.queue is not None else 0
        if self.judge is not None:
            j = self.judge.stats
            out.update(judge_answers=j.judged, judge_cached=j.cached, judge_unparsed=j.unparsed,
                       judge_missing=j.missing, judge_s=j.seconds)  # fmt: skip
        return out

    # ----------------------------------------------------------------------- weight sync

    def weight_version(self) -> int:
        return self.engine.weight_version if self.engine is not None else 0

    async def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        await self.engine.init_weight_transfer(init_info)

    async def start_weight_update(self) -> None:
        await self.engine.start_weight_update()

    async def update_weights(self, update_info: dict[str, Any]) -> None:
        # gloo bounds its own receive; an NCCL receive whose sender died never returns, and
        # the engine core, blocked in it, would answer nothing again (not even the next
        # group's init). Past the bound plus a grace, the engine is restarted instead.
        bound = self.config.weight_sync.timeout_s + WEDGED_GRACE_S
        try:
            await asyncio.wait_for(self.engine.update_weights(update_info), bound)
        except TimeoutError:
            self._count_update_failure()
            self.restart_wedged_engine(f"its weight receive did not return within {bound:g} s")
            raise
        except Exception:
            # Counted for the operator (and the chaos report); the engine keeps its weights.
            self._count_update_failure()
            raise

    def _count_update_failure(self) -> None:
        self.stats_.weight_update_failures += 1
        self.stats_.last_weight_update_failure = time.time()

    def restart_wedged_engine(self, why: str) -> None:
        """An engine stuck inside a collective cannot be reset from outside it, and a dead one
        (vLLM's EngineDeadError) does not come back: stop it (its processes are killed) and
        exit the actor with an error, so that Ray restarts it (`rollout.max_restarts`) with a
        fresh engine that waits for the current weights and joins the next weight-sync
        group."""
        log.error("rollout actor %d: engine lost (%s); restarting the actor", self.index, why)
        try:
            self.shutdown()
        finally:
            os._exit(EXIT_WEDGED)

    async def finish_weight_update(self, weight_version: str | None = None) -> None:
        version = self.engine.weight_version + 1 if weight_version is None else int(weight_version)
        await self.engine.finish_weight_update(version)

    async def abort_weight_update(self) -> None:
        await self.engine.abort_weight_update()

    async def sleep(self, level: int = 1) -> None:
        await self.engine.sleep(level)

    async def wake_up(self, tags: list[str] | None = None) -> None:
        await self.engine.wake_up(tags)

    def shutdown(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None


def actor_gpus(gpus: float, worker_bundles: list[int] | None) -> tuple[float, dict[str, str]]:
    """The GPUs a rollout actor reserves itself and the environment its engine needs: all of
    `gpus` with one worker; none with tensor-parallel workers on GPUs, whose bundles vLLM's ray
    executor is told (`VLLM_RAY_BUNDLE_INDICES`, in worker order)."""
    if worker_bundles is None or len(worker_bundles) < 2 or not gpus:
        return gpus, {}
    return 0, {"VLLM_RAY_BUNDLE_INDICES": ",".join(map(str, worker_bundles))}


def remote_rollout_actor(
    config: RunConfig,
    index: int = 0,
    count: int = 1,
    scheduling_strategy: Any = None,
    worker_bundles: list[int] | None = None,
) -> Any:
    """Rollout actor `index` of `count` on Ray with the configured restarts (a restarted actor
    re-runs `__init__` and starts again on its next `step`, waiting for the current weights).
    Its arguments are small values Ray keeps in the actor's creation spec, never objects in
    the object store that may be freed before a restart needs them; the actor reads its
    records from the dataset files. The Redis password variable is forwarded from the
    driver's environment, never written down; vLLM and torch log at ERROR unless
    `REELRL_LOG=DEBUG` or their own variables say otherwise (`system.config.logs.library_env`).
    `scheduling_strategy`: its placement-group bundle (the driver packs the engines); None
    places it anywhere, on a node offering `resources.rollout_node_label` when set. With
    tensor-parallel workers on GPUs (`worker_bundles`: their bundles in the strategy's
    placement group) the actor itself takes no GPU: vLLM's ray executor starts one worker
    actor per bundle, each holding its GPU."""
    import os

    import ray

    from system.config.logs import library_env

    env = {k: os.environ[k] for k in (config.queue.password_env,) if k in os.environ}
    env.update(library_env())
    gpus, workers_env = actor_gpus(config.resources.gpus_per_engine, worker_bundles)
    env.update(workers_env)
    cls = ray.remote(RolloutActor)
    label = config.resources.rollout_node_label
    where: dict[str, Any] = (
        {"scheduling_strategy": scheduling_strategy}
        if scheduling_strategy is not None
        else {"resources": {label: 0.001}}
        if label
        else {}
    )
    return cls.options(
        max_restarts=config.rollout.max_restarts,
        num_cpus=config.resources.cpus_per_engine,
        num_gpus=gpus,
        max_concurrency=16,
        runtime_env={"env_vars": env},
        **where,
    ).remote(config, index, count)

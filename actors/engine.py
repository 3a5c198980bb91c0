"""The rollout engine: one small interface (`RolloutEngine`) over vLLM's async engine.

Owns how an actor talks to its inference engine: G sampled completions per prompt with the
completion token ids and the behaviour log-prob of every sampled token (vLLM's processed
log-probs: of the distribution it sampled from, after temperature and top-k / top-p; greedy
requests get the untempered model distribution), the prompt ids exactly as the
engine saw them, and the weight-update lifecycle of vLLM's weight-transfer API
(init / start / update / finish with a version) plus sleep / wake for colocated runs.
`VLLMEngine` is the real implementation (AsyncLLM; the engine core runs in its own process, so
a script that creates one needs a `__main__` guard). On CPU with one tensor-parallel rank the
model worker runs inside the engine-core process (vLLM's `uni` executor) instead of a third
process: one interpreter fewer to start (about 25 s of imports on a 2-core host) and no
per-step hop between engine core and worker. A weight update pauses generation rather than
draining it: `start_weight_update` freezes the requests in flight where they are (vLLM's
keep mode), drops the KV and prefix cache the old weights computed (and, idle, the encoder
cache), the update loads, and the requests resume under the new weights (their prefix
recomputed with them) once it finishes or fails.
A completion that straddles an update says which tokens each version sampled (vLLM's own
weight-version spans, `Completion.version_starts`); every token's behaviour log-prob is the one
vLLM sampled it with.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from system.config import RunConfig
from system.data.video import VISION_PLACEHOLDERS

log = logging.getLogger("reelrl.engine")

VideoInput = tuple[np.ndarray, dict[str, Any]]
"""`DecodedVideo.vllm_input()`: frames [T, H, W, 3] uint8 and their metadata."""


@dataclass(frozen=True)
class EngineRequest:
    """One prompt: its rendered text and, for a video question, the video input; for an
    image question, its images ([H, W, 3] uint8 each, already on the grid), in prompt order."""

    prompt: str
    video: VideoInput | None = None
    images: tuple[np.ndarray, ...] = ()


@dataclass(frozen=True)
class SampleSpec:
    """How to sample: `n` completions per prompt (G), temperature, nucleus, stops, length."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_tokens: int = 512
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class Completion:
    """One sampled completion; `logprobs[i]` is the behaviour log-prob of `token_ids[i]`."""

    token_ids: list[int]
    logprobs: list[float]
    text: str
    finish_reason: str
    version_starts: tuple[tuple[int, int], ...] = ()
    """For a completion sampled across weight updates: (weight version, index of its first
    token) of every version that sampled tokens of it, oldest first. Empty: one version."""


@dataclass(frozen=True)
class Generation:
    """The completions of one prompt and the prompt ids the engine saw (video expanded)."""

    prompt_ids: list[int]
    completions: list[Completion] = field(default_factory=list)


class RolloutEngine(Protocol):
    """What a rollout actor and the gated inference need from an inference engine."""

    weight_version: int
    """Version of the weights loaded now (0: the model directory's weights)."""

    async def generate(
        self, requests: Sequence[EngineRequest], spec: SampleSpec
    ) -> list[Generation]:
        """Sample `spec.n` completions for each request, in request order."""
        ...

    async def init_weight_transfer(self, init_info: dict[str, Any]) -> None:
        """Join the trainer's weight-transfer group (backend-specific init info)."""
        ...

    async def start_weight_update(self) -> None:
        """Pause generation (requests in flight kept, resumed after the update) and open an
        update session."""
        ...

    async def update_weights(self, update_info: dict[str, Any]) -> None:
        """Receive one update (all its buckets); raises, keeping the old weights, on failure."""
        ...

    async def finish_weight_update(self, version: int) -> None:
        """Load what was received and serve it as `version`."""
        ...

    async def abort_weight_update(self) -> None:
        """Close an open update session without loading anything (the update will not come:
        another engine failed to start it); generation resumes on the weights held."""
        ...

    async def sleep(self, level: int = 1) -> None:
        """Release accelerator memory (colocated with the learner)."""
        ...

    async def wake_up(self, tags: list[str] | None = None) -> None:
        """Take the memory back after `sleep`: all of it, or only vLLM's `tags` ("weights"
        first, so a weight update lands before the KV cache is allocated again)."""
        ...

    def shutdown(self) -> None:
        """Stop the engine and its processes."""
        ...


@contextlib.contextmanager
def scoped_env(**values: str | None) -> Iterator[None]:
    """Set the environment variables given (None: leave as is) for the block, then restore."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update({name: v for name, v in values.items() if v is not None})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def on_gpu() -> bool:
    """Whether this process sees a CUDA device (picks nccl vs gloo, dtype, sleep mode)."""
    import torch

    return torch.cuda.is_available()


def weight_backend(config: RunConfig) -> str:
    """The weight-transfer backend: the configured one, or nccl on GPU / gloo on CPU."""
    backend = config.weight_sync.backend
    if backend == "auto":
        return "nccl" if on_gpu() else "gloo"
    return backend


def omp_binding(tp: int, cpus: list[int]) -> str:
    """vLLM's `VLLM_CPU_OMP_THREADS_BIND` for `tp` CPU workers: the process's CPUs split into
    `tp` equal runs ("0,1|2,3"). vLLM's own default binds one NUMA node per worker and refuses
    more workers than nodes (a one-node host); with fewer CPUs than workers, no binding."""
    per = len(cpus) // tp
    if per == 0:
        return "nobind"
    return "|".join(",".join(map(str, cpus[i * per : (i + 1) * per])) for i in range(tp))


def executor_backend(tp: int, gpu: bool) -> str | None:
    """vLLM's executor for `tp` tensor-parallel workers: `uni` (the worker inside the engine
    core) for one; on GPUs `ray` for several, each worker a Ray actor in the engine's
    placement bundles (`system.orchestration.placement.engine_bundles`); on CPU vLLM's
    multiprocess executor (None: vLLM's choice)."""
    if tp == 1:
        return "uni" if not gpu else None
    return "ray" if gpu else None


def engine_args(config: RunConfig, model_path: str | None = None, seed_offset: int = 0) -> Any:
    """vLLM AsyncEngineArgs from the run config (rollout, model, video, weight sync)."""
    from vllm.config import WeightTransferConfig
    from vllm.engine.arg_utils import AsyncEngineArgs

    from system.data.video import processor_kwargs

    rollout = config.rollout
    gpu = on_gpu()
    dtype = config.model.dtype
    if dtype == "auto":
        dtype = "bfloat16" if gpu else "float32"
    model = model_path or config.model.path
    return AsyncEngineArgs(
        model=model,
        dtype=dtype,
        tensor_parallel_size=rollout.tensor_parallel_size,
        distributed_executor_backend=executor_backend(rollout.tensor_parallel_size, gpu),
        gpu_memory_utilization=rollout.gpu_memory_utilization,
        kv_cache_memory_bytes=kv_cache_size(config, model, dtype, gpu),
        max_model_len=rollout.max_model_len,
        enforce_eager=rollout.enforce_eager,
        seed=config.rollout_seed + seed_offset,
        limit_mm_per_prompt={"video": 1, "image": config.image.max_images},
        mm_processor_kwargs=processor_kwargs(),
        # No multimodal input cache: every request's video has an identity of its own
        # (`VLLMEngine._one`), so it would never be hit; the frames arrive decoded and
        # resized (system.data.video) and are cheap to process again.
        mm_processor_cache_gb=0,
        weight_transfer_config=WeightTransferConfig(backend=weight_backend(config)),
        enable_sleep_mode=gpu and config.resources.colocate,
        disable_log_stats=True,
        logprobs_mode="processed_logprobs",
    )


def kv_cache_size(config: RunConfig, model: str, dtype: str, gpu: bool) -> int | None:
    """The engine's KV cache in bytes (actors.kv_cache): `rollout.kv_cache_gib` when set,
    else on CPU the size the actor's batches need; None on GPU without it (vLLM sizes the
    cache from `gpu_memory_utilization` of the device)."""
    from actors.kv_cache import available_memory, concurrent_sequences, kv_budget, model_kv_shape

    rollout = config.rollout
    if gpu and rollout.kv_cache_gib is None:
        return None
    return kv_budget(
        model_kv_shape(model, dtype),
        rollout.max_model_len,
        concurrent_sequences(rollout),
        rollout.kv_cache_gib,
        available_memory(),
    )


class VLLMEngine:
    """`RolloutEngine` over vLLM's AsyncLLM. Create it inside the event loop that uses it."""

    def __init__(self, llm: Any, tokenizer: Any) -> None:
        self.llm = llm
        self.tokenizer = tokenizer
        self.weight_version = 0
        self._cond = asyncio.Condition()
        self._in_flight = 0
        self._updating = False
        self._paused = False
        self._labelled = False

    @classmethod
    def create(
        cls, config: RunConfig, model_path: str | None = None, seed_offset: int = 0
    ) -> VLLMEngine:
        """Start an engine for `config` (about 30-60 s on CPU)."""
        from vllm.v1.engine.async_llm import AsyncLLM

        args = engine_args(config, model_path, seed_offset)
        # vLLM's CPU platform replaces `uni` by its multiprocess executor unless this is 0 while
        # the engine is configured and its core process spawned (AsyncLLM keeps that process).
        in_core = args.distributed_executor_backend == "uni"
        tp = config.rollout.tensor_parallel_size
        bind = None
        if tp > 1 and not on_gpu() and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
            bind = omp_binding(tp, sorted(os.sched_getaffinity(0)))
        with scoped_env(
            VLLM_ENABLE_V1_MULTIPROCESSING="0" if in_core else None,
            VLLM_CPU_OMP_THREADS_BIND=bind,
        ):
            llm = AsyncLLM.from_engine_args(args)
        return cls(llm, llm.get_tokenizer() if hasattr(llm, "get_tokenizer") else None)

    # ----------------------------------------------------------------------- generation

    async def generate(
        self, requests: Sequence[EngineRequest], spec: SampleSpec
    ) -> list[Generation]:
        async with self._cond:
            # Requests made during an update wait here (vLLM would queue them too).
            await self._cond.wait_for(lambda: not self._updating)
            self._in_flight += 1
            if not self._labelled:
                # vLLM labels each sampled token with the weight version set last; without
                # a label it reports no spans.
                await self.llm.update_weight_version(str(self.weight_version))
                self._labelled = True
        try:
            params = _sampling_params(spec, self._banned())
            return list(await asyncio.gather(*(self._one(r, params) for r in requests)))
        finally:
            async with self._cond:
                self._in_flight -= 1

    async def _one(self, request: EngineRequest, params: Any) -> Generation:
        prompt: dict[str, Any] = {"prompt": request.prompt}
        if request.video is not None:
            prompt["multi_modal_data"] = {"video": [request.video]}
            # Each request's video an identity of its own: vLLM keys its encoder cache (vision
            # embeddings) by it, so a request never reuses embeddings another request
            # computed, possibly under older weights (`_hold_for_update`). The G samples of a
            # prompt are one request: its video is encoded once.
            prompt["multi_modal_uuids"] = {"video": [uuid.uuid4().hex]}
        elif request.images:
            prompt["multi_modal_data"] = {"image": list(request.images)}
            prompt["multi_modal_uuids"] = {"image": [uuid.uuid4().hex for _ in request.images]}
        final = None
        async for output in self.llm.generate(prompt, params, request_id=uuid.uuid4().hex):
            final = output
        assert final is not None, "vLLM returned no output for a request"
        return Generation(
            prompt_ids=list(final.prompt_token_ids),
            completions=[_completion(c) for c in final.outputs],
        )

    def _banned(self) -> list[int]:
        """Vision placeholder ids: sampled in a completion, they would be read as slots for
        vision features when the learner re-runs prompt + completion."""
        if self.tokenizer is None:
            return []
        ids = [self.tokenizer.convert_tokens_to_ids(t) for t in VISION_PLACEHOLDERS]
        return [int(i) for i in ids if isinstance(i, int) and i != self.tokenizer.unk_token_id]

    # ----------------------------------------------------------------------- weights

    async def init_weight_transfer(self, init_info: dict[str, Any]) -> None:
        from vllm.distributed.weight_transfer.base import WeightTransferInitRequest

        # A new group (a restarted sender) abandons any update the old one left open.
        await self._end_update()
        await self.llm.init_weight_transfer_engine(WeightTransferInitRequest(init_info=init_info))

    async def start_weight_update(self) -> None:
        async with self._cond:
            if self._updating:
                raise RuntimeError("a weight update is already open on this engine")
            self._updating = True
            busy = self._in_flight > 0
        try:
            # Busy: the requests in flight stay where they are (idle, new requests wait in
            # `generate`). Either way every cache the old weights computed goes.
            self._paused = busy  # resumed by `_end_update`, whatever fails from here
            await _hold_for_update(self.llm, busy)
            await self.llm.start_weight_update()
        except BaseException:
            await self._end_update()
            raise

    async def update_weights(self, update_info: dict[str, Any]) -> None:
        from vllm.distributed.weight_transfer.base import WeightTransferUpdateRequest

        try:
            await self.llm.update_weights(WeightTransferUpdateRequest(update_info=update_info))
        except BaseException:
            # The worker closed the session and dropped what it staged: serve the old weights.
            await self._end_update()
            raise

    async def finish_weight_update(self, version: int) -> None:
        try:
            # Labels the tokens sampled from here on (set before generation resumes).
            await self.llm.finish_weight_update(weight_version=str(version))
            self.weight_version = version
            self._labelled = True
        finally:
            await self._end_update()

    async def abort_weight_update(self) -> None:
        if not self._updating:
            return
        try:
            # Nothing was received: the session closes and the weights and their label stay.
            await self.llm.finish_weight_update()
        except Exception as exc:
            log.warning("closing an abandoned weight update failed: %s", exc)
        finally:
            await self._end_update()

    async def _end_update(self) -> None:
        """Close the update (finished or failed): generation resumes on whatever weights the
        engine holds now."""
        async with self._cond:
            if not self._updating:
                return
            self._updating = False
            paused, self._paused = self._paused, False
            self._cond.notify_all()
        if paused:
            await self.llm.resume_generation()

    # ----------------------------------------------------------------------- colocation

    async def sleep(self, level: int = 1) -> None:
        await self.llm.sleep(level)

    async def wake_up(self, tags: list[str] | None = None) -> None:
        await self.llm.wake_up(tags)

    def shutdown(self) -> None:
        self.llm.shutdown()


async def _hold_for_update(llm: Any, busy: bool) -> None:
    """Before new weights load: the requests in flight (`busy`) paused where they are (vLLM's
    keep mode, without the 20 ms sleep `pause_generation` adds "for more intuitive ordering of
    events") and the KV and prefix cache dropped, idle or not (a prompt prefix cached before
    the update would otherwise be reused with the new weights; paused requests recompute
    theirs on resume).

    The encoder cache (vision embeddings) is dropped only on an idle engine. Dropping it under
    paused multimodal requests kills vLLM's engine ("Expected number of multimodal embeddings
    to match number of input items", found on the assistive task's repeated clips): those
    requests keep the embeddings of the version they started under (stale only where the
    tower or projector train; the learner recomputes them and its importance weight corrects
    for the gap), and no other request can reuse them, since every request's video has an
    identity of its own. The multimodal input caches (processed pixels) are not touched: they
    do not depend on the weights, and clearing them under live requests desynchronises
    vLLM's front-end and engine copies."""
    core = getattr(llm, "engine_core", None)
    if busy:
        if hasattr(core, "pause_scheduler_async"):
            await core.pause_scheduler_async(mode="keep", clear_cache=False)
        else:
            await llm.pause_generation(mode="keep", clear_cache=False)
    if not await llm.reset_prefix_cache(reset_running_requests=True, reset_connector=True):
        raise RuntimeError("vLLM could not reset its prefix cache before a weight update")
    if not busy:
        await llm.reset_encoder_cache()


def _sampling_params(spec: SampleSpec, banned: Sequence[int] = ()) -> Any:
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    return SamplingParams(
        logit_bias={token: -100.0 for token in banned} or None,
        n=spec.n,
        temperature=spec.temperature,
        top_p=spec.top_p,
        top_k=spec.top_k,
        max_tokens=spec.max_tokens,
        stop=list(spec.stop) or None,
        seed=spec.seed,
        logprobs=0,
        output_kind=RequestOutputKind.FINAL_ONLY,
    )


def _completion(output: Any) -> Completion:
    ids = list(output.token_ids)
    steps = output.logprobs or []
    if len(steps) != len(ids):
        raise RuntimeError(f"vLLM returned {len(steps)} log-prob steps for {len(ids)} tokens")
    spans = getattr(output, "weight_versions", None) or ()
    if len(spans) < 2:
        spans = ()  # sampled by one version: the group's, nothing to record
    return Completion(
        token_ids=ids,
        logprobs=[float(step[tok].logprob) for tok, step in zip(ids, steps, strict=True)],
        text=output.text,
        finish_reason=str(output.finish_reason or "length"),
        version_starts=tuple((int(span.version), int(span.start)) for span in spans),
    )

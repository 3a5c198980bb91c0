"""What `VLLMEngine.start_weight_update` does to vLLM's caches, against a recording double of
AsyncLLM: idle or busy, the prefix/KV cache the old weights computed is dropped, idle also the
encoder cache; busy, the requests in flight are paused in keep mode first and keep their
vision embeddings; the multimodal input caches are never cleared (weights-independent, and
clearing them under live requests desynchronises vLLM's two copies); a failure after the
pause still resumes generation."""

from __future__ import annotations

import asyncio

import pytest

from actors.engine import VLLMEngine


class Recorder:
    def __init__(self, calls: list, prefix_ok: bool = True) -> None:
        self.calls, self.prefix_ok = calls, prefix_ok

    def __getattr__(self, name):
        async def record(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            return self.prefix_ok if name == "reset_prefix_cache" else None

        return record


class FakeLLM(Recorder):
    def __init__(self, prefix_ok: bool = True) -> None:
        super().__init__([], prefix_ok)
        self.engine_core = Recorder(self.calls)
        self.renderer = Recorder(self.calls)


def names(llm: FakeLLM) -> list[str]:
    return [name for name, _, _ in llm.calls]


def test_an_idle_engine_drops_the_old_weights_caches_without_pausing():
    llm = FakeLLM()
    engine = VLLMEngine(llm, None)
    asyncio.run(engine.start_weight_update())
    assert names(llm) == ["reset_prefix_cache", "reset_encoder_cache", "start_weight_update"]
    assert llm.calls[0][2] == {"reset_running_requests": True, "reset_connector": True}
    asyncio.run(engine.finish_weight_update(4))
    assert "resume_generation" not in names(llm) and engine.weight_version == 4


def test_a_busy_engine_pauses_in_keep_mode_then_drops_the_caches():
    llm = FakeLLM()
    engine = VLLMEngine(llm, None)
    engine._in_flight = 1
    asyncio.run(engine.start_weight_update())
    assert names(llm)[:3] == ["pause_scheduler_async", "reset_prefix_cache", "start_weight_update"]
    assert llm.calls[0][2] == {"mode": "keep", "clear_cache": False}
    # The paused requests keep their vision embeddings (dropping them kills vLLM's engine),
    # and the multimodal input caches are never cleared.
    assert "reset_encoder_cache" not in names(llm)
    assert "clear_mm_cache_async" not in names(llm) and "reset_mm_cache" not in names(llm)
    asyncio.run(engine.finish_weight_update(5))
    assert names(llm)[-1] == "resume_generation"


def test_a_failed_reset_after_the_pause_resumes_generation():
    llm = FakeLLM(prefix_ok=False)
    engine = VLLMEngine(llm, None)
    engine._in_flight = 2
    with pytest.raises(RuntimeError, match="prefix cache"):
        asyncio.run(engine.start_weight_update())
    assert names(llm)[-1] == "resume_generation" and not engine._updating

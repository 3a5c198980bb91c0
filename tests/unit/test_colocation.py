"""The hand-over order of one GPU shared by the learner and the engines: engines asleep
before the learner is built and while it steps; weights woken before a weight push, the KV
cache only after it; the learner's optimizer state out while the engines generate."""

from __future__ import annotations

from types import SimpleNamespace

from system.config import RunConfig
from system.orchestration.colocation import KV_CACHE, SLEEP_LEVEL, WEIGHTS, Handover


class Engine:
    """A rollout actor handle whose calls are recorded in one shared log."""

    def __init__(self, name: str, log: list) -> None:
        self.sleep = SimpleNamespace(remote=lambda level: log.append((name, "sleep", level)))
        self.wake_up = SimpleNamespace(remote=lambda tags: log.append((name, "wake", tuple(tags))))


def test_engines_wake_weights_then_take_the_update_then_the_cache():
    log: list = []
    handover = Handover([Engine("e0", log), Engine("e1", log)], call=lambda refs: refs)
    handover.release()
    assert log == [("e0", "sleep", SLEEP_LEVEL), ("e1", "sleep", SLEEP_LEVEL)]
    log.clear()
    out = handover.refill(lambda: log.append("push") or 7.5)
    assert out == 7.5
    assert log == [
        ("e0", "wake", (WEIGHTS,)), ("e1", "wake", (WEIGHTS,)),
        "push",
        ("e0", "wake", (KV_CACHE,)), ("e1", "wake", (KV_CACHE,)),
    ]  # fmt: skip


class FakeDeepSpeed:
    def __init__(self, log: list) -> None:
        self.log = log

    def offload_states(self, **kwargs):
        self.log.append(("offload", sorted(s.value for s in kwargs["include"])))

    def reload_states(self):
        self.log.append("reload")


def test_a_colocated_learner_offloads_its_optimizer_state_while_the_engines_generate(monkeypatch):
    """LearnerWorker's part, on a stand-in of its DeepSpeed engine: out after an export (and
    after a checkpoint that needed it back), in before a step or a checkpoint."""
    import torch

    import learner.worker as worker

    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    log: list = []
    w = object.__new__(worker.LearnerWorker)
    w.engine = FakeDeepSpeed(log)
    w.shares_gpu, w.offloads, w._offloaded = True, True, False
    w._make_room()  # after an export
    w._make_room()  # twice is once
    assert log == [("offload", ["contiguous_grad_buffer", "hp_params", "lp_grads", "optim_states"])]
    w._states_on_device()  # before the step
    w._states_on_device()
    assert log[1:] == ["reload"]
    cfg = RunConfig.model_validate({"resources": {"colocate": True}})
    assert cfg.resources.offload_optimizer

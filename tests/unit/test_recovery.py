"""The driver reports a rank's own exception, not Ray's wrapper around it; a rollout actor
pinned to a node label waits for a node offering it to (re)join, then stops clearly; one that
Ray gave up on is replaced by a fresh one."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import ray
import ray.exceptions

from system.config import load_config
from system.config.errors import RecoveryError
from system.orchestration.recovery import NodeWait, raised_by_rank
from system.transport.checkpoint import CheckpointError

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "debug_cpu.yaml"


def test_a_rank_error_is_unwrapped_to_its_own_class_and_message():
    cause = CheckpointError("checkpoint of step 4 could not be written (step_2 is intact)")
    wrapped = ray.exceptions.RayTaskError("save_checkpoint", "Traceback ...", cause)
    dual = wrapped.as_instanceof_cause()
    assert str(dual).splitlines()[0] != str(cause)  # Ray's header comes first
    for error in (wrapped, dual):
        raised = raised_by_rank(error)
        assert isinstance(raised, CheckpointError) and not isinstance(
            raised, ray.exceptions.RayError
        )
        assert str(raised).splitlines()[0] == str(cause)


def test_an_error_without_a_cause_is_kept():
    error = ray.exceptions.GetTimeoutError("no result in 5 s")
    assert raised_by_rank(error) is error


def test_a_pinned_actor_waits_for_its_node_label_then_stops_clearly(monkeypatch, capsys):
    config = load_config(
        CONFIG, ["resources.rollout_node_label=rollout", "resources.node_wait_s=60"]
    )
    worker = {"Alive": True, "Resources": {"CPU": 4.0, "rollout": 1.0}}
    nodes = [{"Alive": True, "Resources": {"CPU": 4.0}}, worker]
    monkeypatch.setattr(ray, "nodes", lambda: nodes)
    now = [0.0]
    wait = NodeWait(config, clock=lambda: now[0])
    wait.check(0)  # the node is there: nothing to say
    assert capsys.readouterr().out == ""
    worker["Alive"] = False  # it left the cluster
    wait.check(0)
    assert "waiting up to 60s for one to join" in capsys.readouterr().out
    now[0] = 59.0
    wait.check(0)  # still within the wait
    worker["Alive"] = True  # a replacement joined: the wait ends
    wait.check(0)
    assert "joined: rollout actor 0 restarts there" in capsys.readouterr().out
    worker["Alive"] = False
    now[0] = 100.0
    wait.check(0)  # a new wait starts at 100 s
    now[0] = 160.0
    with pytest.raises(RecoveryError, match=r"offered 'rollout' .* for 60s .*--resume"):
        wait.check(0)
    # Without a label an actor may restart anywhere: nothing to wait for.
    NodeWait(load_config(CONFIG)).check(0)


class _Ref:
    def __init__(self, alive: bool) -> None:
        self.alive = alive


class _Actor:
    """A rollout actor handle whose `start` succeeds, or fails as one Ray gave up on."""

    def __init__(self, alive: bool) -> None:
        self.start = SimpleNamespace(remote=lambda: _Ref(alive))


class _Topology:
    def __init__(self, config, *, replacements_alive: bool = True) -> None:
        self.config, self.learners = config, []
        self.actors = [_Actor(True), _Actor(False)]
        self.alive = replacements_alive
        self.replaced: list[int] = []

    def replace_actor(self, index: int) -> _Actor:
        self.replaced.append(index)
        self.actors[index] = _Actor(self.alive)
        return self.actors[index]


def _fake_ray(monkeypatch) -> None:
    def get(ref):
        if isinstance(ref, list):
            return [get(r) for r in ref]
        if not ref.alive:
            raise ray.exceptions.RayActorError()
        return 0

    monkeypatch.setattr(ray, "wait", lambda refs, num_returns, timeout: (list(refs), []))
    monkeypatch.setattr(ray, "get", get)
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"rollout": 1.0}}])


def test_a_pinned_actor_ray_gave_up_on_is_replaced(monkeypatch, capsys):
    """Ray spent an actor's restarts on a node that left before the cluster marked it dead:
    recovery starts a fresh actor in its bundle (a node offering the label takes it), up to
    rollout.max_restarts times; unpinned actors still stop the run."""
    import system.orchestration.recovery as recovery
    from system.orchestration.recovery import await_actors

    monkeypatch.setattr(recovery, "REPLACE_BACKOFF_S", 0.0)
    _fake_ray(monkeypatch)
    pinned = load_config(CONFIG, ["resources.rollout_node_label=rollout", "rollout.max_restarts=2"])
    topology = _Topology(pinned)
    await_actors(topology)
    assert topology.replaced == [1]
    out = capsys.readouterr().out
    assert "rollout actor 1: Ray gave up restarting it" in out and "(1 of 2)" in out
    assert topology.actors[1].start.remote().alive
    # Replacements that die too: bounded, then the clear error.
    crashing = _Topology(pinned, replacements_alive=False)
    with pytest.raises(RecoveryError, match=r"rollout actor 1 died for good.*--resume"):
        await_actors(crashing)
    assert crashing.replaced == [1, 1]
    unpinned = _Topology(load_config(CONFIG))
    with pytest.raises(RecoveryError, match="died for good"):
        await_actors(unpinned)
    assert unpinned.replaced == []

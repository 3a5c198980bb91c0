"""The chaos harness survives what it tests: a fault whose recovery fails (observing raises,
the run dies, its check raises) becomes a failed row with the reason, and the faults it kept
from being injected say why, instead of a traceback out of the report."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import system.orchestration.driver
from system.chaos.ledger import Ledger
from system.chaos.runner import Harness, _fault_rows, _train_through
from system.chaos.scene import Fault


class Flaky(Fault):
    """Injected at once; observing it fails as an actor that died for good would."""

    name, number = "flaky", 1

    def inject(self, scene):
        self.injected_at.append(0.0)

    def observe(self, scene, metrics):
        raise RuntimeError("rollout actor 0 died for good\nsecond line")


class Later(Fault):
    name, number = "later", 2

    def inject(self, scene):
        self.injected_at.append(0.0)


def topology():
    return SimpleNamespace(stage=SimpleNamespace(name="rl"), dirs=SimpleNamespace(root=None))


def test_a_fault_that_fails_while_observed_is_a_failed_row():
    harness = Harness("rl", [Flaky(), Later()], since=10)
    harness.stepped(topology(), {"step": 5.0})  # injects flaky
    harness.stepped(topology(), {"step": 6.0})  # observing it raises: recorded, not raised
    flaky = harness.injected[0]
    assert flaky.failure == "observing the system after it failed: rollout actor 0 died for good"
    rows = _fault_rows(harness, Ledger())
    assert [r.fault for r in rows] == ["flaky", "later"]
    assert not rows[0].ok and rows[0].detail.startswith("FAILED - observing")
    assert not rows[1].ok and rows[1].detail == "not injected: the run failed after flaky"


def test_a_run_that_dies_after_a_fault_fails_that_fault(monkeypatch):
    harness = Harness("rl", [Later()], since=10)

    def train(config, overrides, resume=None):
        harness.stepped(topology(), {"step": 3.0})
        raise ValueError("a restarted rollout actor's engine did not start in 900.0s")

    monkeypatch.setattr(system.orchestration.driver, "train", train)
    _train_through("cfg.yaml", [], harness)
    [row] = _fault_rows(harness, Ledger())
    assert not row.ok
    assert row.detail.startswith("FAILED - the run failed: ValueError: a restarted rollout")


def test_a_run_that_dies_before_any_fault_is_the_runs_own_error(monkeypatch):
    def train(config, overrides, resume=None):
        raise ValueError("bad config")

    monkeypatch.setattr(system.orchestration.driver, "train", train)
    with pytest.raises(ValueError, match="bad config"):
        _train_through("cfg.yaml", [], Harness("rl", [Later()]))


def test_a_check_that_raises_fails_the_row():
    class Unchecked(Later):
        def check(self, row, ledger):
            raise KeyError("handled")

    harness = Harness("rl", [Unchecked()], since=10)
    harness.stepped(topology(), {"step": 1.0})
    [row] = _fault_rows(harness, Ledger())
    assert not row.ok and "checking the fault's effects" in row.detail

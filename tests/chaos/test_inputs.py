"""Fault 9: every bad config and command line is refused before anything starts, naming the
field path, file or argument."""

from __future__ import annotations

from pathlib import Path

import pytest

from system.chaos.inputs import check_inputs

pytestmark = pytest.mark.integration
CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "debug_cpu.yaml")


def test_every_bad_input_is_refused_before_anything_starts():
    results = check_inputs(CONFIG)
    assert len(results) >= 15
    for r in results:
        assert r.status == 2, (r.case.label, r.message)
        assert r.case.names in r.message, (r.case.label, r.message)
        assert not r.created, f"{r.case.label}: something was created"
        assert r.seconds < 10, r.case.label

"""`reelrl doctor` on this machine with a component missing: it is named and the exit status is
1 (the full report with exit 0 is read in tests/e2e/test_shared_storage.py, on the
two-node cluster)."""

from __future__ import annotations

import sys

import pytest

from tests.fixtures.cli import run_cli

pytestmark = pytest.mark.integration


def test_doctor_names_a_missing_component_and_exits_one(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "decord", None)  # `import decord` now fails
    (tmp_path / "file").write_text("")  # not a directory: no one can create runs/ under it
    out = run_cli(capsys, "doctor", "--output-dir", str(tmp_path / "file" / "runs"))
    assert out.returncode == 1, out.stdout
    problems = out.stdout.split("problems:")[1]
    assert "decord cannot be imported" in problems
    assert "decord        MISSING" in out.stdout
    assert f"output_dir {tmp_path / 'file' / 'runs'} is not writable here" in problems

"""`reelrl doctor` on this machine: one line per component, exit 0 when everything a run
needs imports; a component that cannot be imported is named and the exit status is 1."""

from __future__ import annotations

import sys

import pytest

from tests.fixtures.cli import run_cli

pytestmark = pytest.mark.integration


def test_doctor_reports_this_machine_and_exits_zero(capsys, tmp_path):
    out = run_cli(capsys, "doctor", "--output-dir", str(tmp_path / "runs"))
    assert out.returncode == 0, out.stdout + out.stderr
    for component in ("python", "torch", "vllm", "deepspeed", "ray", "decord", "redis-server"):
        assert any(line.split()[:1] == [component] for line in out.stdout.splitlines()), component
    assert "gpus" in out.stdout and "rdma" in out.stdout
    assert f"{tmp_path / 'runs'}: writable" in out.stdout
    assert out.stdout.rstrip().endswith("ok: everything a run needs is here")


def test_doctor_names_a_missing_component_and_exits_one(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "decord", None)  # `import decord` now fails
    (tmp_path / "file").write_text("")  # not a directory: no one can create runs/ under it
    out = run_cli(capsys, "doctor", "--output-dir", str(tmp_path / "file" / "runs"))
    assert out.returncode == 1, out.stdout
    problems = out.stdout.split("problems:")[1]
    assert "decord cannot be imported" in problems
    assert "decord        MISSING" in out.stdout
    assert f"output_dir {tmp_path / 'file' / 'runs'} is not writable here" in problems

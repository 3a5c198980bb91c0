"""The checkpoint commit protocol: atomic commit, `latest` pointer, pruning, failed writes."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from system.transport import checkpoint as ckpt
from system.transport.checkpoint import CheckpointError, TrainingState


def _save(root: Path, step: int, payload: str = "w", keep_last: int | None = None) -> Path:
    tmp = ckpt.begin(root, step)
    (tmp / "weights.bin").write_text(f"{payload}{step}")
    ckpt.write_state(tmp, TrainingState(step=step, applied={"below": f"{step}-0", "above": []}))
    return ckpt.commit(root, tmp, step, keep_last)


def test_state_round_trip():
    state = TrainingState(
        step=7,
        weight_version=3,
        applied={"below": "5-0", "above": ["7-0", "9-1"]},
        data_position={"step": 4, "cursors": [[0, 4]]},
        base_model="/m",
        nonfinite_in_a_row=1,
        skipped_steps=2,
        extra={"stage": "rl"},
    )
    assert TrainingState.from_json(state.to_json()) == state


def test_commit_moves_latest_and_leaves_no_temp(tmp_path):
    assert ckpt.latest(tmp_path) is None
    first = _save(tmp_path, 2)
    assert ckpt.latest(tmp_path) == first == tmp_path / "step_00000002"
    second = _save(tmp_path, 4)
    assert ckpt.latest(tmp_path) == second
    assert ckpt.read_state(second).step == 4
    assert (second / "weights.bin").read_text() == "w4"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]
    assert (tmp_path / "latest").read_text() == "step_00000004"


def test_prune_keeps_last_n(tmp_path):
    for step in (1, 2, 3, 4):
        _save(tmp_path, step, keep_last=2)
    names = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("step_"))
    assert names == ["step_00000003", "step_00000004"]


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    good = _save(tmp_path, 2)
    tmp = ckpt.begin(tmp_path, 4)
    (tmp / "weights.bin").write_text("partial")
    ckpt.write_state(tmp, TrainingState(step=4))

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.os, "rename", disk_full)
    with pytest.raises(CheckpointError, match=r"step 4.*No space left.*step_00000002 is intact"):
        ckpt.commit(tmp_path, tmp, 4)
    monkeypatch.undo()
    assert ckpt.latest(tmp_path) == good
    assert ckpt.read_state(good).step == 2
    assert not tmp.exists()


def test_unwritable_root_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(CheckpointError, match="could not be written"):
        ckpt.begin(blocker / "ckpts", 1)


def test_commit_refuses_incomplete_and_begin_clears_leftovers(tmp_path):
    tmp = ckpt.begin(tmp_path, 3)
    (tmp / "junk").write_text("x")
    with pytest.raises(CheckpointError, match=r"state\.json"):
        ckpt.commit(tmp_path, tmp, 3)
    again = ckpt.begin(tmp_path, 3)
    assert list(again.iterdir()) == []


def test_latest_pointing_at_missing_dir_is_an_error(tmp_path):
    _save(tmp_path, 1)
    ckpt.write_atomic(tmp_path / "latest", b"step_00000009")
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        ckpt.latest(tmp_path)


def test_write_atomic_replaces(tmp_path):
    target = tmp_path / "p"
    ckpt.write_atomic(target, b"one")
    ckpt.write_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    assert os.listdir(tmp_path) == ["p"]


def test_state_of_an_older_version_is_refused_clearly(tmp_path):
    (tmp_path / ckpt.STATE_FILE).write_text('{"step": 3, "applied_group_ids": ["a"]}')
    with pytest.raises(CheckpointError, match="older reelrl"):
        ckpt.read_state(tmp_path)


def test_journal_keeps_the_committed_lineage_only(tmp_path):
    assert ckpt.read_journal(tmp_path) == []
    ckpt.journal_applied(tmp_path, 2, 0, ["a", "b"])
    _save(tmp_path, 2)
    ckpt.journal_applied(tmp_path, 4, 2, ["c"])  # written, then the commit of 4 never happened
    assert ckpt.read_journal(tmp_path) == ["a", "b"]
    # Resumed from step 2 with another interval: step 3 replaces the abandoned step 4.
    ckpt.journal_applied(tmp_path, 3, 2, ["d"])
    _save(tmp_path, 3)
    assert ckpt.read_journal(tmp_path) == ["a", "b", "d"]
    ckpt.journal_applied(tmp_path, 5, 3, ["c", "a"])  # a repeat is kept: the ledger counts it
    _save(tmp_path, 5)
    assert ckpt.read_journal(tmp_path) == ["a", "b", "d", "c", "a"]

"""Checkpoint commit protocol and the learner's training state.

A checkpoint is a directory `<root>/step_XXXXXXXX` holding whatever the learner writes (the
DeepSpeed shards, an HF export, per-rank RNG states) plus `state.json` (`TrainingState`).
It becomes visible only through the commit: everything is written under
`<root>/.tmp-step_XXXXXXXX`, every file and directory is fsynced, the temp directory is
renamed to its final name, and then the `latest` pointer file is replaced atomically (write,
fsync, rename, fsync the directory). A crash or a failed write at any point leaves `latest`
naming the previous, complete checkpoint; `begin` clears leftovers of an aborted attempt.
Old checkpoints beyond `keep_last` are pruned after the pointer moves, never the latest.

Beside the checkpoints, `applied_groups.jsonl` is the audit trail of which rollout groups each
committed step applied (one line per commit, appended and fsynced before `latest` moves): the
chaos ledger proves "applied twice = 0" from it. It is never read to resume — the bounded
`TrainingState.applied` is what exactly-once runs on.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from system.config.errors import CheckpointError

LATEST = "latest"
STATE_FILE = "state.json"
JOURNAL = "applied_groups.jsonl"
_STEP_DIR = re.compile(r"^step_(\d{8})$")


@dataclass
class TrainingState:
    """What a learner needs besides weights and optimizer to continue exactly."""

    step: int
    """Optimizer steps taken (the global step)."""
    weight_version: int = 0
    """Last weight version exported to the rollout side."""
    applied: dict[str, Any] = field(default_factory=dict)
    """Every rollout entry whose effect this checkpoint contains, as
    `system.transport.applied.AppliedIds.to_dict()`: a stream-id watermark plus the applied ids
    above it (bounded: a few ids however long the run)."""
    data_position: dict[str, Any] | None = None
    """`MixState.to_dict()` of the SFT record stream, if any."""
    base_model: str = ""
    """The model the stage started from (the frozen reference is loaded from it)."""
    nonfinite_in_a_row: int = 0
    """Consecutive skipped (non-finite) steps at the time of the checkpoint."""
    skipped_steps: int = 0
    """Non-finite steps skipped so far."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form additions (metrics summary, stage name, ...)."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainingState:
        data = json.loads(text)
        if "applied_group_ids" in data:
            raise ValueError(
                "written by an older reelrl (an applied_group_ids list, no stream watermark); "
                "start the stage afresh"
            )
        return cls(**data)


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def begin(root: str | Path, step: int) -> Path:
    """Create (empty) the temp directory a checkpoint of `step` is written into."""
    root = Path(root)
    tmp = root / f".tmp-{step_dir_name(step)}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    except OSError as exc:
        raise CheckpointError(failure_message(root, step, exc)) from exc
    return tmp


def write_state(directory: str | Path, state: TrainingState) -> None:
    """Write `state.json` into a (temp) checkpoint directory."""
    path = Path(directory) / STATE_FILE
    with open(path, "w", encoding="utf-8") as f:
        f.write(state.to_json())
        f.flush()
        os.fsync(f.fileno())


def read_state(directory: str | Path) -> TrainingState:
    path = Path(directory) / STATE_FILE
    try:
        return TrainingState.from_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError) as exc:
        raise CheckpointError(f"cannot read training state {path}: {exc}") from exc


def commit(root: str | Path, tmp: str | Path, step: int, keep_last: int | None = None) -> Path:
    """Make the checkpoint in `tmp` durable and current: fsync, rename, move `latest`.

    On failure the temp directory is removed and `CheckpointError` says why; `latest` still
    names the previous checkpoint."""
    root, tmp = Path(root), Path(tmp)
    final = root / step_dir_name(step)
    try:
        if not (tmp / STATE_FILE).is_file():
            raise CheckpointError(f"{tmp} has no {STATE_FILE}: refusing to commit it")
        fsync_tree(tmp)
        if final.exists():  # a step redone after a resume from an older checkpoint
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(root)
        write_atomic(root / LATEST, final.name.encode())
    except OSError as exc:
        abort(tmp)
        raise CheckpointError(failure_message(root, step, exc)) from exc
    if keep_last is not None:
        prune(root, keep_last)
    return final


def journal_applied(root: str | Path, step: int, after: int, group_ids: list[str]) -> None:
    """Append (and fsync) to the audit trail the groups the checkpoint of `step` applied since
    the checkpoint of step `after` it continues from. Call it before `commit` moves `latest`:
    a line whose commit then fails is superseded by the next line from the same `after`, or
    ignored as past the latest checkpoint (see `read_journal`)."""
    path = Path(root) / JOURNAL
    line = json.dumps({"step": step, "after": after, "groups": group_ids}) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_journal(root: str | Path) -> list[str]:
    """Group ids applied by the committed lineage, oldest first. Lines are replayed in order;
    a line continuing from step `after` discards every kept line past `after` (an attempt
    abandoned by a resume from an older checkpoint), and lines past the latest committed
    checkpoint are dropped. A group applied twice appears twice. Empty without a checkpoint."""
    current = latest(root)
    path = Path(root) / JOURNAL
    if current is None or not path.is_file():
        return []
    upto = int(current.name.removeprefix("step_"))
    kept: dict[int, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        entry = json.loads(line)
        kept = {s: g for s, g in kept.items() if s <= entry["after"]}
        kept[entry["step"]] = entry["groups"]
    return [g for step in sorted(kept) if step <= upto for g in kept[step]]


def abort(tmp: str | Path) -> None:
    """Remove a temp checkpoint directory after a failed attempt (best effort: a disk that
    refused the write may refuse the cleanup too; `begin` retries it next time)."""
    shutil.rmtree(tmp, ignore_errors=True)


def latest(root: str | Path) -> Path | None:
    """The committed checkpoint `latest` names, or None when there is none yet."""
    root = Path(root)
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    name = pointer.read_text(encoding="utf-8").strip()
    path = root / name
    if not _STEP_DIR.match(name) or not (path / STATE_FILE).is_file():
        raise CheckpointError(f"{pointer} names {name!r}, which is not a complete checkpoint")
    return path


def prune(root: str | Path, keep_last: int) -> list[Path]:
    """Delete committed checkpoints beyond the newest `keep_last` (never the latest)."""
    root = Path(root)
    current = latest(root)
    steps = sorted(p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name))
    removed = []
    for path in steps[: max(len(steps) - keep_last, 0)]:
        if path != current:
            shutil.rmtree(path)
            removed.append(path)
    return removed


def write_atomic(path: str | Path, data: bytes) -> None:
    """Replace `path` with `data` atomically (temp file, fsync, rename, fsync directory)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def fsync_tree(path: str | Path) -> None:
    """fsync every file and directory under `path` (children before parents)."""
    for dirpath, _dirs, files in os.walk(path, topdown=False):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(dirpath)


def _fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def failure_message(root: str | Path, step: int, exc: BaseException) -> str:
    """The message of a failed checkpoint write, naming what is still loadable."""
    try:
        previous = latest(root)
    except CheckpointError:
        previous = None
    kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint"
    return f"checkpoint of step {step} could not be written under {root}: {exc} ({kept})"

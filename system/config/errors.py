"""The error types that cross a process or layer boundary and that the driver, the CLI and the
chaos harness catch, in one torch-free module: catching one never imports the learner or a
transport's heavy dependencies."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config that cannot be loaded; the message names the file and the dotted field."""


class WeightSyncError(RuntimeError):
    """A weight version could not be delivered (timeout, transport failure)."""


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message says which and why."""


class NonFiniteError(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient norm."""


class RecoveryError(RuntimeError):
    """A fault the run cannot recover from by itself (restarts exhausted, a role's node gone):
    the run stops; its last committed checkpoint holds and `--resume` continues from it."""


def first_line(exc: BaseException, limit: int | None = 300) -> str:
    """The first non-blank line of an exception's message (cut at `limit` characters; None:
    whole), or its type's name: enough to say what failed in one console line."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0].strip()[:limit] if lines else type(exc).__name__

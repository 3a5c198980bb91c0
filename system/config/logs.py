"""The `reelrl` loggers' output: one stderr handler per process, level from `REELRL_LOG`.

Every process that runs project code calls `configure()`: the CLI, the Ray actors (rollout,
learner ranks) and every vLLM process (through the gloo engine's plugin registration), so
messages such as a weight version's receive and load times or a rank's resume reach the
job's log wherever they are raised. Idempotent; `REELRL_LOG=WARNING` quiets it.
"""

from __future__ import annotations

import logging
import os
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s [pid %(process)d]: %(message)s"


class _Stderr(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at the time of the message (a test's capture, a
    replaced stream), never to a stream closed since the handler was made."""

    @property  # type: ignore[override]
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def configure() -> None:
    """Give the `reelrl` logger a stderr handler at `REELRL_LOG` (default INFO), once."""
    logger = logging.getLogger("reelrl")
    if any(getattr(h, "_reelrl", False) for h in logger.handlers):
        return
    level = os.environ.get("REELRL_LOG", "INFO").upper()
    handler = _Stderr()
    handler.setFormatter(logging.Formatter(FORMAT, "%H:%M:%S"))
    handler._reelrl = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level if level in logging.getLevelNamesMapping() else "INFO")

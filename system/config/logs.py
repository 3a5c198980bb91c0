"""The `reelrl` loggers' output: one stderr handler per process, level from `REELRL_LOG`.

Every process that runs project code calls `configure()`: the CLI, the Ray actors (rollout,
learner ranks) and every vLLM process (through the gloo engine's plugin registration), so
messages such as a weight version's receive and load times or a rank's resume reach the
job's log wherever they are raised. Idempotent; `REELRL_LOG=WARNING` quiets it.

It also quiets what libraries repeat in every process and every step without anything to act
on: DeepSpeed's calls of deprecated torch.distributed collectives (a FutureWarning per call
site and rank), transformers' progress bars for tiny saves and loads, and vLLM's "Failed to
load weights" warning per layer type on a partial (trainable-only) weight update, which does
load. `REELRL_LOG=DEBUG` leaves them all on.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

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
    if logger.level > logging.DEBUG:
        quiet_libraries()


# What the processes a run starts (Ray actors, the engine processes they spawn) print at import
# and start-up with nothing to act on: vLLM's start-up notices, torch's "No CUDA runtime is
# found" from every process on a CPU host with a CUDA toolkit, c10's NUMA-binding notice. The
# variables reach those processes through the actors' runtime environment.
QUIET_ENV = {"VLLM_LOGGING_LEVEL": "ERROR", "TORCH_LOGS": "-torch", "TORCH_CPP_LOG_LEVEL": "ERROR"}


def library_env() -> dict[str, str]:
    """Environment variables for the actors a run starts: `QUIET_ENV`, except with
    `REELRL_LOG=DEBUG`; a variable already set in this process is passed on as it is."""
    debug = os.environ.get("REELRL_LOG", "").upper() == "DEBUG"
    return {
        name: os.environ.get(name, quiet)
        for name, quiet in QUIET_ENV.items()
        if name in os.environ or not debug
    }


# vLLM's logger for layer-wise reloading: a warning per layer type a partial update skips.
VLLM_RELOAD_LOGGER = "vllm.model_executor.model_loader.reload.layerwise"


def quiet_libraries() -> None:
    """Silence the libraries' repeated notices that say nothing to act on (module doc)."""
    warnings.filterwarnings(
        "ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning
    )
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:  # else the variable above reaches it at import
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    logging.getLogger(VLLM_RELOAD_LOGGER).setLevel(logging.ERROR)

"""Child-process side of the math grader: reads JSON lines `{"gold", "pred"[, "raw"]}` on stdin and
answers `{"ok": bool}` per line on stdout, after a first `{"ready": true}` line.

Run as a script (`python math_worker.py`); it imports only math-verify, never this package,
so it starts the same way under pytest, Ray workers and the CLI. math-verify's own
signal-based timeouts are disabled here; the parent enforces the deadline by killing this
process.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time


def _verify(gold: str, pred: str, raw: bool = False) -> bool:
    from math_verify import parse, verify

    # raw: the texts are parsed as given, not as box contents (VideoAuto-R1 compatibility).
    wrap = "{}" if raw else "\\boxed{{{}}}"
    gold_parsed = parse(wrap.format(gold), parsing_timeout=None)
    pred_parsed = parse(wrap.format(pred), parsing_timeout=None)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))


def _die_with_parent() -> None:
    # A parent killed outright (a Ray actor torn down) cannot kill us, and a comparison stuck
    # in sympy would never read the closed stdin. A daemon thread notices the parent is gone
    # (we get re-parented) and exits; sympy is Python code, so the thread gets to run.
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def main() -> None:
    _die_with_parent()
    # math-verify logs a warning for every call made with its timeout disabled.
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    import math_verify  # noqa: F401  (import before announcing readiness)

    sys.stdout.write(json.dumps({"ready": True}) + "\n")
    sys.stdout.flush()
    for line in sys.stdin:
        request = json.loads(line)
        try:
            ok = _verify(request["gold"], request["pred"], bool(request.get("raw")))
        except Exception:  # any failure on model output grades as wrong, never kills the worker
            ok = False
        sys.stdout.write(json.dumps({"ok": ok}) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()

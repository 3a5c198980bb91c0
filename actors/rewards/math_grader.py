"""Math grading through math-verify with a deadline that works in any thread or Ray actor.

math-verify's own timeout uses SIGALRM, which only works in a process's main thread. Here
comparisons run in one long-lived child process (math_worker.py) fed over pipes; the
calling thread waits on the pipe with `select`, and when the deadline passes the child is
killed and a fresh one is started on the next call. Nothing is left running: no thread is
abandoned and the child is reaped on timeout, on `close()` and at interpreter exit.
Cheap checks (equal text, equal numbers) answer without the child.
"""

from __future__ import annotations

import atexit
import json
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

from actors.rewards.graders import numeric_match, parse_number

WORKER_SCRIPT = Path(__file__).with_name("math_worker.py")
MAX_MATH_CHARS = 2000
"""Longer predictions are not an answer to compare; they grade 0 without parsing."""
STARTUP_TIMEOUT_S = 120.0
"""How long the child may take to import math-verify (a slow start is not the answer's fault)."""


class MathVerifier:
    """One math-verify child process; `equal()` is thread-safe (calls are serialised)."""

    def __init__(self, command: list[str] | None = None) -> None:
        self._command = command or [sys.executable, str(WORKER_SCRIPT)]
        self._proc: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()
        self.timeouts = 0
        """Comparisons that ran past their deadline (the child was killed each time)."""

    def equal(self, gold: str, pred: str, timeout_s: float, *, raw: bool = False) -> bool:
        """Whether math-verify finds `pred` equivalent to `gold`; False past `timeout_s`.

        Both texts are parsed as `\\boxed{}` contents, or as given when `raw`.
        """
        with self._lock:
            proc = self._ensure_started()
            assert proc.stdin is not None and proc.stdout is not None
            request = {"gold": gold, "pred": pred, **({"raw": True} if raw else {})}
            proc.stdin.write(json.dumps(request) + "\n")
            proc.stdin.flush()
            line = self._read_line(proc, timeout_s)
            if line is None:
                self.timeouts += 1
                self._kill()
                return False
            return bool(json.loads(line)["ok"])

    def start(self) -> None:
        """Start the child now (it takes a second or two to import math-verify) if not running."""
        with self._lock:
            self._ensure_started()

    def close(self) -> None:
        """Stop the child process (a later `equal()` starts a new one)."""
        with self._lock:
            self._kill()

    @property
    def pid(self) -> int | None:
        """Process id of the running child, if any."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def _ensure_started(self) -> subprocess.Popen[str]:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        self._proc = subprocess.Popen(
            self._command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        ready = self._read_line(self._proc, STARTUP_TIMEOUT_S)
        if ready is None or not json.loads(ready).get("ready"):
            self._kill()
            raise RuntimeError(f"math-verify worker {self._command} did not start")
        return self._proc

    @staticmethod
    def _read_line(proc: subprocess.Popen[str], timeout_s: float) -> str | None:
        # readline() on the text wrapper may block; wait for data with select first. The
        # worker writes whole lines and flushes, so a readable pipe holds a full line.
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            readable, _, _ = select.select([proc.stdout], [], [], remaining)
            if readable:
                line = proc.stdout.readline()
                return line or None

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


_default: MathVerifier | None = None
_default_lock = threading.Lock()


def default_verifier() -> MathVerifier:
    """The process-wide verifier (started lazily, stopped at interpreter exit)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = MathVerifier()
            atexit.register(_default.close)
        return _default


def math_match(
    pred: str | None, gold: str, timeout_s: float, verifier: MathVerifier | None = None
) -> float:
    """1.0 when the prediction is mathematically equal to the gold answer, else 0.0."""
    if pred is None or not pred.strip() or len(pred) > MAX_MATH_CHARS:
        return 0.0
    if _squash(pred) == _squash(gold):
        return 1.0
    gold_value, pred_value = parse_number(gold, strict=True), parse_number(pred, strict=True)
    if gold_value is not None and pred_value is not None:
        return numeric_match(pred, gold)
    return float((verifier or default_verifier()).equal(gold, pred, timeout_s))


def _squash(text: str) -> str:
    return "".join(text.replace("$", "").split())

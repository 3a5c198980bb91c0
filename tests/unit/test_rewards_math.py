"""Math grading: fast paths, real math-verify in a child process, and the deadline.

The deadline tests run a stand-in worker (a few lines of Python given with -c) that follows
the worker's line protocol but hangs on request, so a timeout is certain and fast.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest

from actors.rewards.math_grader import MAX_MATH_CHARS, MathVerifier, math_match

HANGING_WORKER = """
import json, sys, time
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    request = json.loads(line)
    if request["gold"] == "hang":
        time.sleep(60)
    print(json.dumps({"ok": request["gold"] == request["pred"]}), flush=True)
"""


class RefusingVerifier(MathVerifier):
    """Fails the test if a comparison reaches the child process."""

    def equal(self, gold: str, pred: str, timeout_s: float) -> bool:
        raise AssertionError(f"math-verify was called for {gold!r} vs {pred!r}")


@pytest.fixture(scope="module")
def verifier():
    real = MathVerifier()
    real.start()  # the child's math-verify import is paid once, here
    yield real
    real.close()


@pytest.fixture
def hanging():
    fake = MathVerifier(command=[sys.executable, "-c", HANGING_WORKER])
    yield fake
    fake.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize(
    ("pred", "gold", "expected"),
    [
        ("0.5", "1/2", 1.0),  # both plain numbers: numeric comparison
        ("-3", "-3.0", 1.0),
        ("4", "3", 0.0),
        ("x + 1", "x+1", 1.0),  # identical up to spaces
        ("", "3", 0.0),
        (None, "3", 0.0),
        ("1" * (MAX_MATH_CHARS + 1), "1", 0.0),  # too long to be an answer
    ],
)
def test_fast_paths_never_start_the_child(pred, gold, expected):
    assert math_match(pred, gold, 1.0, RefusingVerifier()) == expected


@pytest.mark.parametrize(
    ("pred", "gold", "expected"),
    [
        ("(x+1)^2", "x^2+2x+1", 1.0),
        (r"\frac{1}{2}", "0.5", 1.0),
        (r"\sqrt{2}", "2", 0.0),
        (r"\pi", "3.14159265358979", 1.0),
        ("x", "y", 0.0),
        (r"\frac{{{", "1", 0.0),  # malformed latex grades as wrong
    ],
)
def test_math_verify_equivalence(verifier, pred, gold, expected):
    assert math_match(pred, gold, 10.0, verifier) == expected


def test_works_from_a_worker_thread(verifier):
    # math-verify's own timeout needs SIGALRM in the main thread; ours must not.
    results: list[float] = []
    thread = threading.Thread(
        target=lambda: results.append(math_match("2x", "x+x", 10.0, verifier))
    )
    thread.start()
    thread.join()
    assert results == [1.0]


def test_deadline_kills_the_child_and_recovers(hanging):
    assert hanging.equal("a", "a", 5.0) is True
    pid = hanging.pid
    threads_before = threading.active_count()
    start = time.perf_counter()
    assert hanging.equal("hang", "x", 0.3) is False
    assert 0.3 <= time.perf_counter() - start < 2.0
    assert hanging.timeouts == 1
    assert not _alive(pid)  # killed and reaped, not left running
    assert threading.active_count() == threads_before
    assert hanging.equal("b", "b", 5.0) is True  # a fresh child answers the next call
    assert hanging.pid != pid


def test_close_stops_the_child(hanging):
    hanging.equal("a", "a", 5.0)
    pid = hanging.pid
    hanging.close()
    assert hanging.pid is None
    assert not _alive(pid)


def test_worker_that_cannot_start_raises():
    broken = MathVerifier(command=[sys.executable, "-c", "import sys; sys.exit(3)"])
    with pytest.raises(RuntimeError, match="did not start"):
        broken.equal("1", "1", 1.0)

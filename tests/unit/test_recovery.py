"""The driver reports a rank's own exception, not Ray's wrapper around it."""

from __future__ import annotations

import ray.exceptions

from system.orchestration.recovery import raised_by_rank
from system.transport.checkpoint import CheckpointError


def test_a_rank_error_is_unwrapped_to_its_own_class_and_message():
    cause = CheckpointError("checkpoint of step 4 could not be written (step_2 is intact)")
    wrapped = ray.exceptions.RayTaskError("save_checkpoint", "Traceback ...", cause)
    dual = wrapped.as_instanceof_cause()
    assert str(dual).splitlines()[0] != str(cause)  # Ray's header comes first
    for error in (wrapped, dual):
        raised = raised_by_rank(error)
        assert isinstance(raised, CheckpointError) and not isinstance(
            raised, ray.exceptions.RayError
        )
        assert str(raised).splitlines()[0] == str(cause)


def test_an_error_without_a_cause_is_kept():
    error = ray.exceptions.GetTimeoutError("no result in 5 s")
    assert raised_by_rank(error) is error

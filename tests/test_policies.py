"""Which failures the night's tasks retry (flows/policies.py), judged on the errors real child processes raise:
tuning and training retry a child that started and failed (their work resumes), never bad input (exit 2) nor
a task_timeout; the registry steps retry anything but the project's own input errors."""

import sys

import pytest
from prefect.states import Failed

from flows.policies import RESUMED, RETRIED
from vae.child import ChildFailed, StepError, run_child
from vae.errors import ConfigError


def _failure(code: str) -> Exception:
    with pytest.raises(StepError) as e:
        run_child([sys.executable, "-c", code], {}, lambda _: None, timeout=5, name="child", grace=1)
    return e.value


def test_a_child_that_started_and_failed_is_resumed_bad_input_and_timeouts_are_not():
    resumable = RESUMED["retry_condition_fn"]
    crashed = _failure("import sys; print('error: the tracking server did not answer', file=sys.stderr); sys.exit(1)")
    assert isinstance(crashed, ChildFailed) and "exited with 1: error: the tracking server" in str(crashed)
    assert resumable(None, None, Failed(data=crashed))
    bad_input = _failure("import sys; print('error: --epochs must be >= 1', file=sys.stderr); sys.exit(2)")
    assert not isinstance(bad_input, ChildFailed) and not resumable(None, None, Failed(data=bad_input))
    timed_out = _failure("import time; time.sleep(60)")
    assert "task_timeout" in str(timed_out) and not resumable(None, None, Failed(data=timed_out))
    assert RESUMED["retries"] >= 1


def test_registry_steps_retry_what_may_be_transient_and_not_bad_input():
    transient = RETRIED["retry_condition_fn"]
    assert transient(None, None, Failed(data=ConnectionError("connection refused")))
    assert not transient(None, None, Failed(data=ConfigError("min_improvement=-1 is invalid")))

"""Which failures the night's tasks retry (flows/policies.py), judged on the errors real child processes raise:
tuning and training retry a child that started and failed (their work resumes), never bad input (exit 2) nor
a task_timeout; the registry steps retry anything but the project's own input errors."""

import sys
from pathlib import Path

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


def test_the_cache_key_changes_when_the_tracking_store_is_wiped_and_stays_for_the_same_store(tmp_path):
    """A cached training names runs of the store it was made in: after mlruns/ is deleted the key must differ
    (the next night trains again), while the same store keeps it (a rerun reuses the finished work). Each key
    is computed by a process of its own, as each night is (a process keeps its handle on a deleted SQLite file)."""
    import os
    import shutil
    import subprocess

    from flows.policies import TrackingStore

    store = tmp_path / "mlruns"
    code = (
        "import sys\nfrom flows.policies import TrackingStore\nfrom vae.night.params import PipelineParams\n"
        "from vae.tracking.store import experiment_id, open_client\n"
        f"p = PipelineParams(tracking_uri='sqlite:///{store}/mlflow.db', model_name='vae-test')\n"
        "print(TrackingStore().compute_key(None, {'p': p}, {}))\n"
        "experiment_id('vae-test', open_client(p.tracking_uri))  # as the night's first step makes it\n"
        "print(TrackingStore().compute_key(None, {'p': p}, {}))\n"
    )
    root = str(Path(__file__).resolve().parents[1])

    def night() -> list[str]:
        store.mkdir(exist_ok=True)
        env = {**os.environ, "PYTHONPATH": root}
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        return done.stdout.split()

    from vae.night.params import PipelineParams

    first = night()
    assert first[0] == "none" and first[1] != "none"  # no experiment, then the night's own
    same = PipelineParams(tracking_uri=f"sqlite:///{store}/mlflow.db", model_name="vae-test")
    assert TrackingStore().compute_key(None, {"p": same}, {}) == first[1]  # the same store: cached work reused
    shutil.rmtree(store)  # mlruns/ wiped
    wiped = night()
    assert wiped[0] == "none" and wiped[1] not in (first[1], "none")
    assert TrackingStore().compute_key(None, {"other": 1}, {}) is None

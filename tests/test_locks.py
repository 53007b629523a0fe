"""Who holds a lock or runs a service is judged by pid and start time: the night lock (flows/nights.py) refuses
a second night while the first runs, and neither it nor `vae.services stop` takes a reused pid for the process
it names. Real processes, no Prefect server (the paths here make no Prefect call)."""

import json
import subprocess
import time

import psutil
import pytest

from flows.nights import LOCK, NightBusy, _stale, night_lock
from vae import services
from vae.night.params import PipelineParams
from vae.stores import holder, holder_alive


@pytest.fixture
def other():
    """A live process that is not this one."""
    proc = subprocess.Popen(["sleep", "120"])
    yield proc
    proc.kill()
    proc.wait()


def test_holder_names_a_process_by_pid_and_start_time(other):
    me = holder(other.pid)
    assert me["started"] == pytest.approx(psutil.Process(other.pid).create_time())
    assert holder_alive(me)
    assert not holder_alive({**me, "started": me["started"] - 3600})  # the pid now names another process
    assert holder_alive({"pid": other.pid})  # a record from before start times: judged by its pid
    other.kill()
    other.wait()
    assert not holder_alive(me)


def test_a_zombie_holds_nothing(other):
    me = holder(other.pid)
    other.kill()
    time.sleep(0.5)  # killed and not yet reaped by its parent (this test)
    assert psutil.Process(other.pid).status() == psutil.STATUS_ZOMBIE
    assert not holder_alive(me)


def test_a_running_night_refuses_a_second_on_the_same_folder(tmp_path, other):
    lock = tmp_path / LOCK
    lock.write_text(json.dumps({**holder(other.pid), "flow_run_id": "night-1", "since": time.time()}))
    before = lock.read_text()
    busy = f"another night is running on {tmp_path}: flow run night-1 \\(pid {other.pid}"
    with pytest.raises(NightBusy, match=busy), night_lock(PipelineParams(workdir=str(tmp_path)), print):
        pytest.fail("the second night ran")
    assert lock.read_text() == before and NightBusy.exit_code == 1


def test_a_night_lock_whose_pid_was_reused_is_stale(tmp_path, other):
    # after a reboot the dead night's pid may name a live process: its start time tells them apart
    p = PipelineParams(workdir=str(tmp_path))
    record = {**holder(other.pid), "flow_run_id": "night-1", "since": time.time()}
    assert not _stale(record, p)
    assert _stale({**record, "started": record["started"] - 600}, p)


def test_a_night_lock_of_another_host_is_judged_by_its_age(tmp_path):
    p = PipelineParams(workdir=str(tmp_path), task_timeout=60)
    far = {"pid": 1, "host": "elsewhere", "started": 0.0, "since": time.time()}
    assert not _stale(far, p)
    assert _stale({**far, "since": time.time() - 2 * 60 - 3601}, p)


def test_services_stop_leaves_a_process_that_took_a_recorded_pid_alone(tmp_path, other, capsys):
    reused = {**holder(other.pid), "started": holder(other.pid)["started"] - 600}
    (tmp_path / "pids.json").write_text(json.dumps({"worker": reused}))
    services.stop(tmp_path)
    assert other.poll() is None  # not signalled
    assert f"worker: pid {other.pid} is gone or now another process: left alone" in capsys.readouterr().out
    assert not (tmp_path / "pids.json").exists()

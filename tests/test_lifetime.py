"""A `vae` command started by the pipeline dies with the process that started it, even when that process is
killed with SIGKILL: no orphaned training goes on writing the run folder the next night resumes."""

import signal
import subprocess
import sys
import time

import psutil

PARENT = """
import sys
from vae.pipeline import run_vae
run_vae(["train", "--subset", "500", "--epochs", "1000", "--out", sys.argv[1], "--no-progress"], log=lambda _: None)
"""


def test_a_vae_train_started_by_the_pipeline_dies_with_it(tmp_path):
    out = tmp_path / "run"
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(out)])
    deadline = time.time() + 300
    while not (out / "checkpoint.pt").exists():  # training, one epoch done
        assert parent.poll() is None and time.time() < deadline
        time.sleep(0.2)
    [child] = psutil.Process(parent.pid).children()
    assert "train" in child.cmdline()
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    gone, alive = psutil.wait_procs([child], timeout=60)
    for p in alive:
        p.kill()
    assert gone and not alive, "the vae train child outlived the killed pipeline process"

"""A `vae` command started by the pipeline dies with the process that started it, even when that process is
killed with SIGKILL: no orphaned training goes on writing the run folder the next night resumes."""

import signal
import subprocess
import sys
import time

import psutil

PARENT = """
import sys
from vae.child import run_vae
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


class _SignalsWhilePickled:
    """Sends SIGTERM to this process while torch.save is pickling it: an interrupt in the middle of a write."""

    def __reduce__(self):
        import collections
        import os

        os.kill(os.getpid(), signal.SIGTERM)
        return (collections.OrderedDict, ())  # a global that weights_only loading allows


def test_sigterm_during_a_checkpoint_write_arrives_after_it_as_the_interrupt(tmp_path):
    import torch

    from vae import checkpoint as ckpt

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        ckpt.save({"epoch": 3, "weights": torch.ones(4), "poke": _SignalsWhilePickled()}, tmp_path / "checkpoint.pt")
        raise AssertionError("the SIGTERM sent during the write was lost")
    except KeyboardInterrupt as e:  # not torch's RuntimeError from a cut zip writer
        assert str(e) == f"signal {signal.SIGTERM}"
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert signal.getsignal(signal.SIGTERM) is previous
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)  # whole, and in place
    assert state["epoch"] == 3 and state["poke"] == {}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left

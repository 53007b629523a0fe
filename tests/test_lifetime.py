"""A `vae` command started by the pipeline dies with the process that started it, even when that process is
killed with SIGKILL: no orphaned training goes on writing the run folder the next night resumes."""

import signal
import subprocess
import sys
import time

import psutil
import pytest

from vae.child import StepError, run_child, run_vae

PARENT = """
import sys
from vae.child import run_vae
run_vae(["train", "--subset", "500", "--epochs", "1000", "--out", sys.argv[1], "--no-progress", "--nproc", sys.argv[2]],
        log=lambda _: None)
"""


def _training(out, alive, timeout=300):
    deadline = time.time() + timeout
    while not (out / "checkpoint.pt").exists():  # training, one epoch done
        assert alive() and time.time() < deadline
        time.sleep(0.2)


def _gone(procs, timeout):
    gone, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        p.kill()
    return [" ".join(p.cmdline()[2:6]) for p in alive]


@pytest.mark.parametrize("nproc", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_a_vae_train_started_by_the_pipeline_dies_with_it_ddp_ranks_too(tmp_path, nproc):
    out = tmp_path / "run"
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(out), str(nproc)])
    _training(out, lambda: parent.poll() is None)
    tree = psutil.Process(parent.pid).children(recursive=True)  # vae train; with DDP torchrun and its ranks
    assert len(tree) == (1 if nproc == 1 else 2 + nproc), [p.cmdline() for p in tree]
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    assert _gone(tree, timeout=60) == [], "processes of the training outlived the killed pipeline process"


def test_a_child_filling_its_stdout_pipe_while_stderr_is_open_does_not_block():
    """Against an HTTP tracking server MLflow prints two 'View run' lines per run to stdout: hundreds of trials
    overflow the 64 KiB pipe. Reading stdout only after stderr closed deadlocked until the task timeout."""
    child = "import sys; sys.stdout.write('View run\\n' * 30000); sys.stdout.flush(); sys.stderr.write('done\\n')"
    lines: list[str] = []
    t0 = time.monotonic()
    out = run_child([sys.executable, "-c", child], {}, lines.append, timeout=60, name="writer")
    assert time.monotonic() - t0 < 30
    assert out.count("View run") == 30000 and lines == ["done"]


SPAWNER = """
import subprocess, sys, time
g = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
open(sys.argv[1], "w").write(str(g.pid))
time.sleep(600)
"""


def test_a_timeout_ends_the_whole_process_tree_grandchildren_in_other_sessions_too(tmp_path):
    """torchrun starts each rank with start_new_session: a signal to the child or its group misses them."""
    pidfile = tmp_path / "grandchild"
    with pytest.raises(StepError, match="stopped after its timeout of 5 s"):
        run_child([sys.executable, "-c", SPAWNER, str(pidfile)], {}, print, timeout=5, name="spawner", grace=2)
    grandchild = int(pidfile.read_text())
    assert not psutil.pid_exists(grandchild) or psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE


@pytest.mark.slow
def test_task_timeout_during_2_process_ddp_training_ends_every_rank(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--subset", "500", "--epochs", "1000", "--out", str(out), "--no-progress", "--nproc", "2"]
    t0 = time.monotonic()
    with pytest.raises(StepError, match="task_timeout"):
        run_vae(args, log=lambda _: None, timeout=60)
    assert (out / "checkpoint.pt").exists(), "the timeout fired before training began: raise it"
    assert time.monotonic() - t0 < 60 + 40  # SIGTERM ended the ranks; the SIGKILL grace was not used up
    left = [p for p in psutil.process_iter(["cmdline"]) if str(out) in " ".join(p.info["cmdline"] or [])]
    assert left == [], [p.info["cmdline"] for p in left]


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

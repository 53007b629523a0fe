"""Real DDP over gloo on this machine's CPU: torchrun processes, c10d rendezvous, SIGKILL and resume."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.helpers import free_port, run_cli
from vae import checkpoint as ckpt

pytestmark = pytest.mark.slow

# 999 images in global batches of 128: the last batch (103) splits unevenly, 52/51, over two ranks.
ARGS = ["train", "--subset", "999", "--epochs", "2", "--batch-size", "128", "--no-progress"]



def assert_same_weights(a, b, atol=2e-5):
    wa, wb = ckpt.load(a)["model"], ckpt.load(b)["model"]
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=atol, rtol=1e-4), (k, (wa[k] - wb[k]).abs().max())


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "run"
    r = run_cli(*ARGS, "--out", out, env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    return out


def test_two_process_ddp_gives_the_weights_of_one_process(tmp_path, one_process_run):
    r = run_cli(*ARGS, "--nproc", "2", "--out", tmp_path / "run", "--json")
    assert r.returncode == 0, r.stderr
    summary = [line for line in r.stdout.splitlines() if line.startswith("{")]
    assert len(summary) == 1, r.stdout  # only rank 0 prints
    assert "on 2 process(es)" in r.stderr
    assert_same_weights(one_process_run, tmp_path / "run")
    # only rank 0 writes: one checkpoint, no stray temporary files
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoint.pt", "history.json"]


def test_two_torchrun_nodes_on_loopback_train_one_model(tmp_path, one_process_run):
    port = free_port()
    out = tmp_path / "run"
    procs = []
    for node_rank in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--node-rank", str(node_rank), "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
               "--rdzv-id", "vae-test", "-m", "vae", *ARGS, "--out", str(out)]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert "on 2 process(es)" in "".join(o[1] for o in outs)
    assert_same_weights(one_process_run, out)


def test_sigkill_then_resume_ends_with_the_uninterrupted_weights(tmp_path):
    args = ["train", "--subset", "2000", "--epochs", "6", "--batch-size", "32", "--no-progress"]
    straight = run_cli(*args, "--out", tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "vae", *args, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        if (out / "checkpoint.pt").exists() and ckpt.load(out)["epoch"] >= 2:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = ckpt.load(out)["epoch"]
    assert 2 <= killed_at < 6, "the kill must land mid-training for this test to mean anything"

    resumed = run_cli(*args, "--out", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {out / 'checkpoint.pt'} at epoch {killed_at + 1}/6" in resumed.stderr
    assert_same_weights(tmp_path / "straight", out, atol=0)

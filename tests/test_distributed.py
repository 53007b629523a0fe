"""Real DDP over gloo on this machine's CPU: torchrun processes, c10d rendezvous, SIGKILL and resume."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.helpers import communicate_all, free_port, run_cli
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
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "best.pt",
        "checkpoint.pt",
        "history.json",
    ]  # rank 0 alone writes


# Every random draw: noise, binarization and the K importance samples are drawn for the whole global batch
# on every rank and sliced, so each of these trains 2 processes to the weights of 1. One epoch of 299 images
# in global batches of 128: the last batch (43) splits 22/21.
DRAWS = {
    "masking-noise": ["--noise", "masking", "--noise-level", "0.3"],
    "dynamic-binarization": ["--binarize", "dynamic"],
    "iwae-k5": ["--objective", "iwae", "--k", "5"],
}


@pytest.mark.parametrize("draw", list(DRAWS))
def test_two_processes_equal_one_for_every_random_draw(tmp_path, draw):
    args = ["train", "--subset", "299", "--epochs", "1", "--batch-size", "128", "--no-progress", *DRAWS[draw]]
    one = run_cli(*args, "--out", tmp_path / "one", env={"OMP_NUM_THREADS": "1"})
    assert one.returncode == 0, one.stderr
    two = run_cli(*args, "--nproc", "2", "--out", tmp_path / "two", env={"OMP_NUM_THREADS": "1"})
    assert two.returncode == 0, two.stderr
    assert "on 2 process(es)" in two.stderr
    assert_same_weights(tmp_path / "one", tmp_path / "two")


def _addr_in_use(text: str) -> bool:
    return "address already in use" in text.lower() or "EADDRINUSE" in text


def test_two_torchrun_nodes_on_loopback_train_one_model(tmp_path, one_process_run):
    out = tmp_path / "run"
    for attempt in range(3):  # the free port can be taken before the rendezvous binds it: then another port
        port = free_port()
        procs = []
        for node_rank in (0, 1):
            cmd = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--nproc-per-node",
                "1",
                "--node-rank",
                str(node_rank),
                "--rdzv-backend",
                "c10d",
                "--rdzv-endpoint",
                f"127.0.0.1:{port}",
                "--rdzv-id",
                f"vae-test-{attempt}",
                "-m",
                "vae",
                *ARGS,
                "--out",
                str(out),
            ]
            procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        try:
            outs = communicate_all(procs, timeout=300)  # the nodes wait for each other at exit
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
        if [p.returncode for p in procs] == [0, 0] or not any(_addr_in_use(o[1]) for o in outs):
            break
        shutil.rmtree(out, ignore_errors=True)
    assert [p.returncode for p in procs] == [0, 0], outs
    assert "on 2 process(es)" in "".join(o[1] for o in outs)
    assert_same_weights(one_process_run, out)


@pytest.mark.parametrize("schedule", ["constant", "exp"])
def test_sigkill_then_resume_ends_with_the_uninterrupted_weights(tmp_path, schedule):
    args = [
        "train",
        "--subset",
        "2000",
        "--epochs",
        "6",
        "--batch-size",
        "32",
        "--no-progress",
        "--lr-schedule",
        schedule,
    ]
    straight = run_cli(*args, "--out", tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "vae", *args, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
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
    # Exact: every tensor of the weights and of Adam's state bit for bit, not merely close.
    a, b = ckpt.load(tmp_path / "straight"), ckpt.load(out)
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), (k, (a["model"][k] - b["model"][k]).abs().max())
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for i in a["optimizer"]["state"]:
        for name, t in a["optimizer"]["state"][i].items():
            assert torch.equal(t, b["optimizer"]["state"][i][name]), (i, name)
    assert [g["lr"] for g in a["optimizer"]["param_groups"]] == [g["lr"] for g in b["optimizer"]["param_groups"]]
    assert [r["val_neg_elbo"] for r in a["history"]] == [r["val_neg_elbo"] for r in b["history"]]

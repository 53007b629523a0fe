"""The prepared GPU check (benchmarks/gpu_check.py) in its quick CPU mode: every step runs and reports, so the
script is known to work before a GPU machine is ever at hand."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_quick_mode_runs_every_step_on_the_cpu(tmp_path):
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--quick", "--out", tmp_path],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert r.returncode == 0, r.stderr[-3000:]
    assert {k: v["status"] for k, v in report.items()} == dict.fromkeys(
        ("env", "train", "ddp", "iw", "tune", "packing"), "ok"
    )
    assert report["env"]["matmul_gflops_fp32"] > 0
    train = report["train"]
    assert train["vae_fp32"]["seconds_per_epoch"] > 0 and train["vae_fp32"]["speedup_vs_seed"] > 0
    nats = (60, 543)  # an MNIST VAE: above the best published, below predicting 0.5 for every pixel
    assert all(nats[0] < train[k]["test_neg_elbo"] < nats[1] for k in ("seed", "vae_fp32")), train
    assert train["vae_graph"]["test_neg_elbo"] == pytest.approx(train["vae_fp32"]["test_neg_elbo"], rel=1e-4)
    assert (
        nats[0] < report["ddp"]["nproc1"]["val_neg_elbo"] < nats[1]
        and report["ddp"]["nproc2_on_one_device"]["exit"] == 0
    )
    assert report["iw"]["k"] == 10 and report["iw"]["images"] == 500 and nats[0] < report["iw"]["iw_nll"] < nats[1]
    tune = report["tune"]  # `vae tune --no-tracking`, 1 worker against 2, 2 trials each
    assert tune["workers_1"]["trials"] == tune["workers_2"]["trials"] == 2 and tune["speedup"] > 0
    assert tune["workers_1"]["tracking"] is False and tune["workers_2"]["trials_per_hour_in_trials"] > 0
    assert tune["optuna"] == "installed"  # here; the GPU machine installs .gpu/wheels
    assert report["packing"]["trials"] == 2 and report["packing"]["speedup"] > 0
    assert "gpu_check: done; failed steps: none" in (tmp_path / "gpu_check.log").read_text()


def test_gpu_check_refuses_cuda_where_there_is_none(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--out", tmp_path],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert r.returncode == 2 and "no CUDA device is visible" in r.stderr

"""The CUDA path: data on the GPU, bf16 autocast, fused Adam, a recorded step (--cuda-graph), NCCL. Skipped
where no GPU is visible; a session with a GPU machine runs `pytest -m gpu` there (and `-m gpu` without a GPU
is a usage error, exit 4, not a run where everything skipped: see conftest.pytest_configure)."""

import pytest
import torch

from tests.helpers import run_cli

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible on this machine")


@pytest.mark.gpu
@needs_gpu
def test_cuda_bf16_training_matches_the_cpu_numbers_closely(tmp_path, small_cfg, mnist5k):
    from vae.training import fit

    cpu = fit(small_cfg.replace(train={"device": "cpu"}), data=mnist5k).history
    gpu = fit(small_cfg.replace(train={"device": "cuda", "bf16": True}), out=tmp_path, data=mnist5k).history
    assert gpu[-1]["val_neg_elbo"] < gpu[0]["val_neg_elbo"]
    assert abs(gpu[-1]["val_neg_elbo"] - cpu[-1]["val_neg_elbo"]) < 5.0  # bf16 and another RNG: close, not equal


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("bf16", [False, True])
def test_a_recorded_cuda_graph_step_trains_as_the_plain_loop(tmp_path, small_cfg, mnist5k, bf16):
    from vae.training import fit

    cfg = small_cfg.replace(train={"device": "cuda", "bf16": bf16, "clip_grad": 5.0, "lr_schedule": "exp"})
    plain = fit(cfg, data=mnist5k).history
    graphed = fit(cfg.replace(train={"cuda_graph": True}), out=tmp_path, data=mnist5k).history
    for a, b in zip(graphed, plain, strict=True):  # the same kernels on the same numbers; Adam's capturable
        assert a["val_neg_elbo"] == pytest.approx(b["val_neg_elbo"], rel=1e-3)  # path rounds its step apart
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)
    resumed = fit(cfg.replace(train={"cuda_graph": True, "epochs": 3}), out=tmp_path, resume=True, data=mnist5k)
    assert resumed.epochs_run == 1 and resumed.history[-1]["val_neg_elbo"] < plain[0]["val_neg_elbo"]


@pytest.mark.gpu
@needs_gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL DDP needs 2 GPUs")
def test_nccl_ddp_on_two_gpus(tmp_path):
    r = run_cli(
        "train",
        "--subset",
        "999",
        "--epochs",
        "1",
        "--device",
        "cuda",
        "--nproc",
        "2",
        "--out",
        tmp_path / "run",
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr
    assert "on 2 process(es), cuda" in r.stderr


# Not marked gpu: these run everywhere, in a child pytest that sees no CUDA device.
@pytest.mark.parametrize("markexpr, wanted", [("gpu", 4), (None, 0)])
def test_selecting_gpu_tests_without_a_gpu_is_an_error_not_a_skip(markexpr, wanted):
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    args = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "tests/test_gpu.py",
        "-k",
        "cuda_bf16 or nccl",
    ] + (["-m", markexpr] if markexpr else [])
    r = subprocess.run(
        args,
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(repo)},
    )
    out = r.stdout + r.stderr
    assert r.returncode == wanted, out[-3000:]
    if wanted:
        assert "selects the GPU tests, but no CUDA device is visible" in out, out[-3000:]
    else:
        assert "2 skipped" in out, out[-3000:]


def test_which_mark_expressions_select_the_gpu_tests_explicitly():
    from tests.helpers import selects_gpu_explicitly as explicit

    assert explicit("gpu") and explicit("gpu or slow") and explicit("slow or gpu") and explicit("gpu and not slow")
    assert not any(explicit(e) for e in ("", None, "not slow", "not gpu", "slow", "not (gpu or slow)"))

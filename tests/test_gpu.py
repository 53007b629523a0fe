"""The CUDA path: data on the GPU, bf16 autocast, fused Adam, NCCL. Skipped where no GPU is visible;
a session with a GPU machine runs `pytest -m gpu` there."""
import pytest
import torch

from tests.helpers import run_cli

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible on this machine")]


def test_cuda_bf16_training_matches_the_cpu_numbers_closely(tmp_path, small_cfg, mnist5k):
    from vae.training import fit
    cpu = fit(small_cfg.replace(train={"device": "cpu"}), data=mnist5k).history
    gpu = fit(small_cfg.replace(train={"device": "cuda", "bf16": True}), out=tmp_path, data=mnist5k).history
    assert gpu[-1]["val_neg_elbo"] < gpu[0]["val_neg_elbo"]
    assert abs(gpu[-1]["val_neg_elbo"] - cpu[-1]["val_neg_elbo"]) < 5.0  # bf16 and another RNG: close, not equal


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL DDP needs 2 GPUs")
def test_nccl_ddp_on_two_gpus(tmp_path):
    r = run_cli("train", "--subset", "999", "--epochs", "1", "--device", "cuda", "--nproc", "2",
                "--out", tmp_path / "run", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "on 2 process(es), cuda" in r.stderr

"""`vae train --cuda-graph`: full batches replay one recorded step (vae/captured.py). A graph needs CUDA; here
the same buffers, warm-up and restore run without recording (device auto on a machine without CUDA), and
must train exactly as the plain loop does. tests/test_gpu.py checks the recorded graph itself."""

import logging

import pytest
import torch

from vae.config import ConfigError
from vae.training import fit


def close(a, b):
    keys = ("train_loss", "train_recon", "train_kl", "val_neg_elbo")
    return all(abs(x[k] - y[k]) <= 1e-5 * abs(y[k]) for x, y in zip(a, b, strict=True) for k in keys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback of --cuda-graph")
def test_the_graph_steps_bookkeeping_trains_as_the_plain_loop(tmp_path, small_cfg, mnist5k, caplog):
    cfg = small_cfg.replace(train={"clip_grad": 5.0, "lr_schedule": "exp", "epochs": 3})
    assert mnist5k.train.images.shape[0] % cfg.train.batch_size  # an odd-sized last batch: the eager path
    plain = fit(cfg.replace(train={"device": "cpu"}), data=mnist5k).history
    with caplog.at_level(logging.WARNING, logger="vae.training"):
        graphed = fit(cfg.replace(train={"cuda_graph": True}), out=tmp_path / "g", data=mnist5k).history
    assert "no CUDA device, so the steps run without a graph" in caplog.text
    assert close(graphed, plain)  # the warm-up's updates were undone, Adam's moments restored

    # Killed after epoch 1 and resumed with the graph: the moments come from the checkpoint, survive the warm-up.
    fit(cfg.replace(train={"cuda_graph": True, "epochs": 1}), out=tmp_path / "r", data=mnist5k)
    state = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    assert all(g["capturable"] is False for g in state["optimizer"]["param_groups"])  # loadable anywhere
    resumed = fit(cfg.replace(train={"cuda_graph": True}), out=tmp_path / "r", resume=True, data=mnist5k).history
    assert close(resumed, plain)
    plain_resumed = fit(cfg.replace(train={"device": "cpu"}), out=tmp_path / "r", resume=True, data=mnist5k)
    assert plain_resumed.epochs_run == 0  # the graph's checkpoint is an ordinary one


def test_cuda_graph_is_refused_with_an_explicit_cpu_device(small_cfg):
    with pytest.raises(ConfigError, match="cuda_graph.*needs --device cuda"):
        small_cfg.replace(train={"device": "cpu", "cuda_graph": True})

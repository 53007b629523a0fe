"""The best epoch, not the last: best.pt beside checkpoint.pt, and early stopping on the validation loss."""

import pytest
import torch

from vae import checkpoint as ckpt
from vae.training import fit, val_loss


def test_best_pt_holds_the_epoch_with_the_lowest_validation_loss(tmp_path, small_cfg, mnist5k):
    result = fit(small_cfg.replace(train={"epochs": 3}), out=tmp_path, data=mnist5k)
    values = [val_loss(row) for row in result.history]
    assert result.best_epoch == 1 + values.index(min(values)) and not result.stopped_early
    best, last = ckpt.load(tmp_path / ckpt.BEST), ckpt.load(tmp_path)
    assert best["epoch"] == result.best_epoch and last["epoch"] == 3
    assert best["best"] == {"epoch": result.best_epoch, "value": min(values)}
    if result.best_epoch == 3:  # the same state written twice
        assert all(torch.equal(best["model"][k], last["model"][k]) for k in best["model"])


def test_early_stopping_stops_after_patience_epochs_without_improvement_and_stays_stopped(tmp_path, small_cfg, mnist5k):
    # lr 1e-12: Adam's steps are far below float32 resolution of the weights, so the validation loss (scored
    # with a fixed seed) stays exactly the same and never improves after epoch 1.
    cfg = small_cfg.replace(train={"epochs": 6, "lr": 1e-12, "patience": 2})
    result = fit(cfg, out=tmp_path, data=mnist5k)
    assert result.stopped_early and result.epochs_run == 3 and result.best_epoch == 1
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    assert ckpt.load(tmp_path / ckpt.BEST)["epoch"] == 1 and ckpt.load(tmp_path)["epoch"] == 3
    again = fit(cfg, out=tmp_path, resume=True, data=mnist5k)  # a resume does not train past the stop
    assert again.stopped_early and again.epochs_run == 0 and len(again.history) == 3


def test_patience_is_validated():
    from vae.config import TrainConfig
    from vae.errors import ConfigError

    with pytest.raises(ConfigError, match="patience=0 is invalid"):
        TrainConfig(patience=0)

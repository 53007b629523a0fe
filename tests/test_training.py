import dataclasses
import json

import pytest
import torch

from vae import checkpoint as ckpt
from vae.batches import corrupt
from vae.errors import CheckpointError, DivergedError
from vae.training import fit


def test_loss_decreases_and_metrics_are_in_nats(trained):
    _, result = trained
    h = result.history
    assert [r["epoch"] for r in h] == [1, 2, 3, 4]
    assert h[-1]["train_loss"] < h[0]["train_loss"] - 20
    assert h[-1]["val_neg_elbo"] < h[0]["val_neg_elbo"]
    # nats per image on MNIST: far below the 543 nats of predicting 0.5 for every pixel, above 60
    assert 60 < h[-1]["val_neg_elbo"] < 543
    assert h[-1]["val_neg_elbo"] == pytest.approx(h[-1]["val_recon"] + h[-1]["val_kl"], rel=1e-5)


def test_checkpoint_loads_with_weights_only_and_holds_what_resume_needs(trained):
    out, result = trained
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 4 and len(state["history"]) == 4
    assert state["fingerprint"] == result.fingerprint
    assert {"model", "optimizer", "config"} <= set(state)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".tmp")]


def test_an_existing_run_is_not_overwritten_without_resume(trained, small_cfg):
    out, _ = trained
    before = (out / "checkpoint.pt").read_bytes()
    with pytest.raises(CheckpointError, match="--resume"):
        fit(small_cfg, out=out)
    assert (out / "checkpoint.pt").read_bytes() == before


def test_resume_continues_exactly(tmp_path, small_cfg, mnist5k):
    cfg4 = small_cfg.replace(train={"epochs": 4})
    straight = fit(cfg4, out=tmp_path / "a", data=mnist5k)
    fit(small_cfg, out=tmp_path / "b", data=mnist5k)  # 2 epochs, then 2 more
    resumed = fit(cfg4, out=tmp_path / "b", resume=True, data=mnist5k)
    assert resumed.epochs_run == 2
    a, b = ckpt.load(tmp_path / "a")["model"], ckpt.load(tmp_path / "b")["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r["val_neg_elbo"] for r in straight.history] == [r["val_neg_elbo"] for r in resumed.history]


def test_resume_refuses_a_different_model(tmp_path, small_cfg, mnist5k):
    fit(small_cfg.replace(train={"epochs": 1}), out=tmp_path, data=mnist5k)
    with pytest.raises(CheckpointError, match="different model"):
        fit(small_cfg.replace(model={"latent": 5}), out=tmp_path, resume=True, data=mnist5k)


def test_divergence_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tmp_path, small_cfg, mnist5k):
    fit(small_cfg.replace(train={"epochs": 1}), out=tmp_path, data=mnist5k)
    good = ckpt.load(tmp_path)
    with pytest.raises(DivergedError, match="diverged at epoch 2"):
        fit(small_cfg.replace(train={"epochs": 3, "lr": 10.0}), out=tmp_path, resume=True, data=mnist5k)
    kept = ckpt.load(tmp_path)
    assert kept["epoch"] == 1
    assert all(torch.equal(good["model"][k], kept["model"][k]) for k in good["model"])


def test_weights_made_non_finite_by_an_epochs_last_step_are_never_saved(tmp_path, small_cfg):
    # one step per epoch (800 training images, batches of 1024): epoch 2's loss is computed before its only
    # step, so it is finite, while the step (Adam's first moment poisoned with inf) leaves inf weights
    cfg = small_cfg.replace(train={"epochs": 1, "batch_size": 1024})
    fit(cfg, out=tmp_path)
    state = ckpt.load(tmp_path)
    next(iter(state["optimizer"]["state"].values()))["exp_avg"].fill_(float("inf"))
    ckpt.save(state, tmp_path / "checkpoint.pt")
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(DivergedError, match="diverged at epoch 2: .*non-finite weights in encoder"):
        fit(cfg.replace(train={"epochs": 2}), out=tmp_path, resume=True)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    assert ckpt.load(tmp_path / "best.pt")["epoch"] == 1


def test_resume_refuses_a_checkpoint_with_non_finite_weights(tmp_path, small_cfg, mnist5k):
    fit(small_cfg.replace(train={"epochs": 1}), out=tmp_path, data=mnist5k)
    state = ckpt.load(tmp_path)
    name = next(iter(state["model"]))
    state["model"][name].view(-1)[0] = float("nan")
    ckpt.save(state, tmp_path / "checkpoint.pt")
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(CheckpointError, match=f"non-finite weights \\({name}\\): it cannot be resumed") as e:
        fit(small_cfg, out=tmp_path, resume=True, data=mnist5k)
    assert e.value.exit_code == 2
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


@pytest.mark.parametrize("kind", ["ae", "conv-vae"])
def test_other_models_train(tmp_path, small_cfg, mnist5k, kind):
    cfg = small_cfg.replace(model={"kind": kind, "hidden": [128]}, data={"subset": 500}, train={"epochs": 2})
    h = fit(cfg, out=tmp_path, data=None).history
    key = "val_bce" if kind == "ae" else "val_neg_elbo"
    assert h[1][key] < h[0][key]


def test_denoising_and_dynamic_binarization_train(tmp_path, small_cfg):
    cfg = small_cfg.replace(
        data={"subset": 500, "binarize": "dynamic"}, train={"epochs": 2, "noise": "masking", "noise_level": 0.5}
    )
    h = fit(cfg, data=None).history
    assert h[1]["train_loss"] < h[0]["train_loss"]


def test_corruptions_do_what_they_say():
    g = torch.Generator().manual_seed(0)
    x = torch.full((200, 784), 0.5)
    u = torch.rand(200, 784, generator=g)
    masked = corrupt(x, "masking", 0.3, u)
    assert (masked == 0).float().mean().item() == pytest.approx(0.3, abs=0.01)
    sp = corrupt(x, "salt-pepper", 0.2, u)
    assert (sp == 0).float().mean().item() == pytest.approx(0.1, abs=0.01)
    assert (sp == 1).float().mean().item() == pytest.approx(0.1, abs=0.01)
    gauss = corrupt(x, "gaussian", 0.5, torch.randn(200, 784, generator=g))
    assert gauss.min() >= 0 and gauss.max() <= 1 and (gauss != 0.5).float().mean() > 0.99
    assert torch.equal(corrupt(x, "none", 0.3, None), x)
    assert torch.equal(x, torch.full((200, 784), 0.5))  # the input is not modified in place


def test_evaluate_reports_metrics_and_writes_figures(trained, tmp_path):
    from vae import evaluate

    out, result = trained
    m = evaluate(out, iw_samples=50, figures_dir=tmp_path / "fig")
    assert m["split"] == "test" and m["images"] == 500 and m["fingerprint"] == result.fingerprint
    assert m["iw_nll"] < m["neg_elbo"]
    assert 1 <= m["active_units"] <= 20
    for name in ("reconstructions", "samples", "interpolation", "latent_map", "loss_curves"):
        data = open(m["figures"][name], "rb").read(8)
        assert data.startswith(b"\x89PNG"), name
    json.dumps(m)  # JSON-able for --json


def test_dynamic_binarization_draws_fresh_pixels_every_epoch(mnist5k, small_cfg):
    from vae.batches import draw_batch, epoch_generator

    cfg = small_cfg.replace(data={"binarize": "dynamic"})
    images, idx = mnist5k.train.images, torch.arange(256)
    draws = [
        draw_batch(images, idx, epoch_generator(0, e, torch.device("cpu")), cfg, True, (0, 256))[0] for e in range(40)
    ]
    assert all(set(d.unique().tolist()) <= {0.0, 1.0} for d in draws)
    assert not torch.equal(draws[0], draws[1])
    grey = images[:256].reshape(-1, 784).float() / 255
    assert (torch.stack(draws).mean(0) - grey).abs().mean() < 0.05  # Bernoulli(grey level) on average
    # and the same epoch always draws the same pixels (resume and DDP rely on it)
    again = draw_batch(images, idx, epoch_generator(0, 0, torch.device("cpu")), cfg, True, (0, 256))[0]
    assert torch.equal(draws[0], again)


def test_iwae_objective_trains_and_its_bound_is_tighter_than_the_elbo(tmp_path, small_cfg, mnist5k):
    from vae.checkpoint import load_model
    from vae.evaluation import elbo_metrics, iw_nll

    cfg = small_cfg.replace(train={"objective": "iwae", "k": 5, "epochs": 2})
    h = fit(cfg, out=tmp_path, data=mnist5k).history
    assert h[1]["train_loss"] < h[0]["train_loss"]
    assert h[1]["train_loss"] < h[1]["train_recon"] + h[1]["train_kl"]  # the 5-sample bound is tighter
    model, cfg, _ = load_model(tmp_path)
    assert (
        iw_nll(model, mnist5k.val.images[:200], cfg, 50)
        < elbo_metrics(model, mnist5k.val.images[:200], cfg)["neg_elbo"]
    )


def test_exp_schedule_ends_at_a_tenth_of_the_rate():
    from vae.config import TrainConfig
    from vae.training import lr_at

    tc = TrainConfig(lr=1e-3, epochs=5, lr_schedule="exp")
    assert [round(lr_at(tc, e), 10) for e in (0, 4)] == [1e-3, 1e-4]
    assert lr_at(TrainConfig(lr=1e-3), 3) == 1e-3


def test_iwae_needs_a_variational_model():
    from vae.config import Config
    from vae.errors import ConfigError

    with pytest.raises(ConfigError, match="objective"):
        Config.from_dict({"model": {"kind": "ae"}, "train": {"objective": "iwae", "k": 5}})
    with pytest.raises(ConfigError, match="k=5 is invalid"):
        Config.from_dict({"train": {"k": 5}})


def test_a_new_model_kind_is_one_class_and_one_registry_entry(tmp_path, small_cfg, monkeypatch):
    """The trainer, the evaluation, the config and the search read the kinds from vae/kinds.py and each model's
    own objective: a kind added there and in vae/models.py trains and validates with no other change, and its
    objective is the one the trainer minimises."""
    from vae import kinds, models
    from vae.checkpoint import load_model

    class HalfKL(models.VAE):  # the seed's VAE whose objective weighs the KL by one half, whatever --beta says
        def objective(self, o, x, eps, tc):
            return super().objective(o, x, eps, dataclasses.replace(tc, beta=0.5))

    monkeypatch.setitem(kinds.KINDS, "half-kl", kinds.Kind("half-kl", "HalfKL", True, True, False, "a test kind"))
    monkeypatch.setattr(models, "HalfKL", HalfKL, raising=False)
    small = small_cfg.replace(data={"subset": 500}, train={"epochs": 2})
    new = fit(small.replace(model={"kind": "half-kl"}), out=tmp_path / "new", data=None)
    same = fit(small.replace(train={"beta": 0.5}), data=None)
    assert [r["train_loss"] for r in new.history] == [r["train_loss"] for r in same.history]
    assert new.history[-1]["val_neg_elbo"] == same.history[-1]["val_neg_elbo"]
    assert type(load_model(tmp_path / "new")[0]) is HalfKL
    assert "half-kl" in kinds.names(searchable=True)

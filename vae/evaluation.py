"""Metrics (nats per image) and figures for a trained model.

Metric names, used everywhere (CLI --json, MLflow, README):
  neg_elbo       -ELBO with z sampled from q(z|x): recon + kl. The number to compare with the literature.
  recon, kl      its two terms (beta is not applied: these are the model's true terms).
  recon_at_mean  reconstruction cross-entropy decoding z = mu, as the seed's test loop does. Not an ELBO.
  iw_nll         importance-weighted estimate of -log p(x) with K samples (an upper bound, <= neg_elbo).
  active_units   latent dimensions whose posterior mean varies over the data (Cov > 0.01; Burda et al.).
  bce, mse       the AE's reconstruction cross-entropy (nats/image) and mean squared error (per pixel).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from vae.config import Config
from vae.data import Dataset, pixels
from vae.distributed import DistContext, all_reduce_sum
from vae.figures import write_figures
from vae.losses import iw_log_likelihood
from vae.models import VAE


def _targets(images_u8: torch.Tensor, cfg: Config, gen: torch.Generator) -> torch.Tensor:
    x = pixels(images_u8)
    if cfg.data.binarize == "dynamic":  # a fixed stochastic binarization of the evaluation set
        x = (torch.rand(x.shape, generator=gen, device=x.device) < x).float()
    return x


@torch.no_grad()
def elbo_metrics(
    model: VAE,
    images_u8: torch.Tensor,
    cfg: Config,
    ctx: DistContext | None = None,
    seed: int = 0,
    batch_size: int = 2000,
) -> dict[str, float]:
    """Mean metrics over images (B, 28, 28) uint8; under DDP each rank scores its shard and sums are reduced."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    n = images_u8.shape[0]
    lo, hi = 0, n
    if ctx is not None and ctx.is_distributed:
        per = math.ceil(n / ctx.world_size)
        lo, hi = min(n, ctx.rank * per), min(n, (ctx.rank + 1) * per)
    gen = torch.Generator(device=dev).manual_seed(10_007 + seed)
    sums = torch.zeros(len(model.TERMS) + 1, device=dev)  # each term's sum, then the images
    for s in range(lo, hi, batch_size):
        x = _targets(images_u8[s : min(hi, s + batch_size)].to(dev), cfg, gen)
        terms = model.terms(x, gen)  # the model's own per-image numbers (vae/models.py)
        sums += torch.stack([*(terms[k].sum() for k in model.TERMS), torch.tensor(float(x.shape[0]), device=dev)])
    if ctx is not None:
        all_reduce_sum(sums, ctx)
    model.train(was_training)
    return dict(zip(model.TERMS, (sums[:-1] / sums[-1].clamp(min=1)).tolist()))


@torch.no_grad()
def per_image_neg_elbo(model: VAE, images_u8: torch.Tensor, cfg: Config, seed: int = 0, batch_size: int = 2000):
    """(N,) the model's score of each image (its SCORE: the -ELBO; BCE for the AE), nats: the draws of
    elbo_metrics (same generator, same order), so the mean is its neg_elbo. Two models with the same latent size
    scored with one seed see the same eps and the same binarized targets: common random numbers, so a
    per-image difference carries little estimator noise."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    gen = torch.Generator(device=dev).manual_seed(10_007 + seed)
    out = []
    for s in range(0, images_u8.shape[0], batch_size):
        x = _targets(images_u8[s : s + batch_size].to(dev), cfg, gen)
        out.append(model.terms(x, gen)[model.SCORE].cpu())
    model.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def iw_nll(model: VAE, images_u8: torch.Tensor, cfg: Config, k: int, seed: int = 0, batch_size: int = 100) -> float:
    """Mean importance-weighted -log p(x) over the images, K samples each (see losses.iw_log_likelihood)."""
    dev = next(model.parameters()).device
    gen = torch.Generator(device=dev).manual_seed(20_011 + seed)
    total = 0.0
    starts = range(0, images_u8.shape[0], batch_size)
    for s in tqdm(starts, desc=f"IW-NLL K={k}", unit="batch", leave=False, file=sys.stderr, disable=None):
        x = _targets(images_u8[s : s + batch_size].to(dev), cfg, gen)
        total += -iw_log_likelihood(model, x, k, generator=gen).sum().item()
    return total / images_u8.shape[0]


@torch.no_grad()
def active_units(model: VAE, images_u8: torch.Tensor, threshold: float = 0.01) -> int:
    dev = next(model.parameters()).device
    mus = torch.cat(
        [model.encode(pixels(images_u8[s : s + 2000].to(dev)))[0] for s in range(0, images_u8.shape[0], 2000)]
    )
    return int((mus.var(dim=0) > threshold).sum().item())


def evaluate_model(
    model: VAE,
    cfg: Config,
    data: Dataset,
    split: str = "test",
    iw_samples: int = 0,
    figures_dir: str | Path | None = None,
    history: list[dict] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """All metrics on one split of `data`, and the figures when figures_dir is given."""
    part = getattr(data, split)
    metrics: dict[str, Any] = dict(elbo_metrics(model, part.images, cfg, seed=seed))
    if model.is_variational:
        if iw_samples > 0:
            metrics["iw_nll"] = iw_nll(model, part.images, cfg, iw_samples, seed=seed)
            metrics["iw_samples"] = iw_samples
        metrics["active_units"] = active_units(model, part.images)
    metrics.update(
        {"split": split, "images": int(part.images.shape[0]), "dataset": data.name, "fingerprint": data.fingerprint}
    )
    if figures_dir is not None:
        metrics["figures"] = write_figures(model, part, Path(figures_dir), history=history, seed=seed)
    return metrics


def write_json(obj: Any, path: str | Path) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")

"""What a trained autoencoder is used for: generate, reconstruct, encode/decode (compression), denoise,
augment a labelled data set, and score anomalies.

Every function takes the model (from `load`) and float32 (N, 784) pixels in [0, 1] as numpy arrays, and
returns numpy arrays on the CPU; work runs in batches on the model's device. The CLI (vae/cli_uses.py), the
REST model (vae/serving.py) and the report (vae/report.py) all call these, so they agree to the last bit.
"""
from __future__ import annotations

import hashlib
import re
from typing import Any, Callable

import numpy as np
import torch

from vae.errors import ConfigError
from vae.losses import kl_std_normal, recon_bce

BATCH = 1000
SCORE_KINDS = ("auto", "neg-elbo", "recon")
NOISES = ("gaussian", "masking", "salt-pepper")
URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/")  # models:/..., runs:/..., s3://...; not C:\ or a relative path


def is_model_uri(ref: str) -> bool:
    return bool(URI.match(str(ref))) and len(str(ref).split(":", 1)[0]) > 1


def load(ref: str, tracking_uri: str | None = None, device: str = "cpu"):
    """(model in eval mode, cfg, checkpoint dict) from a run folder, a checkpoint.pt or an MLflow model URI
    (models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model). mlflow is imported only for URIs."""
    from vae.distributed import pick_device
    dev = pick_device(device)
    if is_model_uri(ref):
        from vae.serving import resolve_model
        return resolve_model(ref, tracking_uri, dev)
    from vae.checkpoint import load_model
    return load_model(ref, map_location=dev)


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def _batched(model, x: np.ndarray, fn: Callable[[torch.Tensor], torch.Tensor], batch: int = BATCH) -> np.ndarray:
    dev = _device(model)
    outs = [fn(torch.as_tensor(x[s:s + batch], dtype=torch.float32, device=dev)).cpu()
            for s in range(0, len(x), batch)]
    return torch.cat(outs).numpy() if outs else np.zeros((0,), np.float32)


def sample(model, n: int, temperature: float = 1.0, seed: int = 0) -> np.ndarray:
    """(n, 784) pixel probabilities decoded from z ~ N(0, temperature^2 I)."""
    if not model.is_variational:
        raise ConfigError("this model is a plain autoencoder, which has no prior to sample from: "
                          "use a vae or conv-vae model")
    if not (isinstance(n, int) and 1 <= n <= 100_000):
        raise ConfigError(f"n={n!r} is invalid: expected an integer from 1 to 100000")
    if not (isinstance(temperature, (int, float)) and 0 < temperature <= 10):
        raise ConfigError(f"temperature={temperature!r} is invalid: expected a number in (0, 10]")
    g = torch.Generator(device=_device(model)).manual_seed(seed)
    return model.sample(n, float(temperature), generator=g).cpu().numpy()


def encode(model, x: np.ndarray) -> np.ndarray:
    """(N, latent) posterior means (the code itself for the AE)."""
    return _batched(model, x, lambda b: model.encode(b)[0])


def decode(model, z: np.ndarray) -> np.ndarray:
    """(N, 784) pixel probabilities."""
    latent = model.cfg.latent
    if z.ndim != 2 or z.shape[1] != latent:
        raise ConfigError(f"latents of shape {z.shape} are invalid: expected (N, {latent}) for this model")
    return _batched(model, z, lambda b: torch.sigmoid(model.decode(b)))


def reconstruct(model, x: np.ndarray) -> np.ndarray:
    """(N, 784) pixel probabilities, decoded from z = mu: what the image compresses to and back."""
    return _batched(model, x, lambda b: torch.sigmoid(model.decode(model.encode(b)[0])))


def scores(model, x: np.ndarray, kind: str = "auto", samples: int = 16, seed: int = 0) -> np.ndarray:
    """(N,) anomaly scores in nats per image, high = unusual.
    recon: reconstruction cross-entropy decoding z = mu (deterministic).
    neg-elbo: KL(q(z|x) || p(z)) + the cross-entropy averaged over `samples` draws z ~ q(z|x), seeded.
    auto: neg-elbo for a VAE, recon for the plain AE (which has no ELBO)."""
    if kind not in SCORE_KINDS:
        raise ConfigError(f"kind={kind!r} is invalid: expected one of {', '.join(SCORE_KINDS)}")
    if kind == "auto":
        kind = "neg-elbo" if model.is_variational else "recon"
    if kind == "neg-elbo" and not model.is_variational:
        raise ConfigError("kind='neg-elbo' is invalid for a plain autoencoder (it has no ELBO): use recon")
    g = torch.Generator(device=_device(model)).manual_seed(seed)

    def one(b: torch.Tensor) -> torch.Tensor:
        mu, logvar = model.encode(b)
        if kind == "recon":
            return recon_bce(model.decode(mu), b)
        eps = torch.randn((samples, *mu.shape), generator=g, device=mu.device)
        z = mu + torch.exp(0.5 * logvar) * eps  # (K, B, L)
        logits = model.decode(z.reshape(-1, mu.shape[1])).reshape(samples, len(b), -1)
        return recon_bce(logits, b.expand(samples, *b.shape)).mean(0) + kl_std_normal(mu, logvar)
    return _batched(model, x, one, batch=max(1, BATCH // samples) if kind == "neg-elbo" else BATCH)


# ---------------------------------------------------------------- compression

def psnr(clean: np.ndarray, other: np.ndarray) -> np.ndarray:
    """(N,) peak signal-to-noise ratio in dB per image, peak 1; identical images give 99 dB, not infinity."""
    mse = np.mean((np.asarray(clean, np.float64) - np.asarray(other, np.float64)) ** 2, axis=1)
    return 10 * np.log10(1.0 / np.maximum(mse, 10 ** -9.9))


def quantize(z: np.ndarray, bits: int) -> np.ndarray:
    """Latents as they come back from storage at `bits` per number: 32 exact, 16 as float16, fewer as
    uniform levels between each dimension's min and max over these codes (2 floats per dimension, shared
    by all images)."""
    if bits == 32:
        return z.astype(np.float32)
    if bits == 16:
        return z.astype(np.float16).astype(np.float32)
    if not 1 <= bits <= 15:
        raise ConfigError(f"bits={bits} is invalid: expected 1 to 16, or 32")
    lo, hi = z.min(0), z.max(0)
    step = np.where(hi > lo, (hi - lo) / (2 ** bits - 1), 1.0)
    return (lo + np.round((z - lo) / step) * step).astype(np.float32)


def compression(model, x: np.ndarray, bits: tuple[int, ...] = (32, 16, 8, 4)) -> list[dict[str, float]]:
    """Bytes per image as a uint8 image (784) against its latent code stored at each precision, and the
    reconstruction error that costs (decoding the stored code): PSNR (dB), MSE per pixel, cross-entropy."""
    z = encode(model, x)
    latent = z.shape[1]
    rows = []
    for b in bits:
        logits = _batched(model, quantize(z, b), lambda t: model.decode(t))
        recon = 1 / (1 + np.exp(-logits))
        bce = recon_bce(torch.from_numpy(logits), torch.from_numpy(x)).numpy()
        rows.append({"bits": b, "image_bytes": 784, "latent_bytes": latent * b / 8,
                     "ratio": 784 / (latent * b / 8), "psnr_db": float(psnr(x, recon).mean()),
                     "mse": float(np.mean((recon - x) ** 2)), "bce_nats": float(bce.mean())})
    return rows


# ---------------------------------------------------------------- denoising

def corrupt(x: np.ndarray, noise: str, level: float, seed: int = 0) -> np.ndarray:
    """The training-time corruptions of vae.training.corrupt, drawn from a seeded generator."""
    from vae.training import corrupt as apply
    if noise not in NOISES:
        raise ConfigError(f"noise={noise!r} is invalid: expected one of {', '.join(NOISES)}")
    if not (isinstance(level, (int, float)) and 0 <= level <= 1):
        raise ConfigError(f"level={level!r} is invalid: expected a number in [0, 1]")
    g = torch.Generator().manual_seed(seed)
    t = torch.as_tensor(x, dtype=torch.float32)
    u = (torch.randn if noise == "gaussian" else torch.rand)(t.shape, generator=g)
    return apply(t.clone(), noise, float(level), u).numpy()


def denoise(model, x: np.ndarray, noise: str, level: float, seed: int = 0) -> dict[str, Any]:
    """Corrupt clean images, pass them through the model, and measure PSNR against the clean images
    before (noisy) and after (denoised)."""
    noisy = corrupt(x, noise, level, seed)
    clean = reconstruct(model, noisy)
    return {"noisy": noisy, "denoised": clean, "psnr_noisy": psnr(x, noisy), "psnr_denoised": psnr(x, clean)}


# ---------------------------------------------------------------- augmentation

@torch.no_grad()
def augment(model, images_u8: np.ndarray, labels: np.ndarray, per_class: int, spread: float = 1.0,
            seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """New labelled images: for each class, `per_class` codes z = mu + spread * sigma * eps around the
    posterior of that class's images (drawn with replacement only when the class has fewer images),
    decoded and rounded to uint8. For the plain AE, sigma is half the spread of the class's codes.
    Returns (uint8 (C * per_class, 28, 28), int64 labels), classes in increasing order."""
    if not (isinstance(per_class, int) and 1 <= per_class <= 100_000):
        raise ConfigError(f"per_class={per_class!r} is invalid: expected an integer from 1 to 100000")
    if not (isinstance(spread, (int, float)) and 0 <= spread <= 10):
        raise ConfigError(f"spread={spread!r} is invalid: expected a number in [0, 10]")
    dev = _device(model)
    g = torch.Generator().manual_seed(seed)
    out_x, out_y = [], []
    for c in np.unique(labels):
        base = images_u8[labels == c].reshape(-1, 784)
        pick = (torch.randperm(len(base), generator=g)[:per_class] if per_class <= len(base)
                else torch.randint(len(base), (per_class,), generator=g)).numpy()
        x = torch.as_tensor(base[pick], dtype=torch.float32, device=dev) / 255
        mu, logvar = model.encode(x)
        if logvar is not None:
            sigma = torch.exp(0.5 * logvar)
        else:
            all_mu = torch.as_tensor(encode(model, base.astype(np.float32) / 255), device=dev)
            sigma = 0.5 * all_mu.std(0, unbiased=False).expand_as(mu)
        eps = torch.randn(mu.shape, generator=g).to(dev)
        probs = torch.sigmoid(model.decode(mu + spread * sigma * eps))
        out_x.append(torch.round(probs * 255).to(torch.uint8).reshape(-1, 28, 28).cpu().numpy())
        out_y.append(np.full(per_class, c, np.int64))
    return np.concatenate(out_x), np.concatenate(out_y)


# ---------------------------------------------------------------- anomalies

def auroc(scores_: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of `scores_` for telling positives (anomalies) from negatives: the
    Mann-Whitney U statistic over the ranks, ties counted half. 1.0 = every anomaly scores higher."""
    s = np.asarray(scores_, np.float64)
    pos = np.asarray(positive, bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        raise ConfigError(f"AUROC needs both normal and anomalous images: got {n_neg} normal, {n_pos} anomalous")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), np.float64)
    sorted_s = s[order]
    # average rank (1-based) over each run of tied scores
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_s)) + 1]
    ends = np.r_[starts[1:], len(s)]
    for a, b in zip(starts, ends):
        ranks[order[a:b]] = (a + b + 1) / 2
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def threshold(val_scores: np.ndarray, quantile: float) -> float:
    """Scores above this flag an image: the `quantile` of the scores of normal validation images, so
    about (1 - quantile) of normal images are flagged."""
    if not (isinstance(quantile, (int, float)) and 0 < quantile < 1):
        raise ConfigError(f"quantile={quantile!r} is invalid: expected a number in (0, 1), e.g. 0.99")
    return float(np.quantile(np.asarray(val_scores, np.float64), quantile))


def per_class_auroc(scores_: np.ndarray, labels: np.ndarray, normal: tuple[int, ...]) -> dict[int, float]:
    """For each class outside `normal`: AUROC of that class (anomalous) against the normal classes."""
    is_normal = np.isin(labels, normal)
    out = {}
    for c in sorted(set(labels.tolist()) - set(normal)):
        keep = is_normal | (labels == c)
        out[int(c)] = auroc(scores_[keep], labels[keep] == c)
    return out


def one_class(data, classes: tuple[int, ...]):
    """The data set with its train and val splits restricted to `classes` (test untouched): what a
    one-class anomaly detector is fitted on."""
    from vae.data import Dataset, Split
    if not classes or any(not 0 <= c <= 9 for c in classes):
        raise ConfigError(f"classes={classes!r} is invalid: expected one or more digits 0-9")

    def keep(s: Split) -> Split:
        m = torch.isin(s.labels, torch.tensor(classes))
        return Split(s.images[m].contiguous(), s.labels[m].contiguous())
    train, val = keep(data.train), keep(data.val)
    if len(train.labels) == 0:
        raise ConfigError(f"classes={classes!r} is invalid: no training images of those classes in {data.name}")
    fp = hashlib.sha256(f"{data.fingerprint}:classes={sorted(classes)}".encode()).hexdigest()
    return Dataset(f"{data.name}[{','.join(map(str, classes))}]", train, val, data.test, fp)


def parse_classes(text: str) -> tuple[int, ...]:
    try:
        classes = tuple(sorted({int(c) for c in text.split(",") if c.strip()}))
    except ValueError:
        classes = ()
    if not classes or any(not 0 <= c <= 9 for c in classes):
        raise ConfigError(f"classes {text!r} are invalid: expected comma-separated digits 0-9, e.g. 1 or 3,5")
    return classes


"""Anomaly detection by reconstruction: scores, a threshold fitted on normal images, AUROC."""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from vae.data import Dataset, Split
from vae.errors import ConfigError
from vae.losses import neg_elbo, recon_bce
from vae.uses.codes import BATCH, batched, device_of

SCORE_KINDS = ("auto", "neg-elbo", "recon")


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
    g = torch.Generator(device=device_of(model)).manual_seed(seed)

    def one(b: torch.Tensor) -> torch.Tensor:
        if kind == "recon":
            return recon_bce(model(b, sample=False).recon_logits, b)  # decodes z = mu
        eps = torch.randn((samples, len(b), model.cfg.latent), generator=g, device=b.device)
        o = model(b, eps=eps)  # (K, B, 784) logits
        return neg_elbo(o.recon_logits, b, o.mu, o.logvar)[0]

    return batched(model, x, one, batch=max(1, BATCH // samples) if kind == "neg-elbo" else BATCH)


def auroc(scores_: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of `scores_` for telling positives (anomalies) from negatives (ties count
    half; 1.0 = every anomaly scores higher): scikit-learn's roc_auc_score, after checking both kinds exist."""
    from sklearn.metrics import roc_auc_score  # lazy: scikit-learn (scipy) takes ~1 s to import

    s = np.asarray(scores_, np.float64)
    pos = np.asarray(positive, bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        raise ConfigError(f"AUROC needs both normal and anomalous images: got {n_neg} normal, {n_pos} anomalous")
    return float(roc_auc_score(pos, s))


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


def fit_threshold(
    model,
    val_x: np.ndarray,
    val_labels: np.ndarray | None,
    normal: tuple[int, ...] | None,
    quantile: float,
    kind: str = "auto",
    seed: int = 0,
) -> tuple[float, tuple[int, ...]]:
    """(threshold, normal classes): the `quantile` of the scores of the normal images of a validation split.
    normal=None: every class present in val_labels is normal (all images, when there are no labels)."""
    threshold([0.0], quantile)  # validates the quantile before any work
    if val_labels is None:
        keep, normal = np.ones(len(val_x), bool), normal or ()
    else:
        if normal is None:
            normal = tuple(int(c) for c in np.unique(val_labels))
        keep = np.isin(val_labels, normal)
    if not keep.any():
        raise ConfigError(
            f"normal classes {','.join(map(str, normal))} are invalid: no validation images of those classes"
        )
    return threshold(scores(model, val_x[keep], kind, seed=seed), quantile), tuple(normal)


def one_class(data: Dataset, classes: tuple[int, ...]) -> Dataset:
    """The data set with its train and val splits restricted to `classes` (test untouched): what a
    one-class anomaly detector is fitted on."""
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

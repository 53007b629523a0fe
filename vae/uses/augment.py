"""Data augmentation: new labelled images decoded around the posterior of each class's images."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vae.data import Dataset, pixels
from vae.errors import ConfigError
from vae.idx import write_idx
from vae.io import default_mode
from vae.uses.codes import device_of, encode


@torch.no_grad()
def augment(
    model, images_u8: np.ndarray, labels: np.ndarray, per_class: int, spread: float = 1.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """New labelled images: for each class, `per_class` codes z = mu + spread * sigma * eps around the
    posterior of that class's images (drawn with replacement only when the class has fewer images),
    decoded and rounded to uint8. For the plain AE, sigma is half the spread of the class's codes.
    Returns (uint8 (C * per_class, 28, 28), int64 labels), classes in increasing order."""
    if not (isinstance(per_class, int) and 1 <= per_class <= 100_000):
        raise ConfigError(f"per_class={per_class!r} is invalid: expected an integer from 1 to 100000")
    if not (isinstance(spread, (int, float)) and 0 <= spread <= 10):
        raise ConfigError(f"spread={spread!r} is invalid: expected a number in [0, 10]")
    dev = device_of(model)
    g = torch.Generator().manual_seed(seed)
    out_x, out_y = [], []
    for c in np.unique(labels):
        base = images_u8[labels == c].reshape(-1, 784)
        pick = (
            torch.randperm(len(base), generator=g)[:per_class]
            if per_class <= len(base)
            else torch.randint(len(base), (per_class,), generator=g)
        ).numpy()
        x = torch.as_tensor(pixels(base[pick]), device=dev)
        mu, logvar = model.encode(x)
        if logvar is not None:
            sigma = torch.exp(0.5 * logvar)
        else:
            all_mu = torch.as_tensor(encode(model, pixels(base)), device=dev)
            sigma = 0.5 * all_mu.std(0, unbiased=False).expand_as(mu)
        eps = torch.randn(mu.shape, generator=g).to(dev)
        probs = torch.sigmoid(model.decode(mu + spread * sigma * eps))
        out_x.append(torch.round(probs * 255).to(torch.uint8).reshape(-1, 28, 28).cpu().numpy())
        out_y.append(np.full(per_class, c, np.int64))
    return np.concatenate(out_x), np.concatenate(out_y)


def write_augmented(
    out: str | Path, images: np.ndarray, labels: np.ndarray, source: Dataset, meta: dict[str, Any]
) -> dict[str, Any]:
    """Write an augmented training set as an idx folder that `--dataset idx:OUT` reads: train-* hold
    `images`/`labels`, t10k-* the source's untouched real test split (so a model trained on the augmented set
    is still tested on real digits), augment.json the provenance. The folder appears whole or not at all."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} is invalid: it exists and is not an empty folder")
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out} is invalid: folder {out.parent} does not exist")
    meta = {
        **meta,
        "source": source.name,
        "source_fingerprint": source.fingerprint,
        "train_images": len(labels),
        "test_images": len(source.test.labels),
    }
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write_idx(tmp / "train-images-idx3-ubyte.gz", torch.from_numpy(images))
        write_idx(tmp / "train-labels-idx1-ubyte.gz", torch.from_numpy(labels))
        write_idx(tmp / "t10k-images-idx3-ubyte.gz", source.test.images)
        write_idx(tmp / "t10k-labels-idx1-ubyte.gz", source.test.labels)
        (tmp / "augment.json").write_text(json.dumps(meta, indent=2) + "\n")
        for f in tmp.iterdir():
            default_mode(f)
        default_mode(tmp, folder=True)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "out": str(out),
        "dataset": f"idx:{out}",
        **meta,
        "per_class_counts": np.bincount(labels, minlength=10).tolist(),
    }

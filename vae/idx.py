"""The idx file format of MNIST-like data sets: read (raw or gzip, validated), write (atomically)."""

from __future__ import annotations

import gzip
import math
import os
import tempfile
import zlib
from pathlib import Path

import numpy as np
import torch

from vae.errors import DataError

IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801  # idx: 0x08 = unsigned byte, then the number of dims
CHUNK = 1 << 20  # bytes read (inflated) at a time: memory follows what the file holds, not what its header claims


def read_idx(path: str | Path) -> torch.Tensor:
    """Labels (N,) int64 or images (N, 28, 28) uint8 from an idx file, raw or gzip. The header is read first and
    the body only as far as it declares (a gz file is inflated that far and one byte more, never further), so a
    file that lies about its size is refused without holding more than the declared size in memory."""
    path = Path(path)
    gz = path.name.endswith(".gz")
    try:
        with gzip.open(path, "rb") if gz else open(path, "rb") as f:
            ndim, dims = _header(f, path)
            if not gz:
                _check_raw_size(path, os.fstat(f.fileno()).st_size, ndim, dims)
            body = _body(f, path, ndim, dims)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (EOFError, OSError, zlib.error) as e:  # BadGzipFile is an OSError; truncation is an EOFError
        if gz:
            raise DataError(f"{path}: not a readable gzip file, truncated or corrupt ({e})") from None
        raise DataError(f"{path}: cannot be read ({e}): expected an idx file") from None
    array = np.frombuffer(body, dtype=np.uint8).reshape(dims)
    if ndim == 3:
        return torch.from_numpy(array)  # the bytearray is the tensor's own, writable memory: no copy
    if dims[0] and array.max() > 9:
        bad = int(np.argmax(array > 9))
        raise DataError(f"{path}: label {array[bad]} at index {bad}: expected labels 0-9")
    return torch.from_numpy(array.astype(np.int64))


def _header(f, path: Path) -> tuple[int, list[int]]:
    """(ndim, dims) from the idx header at the start of the open file f, validated."""
    head = f.read(4)
    if len(head) < 4:
        raise DataError(f"{path}: {len(head)} bytes, too short for an idx header")
    magic = int.from_bytes(head, "big")
    if magic not in (IMAGES_MAGIC, LABELS_MAGIC):
        raise DataError(
            f"{path}: bad idx magic number 0x{magic:08x}: expected 0x{IMAGES_MAGIC:08x} "
            f"(images) or 0x{LABELS_MAGIC:08x} (labels)"
        )
    ndim = magic & 0xFF
    raw_dims = f.read(4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise DataError(f"{path}: truncated idx header ({4 + len(raw_dims)} bytes, expected {4 + 4 * ndim})")
    dims = [int.from_bytes(raw_dims[4 * i : 4 * i + 4], "big") for i in range(ndim)]
    if ndim == 3 and dims[1:] != [28, 28]:
        raise DataError(f"{path}: images are {dims[1]}x{dims[2]}: expected 28x28")
    return ndim, dims


def _declared(ndim: int, dims: list[int]) -> tuple[int, str]:
    """(bytes the header declares, header included; its words for the error texts)."""
    size = 4 + 4 * ndim + math.prod(dims)
    return size, f"header declares {dims[0]} {'images' if ndim == 3 else 'labels'} ({size} bytes with the header)"


def _check_raw_size(path: Path, size: int, ndim: int, dims: list[int]) -> None:
    expected, declares = _declared(ndim, dims)
    if size != expected:
        raise DataError(f"{path}: {declares} but the file holds {size} bytes")


def _body(f, path: Path, ndim: int, dims: list[int]) -> bytearray:
    """The body the header declares, read (for gz: inflated) CHUNK bytes at a time and never further than it
    declares, plus one byte to tell trailing data; DataError for a body shorter or longer than declared."""
    size = math.prod(dims)
    body = bytearray()
    while len(body) < size and (chunk := f.read(min(CHUNK, size - len(body)))):
        body += chunk
    if len(body) == size and not f.read(1):
        return body
    expected, declares = _declared(ndim, dims)
    if len(body) < size:
        raise DataError(f"{path}: {declares} but the file holds {expected - size + len(body)} bytes (truncated)")
    raise DataError(
        f"{path}: {declares} but the file holds more (trailing data after byte {expected}): "
        "expected the images or labels to end the file"
    )


def write_idx(path: str | Path, tensor: torch.Tensor) -> None:
    if tensor.dim() not in (1, 3) or tensor.dtype.is_floating_point or tensor.dtype == torch.bool:
        raise ValueError(
            f"write_idx takes integer labels (N,) or images (N, H, W), got {tensor.dtype} {tuple(tensor.shape)}"
        )
    if tensor.numel() and (tensor.min() < 0 or tensor.max() > 255):
        raise ValueError("write_idx stores unsigned bytes: values must be in 0-255")
    path = Path(path)
    header = (0x800 | tensor.dim()).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in tensor.shape)
    body = header + tensor.to(torch.uint8).contiguous().numpy().tobytes()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            if path.name.endswith(".gz"):  # mtime=0: the same tensor always gives the same bytes (and md5)
                with gzip.GzipFile(fileobj=f, mode="wb", compresslevel=6, mtime=0) as gz:
                    gz.write(body)
            else:
                f.write(body)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def idx_files(folder: Path) -> dict[str, Path]:
    """The four idx files in folder, raw preferred over .gz; DataError naming what is missing."""
    if not folder.is_dir():
        raise DataError(
            f"idx folder {folder} does not exist: expected a folder holding {', '.join(IDX_NAMES)} (each raw or .gz)"
        )
    found, missing = {}, []
    for name in IDX_NAMES:
        path = next((p for p in (folder / name, folder / f"{name}.gz") if p.is_file()), None)
        if path is None:
            missing.append(name)
        else:
            found[name] = path
    if missing:
        raise DataError(
            f"idx folder {folder} lacks {', '.join(missing)} (raw or .gz): expected all of {', '.join(IDX_NAMES)}"
        )
    return found


def read_pair(images_path: Path, labels_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dim() != 3:
        raise DataError(f"{images_path}: holds labels, expected images (magic 0x{IMAGES_MAGIC:08x})")
    if labels.dim() != 1:
        raise DataError(f"{labels_path}: holds images, expected labels (magic 0x{LABELS_MAGIC:08x})")
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} holds {len(images)} images but {labels_path} holds "
            f"{len(labels)} labels: expected one label per image"
        )
    return images, labels

"""A folder of PNG digits by class, `DIR/<label>/*.png` (torchvision's ImageFolder layout), labels 0-9.

Teams drop labelled images into such a folder and it grows; a night reads it as it is now. Bad entries are
skipped whole and reported by name, never half-read: a file that is not a readable 8-bit PNG of 28x28
pixels, a label folder whose name is not a digit 0-9 (with everything in it), a file outside any label
folder. The caller logs them and counts them in the data info. Files are read in sorted order (label, name)
so the same folder gives the same arrays, and so the same fingerprint.
"""

from __future__ import annotations

import logging
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from vae.errors import DataError

log = logging.getLogger(__name__)

LABELS = tuple(str(d) for d in range(10))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MODES = ("1", "L", "LA", "P", "RGB", "RGBA")  # the 8-bit modes (and 1-bit) that convert("L") turns into grey
# What Pillow raises on a malformed file: unknown format, truncated or corrupt data (OSError, EOFError,
# SyntaxError, zlib and struct errors), values out of range (ValueError), a declared size past
# Image.MAX_IMAGE_PIXELS * 2 (DecompressionBombError, raised by Image.open itself).
PILLOW_ERRORS = (
    UnidentifiedImageError,
    Image.DecompressionBombError,
    OSError,
    EOFError,
    SyntaxError,
    ValueError,
    struct.error,
    zlib.error,
)


@dataclass(frozen=True)
class Folder:
    images: torch.Tensor  # (N, 28, 28) uint8, sorted by (label, file name)
    labels: torch.Tensor  # (N,) int64
    skipped: tuple[tuple[str, str], ...]  # (path relative to the folder, why)


def read_png(path: Path) -> np.ndarray:
    """One 28x28 grey uint8 image from a PNG (grey, palette or RGB, 8-bit); DataError saying why not.

    The file is judged from its header first (the PNG's own IHDR, then format, size and mode as Pillow opens
    it, all without decoding): one that is not a 28x28 8-bit PNG is refused before a pixel is decoded, so a
    PNG declaring 20000x20000 costs a 24-byte read, not 400 MB. Whatever Pillow raises on a malformed file
    (a decompression bomb included) refuses it the same way, as a file that is not a readable PNG."""
    try:
        _check_png_size(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # judged by its size below
            with Image.open(path) as im:
                _check_header(im)
                im.load()
                grey = np.asarray(im.convert("L"))
    except PILLOW_ERRORS as e:
        raise DataError(f"not a readable PNG ({type(e).__name__})") from None
    if grey.shape != (28, 28) or grey.dtype != np.uint8:  # convert("L") of an 8-bit mode gives this
        raise DataError(f"decoded as {grey.dtype} {grey.shape}: expected a 28x28 8-bit PNG")
    return grey


def _check_png_size(path: Path) -> None:
    """DataError if the file's PNG header (signature, then the IHDR chunk: width, height) declares another
    size than 28x28: the first 24 bytes are all that is read. Other files are left to Pillow to judge."""
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR":
        width, height = struct.unpack(">II", head[16:24])
        if (width, height) != (28, 28):
            raise DataError(f"image is {width}x{height}: expected 28x28 pixels")


def _check_header(im: Image.Image) -> None:
    """DataError unless the opened (not yet decoded) image is a 28x28 PNG in an 8-bit mode."""
    if im.format != "PNG":
        raise DataError(f"not a PNG ({im.format})")
    if im.size != (28, 28):
        raise DataError(f"image is {im.size[0]}x{im.size[1]}: expected 28x28 pixels")
    if im.mode not in MODES:
        raise DataError(f"mode {im.mode!r} is not 8-bit: expected a grey (L) or RGB 8-bit PNG")


def read_folder(root: str | Path) -> Folder:
    """Every good image of root/<0-9>/; bad entries are skipped and listed (see the module's doc)."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"{root}: no such folder: expected DIR/<label 0-9>/*.png")
    images, labels, skipped = [], [], []
    for entry in sorted(root.iterdir()):
        rel = entry.name
        if not entry.is_dir():
            skipped.append((rel, "a file outside any label folder"))
            continue
        if entry.name not in LABELS:
            n = sum(1 for f in entry.rglob("*") if f.is_file())
            skipped.append((rel + "/", f"label folder {entry.name!r} is not a digit 0-9 ({n} files)"))
            continue
        for f in sorted(entry.iterdir()):
            try:
                if not f.is_file():
                    raise DataError("not a file")
                images.append(read_png(f))
                labels.append(int(entry.name))
            except DataError as e:
                skipped.append((f"{entry.name}/{f.name}", str(e)))
    if skipped:
        log.warning(
            "%s: skipped %d bad entr%s: %s",
            root,
            len(skipped),
            "y" if len(skipped) == 1 else "ies",
            "; ".join(f"{name} ({why})" for name, why in skipped),
        )
    if not images:
        raise DataError(f"{root}: no readable 28x28 PNG under <label 0-9>/ folders (skipped {len(skipped)} entries)")
    return Folder(
        torch.from_numpy(np.stack(images)).contiguous(), torch.tensor(labels, dtype=torch.int64), tuple(skipped)
    )

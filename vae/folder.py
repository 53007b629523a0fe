"""A folder of PNG digits by class, `DIR/<label>/*.png` (torchvision's ImageFolder layout), labels 0-9.

Teams drop labelled images into such a folder and it grows; a night reads it as it is now. Bad entries are
skipped whole and reported by name, never half-read: a file that is not a readable 8-bit PNG of 28x28
pixels, a label folder whose name is not a digit 0-9 (with everything in it), a file outside any label
folder. The caller logs them and counts them in the data info. Files are read in sorted order (label, name)
so the same folder gives the same arrays, and so the same fingerprint.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from vae.errors import DataError

log = logging.getLogger(__name__)

LABELS = tuple(str(d) for d in range(10))


@dataclass(frozen=True)
class Folder:
    images: torch.Tensor  # (N, 28, 28) uint8, sorted by (label, file name)
    labels: torch.Tensor  # (N,) int64
    skipped: tuple[tuple[str, str], ...]  # (path relative to the folder, why)


def read_png(path: Path) -> np.ndarray:
    """One 28x28 grey uint8 image from a PNG (grey, palette or RGB, 8-bit); DataError saying why not."""
    try:
        with Image.open(path) as im:
            if im.format != "PNG":
                raise DataError(f"not a PNG ({im.format})")
            im.load()
            size, mode = im.size, im.mode
            grey = np.asarray(im.convert("L") if mode in ("1", "L", "LA", "P", "RGB", "RGBA") else im)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(f"not a readable PNG ({type(e).__name__})") from None
    if size != (28, 28):
        raise DataError(f"image is {size[0]}x{size[1]}: expected 28x28 pixels")
    if grey.dtype != np.uint8:
        raise DataError(f"mode {mode!r} is not 8-bit: expected a grey (L) or RGB 8-bit PNG")
    return grey


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

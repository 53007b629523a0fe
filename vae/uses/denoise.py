"""Denoising: corrupt clean images the way training does, clean them with the model, measure the gain."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from vae.batches import corrupt as apply
from vae.errors import ConfigError
from vae.uses.codes import psnr, reconstruct

NOISES = ("gaussian", "masking", "salt-pepper")


def corrupt(x: np.ndarray, noise: str, level: float, seed: int = 0) -> np.ndarray:
    """The training-time corruptions of vae.batches.corrupt, drawn from a seeded generator."""
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

"""Generation, reconstruction and compression: what a trained autoencoder's codes are for.

Every function here and in the rest of vae.uses takes the model and float32 (N, 784) pixels in [0, 1] as
numpy arrays, and returns numpy arrays on the CPU; work runs in batches on the model's device. Nothing here
loads a model or a file: the CLI (vae/cli/uses.py), the served model (vae/tracking/models.py) and the report
all call these, so they agree to the last bit.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from vae.errors import ConfigError
from vae.kinds import listed, names
from vae.losses import recon_bce

BATCH = 1000


def device_of(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def batched(model, x: np.ndarray, fn: Callable[[torch.Tensor], torch.Tensor], batch: int = BATCH) -> np.ndarray:
    """fn over x in batches on the model's device, concatenated on the CPU."""
    dev = device_of(model)
    outs = [
        fn(torch.as_tensor(x[s : s + batch], dtype=torch.float32, device=dev)).cpu() for s in range(0, len(x), batch)
    ]
    return torch.cat(outs).numpy() if outs else np.zeros((0,), np.float32)


def sample(model, n: int, temperature: float = 1.0, seed: int = 0) -> np.ndarray:
    """(n, 784) pixel probabilities decoded from z ~ N(0, temperature^2 I)."""
    if not model.is_variational:
        raise ConfigError(
            "this model is a plain autoencoder, which has no prior to sample from: "
            f"use a {listed(names(variational=True))} model"
        )
    if not (isinstance(n, int) and 1 <= n <= 100_000):
        raise ConfigError(f"n={n!r} is invalid: expected an integer from 1 to 100000")
    if not (isinstance(temperature, (int, float)) and 0 < temperature <= 10):
        raise ConfigError(f"temperature={temperature!r} is invalid: expected a number in (0, 10]")
    if not (isinstance(seed, int) and not isinstance(seed, bool) and -(2**63) <= seed < 2**64):  # torch's seeds
        raise ConfigError(f"seed={seed!r} is invalid: expected an integer from -2**63 to 2**64 - 1")
    g = torch.Generator(device=device_of(model)).manual_seed(seed)
    return model.sample(n, float(temperature), generator=g).cpu().numpy()


def encode(model, x: np.ndarray) -> np.ndarray:
    """(N, latent) posterior means (the code itself for the AE)."""
    return batched(model, x, lambda b: model.encode(b)[0])


def decode(model, z: np.ndarray) -> np.ndarray:
    """(N, 784) pixel probabilities."""
    latent = model.cfg.latent
    if z.ndim != 2 or z.shape[1] != latent:
        raise ConfigError(f"latents of shape {z.shape} are invalid: expected (N, {latent}) for this model")
    return batched(model, z, lambda b: torch.sigmoid(model.decode(b)))


def reconstruct(model, x: np.ndarray) -> np.ndarray:
    """(N, 784) pixel probabilities, decoded from z = mu: what the image compresses to and back."""
    return batched(model, x, lambda b: torch.sigmoid(model.decode(model.encode(b)[0])))


def psnr(clean: np.ndarray, other: np.ndarray) -> np.ndarray:
    """(N,) peak signal-to-noise ratio in dB per image, peak 1; identical images give 99 dB, not infinity."""
    mse = np.mean((np.asarray(clean, np.float64) - np.asarray(other, np.float64)) ** 2, axis=1)
    return 10 * np.log10(1.0 / np.maximum(mse, 10**-9.9))


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
    step = np.where(hi > lo, (hi - lo) / (2**bits - 1), 1.0)
    return (lo + np.round((z - lo) / step) * step).astype(np.float32)


def compression(model, x: np.ndarray, bits: tuple[int, ...] = (32, 16, 8, 4)) -> list[dict[str, float]]:
    """Bytes per image as a uint8 image (784) against its latent code stored at each precision, and the
    reconstruction error that costs (decoding the stored code): PSNR (dB), MSE per pixel, cross-entropy."""
    z = encode(model, x)
    latent = z.shape[1]
    rows = []
    for b in bits:
        logits = batched(model, quantize(z, b), lambda t: model.decode(t))
        recon = 1 / (1 + np.exp(-logits))
        bce = recon_bce(torch.from_numpy(logits), torch.from_numpy(x)).numpy()
        rows.append(
            {
                "bits": b,
                "image_bytes": 784,
                "latent_bytes": latent * b / 8,
                "ratio": 784 / (latent * b / 8),
                "psnr_db": float(psnr(x, recon).mean()),
                "mse": float(np.mean((recon - x) ** 2)),
                "bce_nats": float(bce.mean()),
            }
        )
    return rows

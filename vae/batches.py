"""One batch's draws: the epoch's generator, the batch's target, input and eps, a rank's slice of it.

Every random draw of epoch e comes from one generator seeded with (seed, e); every rank draws the whole
global batch's randomness in a fixed order and keeps its slice, so N processes see the numbers 1 process does.
"""

from __future__ import annotations

import torch

from vae.config import Config
from vae.data import pixels
from vae.distributed import DistContext
from vae.models import PIXELS


def epoch_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + epoch)


def corrupt(x: torch.Tensor, noise: str, level: float, u: torch.Tensor | None) -> torch.Tensor:
    """Denoising input. u: (B, 784) draws, N(0,1) for gaussian, U(0,1) otherwise; None when noise='none'."""
    if noise == "gaussian":
        return (x + level * u).clamp_(0, 1)
    if noise == "masking":  # each pixel zeroed with probability `level`
        return x.masked_fill(u < level, 0.0)
    if noise == "salt-pepper":  # `level` of the pixels flipped to 0 or 1, half each
        out = x.masked_fill(u < level / 2, 0.0)
        return out.masked_fill((u >= level / 2) & (u < level), 1.0)
    return x


def draw_batch(
    images: torch.Tensor,
    idx: torch.Tensor,
    gen: torch.Generator,
    cfg: Config,
    variational: bool,
    shard: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(target, input, eps) of this rank's slice [lo, hi) of the global batch `idx`. The randomness of the
    whole global batch is drawn on every rank, in a fixed order, and sliced: the same numbers whatever
    the number of ranks. Dynamic binarization draws fresh Bernoulli pixels each time it is called."""
    tc, dev, gb = cfg.train, images.device, idx.shape[0]
    k_shape = (tc.k,) if tc.objective == "iwae" else ()
    eps = torch.randn(*k_shape, gb, cfg.model.latent, generator=gen, device=dev) if variational else None
    u_bin = torch.rand(gb, PIXELS, generator=gen, device=dev) if cfg.data.binarize == "dynamic" else None
    u_noise = None
    if tc.noise != "none":
        u_noise = (torch.randn if tc.noise == "gaussian" else torch.rand)(gb, PIXELS, generator=gen, device=dev)
    lo, hi = shard
    x = pixels(images[idx[lo:hi]])
    if u_bin is not None:
        x = (u_bin[lo:hi] < x).float()
    inp = corrupt(x, tc.noise, tc.noise_level, u_noise[lo:hi] if u_noise is not None else None)
    return x, inp, eps[..., lo:hi, :] if eps is not None else None


def shard(global_batch: int, ctx: DistContext) -> tuple[int, int]:
    """This rank's [lo, hi) of a global batch, contiguous and as even as possible."""
    base, extra = divmod(global_batch, ctx.world_size)
    lo = ctx.rank * base + min(ctx.rank, extra)
    return lo, lo + base + (1 if ctx.rank < extra else 0)

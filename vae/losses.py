"""Losses and likelihood estimates, all in nats per image.

Reduction, everywhere in this file: sum over pixels and latent dimensions, one value per image (B,).
Callers take the mean over images. Source: Kingma & Welling (2013), "Auto-Encoding Variational Bayes",
eq. 10 and Appendix B (the closed-form KL to N(0, I)); Burda, Grosse & Salakhutdinov (2015),
"Importance Weighted Autoencoders", eq. 8 (the K-sample bound).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LOG_2PI = math.log(2 * math.pi)


def recon_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """-log p(x|z) under a Bernoulli decoder; BCE-with-logits is stable where sigmoid + BCE is not.
    With grey-level targets (the seed's choice) this is the cross-entropy, not a normalised likelihood."""
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1)


def kl_std_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) = -1/2 sum(1 + logvar - mu^2 - exp(logvar))."""
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=-1)


def neg_elbo(
    recon_logits: torch.Tensor, target: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, beta: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, recon, kl), each (B,): the -ELBO recon + beta * kl with z sampled from q(z|x) (Kingma & Welling,
    eq. 10). recon_logits may carry a leading axis of K samples, (K, B, 784): recon is then their mean.
    Training, evaluation and the anomaly scores all use this one function."""
    recon = recon_bce(recon_logits, target.expand_as(recon_logits))
    if recon.dim() > 1:
        recon = recon.mean(0)
    kl = kl_std_normal(mu, logvar)
    return recon + beta * kl, recon, kl


def log_normal(z: torch.Tensor, mu: torch.Tensor | float = 0.0, logvar: torch.Tensor | float = 0.0) -> torch.Tensor:
    """log N(z; mu, exp(logvar) I), summed over the last dimension."""
    logvar = torch.as_tensor(logvar, dtype=z.dtype, device=z.device)
    return -0.5 * torch.sum(LOG_2PI + logvar + (z - mu).pow(2) * torch.exp(-logvar), dim=-1)


def softplus_sum(logits: torch.Tensor, block: int = 28) -> torch.Tensor:
    """sum_j softplus(l_j) over the last axis, overwriting `logits`: sum max(l, 0) + sum log(1 + exp(-|l|)),
    the second as a log of products over blocks of `block` pixels. Each factor lies in (1, 2], so a block's
    product stays below 2**block (no overflow for block <= 100 in float32), and one log per block replaces a
    log1p per pixel: about half of F.softplus(l).sum(-1)'s time on the CPU, within 1e-4 nats of it per image
    over 784 pixels (tests/test_models_losses.py). Falls back to F.softplus where the width is not a
    multiple of `block`."""
    width = logits.shape[-1]
    if width % block:
        return F.softplus(logits).sum(-1)
    positive = logits.clamp(min=0).sum(-1)
    factors = logits.abs_().neg_().exp_().add_(1)
    return positive + factors.reshape(*logits.shape[:-1], width // block, block).prod(-1).log_().sum(-1)


def _log_px_z(model, target: torch.Tensor, fold: bool = True):
    """A function z (kc, B, L) -> log p(x|z) (kc, B) for the targets (B, D) of the K samples.

    For a decoder that ends in a Linear layer (the MLP models), log p(x|z) = sum_j x_j l_j - softplus(l_j)
    with l = h W^T + b, and sum_j x_j l_j = h . (x W) + x . b: the pixel-wise product with the targets
    becomes one batched matmul, the ReLUs run in place, and the softplus sum is softplus_sum(), so the K
    samples cost the decoder's matmuls and a few passes over their logits. Other decoders take recon_bce."""
    decoder = getattr(model, "decoder", None)
    if not (fold and isinstance(decoder, nn.Sequential) and isinstance(decoder[-1], nn.Linear)):

        def generic(z: torch.Tensor) -> torch.Tensor:
            logits = model.decode(z.reshape(-1, z.shape[-1])).reshape(*z.shape[:-1], -1)
            return -recon_bce(logits, target.expand_as(logits))

        return generic
    head, last = list(decoder[:-1]), decoder[-1]
    xw = target @ last.weight  # (B, H)
    xb = target @ last.bias if last.bias is not None else torch.zeros(target.shape[0], device=target.device)

    def linear_head(z: torch.Tensor) -> torch.Tensor:
        kc, b = z.shape[:2]
        h = z.reshape(kc * b, -1)
        for layer in head:  # (kc * B, H) at the end
            h = h.relu_() if isinstance(layer, nn.ReLU) else layer(h)
        x_dot_l = torch.einsum("kbh,bh->kb", h.reshape(kc, b, -1), xw) + xb
        return x_dot_l - softplus_sum(F.linear(h, last.weight, last.bias)).reshape(kc, b)

    return linear_head


@torch.no_grad()
def iw_log_likelihood(
    model,
    x: torch.Tensor,
    k: int,
    target: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    max_elements: int = 1 << 22,
    fold: bool = True,
) -> torch.Tensor:
    """log p(x) >= log (1/K) sum_k p(x, z_k) / q(z_k|x), z_k ~ q(z|x): the importance-weighted bound
    (K=1 is the ELBO; it tightens as K grows). Returns (B,) nats. The K samples are decoded in chunks
    of at most `max_elements` logits (16 MiB of float32: 1.4x faster here than 64 MiB, which fall out of
    the CPU's caches between the passes over them), so that K=1000 fits in memory. fold=False takes recon_bce even for a
    Linear last layer (the reference that benchmarks/iw_speed.py times the folded path against)."""
    target = x if target is None else target
    mu, logvar = model.encode(x)  # (B, L)
    std = torch.exp(0.5 * logvar)
    b, latent = mu.shape
    chunk = max(1, min(k, max_elements // max(1, b * target.shape[-1])))
    # All K draws at once (K*B*L floats is small), so the estimate does not depend on the chunking.
    eps_all = torch.randn(k, b, latent, generator=generator, device=mu.device, dtype=mu.dtype)
    log_px_z = _log_px_z(model, target, fold)
    log_w = []
    for start in range(0, k, chunk):
        eps = eps_all[start : start + chunk]
        z = mu + std * eps  # (kc, B, L)
        log_q = log_normal(eps, 0.0, 0.0) - 0.5 * logvar.sum(-1)  # change of variables z = mu + std * eps
        log_w.append(log_px_z(z) + log_normal(z) - log_q)  # (kc, B)
    return torch.logsumexp(torch.cat(log_w), dim=0) - math.log(k)


def iwae_bound(out, target: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """-(K-sample bound) from a forward pass with eps of shape (K, B, L): (B,) nats. K=1 is the -ELBO
    estimated with that one sample. log q(z|x) = log N(eps; 0, I) - 1/2 sum(logvar) (z = mu + sigma * eps)."""
    log_w = (
        -recon_bce(out.recon_logits, target.expand_as(out.recon_logits))
        + log_normal(out.z)
        - log_normal(eps)
        + 0.5 * out.logvar.sum(-1)
    )  # (K, B)
    return -(torch.logsumexp(log_w, dim=0) - math.log(eps.shape[0]))

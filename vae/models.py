"""The seed's MLP VAE, its deterministic AE sibling and a small convolutional VAE.

All models take images as (B, 784) floats in [0, 1] and decode to (B, 784) logits: the sigmoid of the
seed lives in the loss (BCE-with-logits) and in `probs()`, where it is numerically safe.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vae.config import ModelConfig

PIXELS = 28 * 28


@dataclass
class Output:
    recon_logits: torch.Tensor  # (B, 784)
    mu: torch.Tensor  # (B, latent); for the AE, the code itself
    logvar: torch.Tensor | None  # (B, latent); None for the AE
    z: torch.Tensor  # (B, latent), the code that was decoded


def _act(name: str) -> nn.Module:
    return nn.ReLU() if name == "relu" else nn.Tanh()


def _mlp(sizes: list[int], activation: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(_act(activation))
    return nn.Sequential(*layers)


class VAE(nn.Module):
    """Kingma & Welling (2013): Gaussian encoder q(z|x), Bernoulli decoder p(x|z), prior N(0, I)."""

    is_variational = True

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        h = list(cfg.hidden)
        self.encoder = nn.Sequential(_mlp([PIXELS, *h], cfg.activation), _act(cfg.activation))
        self.fc_mu = nn.Linear(h[-1], cfg.latent)
        self.fc_logvar = nn.Linear(h[-1], cfg.latent)
        self.decoder = _mlp([cfg.latent, *reversed(h), PIXELS], cfg.activation)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return self.fc_mu(h), self.fc_logvar(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor, eps: torch.Tensor | None = None, sample: bool = True) -> Output:
        """eps: the N(0, I) draw for z = mu + sigma * eps, passed in so that DDP ranks and resumed runs
        draw exactly what one uninterrupted process would; (B, L), or (K, B, L) for K samples per image,
        which gives (K, B, 784) logits. sample=False decodes z = mu."""
        mu, logvar = self.encode(x)
        if not sample:
            return Output(self.decode(mu), mu, logvar, mu)
        if eps is None:
            eps = torch.randn_like(mu)
        z = mu + torch.exp(0.5 * logvar) * eps
        logits = self.decode(z.reshape(-1, z.shape[-1])).reshape(*z.shape[:-1], -1)
        return Output(logits, mu, logvar, z)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, 784) pixel probabilities decoded from z ~ N(0, temperature^2 I)."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.cfg.latent, generator=generator, device=device) * temperature
        return torch.sigmoid(self.decode(z))


class ConvVAE(VAE):
    """Two stride-2 convolutions (28 -> 14 -> 7) of C and 2C channels (cfg.channels, 32 by default) and a dense
    layer per hidden width, mirrored in the decoder."""

    def __init__(self, cfg: ModelConfig):
        nn.Module.__init__(self)
        self.cfg = cfg
        h = list(cfg.hidden)
        act, c = cfg.activation, cfg.channels
        self.encoder = nn.Sequential(
            nn.Unflatten(1, (1, 28, 28)),
            nn.Conv2d(1, c, 4, 2, 1),
            _act(act),  # (B, C, 14, 14)
            nn.Conv2d(c, 2 * c, 4, 2, 1),
            _act(act),  # (B, 2C, 7, 7)
            nn.Flatten(),
            _mlp([2 * c * 7 * 7, *h], act),
            _act(act),
        )
        self.fc_mu = nn.Linear(h[-1], cfg.latent)
        self.fc_logvar = nn.Linear(h[-1], cfg.latent)
        self.decoder = nn.Sequential(
            _mlp([cfg.latent, *reversed(h), 2 * c * 7 * 7], act),
            _act(act),
            nn.Unflatten(1, (2 * c, 7, 7)),
            nn.ConvTranspose2d(2 * c, c, 4, 2, 1),
            _act(act),  # (B, C, 14, 14)
            nn.ConvTranspose2d(c, 1, 4, 2, 1),  # (B, 1, 28, 28) logits
            nn.Flatten(),
        )


class AE(VAE):
    """The deterministic autoencoder: the same MLP with one code head and no sampling."""

    is_variational = False

    def __init__(self, cfg: ModelConfig):
        nn.Module.__init__(self)
        self.cfg = cfg
        h = list(cfg.hidden)
        self.encoder = nn.Sequential(_mlp([PIXELS, *h], cfg.activation), _act(cfg.activation))
        self.fc_mu = nn.Linear(h[-1], cfg.latent)
        self.decoder = _mlp([cfg.latent, *reversed(h), PIXELS], cfg.activation)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.fc_mu(self.encoder(x)), None

    def forward(self, x: torch.Tensor, eps: torch.Tensor | None = None, sample: bool = True) -> Output:
        code, _ = self.encode(x)
        return Output(self.decode(code), code, None, code)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        raise TypeError("the plain autoencoder has no prior to sample from: train --model vae or conv-vae")


def build_model(cfg: ModelConfig) -> VAE:
    return {"vae": VAE, "ae": AE, "conv-vae": ConvVAE}[cfg.kind](cfg)

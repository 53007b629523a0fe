"""The seed's MLP VAE, its deterministic AE sibling and a small convolutional VAE.

All models take images as (B, 784) floats in [0, 1] and decode to (B, 784) logits: the sigmoid of the
seed lives in the loss (BCE-with-logits) and in `sample()`, where it is numerically safe.

Each model owns its objective: `objective()` is what the trainer calls backward on, `terms()` the per-image
numbers evaluation averages, `SCORE` the one of them that validation, early stopping and the best checkpoint go
by. The trainer and the evaluation never ask which kind they hold. A new kind is a class here and an entry in
vae/kinds.py (its name, its class, what it can do).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vae.config import ModelConfig, TrainConfig
from vae.kinds import KINDS, listed, names
from vae.losses import iwae_bound, kl_std_normal, neg_elbo, recon_bce

PIXELS = 28 * 28


@dataclass
class Output:
    recon_logits: torch.Tensor  # (B, 784)
    mu: torch.Tensor  # (B, latent); for the AE, the code itself
    logvar: torch.Tensor | None  # (B, latent); None for the AE
    z: torch.Tensor  # (B, latent), the code that was decoded


def _float(o: Output) -> Output:
    """The output in float32 (under bf16 autocast the logits arrive in bf16)."""
    return Output(o.recon_logits.float(), o.mu.float(), o.logvar.float(), o.z.float())


Terms = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (summed loss, per-image recon, per-image kl)


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

    TERMS = ("neg_elbo", "recon", "kl", "recon_at_mean")  # terms(), in this order
    SCORE = "neg_elbo"  # validation's number: the history's val_neg_elbo

    @property
    def is_variational(self) -> bool:
        """Draws eps, has a prior to sample from and an IW bound: its kind's `variational` in vae/kinds.py."""
        return KINDS[self.cfg.kind].variational

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

    def objective(self, o: Output, x: torch.Tensor, eps: torch.Tensor | None, tc: TrainConfig) -> Terms:
        """The training loss of one batch's forward output `o` against the targets x: the -ELBO with the KL
        weighted by beta, or the K-sample IWAE bound (eps of shape (K, B, L)); recon and kl are reported."""
        if tc.objective == "iwae":
            per_image = iwae_bound(_float(o), x, eps)
            recon = recon_bce(o.recon_logits[0].float(), x)  # reported: the first sample's terms
            return per_image.sum(), recon, kl_std_normal(o.mu.float(), o.logvar.float())
        loss, recon, kl = neg_elbo(o.recon_logits.float(), x, o.mu.float(), o.logvar.float(), tc.beta)
        return loss.sum(), recon, kl

    def terms(self, x: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """The evaluation's per-image terms, (B,) nats each (keys: TERMS), z drawn once from q(z|x) with `gen`."""
        eps = torch.randn(x.shape[0], self.cfg.latent, generator=gen, device=x.device)
        o = self(x, eps=eps)
        loss, recon, kl = neg_elbo(o.recon_logits, x, o.mu, o.logvar)
        return {"neg_elbo": loss, "recon": recon, "kl": kl, "recon_at_mean": recon_bce(self.decode(o.mu), x)}


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

    TERMS = ("bce", "mse")  # reconstruction cross-entropy (nats/image), mean squared error (per pixel)
    SCORE = "bce"

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
        raise TypeError(
            f"the plain autoencoder has no prior to sample from: train --model {listed(names(variational=True))}"
        )

    def objective(self, o: Output, x: torch.Tensor, eps: torch.Tensor | None, tc: TrainConfig) -> Terms:
        """The reconstruction cross-entropy; no KL (there is no posterior)."""
        recon = recon_bce(o.recon_logits.float(), x)
        return recon.sum(), recon, torch.zeros_like(recon)

    def terms(self, x: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
        logits = self(x).recon_logits
        return {"bce": recon_bce(logits, x), "mse": (torch.sigmoid(logits) - x).pow(2).mean(-1)}


def build_model(cfg: ModelConfig) -> VAE:
    """The model of cfg.kind: the class vae/kinds.py names for it."""
    return globals()[KINDS[cfg.kind].model](cfg)


# The validation loss each kind's history carries (val_ + its SCORE), for readers of a history without a model.
VAL_KEYS = tuple(dict.fromkeys(f"val_{globals()[k.model].SCORE}" for k in KINDS.values()))


def val_key(row: dict) -> str | None:
    """Which validation loss a history row holds (val_neg_elbo, or val_bce for the AE); None if none."""
    return next((k for k in VAL_KEYS if k in row), None)

"""PNG figures of a trained model: reconstructions, prior samples, interpolation, latent map, loss curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vae.data import pixels
from vae.models import VAE, val_key

# matplotlib (~0.5 s) is imported where a figure is drawn: training and evaluation import this module, and most
# of their runs draw nothing. Image grids are laid out here: torchvision's make_grid would import torch._dynamo
# (~2 s) in every process that draws one.


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display on servers and workers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def grid(images: torch.Tensor, nrow: int, padding: int = 2, pad_value: float = 1.0) -> np.ndarray:
    """(N, 784) pixels -> one (H, W) float array: rows of `nrow` images with gutters of `padding` pixels all
    round (torchvision's make_grid layout); a single image is itself, 28x28, so it reads back as an input."""
    x = images.detach().reshape(-1, 28, 28).float().cpu().numpy()
    n = x.shape[0]
    if n == 1:
        return x[0]
    cols = min(nrow, n)
    step = 28 + padding
    out = np.full((-(-n // cols) * step + padding, cols * step + padding), pad_value, dtype=np.float32)
    for k in range(n):
        top, left = padding + (k // cols) * step, padding + (k % cols) * step
        out[top : top + 28, left : left + 28] = x[k]
    return out


def image_grid(images: torch.Tensor, path: Path, nrow: int) -> None:
    """(N, 784) pixels in [0, 1] as one 8-bit grey PNG grid with white gutters."""
    from PIL import Image

    g = (np.clip(grid(images, nrow), 0, 1) * 255 + 0.5).astype(np.uint8)
    Image.fromarray(g, mode="L").save(path, format="PNG")


@torch.no_grad()
def reconstruction_grid(model: VAE, images_u8: torch.Tensor, path: Path, n: int = 8) -> None:
    """Originals on the top row, their reconstructions (decoded from z = mu) below, as the seed shows them."""
    x = pixels(images_u8[:n]).to(next(model.parameters()).device)
    recon = torch.sigmoid(model(x, sample=False).recon_logits)
    image_grid(torch.cat([x, recon]), path, nrow=n)


@torch.no_grad()
def sample_grid(model: VAE, path: Path, n: int = 64, temperature: float = 1.0, seed: int = 0) -> None:
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    image_grid(model.sample(n, temperature, generator=gen), path, nrow=8)


@torch.no_grad()
def interpolation_grid(model: VAE, images_u8: torch.Tensor, labels: torch.Tensor, path: Path, steps: int = 10) -> None:
    """Rows walk in latent space (between posterior means) from one digit to a different one."""
    dev = next(model.parameters()).device
    pairs = []
    for a in range(min(8, images_u8.shape[0])):
        b = next((j for j in range(images_u8.shape[0]) if labels[j] != labels[a]), (a + 1) % images_u8.shape[0])
        pairs.append((a, b))
    x = pixels(images_u8).to(dev)
    rows = []
    for a, b in pairs:
        za, zb = model.encode(x[a : a + 1])[0], model.encode(x[b : b + 1])[0]
        t = torch.linspace(0, 1, steps, device=dev).unsqueeze(1)
        rows.append(torch.sigmoid(model.decode(za + t * (zb - za))))
    image_grid(torch.cat(rows), path, nrow=steps)


@torch.no_grad()
def latent_map(model: VAE, images_u8: torch.Tensor, labels: torch.Tensor, path: Path, n: int = 5000) -> None:
    """Posterior means of up to n images in 2-D (PCA when the latent space is larger), coloured by label."""
    plt = pyplot()
    dev = next(model.parameters()).device
    x = pixels(images_u8[:n]).to(dev)
    mu = model.encode(x)[0].cpu()
    if mu.shape[1] > 2:
        centred = mu - mu.mean(0)
        _, _, v = torch.pca_lowrank(centred, q=2, center=False)
        xy, title = centred @ v[:, :2], "latent means, first two principal components"
    else:
        xy, title = (mu if mu.shape[1] == 2 else torch.cat([mu, torch.zeros_like(mu)], 1)), "latent means"
    fig, ax = plt.subplots(figsize=(6, 5))
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=labels[:n].numpy(), cmap="tab10", s=3, vmin=-0.5, vmax=9.5)
    fig.colorbar(sc, ax=ax, ticks=range(10), label="label")
    ax.set_title(title)
    save_figure(fig, path)


def save_figure(fig, path: Path) -> None:
    """Write a matplotlib figure as PNG and free it (figures pile up in pyplot's registry otherwise)."""
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    pyplot().close(fig)


def loss_curves(history: list[dict], path: Path) -> None:
    plt = pyplot()
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train loss")
    key = val_key(history[0])
    ax.plot(epochs, [h[key] for h in history], marker="o", label=key.replace("_", " "))
    if "val_recon_at_mean" in history[0]:
        ax.plot(epochs, [h["val_recon_at_mean"] for h in history], marker=".", ls="--", label="val recon at mean")
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per image")
    ax.legend()
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def write_figures(model: VAE, split, out: Path, history: list[dict] | None = None, seed: int = 0) -> dict[str, str]:
    """Write every figure that applies to this model into `out`; returns {name: path}."""
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    paths = {"reconstructions": out / "reconstructions.png", "latent_map": out / "latent_map.png"}
    reconstruction_grid(model, split.images, paths["reconstructions"])
    latent_map(model, split.images, split.labels, paths["latent_map"])
    if model.is_variational:
        paths["samples"] = out / "samples.png"
        paths["interpolation"] = out / "interpolation.png"
        sample_grid(model, paths["samples"], seed=seed)
        interpolation_grid(model, split.images, split.labels, paths["interpolation"])
    if history:
        paths["loss_curves"] = out / "loss_curves.png"
        loss_curves(history, paths["loss_curves"])
    return {k: str(v) for k, v in paths.items()}

"""Is the challenger really better than the champion? A paired comparison on the same test images.

Both models score the same images with the same noise (evaluation.per_image_neg_elbo with one seed: common
random numbers, so the sampling noise of the -ELBO estimator largely cancels in the per-image difference).
The gain of an image is the champion's -ELBO minus the challenger's, in nats (positive: the challenger is
better). Its mean over the test images gets a paired bootstrap percentile interval (Efron & Tibshirani,
"An Introduction to the Bootstrap", ch. 13): images are resampled with both of their scores. The gate
(vae/tracking/registry.py) promotes only when the whole interval lies above min_improvement.

Also here: the figures and the markdown a reviewer reads before signing off (the comparison artifact), and
the model card written into the registered version's description.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from vae.data import pixels
from vae.figures import grid, pyplot, save_figure
from vae.models import VAE


@dataclass(frozen=True)
class GainInterval:
    mean: float  # mean gain per image, nats (champion -ELBO - challenger -ELBO)
    low: float
    high: float
    confidence: float
    images: int
    resamples: int
    method: str = "paired bootstrap, percentile"

    def clears(self, threshold: float) -> bool:
        """The whole interval lies strictly above `threshold`: the gain is real, not noise."""
        return self.low > threshold

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def interval_text(iv: dict[str, Any]) -> str:
    return f"{iv['confidence']:.0%} interval [{iv['low']:.3f}, {iv['high']:.3f}] nats over {iv['images']} images"


def paired_gain(
    champion: torch.Tensor, candidate: torch.Tensor, confidence: float = 0.95, resamples: int = 4000, seed: int = 0
) -> GainInterval:
    """The mean of champion - candidate (per image, nats) and its bootstrap interval; seeded, so repeatable."""
    if champion.shape != candidate.shape or champion.dim() != 1 or champion.numel() < 2:
        shapes = f"{tuple(champion.shape)} and {tuple(candidate.shape)}"
        raise ValueError(f"expected two (N,) vectors of the same images, N >= 2; got {shapes}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence} is invalid: expected a number in (0, 1)")
    gain = champion.double().cpu() - candidate.double().cpu()
    n = gain.numel()
    gen = torch.Generator().manual_seed(seed)
    means = []
    for start in range(0, resamples, 256):  # (256, N) indices at a time: 20 MB for N = 10,000
        idx = torch.randint(n, (min(256, resamples - start), n), generator=gen)
        means.append(gain[idx].mean(1))
    alpha = (1 - confidence) / 2
    low, high = torch.quantile(torch.cat(means), torch.tensor([alpha, 1 - alpha], dtype=torch.float64)).tolist()
    return GainInterval(float(gain.mean()), low, high, confidence, n, resamples)


def _panel(rows: list[tuple[str, torch.Tensor]], path: Path, nrow: int) -> None:
    """Rows of (title, (N, 784) pixels) as one PNG, one titled grid per row."""
    plt = pyplot()
    fig, axes = plt.subplots(len(rows), 1, figsize=(nrow * 0.9, 1.3 * sum(len(r[1]) // nrow for r in rows) + 0.4))
    for ax, (title, images) in zip([axes] if len(rows) == 1 else axes, rows, strict=True):
        ax.imshow(grid(images, nrow), cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    save_figure(fig, path)


@torch.no_grad()
def comparison_figures(
    out: Path, candidate: tuple[str, VAE], champion: tuple[str, VAE] | None, images_u8: torch.Tensor, n: int = 10
) -> dict[str, str]:
    """reconstructions.png: the same test images and each model's reconstruction (z = mu); samples.png: each
    model's samples from the prior, with the same z when the latent sizes match. Pairs are (label, model)."""
    out.mkdir(parents=True, exist_ok=True)
    models = [candidate] + ([champion] if champion else [])
    x = pixels(images_u8[:n]).to(next(candidate[1].parameters()).device)
    recon = [("test images", x)] + [(label, torch.sigmoid(m(x, sample=False).recon_logits)) for label, m in models]
    samples = []
    for label, m in models:
        gen = torch.Generator(device=x.device).manual_seed(0)
        samples.append((f"{label}: samples", m.sample(2 * n, generator=gen)))
    paths = {"reconstructions": out / "reconstructions.png", "samples": out / "samples.png"}
    _panel(recon, paths["reconstructions"], nrow=n)
    _panel(samples, paths["samples"], nrow=n)
    return {k: str(v) for k, v in paths.items()}


ROWS = (
    ("test -ELBO (nats/image)", "neg_elbo"),
    ("IW-NLL (nats/image)", "iw_nll"),
    ("reconstruction", "recon"),
    ("KL", "kl"),
    ("active units", "active_units"),
    ("sample FID (classifier features; lower is better)", "sample_fid"),
    ("sample class entropy (nats)", "sample_class_entropy"),
    ("gain over the seed recipe (nats)", "gain_over_recipe"),
    ("digit classifier test accuracy", "classifier_accuracy"),
)


def _cell(v: Any) -> str:
    return "n/a" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def metrics_table(columns: list[tuple[str, dict[str, Any]]]) -> str:
    """A markdown table, one column per (label, metrics); a metric no column has is left out."""
    keys = [(title, k) for title, k in ROWS if any(m.get(k) is not None for _, m in columns)]
    head = "| metric | " + " | ".join(label for label, _ in columns) + " |\n"
    head += "|---" * (len(columns) + 1) + "|\n"
    return head + "\n".join(f"| {t} | " + " | ".join(_cell(m.get(k)) for _, m in columns) + " |" for t, k in keys)


def comparison_markdown(title: str, columns: list[tuple[str, dict[str, Any]]], decision: dict[str, Any]) -> str:
    if len(columns) == 1:
        intro = "There is no champion yet: the candidate is shown alone."
    else:
        others = " and ".join(label for label, _ in columns[1:])
        intro = f"{columns[0][0]} against {others} on the same {columns[0][1].get('images', '?')} test images."
    verdict = "promoted to champion" if decision["promote"] else "not promoted"
    if decision.get("awaiting"):
        verdict = "passes the gate; waiting for a reviewer's sign-off" if decision["promote"] else verdict
    lines = [
        f"# {title}",
        "",
        intro,
        "",
        metrics_table(columns),
        "",
        f"**Decision:** {verdict}: {decision['reason']}.",
    ]
    if decision.get("interval"):
        lines += ["", f"**Gain (champion - challenger -ELBO):** {decision['interval']['mean']:.3f} nats, "]
        lines[-1] += interval_text(decision["interval"]) + f"; min_improvement {decision['min_improvement']} nats."
    if decision.get("approval"):
        a = decision["approval"]
        lines += ["", f"**Sign-off:** {a['decision']} by {a['reviewer']}: {a.get('comment') or '(no comment)'}."]
    lines += ["", "![reconstructions](reconstructions.png)", "", "![samples](samples.png)", ""]
    return "\n".join(lines)


def write_comparison(out: Path, title: str, columns: list[tuple[str, dict[str, Any]]], decision: dict) -> None:
    """comparison.md and comparison.json in `out` (the figures are written once, by comparison_figures)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.md").write_text(comparison_markdown(title, columns, decision))
    record = {"models": dict(columns), "decision": decision}
    (out / "comparison.json").write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")


def model_card(facts: dict[str, Any]) -> str:
    """The registered version's description: what a reviewer needs to trust (or reproduce) this model."""
    d, m, t = facts["decision"], facts["metrics"], facts["trained"]
    verdict = "promoted to champion" if d["promote"] else "not promoted (stays challenger)"
    lines = [
        f"# {facts['name']} v{facts['version']}",
        "",
        f"- **Data:** `{m['dataset']}`, version (fingerprint) `{m['fingerprint']}`; {m.get('images')} test images",
        f"- **Training:** {t.get('epochs_run')} epochs run of {t['config']['train']['epochs']}; best epoch "
        f"{t.get('best_epoch') or 'last'} (registered){'; stopped early' if t.get('stopped_early') else ''}",
        f"- **Git commit:** `{facts.get('git_commit') or 'unknown (not run from a git checkout)'}`",
        f"- **MLflow run:** `{facts['run_id']}` (artifacts: comparison/, figures/, promotion.json)",
        f"- **Decision:** {verdict}: {d['reason']}",
    ]
    if d.get("approval"):
        a = d["approval"]
        lines.append(f"- **Sign-off:** {a['decision']} by {a['reviewer']} at {a['time']}: {a.get('comment') or '-'}")
    lines += ["", "## Test metrics", "", metrics_table([(f"v{facts['version']}", m)]), "", "## Config", ""]
    lines += ["```json", json.dumps(t["config"], indent=2, sort_keys=True), "```", ""]
    return "\n".join(lines)

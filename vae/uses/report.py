"""`vae report`: one HTML page with PNGs showing what a trained model does, measured on one data split.

Sections: metrics and data set fingerprint; samples, reconstructions, interpolation, latent map, loss curves;
compression (bytes per image against reconstruction error at several latent precisions); denoising (PSNR
before and after, by noise kind and level); anomaly detection (AUROC of the split's real images against
made-up anomalies: digits turned upside down, inverted, pure noise, heavily corrupted; and the share of each
flagged by a threshold at the 99th percentile of validation scores).
The page and its folder of PNGs (<name>_files) are built in a temporary folder and renamed into place.
The caller loads the model and the data; this module loads nothing.
"""

from __future__ import annotations

import html
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from vae import figures
from vae.config import Config
from vae.data import SPLITS, Dataset, pixels
from vae.errors import ConfigError
from vae.evaluation import active_units, elbo_metrics
from vae.figures import save_figure
from vae.io import save_grid
from vae.uses.anomaly import auroc, scores, threshold
from vae.uses.codes import compression
from vae.uses.denoise import corrupt, denoise

DENOISE_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5)
COMPRESSION_BITS = (32, 16, 8, 6, 4, 2)
QUANTILE = 0.99


def _anomalies(x: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Images that are not digits of the training distribution, made from the split itself."""
    g = np.random.default_rng(seed)
    img = x.reshape(-1, 28, 28)
    return {
        "upside down (rotated 180 degrees)": img[:, ::-1, ::-1].reshape(-1, 784).copy(),
        "inverted (1 - pixel)": 1 - x,
        "uniform noise": g.random(x.shape, dtype=np.float32),
        "gaussian noise, level 0.3": corrupt(x, "gaussian", 0.3, seed),
        "masking noise, level 0.5": corrupt(x, "masking", 0.5, seed),
    }


def _table(rows: list[dict[str, Any]], columns: dict[str, str]) -> str:
    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else html.escape(str(v))

    head = "".join(f"<th>{html.escape(t)}</th>" for t in columns.values())
    body = "".join("<tr>" + "".join(f"<td>{cell(r[k])}</td>" for k in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _kv(d: dict[str, Any]) -> str:
    return _table([{"k": k, "v": v} for k, v in d.items()], {"k": "", "v": ""})


def write_report(
    model, cfg: Config, state: dict, data: Dataset, out: str | Path, model_ref: str, split: str = "test", seed: int = 0
) -> dict[str, Any]:
    """Measure the model on `split` of `data` and write the page `out` with its PNGs beside it."""
    if split not in SPLITS:
        raise ConfigError(f"split={split!r} is invalid: expected train, val or test")
    out = Path(out)
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.stem}.", dir=out.parent))
    files = tmp / f"{out.stem}_files"
    files.mkdir()
    try:
        measured = _measure(model, cfg, state, data, split, files, seed)
        info = {
            "model": model_ref,
            "kind": cfg.model.kind,
            "latent": cfg.model.latent,
            "hidden": ",".join(map(str, cfg.model.hidden)),
            "epochs trained": state.get("epoch"),
            "data set": data.name,
            "split": f"{split} ({len(getattr(data, split).labels)} images)",
            "fingerprint": data.fingerprint,
            "trained on fingerprint": state.get("fingerprint"),
            "train config": ", ".join(
                f"{k}={v}" for k, v in cfg.to_dict()["train"].items() if k not in ("device", "progress")
            ),
        }
        page = _page(info, measured, files.name, model.is_variational, bool(state.get("history")))
        (tmp / out.name).write_text(page)
        final_files = out.parent / files.name
        if final_files.exists():
            shutil.rmtree(final_files)
        os.replace(files, final_files)
        os.replace(tmp / out.name, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "out": str(out),
        "files": str(out.parent / files.name),
        "dataset": data.name,
        "fingerprint": data.fingerprint,
        **measured,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _measure(model, cfg: Config, state: dict, data: Dataset, split: str, files: Path, seed: int) -> dict[str, Any]:
    """Every number and figure of the page: metrics, compression, denoising, anomalies."""
    part = getattr(data, split)
    x = pixels(part.images.numpy())
    metrics = elbo_metrics(model, part.images, cfg, seed=seed)
    if model.is_variational:
        metrics["active_units"] = active_units(model, part.images)
    figures.reconstruction_grid(model, part.images, files / "reconstructions.png", n=16)
    figures.latent_map(model, part.images, part.labels, files / "latent_map.png")
    if model.is_variational:
        figures.sample_grid(model, files / "samples.png", n=64, seed=seed)
        figures.interpolation_grid(model, part.images, part.labels, files / "interpolation.png")
    if state.get("history"):
        figures.loss_curves(state["history"], files / "loss_curves.png")
    comp = compression(model, x, COMPRESSION_BITS)
    _plot_compression(comp, files / "compression.png")
    den = _denoising(model, x, files, seed)
    thr = threshold(scores(model, pixels(data.val.images.numpy()), seed=seed), QUANTILE)
    return {
        "metrics": metrics,
        "compression": comp,
        "denoising": den,
        "anomaly_threshold": thr,
        "anomaly": _anomaly_rows(model, x, thr, files, seed),
    }


def _denoising(model, x: np.ndarray, files: Path, seed: int) -> list[dict[str, Any]]:
    rows = []
    for noise in ("gaussian", "masking"):
        for level in DENOISE_LEVELS:
            r = denoise(model, x, noise, level, seed)
            rows.append(
                {
                    "noise": noise,
                    "level": level,
                    "psnr_noisy_db": float(r["psnr_noisy"].mean()),
                    "psnr_denoised_db": float(r["psnr_denoised"].mean()),
                }
            )
    _plot_denoising(rows, files / "denoising.png")
    examples = [x[:8]]
    for noise, level in (("gaussian", 0.3), ("masking", 0.5)):
        r = denoise(model, x[:8], noise, level, seed)
        examples += [r["noisy"], r["denoised"]]
    save_grid(np.concatenate(examples), files / "denoising_examples.png", nrow=8)
    return rows


def _anomaly_rows(model, x: np.ndarray, thr: float, files: Path, seed: int) -> list[dict[str, Any]]:
    normal = scores(model, x, seed=seed)
    rows, hist = [], {"real digits": normal}
    for name, xa in _anomalies(x, seed).items():
        s = scores(model, xa, seed=seed)
        hist[name] = s
        is_anomaly = np.r_[np.zeros(len(normal), bool), np.ones(len(s), bool)]
        rows.append({"anomaly": name, "auroc": auroc(np.r_[normal, s], is_anomaly), "flagged": float((s > thr).mean())})
    rows.append({"anomaly": "none: the real digits", "auroc": "", "flagged": float((normal > thr).mean())})
    _plot_scores(hist, thr, files / "anomaly_scores.png")
    return rows


def _plot_compression(rows, path: Path) -> None:
    plt = figures.pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    b = [r["latent_bytes"] for r in rows]
    ax.plot(b, [r["psnr_db"] for r in rows], marker="o")
    for r in rows:
        ax.annotate(f"{r['bits']} bit", (r["latent_bytes"], r["psnr_db"]), textcoords="offset points", xytext=(4, -10))
    ax.set_xscale("log")
    ax.set_xlabel("bytes per image (latent code); the uint8 image is 784")
    ax.set_ylabel("reconstruction PSNR (dB)")
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def _plot_denoising(rows, path: Path) -> None:
    plt = figures.pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for noise, color in (("gaussian", "C0"), ("masking", "C1")):
        rs = [r for r in rows if r["noise"] == noise]
        lv = [r["level"] for r in rs]
        ax.plot(lv, [r["psnr_noisy_db"] for r in rs], ls="--", marker="o", color=color, label=f"{noise}: noisy")
        ax.plot(lv, [r["psnr_denoised_db"] for r in rs], marker="o", color=color, label=f"{noise}: denoised")
    ax.set_xlabel("noise level (gaussian std / masked fraction)")
    ax.set_ylabel("PSNR against the clean image (dB)")
    ax.legend()
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def _plot_scores(hist: dict[str, np.ndarray], thr: float, path: Path) -> None:
    plt = figures.pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    values = np.concatenate(list(hist.values()))
    # log scale: the made-up anomalies score up to tens of times higher than real digits
    bins = np.geomspace(max(values.min(), 1e-3), values.max(), 80)
    for name, s in hist.items():
        ax.hist(np.maximum(s, bins[0]), bins=bins, alpha=0.5, label=name)
    ax.set_xscale("log")
    ax.axvline(thr, color="k", ls="--", label=f"threshold (val {QUANTILE:.0%} quantile)")
    ax.set_xlabel("anomaly score (nats per image, log scale)")
    ax.set_ylabel("images")
    ax.legend(fontsize=8)
    save_figure(fig, path)


CSS = """body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
td:first-child{text-align:left}img{max-width:100%;image-rendering:pixelated}h2{border-bottom:1px solid #ddd}
figure{display:inline-block;margin:0 1em 1em 0;vertical-align:top}figcaption{font-size:.9em;color:#555}
code{background:#f4f4f4;padding:0 3px}"""


def _page(info: dict[str, Any], measured: dict[str, Any], files: str, vae: bool, curves: bool) -> str:
    def fig(name: str, caption: str, width: int | None = None) -> str:
        return _figure(files, name, caption, width)

    m = {k: round(v, 3) if isinstance(v, float) else v for k, v in measured["metrics"].items()}
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>VAE report: {html.escape(info['model'])}"
        f"</title><style>{CSS}</style></head><body>",
        f"<h1>What this model does</h1>{_kv(info)}",
        "<h2>Metrics (nats per image)</h2>",
        _kv(m),
    ]
    if curves:
        parts.append(fig("loss_curves.png", "training and validation loss by epoch"))
    parts.append("<h2>Generation and reconstruction</h2>")
    if vae:
        parts.append(fig("samples.png", "64 samples from the prior N(0, I)", 280))
    parts.append(fig("reconstructions.png", "originals (top) and reconstructions decoded from z = mu", 500))
    if vae:
        parts.append(fig("interpolation.png", "walks in latent space between posterior means of two digits", 320))
    parts.append(fig("latent_map.png", "latent means of the split, coloured by label", 480))
    parts += _uses_sections(measured, files, vae)
    return "\n".join(parts)


def _figure(files: str, name: str, caption: str, width: int | None = None) -> str:
    w = f' width="{width}"' if width else ""
    return (
        f'<figure><img src="{html.escape(files)}/{name}"{w} alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _uses_sections(measured: dict[str, Any], files: str, vae: bool) -> list[str]:
    """Compression, denoising and anomaly detection, with their tables and figures."""

    def fig(name: str, caption: str, width: int | None = None) -> str:
        return _figure(files, name, caption, width)

    comp, den, anomaly_rows, thr = (measured[k] for k in ("compression", "denoising", "anomaly", "anomaly_threshold"))
    parts: list[str] = []
    parts += [
        "<h2>Compression</h2><p>An image takes 784 bytes as uint8; its latent code takes latent x bits / 8. "
        "Fewer bits cost reconstruction quality (bits below 16: uniform levels between each dimension's "
        "min and max).</p>",
        _table(
            comp,
            {
                "bits": "bits per number",
                "latent_bytes": "bytes per image",
                "ratio": "ratio",
                "psnr_db": "PSNR (dB)",
                "mse": "MSE per pixel",
                "bce_nats": "cross-entropy (nats)",
            },
        ),
        fig("compression.png", "reconstruction PSNR against bytes per image"),
    ]
    parts += [
        "<h2>Denoising</h2><p>Clean images are corrupted, passed through the model, and compared with the "
        "clean image (PSNR, peak 1, mean over images).</p>",
        _table(
            den,
            {
                "noise": "noise",
                "level": "level",
                "psnr_noisy_db": "PSNR noisy (dB)",
                "psnr_denoised_db": "PSNR denoised (dB)",
            },
        ),
        fig("denoising.png", "PSNR by noise level"),
        fig("denoising_examples.png", "rows: clean; gaussian 0.3 noisy, denoised; masking 0.5 noisy, denoised", 280),
    ]
    parts += [
        f"<h2>Anomaly detection</h2><p>Score: {'-ELBO' if vae else 'reconstruction cross-entropy'} per image. "
        f"AUROC of the split's real images against each kind of made-up anomaly; 'flagged' is the share "
        f"above the threshold {thr:.1f} nats (the {QUANTILE:.0%} quantile of validation scores). Held-out "
        "digit classes: see <code>benchmarks/anomaly_one_class.py</code>.</p>",
        _table(anomaly_rows, {"anomaly": "images", "auroc": "AUROC", "flagged": "flagged"}),
        fig("anomaly_scores.png", "score distributions"),
        "</body></html>\n",
    ]
    return parts

"""`vae reconstruct | encode | decode | denoise | augment | anomaly`: thin wrappers over vae.uses.

Each command checks its arguments and output path first, then loads, computes, and writes its outputs
through a temporary file: bad input exits 2 with one line and leaves nothing behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vae import uses
from vae.cli.common import load_model_ref, shows
from vae.config import DataConfig
from vae.data import load
from vae.errors import ConfigError
from vae.io import (
    atomic_write,
    check_out,
    is_dataset,
    read_dataset,
    read_images,
    read_latents,
    save_grid,
    save_images,
    save_table,
)

# ---------------------------------------------------------------- helpers

IMAGE_OUT = ".png (image grid) or .npy (array)"


def _load(a):
    return load_model_ref(a.model, a.tracking_uri, a.device)


def _check_limit(a) -> None:
    if a.limit is not None and a.limit < 1:
        raise ConfigError(f"limit={a.limit} is invalid: expected an integer >= 1")


def _inputs(a, cfg, source: str | None = None, dataset: str | None = None):
    """(x (N, 784), labels or None, a name for the result) from --input FILE or a data set split."""
    if source is not None:
        x, labels = read_images(source)
        name = str(source)
    else:
        ds = dataset or cfg.data.dataset
        x, labels, data = read_dataset(
            ds, a.split, a.data_dir or cfg.data.data_dir, a.mirror or cfg.data.mirror, cfg.data.split_seed
        )
        name = f"{data.name}:{a.split}"
    if a.limit is not None:
        x, labels = x[: a.limit], (labels[: a.limit] if labels is not None else None)
    return x, labels, name


def _rows(groups: list, nrow: int = 8):
    """Interleave equal-length (N, 784) arrays by rows of nrow: a row of group 1, the same images in group 2,
    ...; the last rows are padded with white tiles so that every group keeps its own row."""
    n = len(groups[0])
    pad = (-n) % nrow
    groups = [np.concatenate([g, np.ones((pad, 784), np.float32)]) for g in groups]
    return np.concatenate([g[s : s + nrow] for s in range(0, n + pad, nrow) for g in groups])


def _table(rows: list[dict], columns: dict[str, str]) -> str:
    lines = ["  ".join(f"{t:>12}" for t in columns.values())]
    for r in rows:
        lines.append("  ".join(f"{r[k]:>12.4g}" if isinstance(r[k], float) else f"{r[k]!s:>12}" for k in columns))
    return "\n".join(lines)


def _mean(v) -> float:
    return round(float(v.mean()), 4)


# ---------------------------------------------------------------- commands


def cmd_reconstruct(a) -> dict[str, Any]:
    out = check_out(a.out, (".png", ".npy"), IMAGE_OUT)
    _check_limit(a)
    model, cfg, _ = _load(a)
    x, _, name = _inputs(a, cfg, a.input, a.dataset)
    recon = uses.reconstruct(model, x)
    if out.suffix == ".npy":
        save_images(recon, out)
    else:
        save_grid(_rows([x[:32], recon[:32]]), out)
    return {"out": str(out), "input": name, "images": len(x), "psnr_db": _mean(uses.psnr(x, recon))}


def _encode_text(r: dict[str, Any]) -> str:
    return (
        f"wrote {r['images']} latent codes of {r['latent']} floats from {r['input']} to {r['out']}\n"
        "compression (bytes per image: 784 as uint8 pixels) and the reconstruction error it costs:\n"
        + _table(
            r["compression"],
            {
                "bits": "bits/number",
                "latent_bytes": "bytes/image",
                "ratio": "ratio",
                "psnr_db": "PSNR dB",
                "bce_nats": "BCE nats",
            },
        )
    )


@shows(_encode_text)
def cmd_encode(a) -> dict[str, Any]:
    out = check_out(a.out, (".npy", ".csv"), ".npy or .csv")
    _check_limit(a)
    model, cfg, _ = _load(a)
    x, labels, name = _inputs(a, cfg, a.input, a.dataset)
    z = uses.encode(model, x)
    if out.suffix == ".npy":
        atomic_write(out, lambda p: np.save(p, z))
    else:
        save_table(out, {"z": z, **({"label": labels} if labels is not None else {})})
    return {
        "out": str(out),
        "input": name,
        "images": len(x),
        "latent": int(z.shape[1]),
        "compression": uses.compression(model, x),
    }


def cmd_decode(a) -> dict[str, Any]:
    out = check_out(a.out, (".png", ".npy"), IMAGE_OUT)
    model, cfg, _ = _load(a)
    z = read_latents(a.latents, cfg.model.latent)
    save_images(uses.decode(model, z), out)
    return {"out": str(out), "images": len(z)}


def cmd_denoise(a) -> dict[str, Any]:
    if a.noise not in (*uses.NOISES, "none"):
        raise ConfigError(f"noise={a.noise!r} is invalid: expected one of {', '.join(uses.NOISES)} or none")
    if not 0 <= a.noise_level <= 1:
        raise ConfigError(f"noise-level={a.noise_level} is invalid: expected a number in [0, 1]")
    out = check_out(a.out, (".png", ".npy"), IMAGE_OUT) if a.out else None
    _check_limit(a)
    model, cfg, _ = _load(a)
    x, _, name = _inputs(a, cfg, a.input, a.dataset)
    result: dict[str, Any] = {"out": str(out) if out else None, "input": name, "images": len(x), "noise": a.noise}
    if a.noise == "none":
        denoised, groups = uses.reconstruct(model, x), [x]
    else:
        r = uses.denoise(model, x, a.noise, a.noise_level, a.seed)
        denoised, groups = r["denoised"], [x, r["noisy"]]
        result.update(
            noise_level=a.noise_level, psnr_noisy_db=_mean(r["psnr_noisy"]), psnr_denoised_db=_mean(r["psnr_denoised"])
        )
        result["psnr_gain_db"] = round(result["psnr_denoised_db"] - result["psnr_noisy_db"], 4)
    if out is not None and out.suffix == ".npy":
        save_images(denoised, out)
    elif out is not None:
        save_grid(_rows([g[:24] for g in groups] + [denoised[:24]]), out)
    return result


def cmd_augment(a) -> dict[str, Any]:
    out = Path(a.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} is invalid: it exists and is not an empty folder")
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out} is invalid: folder {out.parent} does not exist")
    if not 1 <= a.per_class <= 100_000:
        raise ConfigError(f"per-class={a.per_class} is invalid: expected an integer from 1 to 100000")
    if not 0 <= a.spread <= 10:
        raise ConfigError(f"spread={a.spread} is invalid: expected a number in [0, 10]")
    model, cfg, _ = _load(a)
    data = load(
        DataConfig(
            a.dataset or cfg.data.dataset,
            a.data_dir or cfg.data.data_dir,
            a.mirror or cfg.data.mirror,
            cfg.data.split_seed,
        ),
        download=True,
    )
    images, labels = uses.augment(
        model, data.train.images.numpy(), data.train.labels.numpy(), a.per_class, a.spread, a.seed
    )
    if a.with_real:
        images = np.concatenate([data.train.images.numpy(), images])
        labels = np.concatenate([data.train.labels.numpy(), labels])
    meta = {
        "model": str(a.model),
        "per_class": a.per_class,
        "spread": a.spread,
        "seed": a.seed,
        "with_real": a.with_real,
    }
    return uses.write_augmented(out, images, labels, data, meta)


def cmd_anomaly(a) -> dict[str, Any]:
    out = check_out(a.out, (".csv",), "a .csv file name") if a.out else None
    _check_limit(a)
    if a.kind not in uses.SCORE_KINDS:
        raise ConfigError(f"kind={a.kind!r} is invalid: expected one of {', '.join(uses.SCORE_KINDS)}")
    uses.threshold([0.0], a.quantile)  # validates the quantile before any work
    normal = uses.parse_classes(a.normal_classes) if a.normal_classes else None
    model, cfg, _ = _load(a)
    fit_x, fit_y, _ = read_dataset(
        a.fit_on or cfg.data.dataset,
        "val",
        a.data_dir or cfg.data.data_dir,
        a.mirror or cfg.data.mirror,
        cfg.data.split_seed,
    )
    thr, normal = uses.fit_threshold(model, fit_x, fit_y, normal, a.quantile, a.kind, a.seed)
    if a.score is not None and is_dataset(a.score):
        x, labels, name = _inputs(a, cfg, dataset=a.score)
    else:
        x, labels, name = _inputs(a, cfg, source=a.score)
    s = uses.scores(model, x, a.kind, seed=a.seed)
    flagged = s > thr
    result: dict[str, Any] = {
        "scored": name,
        "images": len(x),
        "kind": a.kind,
        "normal_classes": list(normal),
        "quantile": a.quantile,
        "threshold": round(thr, 4),
        "flagged": int(flagged.sum()),
        "flagged_fraction": round(float(flagged.mean()), 4),
        "out": str(out) if out else None,
    }
    if labels is not None:
        result.update(_detection(s, labels, normal, flagged))
    if out is not None:
        cols = {"index": np.arange(len(x)), "score": s, "flagged": flagged.astype(int)}
        save_table(out, {**cols, **({"label": labels} if labels is not None else {})})
    return result


def _detection(s: np.ndarray, labels: np.ndarray, normal: tuple[int, ...], flagged: np.ndarray) -> dict[str, Any]:
    """AUROC overall and per held-out class, detection and false-alarm rates, where labels tell both kinds."""
    anomalous = ~np.isin(labels, normal)
    if not anomalous.any() or anomalous.all():
        return {}
    per_class = uses.per_class_auroc(s, labels, normal)
    return {
        "auroc": round(uses.auroc(s, anomalous), 4),
        "auroc_per_class": {str(c): round(v, 4) for c, v in per_class.items()},
        "detected_fraction": round(float(flagged[anomalous].mean()), 4),
        "false_alarm_fraction": round(float(flagged[~anomalous].mean()), 4),
    }

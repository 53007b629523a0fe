"""`vae reconstruct | encode | decode | denoise | augment | anomaly | report`: thin wrappers over vae.apps.

MODEL is a run folder, a checkpoint.pt, or an MLflow model URI (models:/NAME@ALIAS, models:/NAME/VERSION,
runs:/RUN_ID/model; the store is --tracking-uri, else $MLFLOW_TRACKING_URI, else ./mlruns/mlflow.db).
Each command checks its arguments and output path first, then loads, computes, and writes its outputs
through a temporary file: bad input exits 2 with one line and leaves nothing behind.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vae.errors import ConfigError

INPUT_HELP = ("a 28x28 PNG, a folder of PNGs, a .npy array ((N, 28, 28) or (N, 784); uint8 0-255 or floats "
              "in [0, 1]) or an idx images file")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="run folder, checkpoint.pt, or MLflow model URI such as models:/vae-mnist-5k@champion")
    p.add_argument("--tracking-uri", help="MLflow store for model URIs (default $MLFLOW_TRACKING_URI, else "
                                          "sqlite:///./mlruns/mlflow.db)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object on stdout")


def _input_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--input", help=INPUT_HELP)
    g.add_argument("--dataset", help="a data set instead of files (default: the model's own): mnist-5k, "
                                     "mnist, fashion-mnist or idx:PATH")
    _split_args(p)


def _split_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split", default="test", help="train, val or test (with a data set)")
    p.add_argument("--data-dir", help="download cache (default $VAE_DATA_DIR or ~/.cache/vae)")
    p.add_argument("--mirror", help="base URL holding the official gz files")
    p.add_argument("--limit", type=int, help="use only the first N images")


def add_commands(sub) -> dict:
    p = sub.add_parser("reconstruct", help="images through the model and back (originals above reconstructions)")
    _model_args(p)
    _input_args(p)
    p.add_argument("--out", required=True, help="grid.png (originals above reconstructions, first 32 images) "
                                                "or recon.npy (all, (N, 28, 28) floats)")

    p = sub.add_parser("encode", help="latent means of images (compression, dimensionality reduction)")
    _model_args(p)
    _input_args(p)
    p.add_argument("--out", required=True, help="latents.npy ((N, latent) float32) or latents.csv "
                                                "(z0..z{latent-1}, and label when known)")

    p = sub.add_parser("decode", help="images from latent codes written by `vae encode`")
    _model_args(p)
    p.add_argument("--latents", required=True, help="a .npy or .csv of shape (N, latent)")
    p.add_argument("--out", required=True, help="grid.png or images.npy ((N, 28, 28) floats)")

    p = sub.add_parser("denoise", help="clean noisy images; PSNR before and after when it adds the noise itself")
    _model_args(p)
    _input_args(p)
    p.add_argument("--noise", default="gaussian",
                   help="gaussian, masking or salt-pepper: corrupt the clean inputs, denoise, and measure PSNR; "
                        "none: the inputs are already noisy, just clean them")
    p.add_argument("--level", type=float, default=0.3, help="noise std (gaussian) or fraction of pixels hit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="grid.png (clean / noisy / denoised rows, first 24 images) or denoised.npy")

    p = sub.add_parser("augment", help="new labelled images per class, written as an idx data set")
    _model_args(p)
    p.add_argument("--dataset", help="labelled data set whose training split is augmented (default: the model's)")
    p.add_argument("--data-dir")
    p.add_argument("--mirror")
    p.add_argument("--per-class", type=int, required=True, help="new images per class")
    p.add_argument("--spread", type=float, default=1.0, help="z = mu + spread * sigma * eps around each image")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--with-real", action="store_true", help="also include the real training images")
    p.add_argument("--out", required=True, help="new folder: train-* hold the new images, t10k-* the real test split")

    p = sub.add_parser("anomaly", help="anomaly scores, a threshold from validation data, AUROC given labels")
    _model_args(p)
    p.add_argument("--score", help="what to score: " + INPUT_HELP + "; or a data set name (mnist-5k, mnist, "
                                   "fashion-mnist, idx:PATH) with --split. Default: the model's data set")
    _split_args(p)
    p.add_argument("--fit-on", help="data set whose validation split sets the threshold (default: the model's)")
    p.add_argument("--normal-classes", help="digits counted as normal, e.g. 1 or 3,5 (default: the classes in "
                                            "--fit-on's validation split)")
    p.add_argument("--quantile", type=float, default=0.99, help="threshold = this quantile of normal val scores")
    p.add_argument("--kind", default="auto", help="auto (neg-elbo for a VAE, recon for an AE), neg-elbo or recon")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="scores.csv: index, score, flagged (and label when known)")

    p = sub.add_parser("report", help="one HTML page: samples, reconstructions, compression, denoising, anomalies")
    _model_args(p)
    p.add_argument("--dataset", help="data set to report on (default: the model's)")
    p.add_argument("--split", default="test")
    p.add_argument("--data-dir")
    p.add_argument("--mirror")
    p.add_argument("--out", required=True, help="report.html; its PNGs go to a folder beside it (<name>_files)")
    p.add_argument("--run-id", help="MLflow run to attach the report to (default: the run a model URI was logged in)")
    p.add_argument("--no-log", action="store_true", help="do not attach the report to an MLflow run")
    p.add_argument("--seed", type=int, default=0)
    return {"reconstruct": cmd_reconstruct, "encode": cmd_encode, "decode": cmd_decode, "denoise": cmd_denoise,
            "augment": cmd_augment, "anomaly": cmd_anomaly, "report": cmd_report}


# ---------------------------------------------------------------- helpers

IMAGE_OUT = ".png (image grid) or .npy (array)"


def _load(a):
    from vae import apps
    return apps.load(a.model, a.tracking_uri, a.device)


def _check_limit(a) -> None:
    if a.limit is not None and a.limit < 1:
        raise ConfigError(f"limit={a.limit} is invalid: expected an integer >= 1")


def _inputs(a, cfg, source: str | None = None, dataset: str | None = None):
    """(x (N, 784), labels or None, a name for the result) from --input FILE or a data set split."""
    from vae import io
    if source is not None:
        x, labels = io.read_images(source)
        name = str(source)
    else:
        ds = dataset or cfg.data.dataset
        x, labels, data = io.read_dataset(ds, a.split, a.data_dir or cfg.data.data_dir,
                                          a.mirror or cfg.data.mirror, cfg.data.split_seed)
        name = f"{data.name}:{a.split}"
    if a.limit is not None:
        x, labels = x[:a.limit], (labels[:a.limit] if labels is not None else None)
    return x, labels, name


def _rows(groups: list, nrow: int = 8):
    """Interleave equal-length (N, 784) arrays by rows of nrow: a row of group 1, the same images in group 2,
    ...; the last rows are padded with white tiles so that every group keeps its own row."""
    import numpy as np
    n = len(groups[0])
    pad = (-n) % nrow
    groups = [np.concatenate([g, np.ones((pad, 784), np.float32)]) for g in groups]
    return np.concatenate([g[s:s + nrow] for s in range(0, n + pad, nrow) for g in groups])


def _print_table(rows: list[dict], columns: dict[str, str]) -> None:
    print("  ".join(f"{t:>12}" for t in columns.values()))
    for r in rows:
        print("  ".join(f"{r[k]:>12.4g}" if isinstance(r[k], float) else f"{r[k]!s:>12}" for k in columns))


def _mean(v) -> float:
    return round(float(v.mean()), 4)


# ---------------------------------------------------------------- commands

def cmd_reconstruct(a) -> dict[str, Any]:
    from vae import apps, io
    out = io.check_out(a.out, (".png", ".npy"), IMAGE_OUT)
    _check_limit(a)
    model, cfg, _ = _load(a)
    x, _, name = _inputs(a, cfg, a.input, a.dataset)
    recon = apps.reconstruct(model, x)
    if out.suffix == ".npy":
        io.save_images(recon, out)
    else:
        io.save_grid(_rows([x[:32], recon[:32]]), out)
    return {"out": str(out), "input": name, "images": len(x), "psnr_db": _mean(apps.psnr(x, recon))}


def cmd_encode(a) -> dict[str, Any]:
    from vae import apps, io
    out = io.check_out(a.out, (".npy", ".csv"), ".npy or .csv")
    _check_limit(a)
    model, cfg, _ = _load(a)
    x, labels, name = _inputs(a, cfg, a.input, a.dataset)
    z = apps.encode(model, x)
    if out.suffix == ".npy":
        import numpy as np
        io.atomic_write(out, lambda p: np.save(p, z))
    else:
        io.save_table(out, {"z": z, **({"label": labels} if labels is not None else {})})
    result = {"out": str(out), "input": name, "images": len(x), "latent": int(z.shape[1]),
              "compression": apps.compression(model, x)}
    if not a.json:
        a.printed = True
        print(f"wrote {len(x)} latent codes of {z.shape[1]} floats from {name} to {out}")
        print("compression (bytes per image: 784 as uint8 pixels) and the reconstruction error it costs:")
        _print_table(result["compression"], {"bits": "bits/number", "latent_bytes": "bytes/image", "ratio": "ratio",
                                             "psnr_db": "PSNR dB", "bce_nats": "BCE nats"})
    return result


def cmd_decode(a) -> dict[str, Any]:
    from vae import apps, io
    out = io.check_out(a.out, (".png", ".npy"), IMAGE_OUT)
    model, cfg, _ = _load(a)
    z = io.read_latents(a.latents, cfg.model.latent)
    io.save_images(apps.decode(model, z), out)
    return {"out": str(out), "images": len(z)}


def cmd_denoise(a) -> dict[str, Any]:
    from vae import apps, io
    if a.noise not in (*apps.NOISES, "none"):
        raise ConfigError(f"noise={a.noise!r} is invalid: expected one of {', '.join(apps.NOISES)} or none")
    if not 0 <= a.level <= 1:
        raise ConfigError(f"level={a.level} is invalid: expected a number in [0, 1]")
    out = io.check_out(a.out, (".png", ".npy"), IMAGE_OUT) if a.out else None
    _check_limit(a)
    model, cfg, _ = _load(a)
    x, _, name = _inputs(a, cfg, a.input, a.dataset)
    result: dict[str, Any] = {"out": str(out) if out else None, "input": name, "images": len(x), "noise": a.noise}
    if a.noise == "none":
        denoised, groups = apps.reconstruct(model, x), [x]
    else:
        r = apps.denoise(model, x, a.noise, a.level, a.seed)
        denoised, groups = r["denoised"], [x, r["noisy"]]
        result.update(level=a.level, psnr_noisy_db=_mean(r["psnr_noisy"]), psnr_denoised_db=_mean(r["psnr_denoised"]))
        result["psnr_gain_db"] = round(result["psnr_denoised_db"] - result["psnr_noisy_db"], 4)
    if out is not None and out.suffix == ".npy":
        io.save_images(denoised, out)
    elif out is not None:
        io.save_grid(_rows([g[:24] for g in groups] + [denoised[:24]]), out)
    return result


def cmd_augment(a) -> dict[str, Any]:
    import json
    import os
    import shutil
    import tempfile

    import numpy as np
    import torch

    from vae import apps, io
    from vae.config import DataConfig
    from vae.data import load, write_idx
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
    data = load(DataConfig(a.dataset or cfg.data.dataset, a.data_dir or cfg.data.data_dir,
                           a.mirror or cfg.data.mirror, cfg.data.split_seed), download=True)
    images, labels = apps.augment(model, data.train.images.numpy(), data.train.labels.numpy(), a.per_class,
                                  a.spread, a.seed)
    if a.with_real:
        images = np.concatenate([data.train.images.numpy(), images])
        labels = np.concatenate([data.train.labels.numpy(), labels])
    # the idx source needs train and t10k files: train holds the new set, t10k the untouched real test split
    # (so a model trained on the augmented set is still tested on real digits)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write_idx(tmp / "train-images-idx3-ubyte.gz", torch.from_numpy(images))
        write_idx(tmp / "train-labels-idx1-ubyte.gz", torch.from_numpy(labels))
        write_idx(tmp / "t10k-images-idx3-ubyte.gz", data.test.images)
        write_idx(tmp / "t10k-labels-idx1-ubyte.gz", data.test.labels)
        meta = {"model": str(a.model), "source": data.name, "source_fingerprint": data.fingerprint,
                "per_class": a.per_class, "spread": a.spread, "seed": a.seed, "with_real": a.with_real,
                "train_images": len(labels), "test_images": len(data.test.labels)}
        (tmp / "augment.json").write_text(json.dumps(meta, indent=2) + "\n")
        for f in tmp.iterdir():
            io.default_mode(f)
        io.default_mode(tmp, folder=True)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"out": str(out), "dataset": f"idx:{out}", **meta,
            "per_class_counts": np.bincount(labels, minlength=10).tolist()}


def cmd_anomaly(a) -> dict[str, Any]:
    from vae import apps, io
    out = io.check_out(a.out, (".csv",), "a .csv file name") if a.out else None
    _check_limit(a)
    if a.kind not in apps.SCORE_KINDS:
        raise ConfigError(f"kind={a.kind!r} is invalid: expected one of {', '.join(apps.SCORE_KINDS)}")
    apps.threshold([0.0], a.quantile)  # validates the quantile before any work
    normal = apps.parse_classes(a.normal_classes) if a.normal_classes else None
    model, cfg, _ = _load(a)
    import numpy as np
    fit_x, fit_y, _ = io.read_dataset(a.fit_on or cfg.data.dataset, "val", a.data_dir or cfg.data.data_dir,
                                      a.mirror or cfg.data.mirror, cfg.data.split_seed)
    if normal is None:
        normal = tuple(int(c) for c in np.unique(fit_y))
    fit_x = fit_x[np.isin(fit_y, normal)]
    if len(fit_x) == 0:
        raise ConfigError(f"normal-classes={a.normal_classes} is invalid: no validation images of those classes")
    source = a.score
    if source is not None and io.is_dataset(source):
        x, labels, name = _inputs(a, cfg, dataset=source)
    else:
        x, labels, name = _inputs(a, cfg, source=source)
    thr = apps.threshold(apps.scores(model, fit_x, a.kind, seed=a.seed), a.quantile)
    s = apps.scores(model, x, a.kind, seed=a.seed)
    flagged = s > thr
    result: dict[str, Any] = {"scored": name, "images": len(x), "kind": a.kind, "normal_classes": list(normal),
                              "quantile": a.quantile, "threshold": round(thr, 4), "flagged": int(flagged.sum()),
                              "flagged_fraction": round(float(flagged.mean()), 4), "out": str(out) if out else None}
    if labels is not None:
        anomalous = ~np.isin(labels, normal)
        if anomalous.any() and not anomalous.all():
            result["auroc"] = round(apps.auroc(s, anomalous), 4)
            per_class = apps.per_class_auroc(s, labels, normal)
            result["auroc_per_class"] = {str(c): round(v, 4) for c, v in per_class.items()}
            result["detected_fraction"] = round(float(flagged[anomalous].mean()), 4)
            result["false_alarm_fraction"] = round(float(flagged[~anomalous].mean()), 4)
    if out is not None:
        cols = {"index": np.arange(len(x)), "score": s, "flagged": flagged.astype(int)}
        io.save_table(out, {**cols, **({"label": labels} if labels is not None else {})})
    return result


def cmd_report(a) -> dict[str, Any]:
    from vae.report import write_report
    out = Path(a.out)
    if out.suffix not in (".html", ".htm"):
        raise ConfigError(f"--out {out} is invalid: expected an .html file name")
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out} is invalid: folder {out.parent} does not exist")
    model, cfg, state = _load(a)
    source = state.get("source") or {}
    run_id = None if a.no_log else (a.run_id or source.get("run_id"))
    store = a.tracking_uri or source.get("tracking_uri")
    if run_id:
        from vae.serving import check_run
        check_run(run_id, store)
    result = write_report(model, cfg, state, out, model_ref=str(a.model), dataset=a.dataset, split=a.split,
                          data_dir=a.data_dir, mirror=a.mirror, seed=a.seed)
    result["logged_to"] = None
    if run_id:
        from vae.serving import log_files
        result["logged_to"] = log_files(run_id, [out], [Path(result["files"])], "report", store)
    if not a.json:
        a.printed = True
        m = result["metrics"]
        print(f"report: {out} (figures in {result['files']}), {result['seconds']} s")
        print(f"data: {result['dataset']} {a.split}, fingerprint {result['fingerprint'][:16]}; "
              + ", ".join(f"{k} {v:.2f}" for k, v in m.items() if isinstance(v, float)))
        print("logged to MLflow: " + (result["logged_to"] or "no (pass --run-id, or a models:/ URI)"))
    return result

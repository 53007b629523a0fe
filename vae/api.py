"""The plain-function API: `vae.train` and `vae.evaluate` (re-exported lazily by vae/__init__.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vae.checkpoint import load_model
from vae.config import Config
from vae.data import load
from vae.distributed import pick_device
from vae.evaluation import evaluate_model, write_json
from vae.quality import sample_quality
from vae.training import Callback, FitResult, fit


def train(
    cfg: Config, out: str | Path | None = None, resume: bool = False, callbacks: Sequence[Callback] = ()
) -> FitResult:
    """Train on one process, or as one rank under torchrun; checkpoints go to out/checkpoint.pt."""
    return fit(cfg, out=out, resume=resume, callbacks=callbacks)


def record(cfg: Config, out: str | Path, result: FitResult) -> dict[str, Any]:
    """A finished fit() in one summary (what `vae train --json` prints), also written with the whole history to
    OUT/history.json when a checkpoint was written (rank 0): a tuning trial's folder holds the same file."""
    summary = {
        "out": str(out),
        "checkpoint": str(result.checkpoint) if result.checkpoint else None,
        "best_checkpoint": str(result.best_checkpoint) if result.best_checkpoint else None,
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "fingerprint": result.fingerprint,
        "epochs_run": result.epochs_run,
        "seconds": round(result.seconds, 3),
        "metrics": result.metrics,
        "config": cfg.to_dict(),
    }
    if result.checkpoint is not None:
        write_json({**summary, "history": result.history}, Path(out) / "history.json")
    return summary


def evaluate(
    checkpoint: str | Path,
    dataset: str | None = None,
    split: str = "test",
    iw_samples: int = 0,
    figures_dir: str | Path | None = None,
    data_dir: str | None = None,
    mirror: str | None = None,
    device: str = "auto",
    quality: bool = True,
) -> dict[str, Any]:
    """Metrics of a checkpoint on a split of its own dataset (or of `dataset`), and figures if asked; with
    quality, the sample metrics too (vae/quality.py: sample_fid, sample_class_entropy, classifier_accuracy)."""
    dev = pick_device(device)
    model, cfg, state = load_model(checkpoint, map_location=dev)
    changes = {k: v for k, v in {"dataset": dataset, "data_dir": data_dir, "mirror": mirror}.items() if v}
    data_cfg = dataclasses.replace(cfg.data, **changes) if changes else cfg.data
    data = load(data_cfg, download=True)
    cfg = dataclasses.replace(cfg, data=data_cfg)
    metrics = evaluate_model(
        model, cfg, data, split=split, iw_samples=iw_samples, figures_dir=figures_dir, history=state.get("history")
    )
    if quality:
        metrics.update(sample_quality(model, data, data_cfg.data_dir))
    return metrics

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
from vae.evaluation import evaluate as evaluate_model
from vae.training import Callback, FitResult, fit


def train(
    cfg: Config, out: str | Path | None = None, resume: bool = False, callbacks: Sequence[Callback] = ()
) -> FitResult:
    """Train on one process, or as one rank under torchrun; checkpoints go to out/checkpoint.pt."""
    return fit(cfg, out=out, resume=resume, callbacks=callbacks)


def evaluate(
    checkpoint: str | Path,
    dataset: str | None = None,
    split: str = "test",
    iw_samples: int = 0,
    figures_dir: str | Path | None = None,
    data_dir: str | None = None,
    mirror: str | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Metrics of a checkpoint on a split of its own dataset (or of `dataset`), and figures if asked."""
    dev = pick_device(device)
    model, cfg, state = load_model(checkpoint, map_location=dev)
    changes = {k: v for k, v in {"dataset": dataset, "data_dir": data_dir, "mirror": mirror}.items() if v}
    data_cfg = dataclasses.replace(cfg.data, **changes) if changes else cfg.data
    data = load(data_cfg, download=True)
    cfg = dataclasses.replace(cfg, data=data_cfg)
    return evaluate_model(
        model, cfg, data, split=split, iw_samples=iw_samples, figures_dir=figures_dir, history=state.get("history")
    )

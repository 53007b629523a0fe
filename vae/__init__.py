"""Variational autoencoders on small grey images: train, evaluate, tune, track and serve.

The plain-function API (what the CLI, the tuner and the flows call):

    from vae import Config, train, evaluate
    result = train(Config(), out="runs/seed")        # -> FitResult with per-epoch metrics
    metrics = evaluate("runs/seed", iw_samples=100)  # -> dict of test metrics

Importing this package does no work: torch and the rest load when a function is first called.
(The modules are named training.py and evaluation.py so that `vae.train` and `vae.evaluate` stay functions.)
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vae.config import Config, DataConfig, ModelConfig, TrainConfig
from vae.errors import CheckpointError, ConfigError, DataError, DivergedError, VAEError

if TYPE_CHECKING:
    from pathlib import Path

    from vae.training import FitResult

__all__ = ["Config", "DataConfig", "ModelConfig", "TrainConfig", "train", "evaluate", "VAEError",
           "ConfigError", "DataError", "CheckpointError", "DivergedError"]
__version__ = "0.1.0"


def train(cfg: Config, out: str | Path | None = None, resume: bool = False, callbacks=()) -> FitResult:
    """Train on one process, or as one rank under torchrun; checkpoints go to out/checkpoint.pt."""
    from vae.training import fit
    return fit(cfg, out=out, resume=resume, callbacks=callbacks)


def evaluate(checkpoint: str | Path, dataset: str | None = None, split: str = "test", iw_samples: int = 0,
             figures_dir: str | Path | None = None, data_dir: str | None = None, mirror: str | None = None,
             device: str = "auto") -> dict[str, Any]:
    """Metrics of a checkpoint on a split of its own dataset (or of `dataset`), and figures if asked."""
    import dataclasses

    from vae.checkpoint import load_model
    from vae.data import load
    from vae.distributed import pick_device
    from vae.evaluation import evaluate as run

    dev = pick_device(device)
    model, cfg, state = load_model(checkpoint, map_location=dev)
    changes = {k: v for k, v in {"dataset": dataset, "data_dir": data_dir, "mirror": mirror}.items() if v}
    data_cfg = dataclasses.replace(cfg.data, **changes) if changes else cfg.data
    data = load(data_cfg, download=True)
    cfg = dataclasses.replace(cfg, data=data_cfg)
    return run(model, cfg, data, split=split, iw_samples=iw_samples, figures_dir=figures_dir,
               history=state.get("history"))

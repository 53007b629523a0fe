"""Variational autoencoders on small grey images: train, evaluate, tune, track and serve.

The plain-function API (what the CLI, the tuner and the flows call):

    from vae import Config, train, evaluate
    result = train(Config(), out="runs/seed")        # -> FitResult with per-epoch metrics
    metrics = evaluate("runs/seed", iw_samples=100)  # -> dict of test metrics

Importing this package does no work and loads no torch: `train` and `evaluate` come from vae.api when
first used (PEP 562), so that `vae --help` starts in a fraction of a second. Layout: see README, "Layout".
"""

from __future__ import annotations

from typing import Any

from vae.config import Config, DataConfig, ModelConfig, TrainConfig
from vae.errors import CheckpointError, ConfigError, DataError, DivergedError, DownloadError, VAEError

__all__ = [
    "Config",
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "train",
    "evaluate",
    "VAEError",
    "ConfigError",
    "DataError",
    "DownloadError",
    "CheckpointError",
    "DivergedError",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in ("train", "evaluate"):
        import vae.api  # torch and the core load here, on first use

        return getattr(vae.api, name)
    raise AttributeError(f"module 'vae' has no attribute {name!r}")

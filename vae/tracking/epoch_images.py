"""Seeing training happen: a sample grid and a reconstruction grid logged to the run every N epochs, each with
its epoch as the step, so that MLflow's run page shows them with a slider (MlflowClient.log_image with a key
and a step). The samples come from the same prior draws every time and the reconstructions are of the same
validation images, so the slider shows one model learning, not different pictures.

N is $VAE_LOG_IMAGES_EVERY (default 5; 0 turns it off); tuning trials log none. The grids are drawn from the
epoch's checkpoint, in the training process, and sent by a thread of their own: a tracking server that is slow
or away costs the grids of those epochs (a warning says so), never the training's time.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import numpy as np
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from vae.config import Config
from vae.errors import ConfigError

EVERY_ENV = "VAE_LOG_IMAGES_EVERY"
DEFAULT_EVERY = 5
SEED = 0
log = logging.getLogger(__name__)


def every_from_env() -> int:
    text = os.environ.get(EVERY_ENV, str(DEFAULT_EVERY)).strip()
    if not text.isdigit():
        raise ConfigError(f"{EVERY_ENV}={text!r} is invalid: expected a number of epochs >= 0 (0: no images)")
    return int(text)


class EpochImages:
    """Call with the epoch number after the epoch's checkpoint is written (rank 0): logs the grids every
    `every` epochs."""

    def __init__(self, client: MlflowClient, run_id: str, checkpoint: Path, cfg: Config, every: int) -> None:
        self.client, self.run_id, self.checkpoint, self.cfg, self.every = client, run_id, checkpoint, cfg, every
        self._images: torch.Tensor | None = None
        self._sending: threading.Thread | None = None  # the upload of the last grids, off the training's path

    def __call__(self, epoch: int) -> None:
        if not self.every or epoch % self.every or not self.checkpoint.is_file():
            return
        if self._sending is not None and self._sending.is_alive():  # the server is slow or away: skip, never wait
            log.warning(
                "the grids of epoch %d were not logged: those of an earlier epoch are still on their way", epoch
            )
            return
        grids = self.grids()
        self._sending = threading.Thread(target=self._send, args=(epoch, grids), daemon=True)
        self._sending.start()

    def _send(self, epoch: int, grids: dict[str, np.ndarray]) -> None:
        try:
            for key, picture in grids.items():
                self.client.log_image(self.run_id, picture, key=key, step=epoch, synchronous=True)
        except (MlflowException, OSError) as e:
            log.warning("the sample and reconstruction grids of epoch %d were not logged: %s", epoch, e)

    def wait(self, seconds: float) -> None:
        """Let the last grids reach the server (at most `seconds`) before the run ends."""
        if self._sending is not None:
            self._sending.join(seconds)

    def grids(self) -> dict[str, np.ndarray]:
        """{"samples": 8x8 prior samples (variational kinds), "reconstructions": 8 validation images over their
        reconstructions} as uint8 grey arrays, drawn with the checkpoint's weights."""
        from vae.checkpoint import load_model
        from vae.data import load, pixels
        from vae.figures import grid

        model, _, _ = load_model(self.checkpoint)
        if self._images is None:
            self._images = load(self.cfg.data).val.images[:8]
        out = {}
        with torch.no_grad():
            if model.is_variational:
                gen = torch.Generator().manual_seed(SEED)
                out["samples"] = model.sample(64, 1.0, generator=gen)
            x = pixels(self._images)
            recon = torch.sigmoid(model(x, sample=False).recon_logits)
            out["reconstructions"] = torch.cat([x, recon])
        return {k: (np.clip(grid(v, nrow=8), 0, 1) * 255 + 0.5).astype(np.uint8) for k, v in out.items()}

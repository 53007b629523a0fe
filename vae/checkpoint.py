"""Checkpoints: one file per run, written atomically, loadable with torch.load(weights_only=True).

Everything needed to resume exactly is in it: config, weights, optimizer state, the epoch reached and the
history. The random streams need no saving: every draw of epoch e comes from a generator seeded with
(seed, e), so a resumed run draws what the uninterrupted one would have.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from vae.config import Config
from vae.errors import CheckpointError
from vae.lifetime import interrupts_deferred
from vae.models import VAE, build_model

FORMAT = "vae-checkpoint/1"
FILENAME = "checkpoint.pt"  # the last epoch's state: what --resume continues from
BEST = "best.pt"  # the state of the epoch with the best validation loss so far
URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/")  # models:/..., runs:/..., s3://...; not C:\ or a relative path


def is_model_uri(ref: str | Path) -> bool:
    """True for an MLflow model URI (models:/NAME@ALIAS, runs:/ID/model), False for a local path."""
    return bool(URI.match(str(ref))) and len(str(ref).split(":", 1)[0]) > 1


def checkpoint_path(path: str | Path) -> Path:
    """A run folder or a checkpoint file -> the checkpoint file."""
    p = Path(path)
    return p / FILENAME if p.is_dir() else p


def nonfinite(state: dict[str, torch.Tensor]) -> list[str]:
    """The names of the floating tensors in a state dict that hold a NaN or an infinity (one sync for all)."""
    names = [k for k, t in state.items() if torch.is_tensor(t) and t.is_floating_point()]
    if not names:
        return []
    bad = torch.stack([state[k].isfinite().all().logical_not() for k in names]).tolist()
    return [k for k, b in zip(names, bad, strict=True) if b]


def save(state: dict[str, Any], path: str | Path) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: a kill at any moment leaves
    either the previous checkpoint or the new one, never half of one. SIGINT and SIGTERM wait until the
    write ends (a fraction of a second), so that they reach the caller as the interrupt they are."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=path.parent)
    with interrupts_deferred():
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save({"format": FORMAT, **state}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    p = checkpoint_path(path)
    if not p.exists():
        raise CheckpointError(
            f"checkpoint {p} does not exist: pass a run folder written by `vae train --out` or its {FILENAME}"
        )
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated, not a torch file, or holding arbitrary pickles
        raise CheckpointError(
            f"checkpoint {p} cannot be read ({type(e).__name__}: {str(e)[:200]}): "
            f"expected a file written by `vae train`"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {p} is not a {FORMAT} file written by `vae train`")
    return state


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[VAE, Config, dict[str, Any]]:
    """(model in eval mode, its config, the whole checkpoint dict)."""
    state = load(path, map_location)
    cfg = Config.from_dict(state["config"])
    model = build_model(cfg.model)
    model.load_state_dict(state["model"])
    model.to(map_location).eval()
    return model, cfg, state

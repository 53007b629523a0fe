"""`vae data | train | evaluate | sample`."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from vae import api, data
from vae.checkpoint import FILENAME, checkpoint_path, load_model
from vae.cli import is_rank0
from vae.cli.args import config_fields
from vae.cli.common import load_model_ref, relaunch, shows, sigterm_as_interrupt, under_torchrun
from vae.config import Config, DataConfig
from vae.distributed import check_nproc
from vae.errors import ConfigError
from vae.figures import write_figures
from vae.io import check_out, save_images
from vae.uses import sample


def config_from_args(a: argparse.Namespace) -> Config:
    """--config's file (or the defaults) with the flags given beside it in place."""
    base = Config.from_dict(read_json_config(a.config)) if a.config else Config()
    changes: dict[str, dict[str, Any]] = {"data": {}, "model": {}, "train": {}}
    for section, name in config_fields():
        if hasattr(a, name):
            changes[section][name] = getattr(a, name)
    if getattr(a, "no_progress", False):
        changes["train"]["progress"] = False
    return base.replace(**changes)


def read_json_config(path: str) -> Any:
    """The JSON value a --config file holds; ConfigError saying why not: unreadable, not UTF-8, not JSON, nested
    too deep or holding an integer too long for Python to read (its 4300 digits)."""
    why = f"--config {path} cannot be read"
    try:
        return json.loads(Path(path).read_bytes().decode("utf-8"))
    except OSError as e:
        raise ConfigError(f"{why} ({e}): expected a JSON config file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{why}: byte {e.start} is not UTF-8 ({e.reason}): expected a JSON config file") from None
    except RecursionError:
        raise ConfigError(f"{why}: nested too deep: expected a JSON config file (a few levels)") from None
    except ValueError as e:  # json.JSONDecodeError, or an integer past 4300 digits
        raise ConfigError(f"{why} ({str(e).split(';')[0]}): expected a JSON config file") from None


@shows(lambda r: f"run folder: {r['out']}" + (f"\nMLflow run: {r['mlflow_run_id']}" if r.get("mlflow_run_id") else ""))
def cmd_train(a: argparse.Namespace) -> dict[str, Any]:
    cfg = config_from_args(a)
    check_nproc(a.nproc, cfg.train.device)
    if cfg.train.cuda_graph and a.nproc > 1:  # before torchrun starts; fit() says the same to a library caller
        raise ConfigError("--cuda-graph records the step of one process: drop --nproc, or --cuda-graph")
    out = Path(
        a.out
        or f"runs/{cfg.model.kind}-{cfg.data.dataset.replace(':', '_').replace('/', '_')}"
        f"-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    if (out / FILENAME).exists() and not a.resume:  # before torchrun starts or an MLflow run is made
        raise ConfigError(f"{out / FILENAME} already exists: pass --resume to continue, or choose another --out")
    if a.nproc > 1 and not under_torchrun():
        data.load(cfg.data, download=True)  # downloads once, and bad data fails here, before torchrun starts
        relaunch(a, [] if a.out else ["--out", str(out)])
    if (a.tracking_uri or a.experiment or a.parent_run_id or os.environ.get("MLFLOW_TRACKING_URI")) and is_rank0():
        return _train_tracked(a, cfg, out)
    return api.record(cfg, out, api.train(cfg, out=out, resume=a.resume))


def _train_tracked(a: argparse.Namespace, cfg: Config, out: Path) -> dict[str, Any]:
    """Training logged to MLflow as it happens (vae/tracking/live.py), its best epoch logged as the run's
    model at the end; rank 0 only."""
    from vae.tracking.live import TrainingRun  # lazy: mlflow costs ~1.5 s, and only a tracked run needs it

    loaded = data.load(cfg.data, download=True)  # a download, if any, before the run starts
    info = data.describe(loaded, cfg.data)
    with (
        TrainingRun(
            a.tracking_uri, a.experiment or "vae-train", cfg, out, info, resume=a.resume, parent_id=a.parent_run_id
        ) as run,
        sigterm_as_interrupt(),
    ):
        result = api.train(cfg, out=out, resume=a.resume, callbacks=[run])
        summary = api.record(cfg, out, result)
        model, _, _ = load_model(summary["best_checkpoint"] or summary["checkpoint"])
        split = loaded.val
        # the whole history, not the best checkpoint's (which ends at the best epoch)
        figures = write_figures(model, split, out / "figures", history=result.history, seed=cfg.train.seed)
        model_info = run.finish(
            SimpleNamespace(**{k: summary[k] for k in ("best_epoch", "stopped_early")}, history=result.history),
            files=[out / "history.json", out / "figures"],
            model=Path(summary["best_checkpoint"] or summary["checkpoint"]),
        )
    return {
        **summary,
        "figures": figures,
        "mlflow_run_id": run.run_id,
        "model_id": model_info.model_id,
        "model_uri": model_info.model_uri,
        "tracking_uri": run.uri,
        "epoch_log_seconds": round(run.epoch_log_seconds, 4),
    }


def cmd_evaluate(a: argparse.Namespace) -> dict[str, Any]:
    if a.iw_samples < 0:
        raise ConfigError(f"iw-samples={a.iw_samples} is invalid: expected an integer >= 0")
    figures = None if a.no_figures else (a.figures or checkpoint_path(a.model).parent / "figures")
    return api.evaluate(
        a.model,
        dataset=a.dataset,
        split=a.split,
        iw_samples=a.iw_samples,
        figures_dir=figures,
        data_dir=a.data_dir,
        mirror=a.mirror,
        device=a.device,
        quality=not a.no_sample_metrics,
    )


def cmd_sample(a: argparse.Namespace) -> dict[str, Any]:
    if a.n < 1:
        raise ConfigError(f"n={a.n} is invalid: expected an integer >= 1")
    if not a.temperature > 0:
        raise ConfigError(f"temperature={a.temperature} is invalid: expected a number > 0")
    out = check_out(a.out, (".png", ".npy"), "a .png (image grid) or .npy (array) file name")
    model, _, _ = load_model_ref(a.model, a.tracking_uri, a.device)
    if not model.is_variational:
        raise ConfigError(f"{a.model} holds a plain autoencoder, which has no prior to sample from")
    save_images(sample(model, a.n, a.temperature, a.seed), out)
    return {"out": str(out), "n": a.n, "temperature": a.temperature}


def cmd_data(a: argparse.Namespace) -> dict[str, Any]:
    cfg = DataConfig(a.dataset, a.data_dir, a.mirror, a.split_seed)
    if a.action == "fetch":
        folder = data.fetch(cfg.dataset, cfg.data_dir, cfg.mirror)
        return {**data.info(cfg), "fetched": str(folder) if folder else None}
    return data.info(cfg)

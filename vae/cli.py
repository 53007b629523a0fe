"""`vae ...`: parse arguments, build a config, call the library. Heavy imports happen inside commands so
that `vae --help` stays quick. Input errors print one line and exit 2, before anything is written."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from vae.config import Config, DataConfig, ModelConfig, TrainConfig
from vae.errors import ConfigError, VAEError


def _hidden(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(w) for w in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of widths, e.g. 400 or 200,200")


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="mnist-5k",
                   help="mnist-5k (embedded, default), mnist, fashion-mnist, or idx:PATH (a folder of idx files)")
    p.add_argument("--data-dir", help="download cache (default $VAE_DATA_DIR or ~/.cache/vae)")
    p.add_argument("--mirror", help="base URL holding the official gz files (default $VAE_MNIST_MIRROR)")


def _json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as one JSON object on stdout")


# `vae train` flag -> (config section, field, type, help).
TRAIN_FLAGS: dict[str, tuple[str, str, Any, str]] = {
    "--dataset": ("data", "dataset", str, "mnist-5k (embedded), mnist, fashion-mnist, or idx:PATH"),
    "--data-dir": ("data", "data_dir", str, "download cache ($VAE_DATA_DIR or ~/.cache/vae)"),
    "--mirror": ("data", "mirror", str, "base URL holding the official gz files ($VAE_MNIST_MIRROR)"),
    "--split-seed": ("data", "split_seed", int, "seed of the train/val/test split"),
    "--subset": ("data", "subset", int, "train on the first N training images only"),
    "--binarize": ("data", "binarize", str, "none, or dynamic: fresh Bernoulli pixels every epoch"),
    "--model": ("model", "kind", str, "vae (the seed's MLP), ae, or conv-vae"),
    "--latent": ("model", "latent", int, "latent dimensions"),
    "--hidden": ("model", "hidden", _hidden, "hidden widths, e.g. 400 or 200,200"),
    "--activation": ("model", "activation", str, "relu or tanh"),
    "--epochs": ("train", "epochs", int, "epochs in total (a resumed run continues up to this)"),
    "--batch-size": ("train", "batch_size", int, "global batch, split across processes"),
    "--lr": ("train", "lr", float, "Adam learning rate"),
    "--beta": ("train", "beta", float, "weight of the KL term"),
    "--noise": ("train", "noise", str, "denoising: none, gaussian, masking or salt-pepper"),
    "--noise-level": ("train", "noise_level", float, "noise std (gaussian) or fraction of pixels"),
    "--seed": ("train", "seed", int, "seed of weights, batches and noise"),
    "--clip-grad": ("train", "clip_grad", float, "clip the gradient norm to this value"),
    "--objective": ("train", "objective", str, "elbo, or iwae: the K-sample importance-weighted bound"),
    "--k": ("train", "k", int, "importance samples per image for --objective iwae"),
    "--lr-schedule": ("train", "lr_schedule", str, "constant, or exp: geometric decay to lr/10 by the last epoch"),
    "--device": ("train", "device", str, "auto, cpu or cuda"),
    "--bf16": ("train", "bf16", bool, "bf16 autocast (CUDA only)"),
}

# Modules that add subcommands: each has add_commands(sub) -> {command: handler(args) -> dict}.
# A handler that prints its own text for humans sets args.printed = True when --json is absent.
# They must import nothing heavy at module level (`vae --help` stays quick).
EXTENSIONS: tuple[str, ...] = ("vae.cli_registry", "vae.cli_tune", "vae.cli_uses")


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(prog="vae", description="Variational autoencoders on 28x28 grey images.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="download and inspect data sets")
    dsub = data.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (("fetch", "download and verify a data set into the cache"),
                         ("info", "split sizes, class counts and fingerprint of a data set")):
        p = dsub.add_parser(action, help=text, description=text)
        _data_args(p)
        p.add_argument("--split-seed", type=int, default=0)
        _json_arg(p)

    p = sub.add_parser("train", help="train a model (one process, or N under torchrun)",
                       description="Train a VAE/AE; writes OUT/checkpoint.pt every epoch and OUT/history.json.")
    # Flags left out keep the value of --config (or the defaults): argparse.SUPPRESS tells them apart.
    for flag, (section, name, kind, text) in TRAIN_FLAGS.items():
        default = getattr(getattr(Config(), section), name)
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        if kind is bool:
            p.add_argument(flag, dest=name, action="store_true", default=argparse.SUPPRESS, help=text)
        else:
            p.add_argument(flag, dest=name, type=kind, default=argparse.SUPPRESS, help=f"{text} (default {shown})")
    p.add_argument("--config", help="a JSON file holding a whole config (as in history.json's 'config'); "
                                    "flags given beside it override its values")
    p.add_argument("--nproc", type=int, default=1, help="processes on this machine (launches torchrun)")
    p.add_argument("--out", help="run folder (default runs/<model>-<dataset>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="plain lines even on a terminal")
    _json_arg(p)

    p = sub.add_parser("evaluate", help="test metrics and figures of a checkpoint")
    p.add_argument("checkpoint", help="a run folder or its checkpoint.pt")
    p.add_argument("--dataset", help="evaluate on another data set (default: the one it was trained on)")
    p.add_argument("--data-dir")
    p.add_argument("--mirror")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--iw-samples", type=int, default=0, help="K for the importance-weighted NLL (0: skip)")
    p.add_argument("--figures", help="folder for the PNG figures (default: <run folder>/figures)")
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--device", default="auto")
    _json_arg(p)

    p = sub.add_parser("sample", help="new images from the prior")
    p.add_argument("checkpoint", help="run folder, checkpoint.pt, or MLflow model URI (models:/NAME@ALIAS)")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0, help="z ~ N(0, T^2 I): below 1, cleaner and less varied")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="grid.png, or samples.npy for (N, 28, 28) float pixels")
    p.add_argument("--tracking-uri", help="MLflow store for model URIs (default $MLFLOW_TRACKING_URI)")
    p.add_argument("--device", default="auto")
    _json_arg(p)

    commands = {"train": cmd_train, "evaluate": cmd_evaluate, "sample": cmd_sample, "data": cmd_data}
    import importlib
    for name in EXTENSIONS:
        commands.update(importlib.import_module(name).add_commands(sub))
    return parser, commands


def _config_from_args(a: argparse.Namespace) -> Config:
    base = Config()
    if a.config:
        try:
            base = Config.from_dict(json.loads(Path(a.config).read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"--config {a.config} cannot be read ({e}): expected a JSON config file") from None
    changes: dict[str, dict[str, Any]] = {"data": {}, "model": {}, "train": {}}
    for section, name, _, _ in TRAIN_FLAGS.values():
        if hasattr(a, name):
            changes[section][name] = getattr(a, name)
    if getattr(a, "no_progress", False):
        changes["train"]["progress"] = False
    return base.replace(**changes)


def _under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or "WORLD_SIZE" in os.environ


def cmd_train(a: argparse.Namespace) -> dict[str, Any]:
    cfg = _config_from_args(a)
    if a.nproc < 1:
        raise ConfigError(f"nproc={a.nproc} is invalid: expected an integer >= 1")
    out = Path(a.out or f"runs/{cfg.model.kind}-{cfg.data.dataset.replace(':', '_').replace('/', '_')}"
                         f"-{time.strftime('%Y%m%d-%H%M%S')}")
    if a.nproc > 1 and not _under_torchrun():
        # Check everything that can be wrong here, so bad input fails in one line before torchrun starts.
        from vae.checkpoint import FILENAME
        from vae.data import load
        if (out / FILENAME).exists() and not a.resume:
            raise ConfigError(f"{out / FILENAME} already exists: pass --resume to continue, or choose another --out")
        load(cfg.data, download=True)
        from vae.distributed import torchrun
        argv = _drop_option(list(a.argv), "--nproc")
        if a.out is None:
            argv += ["--out", str(out)]
        code = torchrun(["vae", *argv], a.nproc)
        raise SystemExit(code)
    from vae import train
    result = train(cfg, out=out, resume=a.resume)
    summary = {"out": str(out), "checkpoint": str(result.checkpoint) if result.checkpoint else None,
               "fingerprint": result.fingerprint, "epochs_run": result.epochs_run,
               "seconds": round(result.seconds, 3), "metrics": result.metrics, "config": cfg.to_dict()}
    if result.checkpoint is not None:
        from vae.evaluation import write_json
        write_json({**summary, "history": result.history}, out / "history.json")
    return summary


def _drop_option(argv: list[str], name: str) -> list[str]:
    out, skip = [], False
    for x in argv:
        if skip:
            skip = False
        elif x == name:
            skip = True
        elif not x.startswith(name + "="):
            out.append(x)
    return out


def cmd_evaluate(a: argparse.Namespace) -> dict[str, Any]:
    from vae import evaluate
    from vae.checkpoint import checkpoint_path
    if a.iw_samples < 0:
        raise ConfigError(f"iw-samples={a.iw_samples} is invalid: expected an integer >= 0")
    figures = None if a.no_figures else (a.figures or checkpoint_path(a.checkpoint).parent / "figures")
    return evaluate(a.checkpoint, dataset=a.dataset, split=a.split, iw_samples=a.iw_samples,
                    figures_dir=figures, data_dir=a.data_dir, mirror=a.mirror, device=a.device)


def cmd_sample(a: argparse.Namespace) -> dict[str, Any]:
    out = Path(a.out)
    if a.n < 1:
        raise ConfigError(f"n={a.n} is invalid: expected an integer >= 1")
    if not a.temperature > 0:
        raise ConfigError(f"temperature={a.temperature} is invalid: expected a number > 0")
    if out.suffix not in (".png", ".npy"):
        raise ConfigError(f"--out {out} is invalid: expected a .png (image grid) or .npy (array) file name")
    if not out.parent.exists():
        raise ConfigError(f"--out {out} is invalid: folder {out.parent} does not exist")
    from vae import apps, io
    model, _, _ = apps.load(a.checkpoint, a.tracking_uri, a.device)
    if not model.is_variational:
        raise ConfigError(f"{a.checkpoint} holds a plain autoencoder, which has no prior to sample from")
    io.save_images(apps.sample(model, a.n, a.temperature, a.seed), out)
    return {"out": str(out), "n": a.n, "temperature": a.temperature}


def cmd_data(a: argparse.Namespace) -> dict[str, Any]:
    from vae import data
    cfg = DataConfig(a.dataset, a.data_dir, a.mirror, a.split_seed)
    if a.action == "fetch":
        folder = data.fetch(cfg.dataset, cfg.data_dir, cfg.mirror)
        return {**data.info(cfg), "fetched": str(folder) if folder else None}
    return data.info(cfg)


def main(argv: list[str] | None = None) -> int:
    # Nothing phones home: set before any command imports mlflow, optuna or prefect (a user's own value wins).
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    argv = sys.argv[1:] if argv is None else list(argv)
    parser, commands = build_parser()
    a = parser.parse_args(argv)
    a.argv = argv  # re-used verbatim when `train --nproc N` relaunches itself under torchrun
    try:
        result = commands[a.command](a)
    except VAEError as e:
        print(f"vae: error: {e}", file=sys.stderr)
        return 2
    if getattr(a, "printed", False):  # the handler wrote its own human-readable output
        pass
    elif getattr(a, "json", False):
        if int(os.environ.get("RANK", "0")) == 0:
            print(json.dumps(result, default=str))
    else:
        _print_human(a.command, result)
    return 0


def _print_human(command: str, result: dict[str, Any]) -> None:
    if int(os.environ.get("RANK", "0")) != 0:
        return
    if command == "train":
        print(f"run folder: {result['out']}")
        return
    for k, v in result.items():
        if isinstance(v, float):
            v = f"{v:.3f}"
        elif isinstance(v, dict):
            v = json.dumps(v)
        print(f"{k:>16}: {v}")

"""The shared argument groups, one vocabulary for every command (MODEL, --dataset, --data-dir and --mirror,
--split), and the arguments of `vae data | train | evaluate | sample`; args_tune.py and args_uses.py hold the
others'. Light on purpose: these modules and what they import (config, errors) are all that `vae --help` loads.
Each command names its handler as "module:function"; vae/cli/__init__.py imports that module only when the
command runs."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from vae.config import Config
from vae.kinds import KINDS

INPUT_HELP = (
    "a 28x28 PNG, a folder of PNGs, a .npy array ((N, 28, 28) or (N, 784); uint8 0-255 or floats "
    "in [0, 1]) or an idx images file"
)
# What --dataset (and every option naming a data set) accepts: vae.data.check_dataset's names.
DATASET_HELP = (
    "mnist-5k (embedded), mnist, fashion-mnist, idx:PATH (a folder of idx files) "
    "or folder:PATH (PNG files by class, PATH/<0-9>/*.png)"
)
# The positional naming a trained model, MODEL in every command that takes one.
MODEL_HELP = "run folder, checkpoint.pt, or MLflow model URI such as models:/vae-mnist-5k@champion"
# vae.data.SPLITS, spelled here so that `vae --help` does not import torch (tests/test_cli_conventions.py checks).
SPLITS = ("train", "val", "test")
# Where a data set is downloaded from and cached: flag -> (dest, help), the same in every command.
DOWNLOAD_FLAGS = {
    "--data-dir": ("data_dir", "download cache (default $VAE_DATA_DIR or ~/.cache/vae)"),
    "--mirror": ("mirror", "base URL holding the official gz files (default $VAE_MNIST_MIRROR)"),
}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def hidden_widths(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(w) for w in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of widths, e.g. 400 or 200,200"
        ) from None


# `vae train` flag -> (config section, field, type, help).
TRAIN_FLAGS: dict[str, tuple[str, str, Any, str]] = {
    "--dataset": ("data", "dataset", str, DATASET_HELP),
    "--split-seed": ("data", "split_seed", int, "seed of the train/val/test split"),
    "--subset": ("data", "subset", int, "train on the first N training images only"),
    "--binarize": ("data", "binarize", str, "none, or dynamic: fresh Bernoulli pixels every epoch"),
    "--model": ("model", "kind", str, "; ".join(f"{k.name}: {k.summary}" for k in KINDS.values())),
    "--latent": ("model", "latent", int, "latent dimensions"),
    "--hidden": ("model", "hidden", hidden_widths, "hidden widths, e.g. 400 or 200,200"),
    "--activation": ("model", "activation", str, "relu or tanh"),
    "--channels": ("model", "channels", int, "conv-vae: channels of the first convolution (the second: twice)"),
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
    "--cuda-graph": ("train", "cuda_graph", bool, "replay one recorded step per batch (CUDA, one process)"),
    "--patience": ("train", "patience", int, "early stopping: stop after N epochs without a better val loss"),
}


# ---------------------------------------------------------------- shared argument groups


def verbosity_args(p: argparse.ArgumentParser, default: Any = "INFO") -> None:
    p.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        default=default,
        help="how much to log on stderr (default INFO)",
    )
    p.add_argument(
        "-q",
        "--quiet",
        dest="log_level",
        action="store_const",
        const="WARNING",
        default=default,
        help="warnings and errors only (same as --log-level WARNING)",
    )


def json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as one JSON object on stdout")


def dataset_help(what: str = "data set", default: str = "mnist-5k") -> str:
    return f"{what}: {DATASET_HELP} (default: {default})"


def download_args(p: argparse.ArgumentParser, default: Any = None) -> None:
    """--data-dir and --mirror, in every command that loads a data set."""
    for flag, (dest, text) in DOWNLOAD_FLAGS.items():
        p.add_argument(flag, dest=dest, default=default, help=text)


def data_args(
    p: argparse.ArgumentParser, default: str | None = "mnist-5k", what: str = "data set", shown: str | None = None
) -> None:
    """--dataset (default `default`, described as `shown`), --data-dir and --mirror."""
    p.add_argument("--dataset", default=default, help=dataset_help(what, shown or str(default)))
    download_args(p)


def split_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split", default="test", choices=SPLITS, help="split of the data set (default: test)")


def parent_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--parent-run-id", help=f"MLflow run to nest {what} under (mlflow.parentRunId; the pipeline's night run)"
    )


def tracking_arg(p: argparse.ArgumentParser, what: str = "MLflow store for model URIs") -> None:
    p.add_argument("--tracking-uri", help=f"{what} (default $MLFLOW_TRACKING_URI, else sqlite:///./mlruns/mlflow.db)")


def device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")


def model_arg(p: argparse.ArgumentParser, text: str = MODEL_HELP) -> None:
    """The positional MODEL: the one name of a trained model across commands (a.model)."""
    p.add_argument("model", metavar="MODEL", help=text)


def model_args(p: argparse.ArgumentParser) -> None:
    """MODEL (a run folder, a checkpoint, or an MLflow model URI), its store and device, --json."""
    model_arg(p)
    tracking_arg(p)
    device_arg(p)
    json_arg(p)


def split_args(p: argparse.ArgumentParser) -> None:
    """--split of a data set, where it is downloaded from, and --limit."""
    split_arg(p)
    download_args(p)
    p.add_argument("--limit", type=int, help="use only the first N images")


def input_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--input", help=INPUT_HELP)
    g.add_argument("--dataset", help=dataset_help("a data set instead of files", "the model's own"))
    split_args(p)


class _Deprecated(argparse.Action):
    """A renamed flag's old spelling: it still works, says so on stderr, and --help no longer shows it."""

    def __init__(self, option_strings, dest, new: str = "", **kwargs):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"vae: warning: {option_string} is deprecated: use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def deprecated_alias(p: argparse.ArgumentParser, old: str, new: argparse.Action) -> None:
    """`old` as a hidden spelling of the flag `new` (what p.add_argument returned)."""
    p.add_argument(
        old,
        dest=new.dest,
        type=new.type,
        default=argparse.SUPPRESS,
        action=_Deprecated,
        new=new.option_strings[-1],
        help=argparse.SUPPRESS,
    )


def train_flags(p: argparse.ArgumentParser) -> None:
    """The config flags of `vae train`. Flags left out keep the value of --config (or the defaults):
    argparse.SUPPRESS tells them apart."""
    for flag, (section, name, kind, text) in TRAIN_FLAGS.items():
        default = getattr(getattr(Config(), section), name)
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        if kind is bool:
            p.add_argument(flag, dest=name, action="store_true", default=argparse.SUPPRESS, help=text)
        else:
            p.add_argument(flag, dest=name, type=kind, default=argparse.SUPPRESS, help=f"{text} (default {shown})")
        if flag == "--dataset":
            download_args(p, default=argparse.SUPPRESS)


def config_fields() -> list[tuple[str, str]]:
    """(config section, field) of every flag of `vae train` that sets one."""
    download = [("data", dest) for dest, _ in DOWNLOAD_FLAGS.values()]
    return [(section, name) for section, name, _, _ in TRAIN_FLAGS.values()] + download


# ---------------------------------------------------------------- the parser


def command(sub, name: str, handler: str, parents: tuple = (), **kwargs: Any) -> argparse.ArgumentParser:
    """A subcommand whose handler is "module:function" under vae.cli; verbosity flags allowed after it too."""
    parent = argparse.ArgumentParser(add_help=False)
    verbosity_args(parent, default=argparse.SUPPRESS)
    p = sub.add_parser(name, parents=[parent, *parents], **kwargs)
    p.set_defaults(handler=f"vae.cli.{handler}")
    return p


def add_core_commands(sub) -> None:
    data = sub.add_parser("data", help="download and inspect data sets")
    dsub = data.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (
        ("fetch", "download and verify a data set into the cache"),
        ("info", "split sizes, class counts and fingerprint of a data set"),
    ):
        p = command(dsub, action, "core:cmd_data", help=text, description=text)
        data_args(p)
        p.add_argument("--split-seed", type=int, default=0)
        json_arg(p)

    p = command(
        sub,
        "train",
        "core:cmd_train",
        help="train a model (one process, or N under torchrun)",
        description="Train a VAE/AE; writes OUT/checkpoint.pt every epoch and OUT/history.json.",
    )
    train_flags(p)
    p.add_argument(
        "--config",
        help="a JSON file holding a whole config (as in history.json's 'config'); "
        "flags given beside it override its values",
    )
    p.add_argument("--nproc", type=int, default=1, help="processes on this machine (launches torchrun)")
    p.add_argument("--out", help="run folder (default runs/<model>-<dataset>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="plain lines even on a terminal")
    tracking_arg(p, "log the run to this MLflow store as it trains")
    p.add_argument("--experiment", help="log the run to this MLflow experiment (default vae-train when tracking)")
    parent_arg(p, "the run")
    json_arg(p)

    p = command(sub, "evaluate", "core:cmd_evaluate", help="test metrics and figures of a checkpoint")
    model_arg(p, "run folder or its checkpoint.pt")
    data_args(p, None, "evaluate on another data set", "the one it was trained on")
    split_arg(p)
    p.add_argument("--iw-samples", type=int, default=0, help="K for the importance-weighted NLL (0: skip)")
    p.add_argument("--figures", help="folder for the PNG figures (default: <run folder>/figures)")
    p.add_argument("--no-figures", action="store_true")
    p.add_argument(
        "--no-sample-metrics",
        action="store_true",
        help="skip sample_fid and class coverage (they train a digit classifier once per data set, then reuse it)",
    )
    device_arg(p)
    json_arg(p)

    p = command(sub, "sample", "core:cmd_sample", help="new images from the prior")
    model_args(p)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0, help="z ~ N(0, T^2 I): below 1, cleaner and less varied")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="grid.png, or samples.npy for (N, 28, 28) float pixels")

"""Every `vae` command's arguments, and the shared argument groups. Light on purpose: this module and what it
imports (config, errors) are all that `vae --help` loads. Each command names its handler as "module:function";
vae/cli/__init__.py imports that module only when the command runs."""

from __future__ import annotations

import argparse
from typing import Any

from vae.config import Config, TrainConfig

INPUT_HELP = (
    "a 28x28 PNG, a folder of PNGs, a .npy array ((N, 28, 28) or (N, 784); uint8 0-255 or floats "
    "in [0, 1]) or an idx images file"
)
DATASET_HELP = (
    "mnist-5k (embedded, default), mnist, fashion-mnist, idx:PATH (a folder of idx files) "
    "or folder:PATH (PNG files by class, PATH/<0-9>/*.png)"
)
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
    "--data-dir": ("data", "data_dir", str, "download cache ($VAE_DATA_DIR or ~/.cache/vae)"),
    "--mirror": ("data", "mirror", str, "base URL holding the official gz files ($VAE_MNIST_MIRROR)"),
    "--split-seed": ("data", "split_seed", int, "seed of the train/val/test split"),
    "--subset": ("data", "subset", int, "train on the first N training images only"),
    "--binarize": ("data", "binarize", str, "none, or dynamic: fresh Bernoulli pixels every epoch"),
    "--model": ("model", "kind", str, "vae (the seed's MLP), ae, or conv-vae"),
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


def data_args(
    p: argparse.ArgumentParser, dataset_default: str | None = "mnist-5k", dataset_help: str = DATASET_HELP
) -> None:
    p.add_argument("--dataset", default=dataset_default, help=dataset_help)
    p.add_argument("--data-dir", help="download cache (default $VAE_DATA_DIR or ~/.cache/vae)")
    p.add_argument("--mirror", help="base URL holding the official gz files (default $VAE_MNIST_MIRROR)")


def parent_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--parent-run-id", help=f"MLflow run to nest {what} under (mlflow.parentRunId; the pipeline's night run)"
    )


def tracking_arg(p: argparse.ArgumentParser, what: str = "MLflow store for model URIs") -> None:
    p.add_argument("--tracking-uri", help=f"{what} (default $MLFLOW_TRACKING_URI, else sqlite:///./mlruns/mlflow.db)")


def device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")


def model_args(p: argparse.ArgumentParser) -> None:
    """MODEL (a run folder, a checkpoint, or an MLflow model URI), its store and device, --json."""
    p.add_argument("model", help="run folder, checkpoint.pt, or MLflow model URI such as models:/vae-mnist-5k@champion")
    tracking_arg(p)
    device_arg(p)
    json_arg(p)


def split_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split", default="test", help="train, val or test (with a data set)")
    p.add_argument("--data-dir", help="download cache (default $VAE_DATA_DIR or ~/.cache/vae)")
    p.add_argument("--mirror", help="base URL holding the official gz files")
    p.add_argument("--limit", type=int, help="use only the first N images")


def input_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--input", help=INPUT_HELP)
    g.add_argument(
        "--dataset",
        help="a data set instead of files (default: the model's own): mnist-5k, mnist, fashion-mnist or idx:PATH",
    )
    split_args(p)


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
    p.add_argument("checkpoint", help="a run folder or its checkpoint.pt")
    data_args(p, None, "evaluate on another data set (default: the one it was trained on)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
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
    p.add_argument("checkpoint", help="run folder, checkpoint.pt, or MLflow model URI (models:/NAME@ALIAS)")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0, help="z ~ N(0, T^2 I): below 1, cleaner and less varied")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="grid.png, or samples.npy for (N, 28, 28) float pixels")
    tracking_arg(p)
    device_arg(p)
    json_arg(p)


def search_args(p) -> None:
    """How the study searches: sampler, pruner and the trials it starts from (vae/tune/search.py, seeds.py)."""
    p.add_argument(
        "--sampler", default="tpe", help="tpe (default), tpe-multivariate, gp, cmaes (needs the cmaes package), random"
    )
    p.add_argument(
        "--pruner",
        default="asha",
        help="asha (default: successive halving within each model kind), asha-global, hyperband, median, none, "
        "or threshold:X (nats)",
    )
    p.add_argument(
        "--min-epochs", type=int, default=3, help="the pruner's first rung: no trial stops before it (default 3)"
    )
    p.add_argument("--startup-trials", type=int, help="random trials before the sampler uses the history")
    p.add_argument(
        "--no-anchors",
        dest="anchors",
        action="store_false",
        help="start a new study from the seed recipe only, not also from the default space's anchor configuration",
    )


def add_tune_command(sub) -> None:
    p = command(
        sub,
        "tune",
        "tune:cmd_tune",
        help="search hyper-parameters: an Optuna study of training runs, tracked in MLflow (or --no-tracking)",
        description="Run trials of an Optuna study until it holds --trials trials (several `vae tune` "
        "processes may share one study). Each trial trains for --epochs epochs and reports the "
        "validation -ELBO every epoch to the pruner; rerunning the same command continues the study.",
    )
    data_args(p)
    t = TrainConfig()
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--subset", type=int, help="train every trial on the first N training images only")
    p.add_argument("--trials", type=int, default=20, help="trials the study should hold in total (default 20)")
    p.add_argument("--timeout", type=float, help="start no new trial after this many seconds")
    p.add_argument("--epochs", type=int, default=t.epochs, help="epochs per trial: the budget the winner is trained at")
    p.add_argument("--patience", type=int, help="early stopping of every trial (epochs without a better val -ELBO)")
    p.add_argument("--nproc", type=int, default=1, help="processes per trial (DDP under torchrun)")
    p.add_argument(
        "--workers", type=int, default=1, help="trials at once: W worker processes on the study, cores (GPUs) shared"
    )
    p.add_argument("--study", help="study name (default vae-<dataset>)")
    p.add_argument("--storage", help="sqlite:///PATH (default mlruns/optuna.db), postgresql://..., or journal:PATH")
    search_args(p)
    p.add_argument("--space", help="TOML or YAML file overriding entries of the default search space")
    p.add_argument(
        "--sampler-seed", type=int, help="seed of the sampler: the same command on the same study draws the same trials"
    )
    p.add_argument("--train-seed", type=int, default=t.seed, help="seed of every trial's weights, batches and noise")
    p.add_argument("--seed", dest="ambiguous_seed", type=int, help=argparse.SUPPRESS)
    p.add_argument(
        "--heartbeat",
        type=int,
        default=30,
        help="seconds between trial heartbeats; a trial silent for twice that is failed and retried "
        "(SQL storages; 0: off)",
    )
    p.add_argument("--out", help="folder of the trials' checkpoints (default mlruns/studies/<study>)")
    tracking_arg(p, "MLflow tracking URI")
    p.add_argument(
        "--no-tracking",
        action="store_true",
        help="no MLflow at all (not even imported): the study in --storage and the checkpoints in --out only",
    )
    p.add_argument("--experiment", default="vae-tune", help="MLflow experiment (default vae-tune)")
    parent_arg(p, "the study's run")
    p.add_argument("--device", default=t.device, help="auto, cpu or cuda")
    json_arg(p)


def add_registry_command(sub) -> None:
    p = sub.add_parser("registry", help="list, promote and roll back registered model versions")
    rsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--name", help="registered model (default vae-<dataset>)")
    common.add_argument("--dataset", default="mnist-5k", help="names the model vae-<dataset> when --name is absent")
    tracking_arg(common, "MLflow tracking/registry URI")
    json_arg(common)
    command(
        rsub,
        "list",
        "registry:cmd_registry",
        parents=[common],
        help="versions with their aliases, test -ELBO and decisions",
    )
    pp = command(
        rsub,
        "promote",
        "registry:cmd_registry",
        parents=[common],
        help="make a version champion if it beats the champion",
    )
    pp.add_argument("--version", required=True)
    pp.add_argument("--min-improvement", type=float, default=0.5, help="nats of test -ELBO it must gain (default 0.5)")
    pp.add_argument("--force", action="store_true", help="skip the comparison")
    command(
        rsub, "rollback", "registry:cmd_registry", parents=[common], help="point champion back at the previous champion"
    )

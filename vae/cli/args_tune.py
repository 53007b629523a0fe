"""Arguments of `vae tune` (an Optuna study of training runs) and `vae registry` (registered versions): light,
as vae/cli/args.py is."""

from __future__ import annotations

import argparse
import os

from vae.cli.args import command, data_args, dataset_help, json_arg, parent_arg, tracking_arg
from vae.config import TrainConfig


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
    common.add_argument(
        "--dataset", default="mnist-5k", help=dataset_help("names the model vae-<dataset> when --name is absent")
    )
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
    pn = command(
        rsub,
        "notify",
        "registry:cmd_registry",
        parents=[common],
        help="send new versions and alias moves to a URL (an MLflow server's webhook)",
    )
    pn.add_argument(
        "--url",
        default=os.environ.get("VAE_NOTIFY_URL"),
        help="the receiver, e.g. a chat's incoming-webhook https URL (default $VAE_NOTIFY_URL: such a URL is a "
        "secret, which a command line shows to every local user)",
    )
    pn.add_argument("--secret-env", help="name of an environment variable holding the HMAC secret to sign with")

"""`vae tune`: a thin wrapper of vae.tune.tune(). Nothing heavy at import (optuna and mlflow load in the command)."""
from __future__ import annotations

import argparse
from typing import Any

from vae.config import Config, DataConfig, ModelConfig, TrainConfig
from vae.errors import ConfigError


def add_commands(sub) -> dict[str, Any]:
    from vae.cli import _data_args, _json_arg
    p = sub.add_parser(
        "tune", help="search hyper-parameters: an Optuna study of training runs, tracked in MLflow",
        description="Run trials of an Optuna study until it holds --trials trials (several `vae tune` processes "
                    "may share one study). Each trial trains for --epochs epochs and reports the validation "
                    "-ELBO every epoch to the pruner; rerunning the same command continues the study.")
    _data_args(p)
    d, t = DataConfig(), TrainConfig()
    p.add_argument("--split-seed", type=int, default=d.split_seed)
    p.add_argument("--subset", type=int, help="train every trial on the first N training images only")
    p.add_argument("--trials", type=int, default=20, help="trials the study should hold in total (default 20)")
    p.add_argument("--timeout", type=float, help="start no new trial after this many seconds")
    p.add_argument("--epochs", type=int, default=t.epochs, help="epochs per trial (the pruner's budget)")
    p.add_argument("--nproc", type=int, default=1, help="processes per trial (DDP under torchrun)")
    p.add_argument("--study", help="study name (default vae-<dataset>)")
    p.add_argument("--storage", help="sqlite:///PATH (default mlruns/optuna.db), postgresql://..., or journal:PATH")
    p.add_argument("--sampler", default="tpe", help="tpe or random")
    p.add_argument("--pruner", default="hyperband", help="hyperband, median, none, or threshold:X (nats)")
    p.add_argument("--space", help="TOML or YAML file overriding entries of the default search space")
    p.add_argument("--seed", type=int, help="sampler seed (reproducible with one worker)")
    p.add_argument("--train-seed", type=int, default=t.seed, help="seed of every trial's training")
    p.add_argument("--heartbeat", type=int, default=30,
                   help="seconds between trial heartbeats; a trial silent for twice that is failed and retried "
                        "(SQL storages; 0: off)")
    p.add_argument("--out", help="folder of the trials' checkpoints (default mlruns/studies/<study>)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or mlruns/mlflow.db)")
    p.add_argument("--experiment", default="vae-tune", help="MLflow experiment (default vae-tune)")
    p.add_argument("--device", default=t.device, help="auto, cpu or cuda")
    _json_arg(p)
    return {"tune": cmd_tune}


def cmd_tune(a: argparse.Namespace) -> dict[str, Any]:
    from vae.cli import _drop_option, _under_torchrun
    base = Config(DataConfig(a.dataset, a.data_dir, a.mirror, a.split_seed, a.subset),
                  ModelConfig(), TrainConfig(epochs=a.epochs, seed=a.train_seed, device=a.device, progress=False))
    if a.nproc < 1:
        raise ConfigError(f"nproc={a.nproc} is invalid: expected an integer >= 1")
    kwargs = dict(study=a.study, storage=a.storage, timeout=a.timeout, sampler=a.sampler, pruner=a.pruner,
                  space=a.space, out=a.out, tracking_uri=a.tracking_uri, experiment=a.experiment, seed=a.seed,
                  heartbeat=a.heartbeat)
    from vae import tune as t
    if a.nproc > 1 and not _under_torchrun():
        # Everything that can be wrong in the input fails here, in one line, before torchrun starts.
        if a.trials < 1:
            raise ConfigError(f"trials={a.trials} is invalid: expected an integer >= 1")
        t.load_space(a.space, base)
        t.make_sampler(a.sampler, a.seed)
        t.make_pruner(a.pruner, a.epochs)
        t.open_storage(a.storage or t.default_storage(), heartbeat=None)
        from vae.data import load
        load(base.data, download=True)
        from vae.distributed import torchrun
        raise SystemExit(torchrun(["vae", *_drop_option(list(a.argv), "--nproc")], a.nproc))
    return t.tune(base, a.trials, **kwargs)

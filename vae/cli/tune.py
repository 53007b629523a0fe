"""`vae tune`: a thin wrapper of vae.tune.run_study()."""

from __future__ import annotations

import argparse
from typing import Any

from vae import data
from vae.cli.common import drop_option, relaunch, stores_to_env, under_torchrun
from vae.config import Config, DataConfig, ModelConfig, TrainConfig
from vae.distributed import check_nproc
from vae.errors import ConfigError
from vae.tune import TuneSettings, open_storage, run_study
from vae.tune.workers import run_workers


def cmd_tune(a: argparse.Namespace) -> dict[str, Any]:
    if a.ambiguous_seed is not None:
        raise ConfigError(
            "--seed is ambiguous for vae tune: --sampler-seed seeds the sampler, --train-seed every trial's weights"
        )
    base = Config(
        DataConfig(a.dataset, a.data_dir, a.mirror, a.split_seed, a.subset),
        ModelConfig(),
        TrainConfig(epochs=a.epochs, seed=a.train_seed, device=a.device, progress=False, patience=a.patience),
    )
    check_nproc(a.nproc, a.device)
    settings = TuneSettings(
        a.trials,
        study=a.study,
        storage=a.storage,
        timeout=a.timeout,
        sampler=a.sampler,
        pruner=a.pruner,
        space=a.space,
        out=a.out,
        tracking=not a.no_tracking,
        tracking_uri=a.tracking_uri,
        experiment=a.experiment,
        parent_run_id=a.parent_run_id,
        sampler_seed=a.sampler_seed,
        min_epochs=a.min_epochs,
        startup_trials=a.startup_trials,
        anchors=a.anchors,
        heartbeat=a.heartbeat,
    )
    if a.workers < 1:
        raise ConfigError(f"workers={a.workers} is invalid: expected an integer >= 1")
    if (a.nproc > 1 or a.workers > 1) and not under_torchrun():
        # Everything that can be wrong in the input fails here, in one line, before any process starts.
        settings.check(base)
        open_storage(settings.storage_url(), heartbeat=None)
        data.load(base.data, download=True)
    if a.workers > 1:
        argv, env = stores_to_env([x for x in drop_option(list(a.argv), "--workers") if x != "--json"])
        run_workers(argv, a.workers, env)
        return {**run_study(base, settings), "workers": a.workers}  # the trials are done: the summary
    if a.nproc > 1 and not under_torchrun():
        relaunch(a)
    return run_study(base, settings)

"""`vae tune`: a thin wrapper of vae.tune.run_study()."""

from __future__ import annotations

import argparse
from typing import Any

from vae import data
from vae.cli.common import relaunch, under_torchrun
from vae.config import Config, DataConfig, ModelConfig, TrainConfig
from vae.distributed import check_nproc
from vae.tune import TuneSettings, open_storage, run_study


def cmd_tune(a: argparse.Namespace) -> dict[str, Any]:
    base = Config(
        DataConfig(a.dataset, a.data_dir, a.mirror, a.split_seed, a.subset),
        ModelConfig(),
        TrainConfig(epochs=a.epochs, seed=a.train_seed, device=a.device, progress=False),
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
        tracking_uri=a.tracking_uri,
        experiment=a.experiment,
        seed=a.seed,
        heartbeat=a.heartbeat,
    )
    if a.nproc > 1 and not under_torchrun():
        # Everything that can be wrong in the input fails here, in one line, before torchrun starts.
        settings.check(base)
        open_storage(settings.storage_url(), heartbeat=None)
        data.load(base.data, download=True)
        relaunch(a)
    return run_study(base, settings)

"""W tuning workers on one study at once, each pinned to its share of the machine: `vae tune --workers W`.

Each worker is a `vae tune` process of its own (a torchrun job of its own with --nproc > 1) on the same
study; the study's ask lock keeps the total at exactly --trials. CPU threads are split evenly
(OMP_NUM_THREADS = cores // W); with CUDA devices, worker i sees GPU i % G only (CUDA_VISIBLE_DEVICES), so
several small-model workers can share one GPU. Workers on other machines are the same command run there
against a shared storage (PostgreSQL) and tracking server.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

import torch

from vae.errors import VAEError
from vae.lifetime import PARENT_ENV


class WorkerFailed(VAEError):
    """A tuning worker exited with an error; the study keeps what the others finished."""

    exit_code = 1


def worker_env(index: int, workers: int, cpus: int | None = None, gpus: int | None = None) -> dict[str, str]:
    cpus = cpus or os.cpu_count() or 1
    gpus = torch.cuda.device_count() if gpus is None else gpus
    threads = str(max(1, cpus // workers))
    env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "VAE_TUNE_WORKER": str(index)}
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = str(index % gpus)
    return env


def run_workers(argv: Sequence[str], workers: int, env: dict[str, str] | None = None) -> None:
    """`python -m vae ARGV` as `workers` processes at once, each with its worker_env(); returns when all have
    ended, or raises WorkerFailed naming the ones that failed."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "vae", *argv],
            env={**os.environ, **(env or {}), **worker_env(i, workers), PARENT_ENV: str(os.getpid())},  # die with me
        )
        for i in range(workers)
    ]
    codes = [p.wait() for p in procs]
    failed = [f"worker {i} exited with {c}" for i, c in enumerate(codes) if c != 0]
    if failed:
        raise WorkerFailed("; ".join(failed) + ": the study keeps the trials the others finished; rerun to complete it")

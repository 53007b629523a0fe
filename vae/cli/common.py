"""What several command handlers share: the relaunch under torchrun, loading MODEL, output path checks."""

from __future__ import annotations

import argparse
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager

from vae.checkpoint import is_model_uri, load_model
from vae.distributed import pick_device, torchrun


def shows(text):
    """Decorator: the handler's result is printed as text(result) when --json is absent."""

    def mark(handler):
        handler.text = text
        return handler

    return mark


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or "WORLD_SIZE" in os.environ


def take_option(argv: list[str], name: str) -> tuple[list[str], str | None]:
    """(argv without `name VALUE` / `name=VALUE`, the value given last, or None)."""
    out, value, skip = [], None, False
    for x in argv:
        if skip:
            value, skip = x, False
        elif x == name:
            skip = True
        elif x.startswith(name + "="):
            value = x.split("=", 1)[1]
        else:
            out.append(x)
    return out, value


def drop_option(argv: list[str], name: str) -> list[str]:
    """argv without `name VALUE` / `name=VALUE`."""
    return take_option(argv, name)[0]


# The flags that name a store, and the variable each command reads when the flag is not given.
STORE_FLAGS = {"--storage": "VAE_OPTUNA_STORAGE", "--tracking-uri": "MLFLOW_TRACKING_URI"}


def stores_to_env(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """(argv without the store flags, the environment that says the same) for a relaunched child: a store URL
    may hold a password, which a command line shows to every local user (/proc/PID/cmdline)."""
    env = {}
    for flag, var in STORE_FLAGS.items():
        argv, value = take_option(argv, flag)
        if value is not None:
            env[var] = value
    return argv, env


def relaunch(a: argparse.Namespace, extra: list[str] = ()) -> None:
    """Run this same command again as `a.nproc` processes under torchrun (which sets WORLD_SIZE, so each
    process runs the command itself) and exit with torchrun's code, the stores passed in the environment.
    The caller checks its input first, so bad input fails in one line before any process starts."""
    argv, env = stores_to_env(drop_option(list(a.argv), "--nproc") + list(extra))
    raise SystemExit(torchrun(["vae", *argv], a.nproc, env=env))


def load_model_ref(ref: str, tracking_uri: str | None, device: str):
    """(model in eval mode, cfg, checkpoint dict) from a run folder, a checkpoint.pt or an MLflow model URI."""
    dev = pick_device(device)
    if not is_model_uri(ref):
        return load_model(ref, map_location=dev)
    # Lazy: vae.tracking imports mlflow (~1.5 s), which only model URIs need.
    from vae.tracking.models import resolve_model

    return resolve_model(ref, tracking_uri, dev)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler or `kill`) raises KeyboardInterrupt, as Ctrl-C does, so that what is open (an
    MLflow run) is closed as KILLED rather than left RUNNING."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
